// SPDX-License-Identifier: MIT
// Google Benchmark suite for the recurrent baseline: a 2-layer LSTM forward and one step of
// an attention decoder (Bahdanau alignment + LSTM cell), single-threaded float.
//
// Counters as in bench_attention.cpp: FLOPS (kIsIterationInvariantRate, per CPU second)
// with the formula beside it, bytes through SetBytesProcessed. bench/torch_bench.py times
// torch.nn.LSTM on the shapes of BM_LSTM; bench/report.py quotes the ratio.
// main() comes from benchmark::benchmark_main (bench/CMakeLists.txt): no BENCHMARK_MAIN().

#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/rnn/alignment.hpp"
#include "attend/rnn/recurrent.hpp"

#include <Eigen/Core>

#include <benchmark/benchmark.h>

#include <cstdint>

namespace {

using attend::Index;
using attend::Matrix;
using attend::Tensor;

/// A float tensor of `shape` with entries uniform in [-1, 1), from `seed`.
Tensor<float> uniform_tensor(const attend::Shape& shape, std::uint64_t seed) {
  attend::Rng rng(seed);
  Tensor<float> t(shape);
  auto all = t.as_matrix();  // [prod(leading), last] view of the buffer
  attend::fill_uniform(all, 1.0, rng);
  return t;
}

/// Sets the FLOPS counter (per-iteration `flops`, reported per second of CPU time) and
/// the bytes processed (per-iteration `bytes`).
void set_counters(benchmark::State& state, double flops, double bytes) {
  state.counters["FLOPS"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
}

/// Skips the benchmark with an error unless every entry of `h` is a possible LSTM output
/// (finite, |h| < 1 since h = o * tanh(c)), so a broken kernel cannot report a number.
template <typename Derived>
void check_lstm_output(benchmark::State& state, const Eigen::MatrixBase<Derived>& h) {
  if (!h.allFinite() || h.cwiseAbs().maxCoeff() >= 1.0f) {
    state.SkipWithError("LSTM output is not finite or outside (-1, 1)");
  }
}

// ---- LSTM forward ---------------------------------------------------------------------

// torch.nn.LSTM(256, 512, num_layers=2) on x [T=64, B=16, 256] (bench/torch_bench.py).
constexpr Index kLstmInput = 256;
constexpr Index kLstmHidden = 512;
constexpr Index kLstmLayers = 2;
constexpr Index kLstmSteps = 64;
constexpr Index kLstmBatch = 16;

/// FLOP of one LSTM forward: per layer k, 2·T·B·4N·(in_k + N), the input projection of all
/// steps (2·T·B·4N·in_k) plus one recurrent product per step (2·B·4N·N); in_0 = input size,
/// in_k = N above. Bias additions, gate nonlinearities and the c/h updates (about 10·T·B·N
/// per layer, < 1% here) are not counted, as GEMM-only counts usually are.
double lstm_flops(Index in, Index N, Index layers, Index T, Index B) {
  double flops = 0.0;
  for (Index k = 0; k < layers; ++k) {
    const double in_k = k == 0 ? double(in) : double(N);
    flops += 2.0 * double(T) * double(B) * 4.0 * double(N) * (in_k + double(N));
  }
  return flops;
}

/// attend::LSTM<float> forward over a whole batch of sequences, zero initial state.
void BM_LSTM(benchmark::State& state) {
  const Index in = kLstmInput, N = kLstmHidden, L = kLstmLayers, T = kLstmSteps, B = kLstmBatch;
  attend::RecurrentOptions opts;
  opts.input_size = in;
  opts.hidden_size = N;
  opts.num_layers = L;
  const attend::LSTM<float> lstm(opts, /*seed=*/3);
  const Tensor<float> x = uniform_tensor({T, B, in}, 31);  // [T, B, in]
  attend::RecurrentOutput<float> r;
  for (auto _ : state) {
    r = lstm.forward(x);
    benchmark::DoNotOptimize(r.output.data());
    benchmark::ClobberMemory();
  }
  check_lstm_output(state, r.output.as_matrix());
  // Bytes: x read and output written once, every weight matrix read once (4N rows of
  // in + N columns in layer 0, of 2N columns above).
  const double weights = 4.0 * double(N) * double((in + N) + (L - 1) * 2 * N);
  set_counters(state, lstm_flops(in, N, L, T, B),
               (double(T * B) * double(in + N) + weights) * sizeof(float));
}
BENCHMARK(BM_LSTM)->Unit(benchmark::kMillisecond);

// ---- one attention-decoder step -------------------------------------------------------

// Bahdanau decoder step: batch 16, S = 64 encoder states of N = 512, A = 512, embedding 256.
constexpr Index kDecBatch = 16;
constexpr Index kDecSource = 64;
constexpr Index kDecHidden = 512;
constexpr Index kDecAttention = 512;
constexpr Index kDecEmbedding = 256;

/// One step of Bahdanau et al.'s decoder for a batch, as attend::Seq2Seq::step does it for
/// one sequence (without the vocabulary projection, whose cost depends on V only):
/// a_i = align(s_{i-1}, h) with the keys projected once per source (W1 h_j, outside the
/// loop), c_i = sum_j a_ij h_j, s_i = LSTM([emb(y_{i-1}); c_i], s_{i-1}).
void BM_AttentionDecoderStep(benchmark::State& state) {
  const Index B = kDecBatch, S = kDecSource, N = kDecHidden, A = kDecAttention;
  const Index E = kDecEmbedding;
  const attend::BahdanauAttention<float> attention(N, N, A, /*seed=*/5);
  attend::RecurrentOptions opts;
  opts.input_size = E + N;
  opts.hidden_size = N;
  const attend::LSTM<float> decoder(opts, /*seed=*/6);

  const Tensor<float> keys = uniform_tensor({B, S, N}, 41);               // [B, S, N] h_j
  const Tensor<float> projected = attention.project_keys(keys);           // [B, S, A] W1 h_j
  const Tensor<float> emb = uniform_tensor({B, E}, 42);                   // [B, E] emb(y_{i-1})
  const attend::RecurrentState<float> s0{uniform_tensor({1, B, N}, 43),   // h [1, B, N]
                                         uniform_tensor({1, B, N}, 44)};  // c [1, B, N]
  Matrix<float> x(B, E + N);  // [B, E + N] decoder input [emb; c_i]
  x.leftCols(E) = emb.as_matrix();
  attend::RecurrentState<float> s = s0;  // iteration i is decoder step i: s carries over
  attend::RecurrentWorkspace<float> ws;
  Matrix<float> h(B, N);  // [B, N] s_i
  for (auto _ : state) {
    const attend::AlignmentResult<float> a =
        attention.forward(s.h.matrix(0), keys, attend::BoolMatrix(), projected);
    x.rightCols(N) = a.context;
    decoder.step(x, s, h, ws);
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  check_lstm_output(state, h);
  const double Bd = double(B), Sd = double(S), Nd = double(N), Ad = double(A), Ed = double(E);
  // FLOP: query projection W2 s_{i-1} 2·B·A·N; scores v . tanh(W1 h_j + W2 s) 3·B·S·A (the
  // add and the dot with v; tanh not counted); context 2·B·S·N; LSTM step 2·B·4N·(E + N + N).
  const double flops = 2.0 * Bd * Ad * Nd + 3.0 * Bd * Sd * Ad + 2.0 * Bd * Sd * Nd +
                       2.0 * Bd * 4.0 * Nd * (Ed + 2.0 * Nd);
  // Bytes: keys and projected keys read once, W2 and the LSTM weights read once.
  const double bytes = (Bd * Sd * (Nd + Ad) + Ad * Nd + 4.0 * Nd * (Ed + 2.0 * Nd)) * sizeof(float);
  set_counters(state, flops, bytes);
}
BENCHMARK(BM_AttentionDecoderStep)->Unit(benchmark::kMicrosecond);

}  // namespace
