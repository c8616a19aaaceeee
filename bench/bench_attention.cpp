// SPDX-License-Identifier: MIT
// Google Benchmark suite for attention: GEMM baselines (OpenBLAS, Eigen), the reference
// and fused scaled dot-product attention (forward and backward) and multi-head attention,
// single-threaded float unless a benchmark says otherwise.
//
// Every benchmark reports FLOP/s as the `FLOPS` counter (kIsIterationInvariantRate, so
// Google Benchmark divides by CPU time) and bytes through SetBytesProcessed; the FLOP
// formula sits beside each counter. bench/report.py turns the JSON output into
// docs/benchmarks.md, quoting every benchmark as a ratio to BM_Sgemm of the same run.
// main() comes from benchmark::benchmark_main (bench/CMakeLists.txt): no BENCHMARK_MAIN().

// GCC 12 + -march=native: bench/CMakeLists.txt silences a false -Wmaybe-uninitialized
// from GCC's avx512fintrin.h (GCC bug 105593).

#include "attend/attention/fused.hpp"
#include "attend/attention/fused_backward.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Declared here as well because a non-OpenBLAS cblas.h (netlib's, through Debian's
// alternatives) lacks them; the declarations match OpenBLAS's own.
extern "C" {
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
char* openblas_get_config(void);
char* openblas_get_corename(void);
}

namespace {

using attend::Index;
using attend::Matrix;
using attend::Tensor;

// ---- shared setup -------------------------------------------------------------------

/// Records what the numbers depend on in the JSON context (read by bench/report.py).
/// Runs once, before main(), from a static initializer: AddCustomContext only stores
/// strings in a map that Google Benchmark creates on first use.
const bool context_recorded = [] {
  openblas_set_num_threads(1);  // single-threaded unless a benchmark says otherwise
  Eigen::setNbThreads(1);        // Eigen's products stay single-threaded under -fopenmp
  benchmark::AddCustomContext("attend_compiler", __VERSION__);
#if defined(__clang__)
  benchmark::AddCustomContext("attend_compiler_id", "clang");
#elif defined(__GNUC__)
  benchmark::AddCustomContext("attend_compiler_id", "gcc");
#endif
#ifdef NDEBUG
  benchmark::AddCustomContext("attend_ndebug", "yes");
#else
  benchmark::AddCustomContext("attend_ndebug", "NO (asserts on: numbers are not valid)");
#endif
#ifdef EIGEN_USE_BLAS
  // With ATTEND_USE_BLAS, Eigen forwards large products to OpenBLAS: BM_SgemmEigen is then
  // OpenBLAS again and the attention benchmarks measure OpenBLAS GEMMs.
  benchmark::AddCustomContext("attend_eigen_use_blas", "yes");
#else
  benchmark::AddCustomContext("attend_eigen_use_blas", "no");
#endif
  const std::string eigen_version = std::to_string(EIGEN_WORLD_VERSION) + "." +
                                    std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                    std::to_string(EIGEN_MINOR_VERSION);
  benchmark::AddCustomContext("attend_eigen_version", eigen_version);
  benchmark::AddCustomContext("attend_eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("attend_eigen_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("attend_openblas_config", openblas_get_config());
  benchmark::AddCustomContext("attend_openblas_core", openblas_get_corename());
  benchmark::AddCustomContext("attend_openblas_threads",
                              std::to_string(openblas_get_num_threads()));
  return true;
}();

/// A [rows, cols] float matrix with entries uniform in [-1, 1), from `seed`.
Matrix<float> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  attend::Rng rng(seed);
  Matrix<float> m(rows, cols);
  attend::fill_uniform(m, 1.0, rng);
  return m;
}

/// A float tensor of `shape` with entries uniform in [-1, 1), from `seed`.
Tensor<float> random_tensor(const attend::Shape& shape, std::uint64_t seed) {
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

/// Compares a few entries of c = a * b against double dot products; skips with an error
/// when one is off, so a broken benchmark cannot report a number. The tolerance is the
/// classical forward error bound of a length-k float dot product, k * eps * sum |a_t b_t|
/// (Higham, Accuracy and Stability, 3.1): any blocking order stays inside it, while a
/// wrong index or leading dimension misses by O(sqrt(k)) (about 15 for k = 2048).
void check_gemm(benchmark::State& state, const Matrix<float>& a, const Matrix<float>& b,
                const Matrix<float>& c) {
  const Index n = a.rows(), k = a.cols(), m = b.cols();
  const Index probes[3][2] = {{0, 0}, {n / 2, m / 3}, {n - 1, m - 1}};
  for (const auto& p : probes) {
    double want = 0.0, magnitude = 0.0;
    for (Index t = 0; t < k; ++t) {
      const double term = double(a(p[0], t)) * double(b(t, p[1]));
      want += term;
      magnitude += std::abs(term);
    }
    const double tolerance = double(k) * double(Eigen::NumTraits<float>::epsilon()) * magnitude;
    if (std::abs(double(c(p[0], p[1])) - want) > tolerance) {
      state.SkipWithError("GEMM result does not match a double-precision dot product");
      return;
    }
  }
}

// ---- GEMM baselines -----------------------------------------------------------------

/// OpenBLAS single-precision GEMM, one thread: C[n, n] = A[n, n] B[n, n], row-major.
void BM_Sgemm(benchmark::State& state) {
  const Index n = state.range(0);
  const int threads = state.range(1) > 0 ? static_cast<int>(state.range(1)) : 1;
  openblas_set_num_threads(threads);
  const Matrix<float> a = random_matrix(n, n, 1), b = random_matrix(n, n, 2);
  Matrix<float> c = Matrix<float>::Zero(n, n);
  const int ni = static_cast<int>(n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ni, ni, 1.0f, a.data(), ni, b.data(),
                ni, 0.0f, c.data(), ni);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  check_gemm(state, a, b, c);
  // GEMM: 2·m·n·k (one multiply and one add per term); bytes: A, B read and C written once.
  set_counters(state, 2.0 * double(n) * double(n) * double(n), 3.0 * double(n * n) * sizeof(float));
  openblas_set_num_threads(1);
}
BENCHMARK(BM_Sgemm)->ArgName("n")->Arg(2048)->Unit(benchmark::kMillisecond);
/// The 2-thread roof for BM_SdpaFused2T: OpenBLAS with 2 threads (wall-clock rate).
void BM_Sgemm2T(benchmark::State& state) {
  state.SetLabel("2 threads");
  BM_Sgemm(state);
}
BENCHMARK(BM_Sgemm2T)->ArgNames({"n", "threads"})->Args({2048, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

/// Eigen's float GEMM (no -fopenmp, so one thread): C.noalias() = A * B, row-major.
void BM_SgemmEigen(benchmark::State& state) {
  const Index n = state.range(0);
  const Matrix<float> a = random_matrix(n, n, 1), b = random_matrix(n, n, 2);
  Matrix<float> c = Matrix<float>::Zero(n, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  check_gemm(state, a, b, c);
  // GEMM: 2·m·n·k; bytes: A, B read and C written once.
  set_counters(state, 2.0 * double(n) * double(n) * double(n), 3.0 * double(n * n) * sizeof(float));
}
BENCHMARK(BM_SgemmEigen)->ArgName("n")->Arg(2048)->Unit(benchmark::kMillisecond);

// ---- scaled dot-product attention ---------------------------------------------------

// Shapes shared by every SDPA variant: B = 1 sequence, H = 8 heads of d = 64, S = L.
constexpr Index kSdpaBatch = 1;
constexpr Index kSdpaHeads = 8;
constexpr Index kSdpaHeadDim = 64;

/// The one Args grid of every SDPA variant (reference now, fused later): L = S.
void sdpa_lengths(benchmark::internal::Benchmark* b) {
  b->ArgName("L");
  for (const Index L : {128, 512, 1024, 2048, 4096}) b->Arg(L);
  b->Unit(benchmark::kMillisecond);
}

/// Q, K, V of shape [B, H, L, d] for one SDPA benchmark, built outside the timed loop.
struct SdpaInputs {
  Tensor<float> q, k, v;  // each [B, H, L, d]
  explicit SdpaInputs(Index L)
      : q(random_tensor({kSdpaBatch, kSdpaHeads, L, kSdpaHeadDim}, 11)),
        k(random_tensor({kSdpaBatch, kSdpaHeads, L, kSdpaHeadDim}, 12)),
        v(random_tensor({kSdpaBatch, kSdpaHeads, L, kSdpaHeadDim}, 13)) {}
};

/// Counters of one SDPA call with L queries and S = L keys.
void set_sdpa_counters(benchmark::State& state, Index L) {
  const double B = kSdpaBatch, H = kSdpaHeads, d = kSdpaHeadDim, Lq = double(L), S = double(L);
  // Attention: 4·B·H·L·S·d = Q K^T (2·L·S·d per head) + P V (2·L·S·d per head); the
  // softmax and scaling are not counted (ggml test_flash_attn_ext op_flops does the same).
  const double flops = 4.0 * B * H * Lq * S * d;
  // Bytes: Q, K, V read and O written once, each [B, H, L, d] float (the L x S score matrix
  // of the reference is workspace, not counted).
  const double bytes = 4.0 * B * H * Lq * d * sizeof(float);
  set_counters(state, flops, bytes);
}

/// Reference attention on tensors: attend::scaled_dot_product_attention, need_weights=false.
void BM_SdpaReference(benchmark::State& state) {
  const Index L = state.range(0);
  const SdpaInputs in(L);
  const attend::Mask no_mask;
  for (auto _ : state) {
    attend::AttentionResult<float> r = attend::scaled_dot_product_attention<float>(
        in.q, in.k, in.v, no_mask, std::nullopt, /*need_weights=*/false);
    benchmark::DoNotOptimize(r.output.data());
    benchmark::ClobberMemory();
  }
  set_sdpa_counters(state, L);
}
BENCHMARK(BM_SdpaReference)->Apply(sdpa_lengths);

// ---- fused attention (attention/fused.hpp) ----------------------------------------
// Same Args grid, inputs and FLOP count as BM_SdpaReference, so the FLOPS ratio of the
// two rows at one L is the speedup.

/// Sets the OpenMP thread count of the fused kernel's (batch, head, query block) split;
/// a no-op when attend-bench is built without OpenMP.
void set_attention_threads(int n) {
#ifdef _OPENMP
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

/// Fused attention on tensors, single thread.
void BM_SdpaFused(benchmark::State& state) {
  const Index L = state.range(0);
  const SdpaInputs in(L);
  const attend::Mask no_mask;
  set_attention_threads(1);
  for (auto _ : state) {
    Tensor<float> out = attend::scaled_dot_product_attention_fused<float>(in.q, in.k, in.v,
                                                                          no_mask);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_sdpa_counters(state, L);
  // Extra memory of the kernel: one workspace per thread, whatever L is.
  state.counters["workspace_bytes"] =
      static_cast<double>(attend::FusedWorkspace<float>(kSdpaHeadDim, kSdpaHeadDim).bytes());
}
BENCHMARK(BM_SdpaFused)->Apply(sdpa_lengths);

/// Fused causal attention, single thread. The FLOPS counter keeps the non-causal count,
/// so its ratio to BM_SdpaFused is the causal speedup (about 2x is the ideal).
void BM_SdpaFusedCausal(benchmark::State& state) {
  const Index L = state.range(0);
  const SdpaInputs in(L);
  const attend::Mask causal = attend::Mask::causal();
  set_attention_threads(1);
  for (auto _ : state) {
    Tensor<float> out = attend::scaled_dot_product_attention_fused<float>(in.q, in.k, in.v,
                                                                          causal);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_sdpa_counters(state, L);
}
BENCHMARK(BM_SdpaFusedCausal)->Apply(sdpa_lengths);

/// Fused attention with 2 OpenMP threads (wall-clock rate: UseRealTime).
void BM_SdpaFused2T(benchmark::State& state) {
  const Index L = state.range(0);
  const SdpaInputs in(L);
  const attend::Mask no_mask;
  set_attention_threads(2);
  for (auto _ : state) {
    Tensor<float> out = attend::scaled_dot_product_attention_fused<float>(in.q, in.k, in.v,
                                                                          no_mask);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_attention_threads(1);
  set_sdpa_counters(state, L);
}
BENCHMARK(BM_SdpaFused2T)->Apply(sdpa_lengths)->UseRealTime();

// ---- attention backward (reference and attention/fused_backward.hpp) ----------------
// One Args grid for both: L = S up to 2048 (the reference caches [L, S] weights per head,
// 128 MiB at L = 2048), same inputs, same FLOP count, so the FLOPS ratio is the speedup.

/// The Args grid of the backward variants.
void sdpa_backward_lengths(benchmark::internal::Benchmark* b) {
  b->ArgName("L");
  for (const Index L : {128, 512, 1024, 2048}) b->Arg(L);
  b->Unit(benchmark::kMillisecond);
}

/// Counters of one SDPA backward with L queries and S = L keys.
void set_sdpa_backward_counters(benchmark::State& state, Index L) {
  const double B = kSdpaBatch, H = kSdpaHeads, d = kSdpaHeadDim, Lq = double(L), S = double(L);
  // Backward: 10·B·H·L·S·d = 2.5x the forward's 4·L·S·d per head, five products of
  // 2·L·S·d: Q K^T (recomputed by the fused path), dO V^T, P^T dO, dS^T Q, dS K. The
  // reference skips the recomputation (4 products) but is credited the same count, so the
  // FLOPS ratio of the two rows is the time ratio. Softmax terms are not counted.
  const double flops = 10.0 * B * H * Lq * S * d;
  // Bytes: Q, K, V, O, dO read and dQ, dK, dV written once, each [B, H, L, d] float (the
  // reference's cached [L, S] weights and its temporaries are not counted).
  const double bytes = 8.0 * B * H * Lq * d * sizeof(float);
  set_counters(state, flops, bytes);
}

/// Reference backward (scaled_dot_product.hpp), one head at a time from cached weights;
/// the forward that fills the caches runs outside the timed loop.
void BM_SdpaReferenceBackward(benchmark::State& state) {
  const Index L = state.range(0), d = kSdpaHeadDim;
  const SdpaInputs in(L);
  const Tensor<float> d_out = random_tensor({kSdpaBatch, kSdpaHeads, L, d}, 14);
  std::vector<attend::AttentionCache<float>> caches(std::size_t(kSdpaBatch * kSdpaHeads));
  for (Index n = 0; n < kSdpaBatch * kSdpaHeads; ++n) {
    const Index b = n / kSdpaHeads, h = n % kSdpaHeads;
    attend::scaled_dot_product_attention_forward(in.q.matrix(b, h), in.k.matrix(b, h),
                                                 in.v.matrix(b, h), attend::Mask(), std::nullopt,
                                                 &caches[std::size_t(n)]);
  }
  for (auto _ : state) {
    for (Index n = 0; n < kSdpaBatch * kSdpaHeads; ++n) {
      const Index b = n / kSdpaHeads, h = n % kSdpaHeads;
      attend::AttentionGrads<float> g = attend::scaled_dot_product_attention_backward(
          in.q.matrix(b, h), in.k.matrix(b, h), in.v.matrix(b, h), caches[std::size_t(n)],
          d_out.matrix(b, h));
      benchmark::DoNotOptimize(g.dq.data());
    }
    benchmark::ClobberMemory();
  }
  set_sdpa_backward_counters(state, L);
}
BENCHMARK(BM_SdpaReferenceBackward)->Apply(sdpa_backward_lengths);

/// Fused backward on tensors, single thread, from the fused forward's output and lse
/// (computed outside the timed loop).
void BM_SdpaFusedBackward(benchmark::State& state) {
  const Index L = state.range(0), d = kSdpaHeadDim;
  const SdpaInputs in(L);
  const Tensor<float> d_out = random_tensor({kSdpaBatch, kSdpaHeads, L, d}, 14);
  const attend::Mask no_mask;
  set_attention_threads(1);
  Tensor<float> lse;
  const Tensor<float> out =
      attend::scaled_dot_product_attention_fused<float>(in.q, in.k, in.v, no_mask, std::nullopt, &lse);
  for (auto _ : state) {
    attend::AttentionTensorGrads<float> g = attend::scaled_dot_product_attention_fused_backward(
        in.q, in.k, in.v, out, lse, d_out, no_mask);
    benchmark::DoNotOptimize(g.dq.data());
    benchmark::ClobberMemory();
  }
  set_sdpa_backward_counters(state, L);
  state.counters["workspace_bytes"] = static_cast<double>(
      attend::FusedBackwardWorkspace<float>(kSdpaHeadDim, kSdpaHeadDim).bytes());
}
BENCHMARK(BM_SdpaFusedBackward)->Apply(sdpa_backward_lengths);

/// Fused causal backward, single thread; FLOPS keeps the non-causal count (about 2x ideal).
void BM_SdpaFusedBackwardCausal(benchmark::State& state) {
  const Index L = state.range(0), d = kSdpaHeadDim;
  const SdpaInputs in(L);
  const Tensor<float> d_out = random_tensor({kSdpaBatch, kSdpaHeads, L, d}, 14);
  const attend::Mask causal = attend::Mask::causal();
  set_attention_threads(1);
  Tensor<float> lse;
  const Tensor<float> out =
      attend::scaled_dot_product_attention_fused<float>(in.q, in.k, in.v, causal, std::nullopt, &lse);
  for (auto _ : state) {
    attend::AttentionTensorGrads<float> g = attend::scaled_dot_product_attention_fused_backward(
        in.q, in.k, in.v, out, lse, d_out, causal);
    benchmark::DoNotOptimize(g.dq.data());
    benchmark::ClobberMemory();
  }
  set_sdpa_backward_counters(state, L);
}
BENCHMARK(BM_SdpaFusedBackwardCausal)->Apply(sdpa_backward_lengths);

// ---- multi-head attention -----------------------------------------------------------

constexpr Index kMhaEmbed = 512;
constexpr Index kMhaHeads = 8;

/// torch.nn.MultiheadAttention(512, 8) self-attention on [L, B=1, E], eval, no weights.
void BM_MultiheadAttention(benchmark::State& state) {
  const Index L = state.range(0), E = kMhaEmbed, B = 1;
  attend::MultiheadAttentionOptions opts;
  opts.embed_dim = E;
  opts.num_heads = kMhaHeads;
  const attend::MultiheadAttention<float> mha(opts, /*seed=*/7);
  const Tensor<float> x = random_tensor({L, B, E}, 21);  // [L, B, E]
  attend::MultiheadAttentionArgs args;
  args.need_weights = false;
  for (auto _ : state) {
    attend::AttentionResult<float> r = mha.forward(x, args);
    benchmark::DoNotOptimize(r.output.data());
    benchmark::ClobberMemory();
  }
  const double Ld = double(L), Ed = double(E), Bd = double(B);
  // Projections: Q, K, V ([L, E] x [E, 3E]) 2·L·E·3E + output ([L, E] x [E, E]) 2·L·E·E;
  // attention over all heads: 4·L·S·E with S = L (4·L·S·d_k per head, H·d_k = E).
  const double flops = Bd * (2.0 * Ld * Ed * 3.0 * Ed + 2.0 * Ld * Ed * Ed + 4.0 * Ld * Ld * Ed);
  // Bytes: input read and output written once, plus the four E x E weight matrices.
  const double bytes = (2.0 * Bd * Ld * Ed + 4.0 * Ed * Ed) * sizeof(float);
  set_counters(state, flops, bytes);
}
BENCHMARK(BM_MultiheadAttention)
    ->ArgName("L")
    ->Arg(128)
    ->Arg(512)
    ->Arg(1024)
    ->Arg(2048)
    ->Unit(benchmark::kMillisecond);

}  // namespace
