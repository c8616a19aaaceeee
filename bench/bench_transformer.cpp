// SPDX-License-Identifier: MIT
// Google Benchmark suite for the transformer blocks: an encoder layer's forward over L
// tokens, and one cached decoder-layer step after P decoded positions; single-threaded float.
//
// Shapes are the paper's base model: d_model 512, 8 heads, feed-forward 2048 (Vaswani et al.
// 2017, table 3), batch 1, post-norm, relu. Counters as bench_attention.cpp: FLOPS is FLOP
// per second of CPU time (kIsIterationInvariantRate) with the FLOP formula beside it, and
// bytes through SetBytesProcessed. bench/report.py lists the rows with the others and adds
// a transformer section. main() comes from benchmark::benchmark_main: no BENCHMARK_MAIN().

#include "attend/attention/mask.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/transformer/decoder_layer.hpp"
#include "attend/transformer/encoder_layer.hpp"
#include "attend/transformer/layer_options.hpp"

#include <Eigen/Core>

#include <benchmark/benchmark.h>

#include <cstdint>

namespace {

using attend::Index;
using attend::Tensor;

constexpr Index kModel = 512;        // d_model E
constexpr Index kHeads = 8;          // H (d_k = 64)
constexpr Index kFeedForward = 2048;  // F
constexpr Index kMemory = 128;       // S, encoder positions the decoder step attends to

attend::TransformerLayerOptions base_options() {
  attend::TransformerLayerOptions o;
  o.d_model = kModel;
  o.nhead = kHeads;
  o.dim_feedforward = kFeedForward;
  return o;
}

/// A float tensor of `shape` with entries uniform in [-1, 1), from `seed`.
Tensor<float> random_tensor(const attend::Shape& shape, std::uint64_t seed) {
  attend::Rng rng(seed);
  Tensor<float> t(shape);
  auto all = t.as_matrix();  // [prod(leading), last] view of the buffer
  attend::fill_uniform(all, 1.0, rng);
  return t;
}

/// FLOPS (per iteration `flops`, reported per CPU second) and bytes per iteration.
void set_counters(benchmark::State& state, double flops, double bytes) {
  state.counters["FLOPS"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
}

/// Skips with an error when a result holds NaN or Inf, so a broken run reports no number.
void check_finite(benchmark::State& state, const Tensor<float>& y) {
  if (!y.as_matrix().allFinite()) state.SkipWithError("non-finite output");
}

/// nn.TransformerEncoderLayer(512, 8, 2048) forward on src [L, B=1, 512], eval mode.
void BM_TransformerEncoderLayer(benchmark::State& state) {
  const Index L = state.range(0), E = kModel, F = kFeedForward;
  const attend::TransformerEncoderLayer<float> layer(base_options(), /*seed=*/3);
  const Tensor<float> src = random_tensor({L, 1, E}, 31);  // [L, B, E]
  Tensor<float> y;
  for (auto _ : state) {
    y = layer.forward(src);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  check_finite(state, y);
  const double Ld = double(L), Ed = double(E), Fd = double(F);
  // Self-attention: projections 2·L·E·3E (Q, K, V) + 2·L·E·E (output) = 8·L·E², scores and
  // weighted values 4·L·L·E (over all heads); feed-forward 2·L·E·F twice = 4·L·E·F.
  // LayerNorm, softmax, bias and activation are not counted.
  const double flops = 8.0 * Ld * Ed * Ed + 4.0 * Ld * Ld * Ed + 4.0 * Ld * Ed * Fd;
  // Bytes: src read and output written once, plus the weights (4 E² attention, 2 E·F).
  const double bytes = (2.0 * Ld * Ed + 4.0 * Ed * Ed + 2.0 * Ed * Fd) * sizeof(float);
  set_counters(state, flops, bytes);
}
BENCHMARK(BM_TransformerEncoderLayer)
    ->ArgName("L")
    ->Arg(128)
    ->Arg(256)
    ->Arg(512)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond);

/// One nn.TransformerDecoderLayer(512, 8, 2048) step (T = 1 new token, B = 1) after P
/// cached positions, against a memory of S = 128 positions whose keys and values are
/// already cached: TransformerDecoderLayer::forward_step.
void BM_DecodeStepCached(benchmark::State& state) {
  const Index P = state.range(0), E = kModel, F = kFeedForward, S = kMemory;
  const attend::TransformerDecoderLayer<float> layer(base_options(), /*seed=*/5);
  const Tensor<float> memory = random_tensor({S, 1, E}, 51);  // [S, B, E]
  const Tensor<float> prefix = random_tensor({P, 1, E}, 52);  // [P, B, E]
  const Tensor<float> token = random_tensor({1, 1, E}, 53);   // [T = 1, B, E]
  auto cache = layer.make_cache(1, P + 1);
  layer.forward_step(prefix, memory, cache);  // fills P positions and the memory's K/V
  Tensor<float> y;
  for (auto _ : state) {
    y = layer.forward_step(token, memory, cache);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    // Forget the position just appended (its row is overwritten by the next step): O(1).
    cache.self_attn.clear();
    cache.self_attn.grow(P);
  }
  check_finite(state, y);
  const double Pd = double(P), Ed = double(E), Fd = double(F), Sd = double(S);
  // Self-attention: Q, K, V of the token 2·E·3E, output 2·E·E, scores and weighted values
  // over P + 1 keys 4·(P + 1)·E; cross-attention: Q 2·E·E, output 2·E·E, attention over S
  // 4·S·E (the memory's K/V are cached); feed-forward 4·E·F. Total 12·E² + 4·(P+1)·E +
  // 4·S·E + 4·E·F.
  const double flops =
      12.0 * Ed * Ed + 4.0 * (Pd + 1.0) * Ed + 4.0 * Sd * Ed + 4.0 * Ed * Fd;
  // Bytes: the weights read once per step (8 E² attention, 2 E·F feed-forward), the cached
  // keys and values (2·(P + 1)·E self, 2·S·E memory); the token's row is negligible.
  const double bytes =
      (8.0 * Ed * Ed + 2.0 * Ed * Fd + 2.0 * (Pd + 1.0) * Ed + 2.0 * Sd * Ed) * sizeof(float);
  set_counters(state, flops, bytes);
}
BENCHMARK(BM_DecodeStepCached)
    ->ArgName("cached")
    ->Arg(128)
    ->Arg(256)
    ->Arg(512)
    ->Arg(1024)
    ->Arg(2048)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
