// SPDX-License-Identifier: MIT
// Tests of attention/fused.hpp and fused_backward.hpp: the fused kernel and its backward
// against the reference (both tile paths, every mask kind, odd sizes), zeros for fully
// masked rows, skipped tiles, no allocation in the kernels, thread-count independence,
// a gradient check, argument errors.

// Eigen's run-time allocation check (set_is_malloc_allowed) exists only when this macro is
// defined before Eigen is first included, so it comes first and holds for the whole TU.
#ifndef EIGEN_RUNTIME_NO_MALLOC
#define EIGEN_RUNTIME_NO_MALLOC
#endif

#include "attend/attention/fused.hpp"
#include "attend/attention/fused_backward.hpp"

#include "attend/attention/mask.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/train/gradcheck.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "test_util.hpp"

namespace {

using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Tensor;
using attend::FusedKernel;

using attend_test::inf;
using attend_test::kGradTol;
using attend_test::random_index;
using attend_test::random_matrix;
using attend_test::require_close;

// ---- tolerances ------------------------------------------------------------------------

/// Fused vs reference on O(1) logits and values in [-1, 1]: both score (q . k) * scale in
/// natural units; they differ in the dot products' summation order, in the exp (on AVX2
/// a 2-ulp polynomial of (s - m) log2 e vs Eigen's) and in the softmax's summation order
/// (online per key block vs one pass): a few ulps of each weight, below 1e-6 observed in
/// float, 1e-15 in double.
template <typename S>
constexpr double kFusedTol = std::is_same_v<S, float> ? 1e-5 : 1e-12;

/// Logits near 1e3: each path rounds the 64-term dot products on its own, so a logit
/// differs by a few ulps of 1e3 (6e-5 in float, 1e-13 in double) and each weight by that
/// factor: 2.4e-5 observed in float on outputs in [-1, 1]; 5 float ulps of 1e3 allowed.
template <typename S>
constexpr double kLargeLogitTol = std::is_same_v<S, float> ? 3e-4 : 1e-11;

/// Hand-computed values are written with 10 significant digits.
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 1e-6 : 1e-9;

/// The AVX2 exp2: a degree-5 polynomial with relative error 9.1e-8, plus float rounding of
/// 5 Horner steps and the final scaling: 1.9e-7 (under 2 ulp) at worst; 2.5 ulp allowed.
constexpr double kExp2RelTol = 3e-7;

// ---- helpers ---------------------------------------------------------------------------

/// An [L, S] bool matrix, each entry true with probability p.
attend::BoolMatrix random_bools(Index L, Index S, double p, attend::Rng& rng) {
  attend::BoolMatrix m(L, S);
  for (Index i = 0; i < L; ++i)
    for (Index j = 0; j < S; ++j) m(i, j) = rng.uniform() < p;
  return m;
}

/// Every mask kind for an [L, S] score matrix, with a name for the report.
std::vector<std::pair<std::string, Mask>> all_masks(Index L, Index S, attend::Rng& rng) {
  std::vector<std::pair<std::string, Mask>> masks;
  masks.emplace_back("none", Mask());
  masks.emplace_back("causal", Mask::causal());
  masks.emplace_back("causal offset 5", Mask::causal(5));
  masks.emplace_back("causal offset -3", Mask::causal(-3));
  masks.emplace_back("key padding", Mask::key_padding_lengths({(S + 1) / 2}, S));
  masks.emplace_back("deny 30%", Mask::deny(random_bools(L, S, 0.3, rng)));
  masks.emplace_back("allow 20%", Mask::allow(random_bools(L, S, 0.2, rng)));
  // Additive: finite biases with about 10% -inf entries.
  Matrix<double> bias = random_matrix<double>(L, S, rng, 3.0);
  for (Index i = 0; i < L; ++i)
    for (Index j = 0; j < S; ++j)
      if (rng.uniform() < 0.1) bias(i, j) = -inf<double>;
  masks.emplace_back("additive with -inf", Mask::additive(bias));
  // Broadcast planes: one bias per key ([1, S]) and one blocked flag per query ([L, 1]).
  masks.emplace_back("additive [1, S]", Mask::additive(random_matrix<double>(1, S, rng, 2.0)));
  masks.emplace_back("deny [L, 1]", Mask::deny(random_bools(L, 1, 0.3, rng)));
  masks.emplace_back("causal & padding & additive",
                     Mask::causal(2) & Mask::key_padding_lengths({S - S / 3}, S) &
                         Mask::additive(random_matrix<double>(L, S, rng, 1.0)));
  return masks;
}

const std::array<FusedKernel, 2> kKernels = {FusedKernel::automatic, FusedKernel::portable};

std::string kernel_name(FusedKernel k) {
  return k == FusedKernel::portable ? "portable" : "automatic";
}

/// The fused kernel on one head, through the detail entry point.
template <typename S>
Matrix<S> fused_head(const Matrix<S>& q, const Matrix<S>& k, const Matrix<S>& v, const Mask& mask,
                     double scale, FusedKernel kernel) {
  Matrix<S> out(q.rows(), v.cols());
  attend::FusedWorkspace<S> ws(q.cols(), v.cols());
  attend::detail::attention_head_fused<S>(q, k, v, mask, 0, 0, static_cast<S>(scale), out, ws,
                                          kernel);
  return out;
}

/// Fused (both kernels, detail and public entry) equals the reference on one case.
template <typename S>
void check_case(const Matrix<S>& q, const Matrix<S>& k, const Matrix<S>& v, const Mask& mask,
                double scale, double tol) {
  const Matrix<S> want = attend::scaled_dot_product_attention(q, k, v, mask, scale);
  for (const FusedKernel kernel : kKernels) {
    INFO("kernel " << kernel_name(kernel));
    require_close(fused_head<S>(q, k, v, mask, scale, kernel), want, tol, tol);
  }
  require_close(attend::scaled_dot_product_attention_fused(q, k, v, mask, scale), want, tol, tol);
}

}  // namespace

// ---- hand-computed ---------------------------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: one query, two keys, by hand", "[fused]", float, double) {
  using S = TestType;
  // q = [1, 0], k = [[1, 0], [0, 1]], scale 1: scores [1, 0];
  // weights [e, 1] / (e + 1) = [0.7310585786, 0.2689414214];
  // v = [[1, 2], [3, 4]]: out = [0.7310585786 + 3 * 0.2689414214,
  //                              2 * 0.7310585786 + 4 * 0.2689414214] =
  //                              [1.5378828427, 2.5378828427]
  Matrix<S> q(1, 2), k(2, 2), v(2, 2), want(1, 2);
  q << 1, 0;
  k << 1, 0, 0, 1;
  v << 1, 2, 3, 4;
  want << S(1.5378828427), S(2.5378828427);
  for (const FusedKernel kernel : kKernels) {
    INFO("kernel " << kernel_name(kernel));
    require_close(fused_head<S>(q, k, v, Mask(), 1.0, kernel), want, kHandTol<S>);
  }
  // The causal mask leaves query 0 only key 0: the output is v[0] exactly.
  const Matrix<S> v0 = v.topRows(1);
  require_close(attend::scaled_dot_product_attention_fused(q, k, v, Mask::causal(), 1.0), v0, 0.0);
}

// ---- equal to the reference ------------------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: equals the reference for every mask and odd sizes", "[fused]", float,
                   double) {
  using S = TestType;
  attend::Rng rng(20240501);
  // [L, S, d_k, d_v]: single rows and keys, sizes around the 96-query and 128-key blocks,
  // d_v != d_k, d_v not a multiple of 8 or 16, d_v wider than 128.
  const std::vector<std::array<Index, 4>> sizes = {
      {1, 1, 8, 8},      {1, 1, 64, 64},    {33, 33, 64, 64},   {33, 70, 64, 64},
      {96, 128, 64, 64}, {97, 129, 64, 64}, {100, 300, 64, 40}, {95, 250, 16, 17},
      {200, 257, 5, 3},  {1, 1000, 64, 64}, {130, 7, 64, 130},  {61, 61, 3, 9}};
  for (const auto& [L, Sk, d_k, d_v] : sizes) {
    const Matrix<S> q = random_matrix<S>(L, d_k, rng);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    for (const auto& [name, mask] : all_masks(L, Sk, rng)) {
      INFO("L " << L << ", S " << Sk << ", d_k " << d_k << ", d_v " << d_v << ", mask " << name);
      check_case<S>(q, k, v, mask, 1.0 / std::sqrt(double(d_k)), kFusedTol<S>);
    }
    INFO("L " << L << ", S " << Sk << ", scale 0.3");
    check_case<S>(q, k, v, Mask::causal(1), 0.3, kFusedTol<S>);
  }
}

TEMPLATE_TEST_CASE("fused.hpp: equals the reference on random sizes", "[fused][property]", float,
                   double) {
  using S = TestType;
  attend::Rng rng(77);
  for (int trial = 0; trial < 12; ++trial) {
    const Index L = random_index(rng, 1, 150), Sk = random_index(rng, 1, 300);
    const Index d_k = random_index(rng, 1, 80), d_v = random_index(rng, 1, 80);
    const Matrix<S> q = random_matrix<S>(L, d_k, rng, 2.0);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    const auto masks = all_masks(L, Sk, rng);
    const auto& [name, mask] = masks[static_cast<std::size_t>(trial) % masks.size()];
    INFO("L " << L << ", S " << Sk << ", d_k " << d_k << ", d_v " << d_v << ", mask " << name);
    check_case<S>(q, k, v, mask, 1.0 / std::sqrt(double(d_k)), kFusedTol<S>);
  }
}

TEMPLATE_TEST_CASE("fused.hpp: logits near 1e3 stay finite and match", "[fused]", float, double) {
  using S = TestType;
  attend::Rng rng(5);
  const Index L = 70, Sk = 150, d = 64;
  // q in [-100, 100], k in [-1, 1], scale 1: logits of a few hundred, the largest near 1e3.
  const Matrix<S> q = random_matrix<S>(L, d, rng, 100.0);
  const Matrix<S> k = random_matrix<S>(Sk, d, rng);
  const Matrix<S> v = random_matrix<S>(Sk, d, rng);
  const Matrix<S> scores = q * k.transpose();
  REQUIRE(scores.cwiseAbs().maxCoeff() > S(800));
  check_case<S>(q, k, v, Mask(), 1.0, kLargeLogitTol<S>);
  check_case<S>(q, k, v, Mask::causal(), 1.0, kLargeLogitTol<S>);
}

TEMPLATE_TEST_CASE("fused.hpp: empty extents match the reference", "[fused]", float, double) {
  using S = TestType;
  attend::Rng rng(4);
  // [L, S, d_k, d_v]: no queries, no keys (zero rows out), d_k = 0 (all scores 0: the mean
  // of the values), no value features.
  const std::vector<std::array<Index, 4>> sizes = {
      {0, 5, 4, 3}, {4, 0, 4, 3}, {4, 5, 0, 3}, {4, 5, 4, 0}, {0, 0, 0, 0}};
  for (const auto& [L, Sk, d_k, d_v] : sizes) {
    INFO("L " << L << ", S " << Sk << ", d_k " << d_k << ", d_v " << d_v);
    const Matrix<S> q = random_matrix<S>(L, d_k, rng);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    check_case<S>(q, k, v, Mask(), 0.5, kFusedTol<S>);
    check_case<S>(q, k, v, Mask::causal(), 0.5, kFusedTol<S>);
  }
}

// ---- fully masked rows -----------------------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: fully masked rows give zeros, never NaN", "[fused]", float, double) {
  using S = TestType;
  attend::Rng rng(11);
  const Index L = 150, Sk = 140, d = 16;
  const Matrix<S> q = random_matrix<S>(L, d, rng);
  const Matrix<S> k = random_matrix<S>(Sk, d, rng);
  const Matrix<S> v = random_matrix<S>(Sk, d, rng);
  // Rows 3 and 120 blocked everywhere (in two different query blocks); the rest random.
  attend::BoolMatrix blocked = random_bools(L, Sk, 0.2, rng);
  blocked.row(3).setConstant(true);
  blocked.row(120).setConstant(true);
  Matrix<double> bias = Matrix<double>::Zero(L, Sk);
  bias.row(7).setConstant(-inf<double>);
  const Matrix<S> zeros = Matrix<S>::Zero(L, d);
  for (const FusedKernel kernel : kKernels) {
    INFO("kernel " << kernel_name(kernel));
    const Matrix<S> got = fused_head<S>(q, k, v, Mask::deny(blocked), 0.25, kernel);
    REQUIRE(got.allFinite());
    REQUIRE(got.row(3) == zeros.row(0));
    REQUIRE(got.row(120) == zeros.row(0));
    require_close(got, attend::scaled_dot_product_attention(q, k, v, Mask::deny(blocked), 0.25),
                  kFusedTol<S>, kFusedTol<S>);
    const Matrix<S> got_bias = fused_head<S>(q, k, v, Mask::additive(bias), 0.25, kernel);
    REQUIRE(got_bias.row(7) == zeros.row(0));
    REQUIRE(got_bias.allFinite());
    // Every key padded; and causal offsets that put every key in every query's future.
    REQUIRE(fused_head<S>(q, k, v, Mask::key_padding_lengths({0}, Sk), 0.25, kernel) == zeros);
    REQUIRE(fused_head<S>(q, k, v, Mask::causal(-L), 0.25, kernel) == zeros);
    constexpr Index kMaxIndex = std::numeric_limits<Index>::max();
    REQUIRE(fused_head<S>(q, k, v, Mask::causal(-kMaxIndex), 0.25, kernel) == zeros);
    // An offset past every key is no mask at all (and does not overflow).
    require_close(fused_head<S>(q, k, v, Mask::causal(kMaxIndex), 0.25, kernel),
                  attend::scaled_dot_product_attention(q, k, v, Mask(), 0.25), kFusedTol<S>,
                  kFusedTol<S>);
  }
}

// ---- skipped tiles ---------------------------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: tiles the mask blocks entirely are skipped, not computed", "[fused]",
                   float, double) {
  using S = TestType;
  attend::Rng rng(3);
  const Index L = 100, Sk = 300, d = 32;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const Matrix<S> q = random_matrix<S>(L, d, rng);
  Matrix<S> k = random_matrix<S>(Sk, d, rng);
  Matrix<S> v = random_matrix<S>(Sk, d, rng);
  const double scale = 0.2;
  // NaN keys and values where no tile may be computed: 0 * NaN would poison the output.
  // Causal: keys 100.. lie in every query's future (key blocks of 128 start at 0, 128, 256).
  // Key padding to 130 keys: the block 256..299 is all padding (128..255 is partly valid).
  const Matrix<S> k_ok = k, v_ok = v;
  k.bottomRows(Sk - 256).setConstant(nan);
  v.bottomRows(Sk - 256).setConstant(nan);
  const Matrix<S> want_pad =
      attend::scaled_dot_product_attention(q, k_ok.topRows(130), v_ok.topRows(130), Mask(), scale);
  Matrix<S> k_causal = k_ok, v_causal = v_ok;
  k_causal.bottomRows(Sk - L).setConstant(nan);
  v_causal.bottomRows(Sk - L).setConstant(nan);
  const Matrix<S> want_causal = attend::scaled_dot_product_attention(
      q, k_ok.topRows(L), v_ok.topRows(L), Mask::causal(), scale);
  for (const FusedKernel kernel : kKernels) {
    INFO("kernel " << kernel_name(kernel));
    require_close(fused_head<S>(q, k, v, Mask::key_padding_lengths({130}, Sk), scale, kernel),
                  want_pad, kFusedTol<S>, kFusedTol<S>);
    require_close(fused_head<S>(q, k_causal, v_causal, Mask::causal(), scale, kernel), want_causal,
                  kFusedTol<S>, kFusedTol<S>);
  }
}

TEST_CASE("fused.hpp: tile classification", "[fused]") {
  using attend::detail::classify_tile;
  using attend::detail::HeadMaskView;
  using attend::detail::TileKind;
  const Mask causal = Mask::causal();
  const HeadMaskView c(causal, 0, 0);
  // Queries 0..47 against keys 48..175: key 48 > 47 + 0, above the diagonal.
  REQUIRE(classify_tile(c, 0, 48, 48, 128) == TileKind::skip);
  // Queries 48..95 against keys 0..127: partly in the future (keys 49..127 for query 48).
  REQUIRE(classify_tile(c, 48, 48, 0, 128) == TileKind::masked);
  // Queries 144..191 against keys 0..127: all in the past.
  REQUIRE(classify_tile(c, 144, 48, 0, 128) == TileKind::clean);
  const Mask pad = Mask::key_padding_lengths({10, 200}, 300);
  REQUIRE(classify_tile(HeadMaskView(pad, 0, 0), 0, 48, 128, 128) == TileKind::skip);
  REQUIRE(classify_tile(HeadMaskView(pad, 1, 0), 0, 48, 128, 128) == TileKind::masked);
  REQUIRE(classify_tile(HeadMaskView(pad, 1, 0), 0, 48, 0, 128) == TileKind::clean);
  REQUIRE(classify_tile(HeadMaskView(Mask(), 0, 0), 0, 48, 0, 128) == TileKind::clean);
}

// ---- no allocation, workspace size -----------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: the kernel allocates nothing", "[fused]", float, double) {
  using S = TestType;
#ifdef NDEBUG
  WARN("NDEBUG is defined: Eigen's allocation check is an eigen_assert and is off");
#endif
  attend::Rng rng(9);
  const Index L = 200, Sk = 333, d_k = 64, d_v = 48;
  const Matrix<S> q = random_matrix<S>(L, d_k, rng);
  const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
  const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
  const Mask mask = Mask::causal(40) & Mask::key_padding_lengths({300}, Sk) &
                    Mask::additive(random_matrix<double>(L, Sk, rng, 1.0));
  attend::FusedWorkspace<S> ws(d_k, d_v);
  for (const FusedKernel kernel : kKernels) {
    INFO("kernel " << kernel_name(kernel));
    Matrix<S> out(L, d_v);
    Eigen::internal::set_is_malloc_allowed(false);
    attend::detail::attention_head_fused<S>(q, k, v, mask, 0, 0, S(0.125), out, ws, kernel);
    Eigen::internal::set_is_malloc_allowed(true);
    require_close(out, attend::scaled_dot_product_attention(q, k, v, mask, 0.125), kFusedTol<S>,
                  kFusedTol<S>);
  }
}

TEST_CASE("fused.hpp: the workspace is O(block x d), independent of L and S", "[fused]") {
  // 96 x 64 packed queries + 128 x 96 scores + 96 x 64 accumulators + 4 x 96 = 24960
  // floats (97.5 KiB), plus at most 64 bytes of alignment.
  const attend::FusedWorkspace<float> ws(64, 64);
  REQUIRE(ws.bytes() >= 24960 * sizeof(float));
  REQUIRE(ws.bytes() <= 24960 * sizeof(float) + 64);
  REQUIRE(ws.fits(64, 64));
  REQUIRE_FALSE(ws.fits(65, 64));
  // Growing one width keeps room for the other: (128, 8) after (64, 64) fits (128, 64).
  attend::FusedWorkspace<float> grown(64, 64);
  grown.reserve(128, 8);
  REQUIRE(grown.fits(128, 64));
  REQUIRE(grown.bytes() >= attend::FusedWorkspace<float>(128, 64).bytes());
}

// ---- AVX2 exp2 -------------------------------------------------------------------------

TEST_CASE("fused.hpp: AVX2 exp2 of non-positive inputs", "[fused]") {
#if ATTEND_FUSED_AVX2
  if (!attend::detail::cpu_has_avx2_fma()) {
    WARN("this CPU has no AVX2/FMA: only the portable path runs");
    return;
  }
  // -inf, and anything at or below -127, is exactly 0; 2^0 = 1 and 2^-1 = 0.5 exactly.
  std::vector<float> x = {-inf<float>, -1e30f, -200.0f, -127.0f, 0.0f, -1.0f, -0.5f, -126.0f};
  std::vector<float> y(x.size());
  attend::detail::fused_exp2_nonpositive(x.data(), y.data(), 8);
  REQUIRE(y[0] == 0.0f);
  REQUIRE(y[1] == 0.0f);
  REQUIRE(y[2] == 0.0f);
  REQUIRE(y[3] == 0.0f);
  REQUIRE(y[4] == 1.0f);
  REQUIRE(y[5] == 0.5f);
  REQUIRE(y[6] == Approx(std::exp2(-0.5)).epsilon(kExp2RelTol));
  REQUIRE(y[7] == Approx(std::exp2(-126.0)).epsilon(kExp2RelTol));
  // A sweep over [-126, 0], the range where results are normal floats.
  const Index n = 8 * 4096;
  x.resize(n);
  y.resize(n);
  for (Index i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = -126.0f * float(i) / float(n);
  attend::detail::fused_exp2_nonpositive(x.data(), y.data(), n);
  double max_rel = 0.0;
  for (Index i = 0; i < n; ++i) {
    const double want = std::exp2(double(x[static_cast<std::size_t>(i)]));
    max_rel = std::max(max_rel, std::abs(double(y[static_cast<std::size_t>(i)]) - want) / want);
  }
  INFO("max relative error " << max_rel);
  REQUIRE(max_rel <= kExp2RelTol);
#else
  WARN("built without the AVX2 kernels (not x86-64 GCC/Clang, or ATTEND_NO_AVX2)");
#endif
}

// ---- tensors and threads ---------------------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: tensor form equals the reference with broadcast masks", "[fused]",
                   float, double) {
  using S = TestType;
  attend::Rng rng(21);
  const Index B = 2, H = 3, L = 37, Sk = 53, d_k = 16, d_v = 24;
  const auto random_tensor = [&rng](attend::Shape shape) {
    Tensor<S> t(shape);
    attend::fill_uniform(t.flat(), 1.0, rng);
    return t;
  };
  const Tensor<S> q = random_tensor({B, H, L, d_k});
  const Tensor<S> k = random_tensor({B, H, Sk, d_k});
  const Tensor<S> v = random_tensor({B, H, Sk, d_v});
  Tensor<bool> per_batch({B, 1, L, Sk});
  for (Index i = 0; i < per_batch.size(); ++i) per_batch.flat()[i] = rng.uniform() < 0.3;
  Tensor<double> per_head({H, L, Sk});
  attend::fill_uniform(per_head.flat(), 2.0, rng);
  const std::vector<std::pair<std::string, Mask>> masks = {
      {"none", Mask()},
      {"causal", Mask::causal()},
      {"key padding", Mask::key_padding_lengths({20, 53}, Sk)},
      {"deny [B, 1, L, S]", Mask::deny(per_batch)},
      {"additive [H, L, S] & causal", Mask::additive(per_head) & Mask::causal(4)}};
  for (const auto& [name, mask] : masks) {
    INFO("mask " << name);
    const Tensor<S> got = attend::scaled_dot_product_attention_fused(q, k, v, mask);
    const auto want = attend::scaled_dot_product_attention(q, k, v, mask, std::nullopt, false);
    REQUIRE(got.shape() == want.output.shape());
    require_close(got.as_matrix(), want.output.as_matrix(), kFusedTol<S>, kFusedTol<S>);
    const Tensor<S> portable = attend::detail::scaled_dot_product_attention_fused(
        q, k, v, mask, std::nullopt, FusedKernel::portable);
    require_close(portable.as_matrix(), want.output.as_matrix(), kFusedTol<S>, kFusedTol<S>);
  }
  // Rank 3 ([N, L, d], N in the H slot) and rank 2.
  const Tensor<S> q3 = q.reshaped({B * H, L, d_k}), k3 = k.reshaped({B * H, Sk, d_k});
  const Tensor<S> v3 = v.reshaped({B * H, Sk, d_v});
  require_close(attend::scaled_dot_product_attention_fused(q3, k3, v3, Mask::causal()).as_matrix(),
                attend::scaled_dot_product_attention(q3, k3, v3, Mask::causal()).output.as_matrix(),
                kFusedTol<S>, kFusedTol<S>);
  const Tensor<S> q2 = Tensor<S>::from_matrix(q.matrix(0, 0));
  const Tensor<S> k2 = Tensor<S>::from_matrix(k.matrix(0, 0));
  const Tensor<S> v2 = Tensor<S>::from_matrix(v.matrix(0, 0));
  require_close(attend::scaled_dot_product_attention_fused(q2, k2, v2).as_matrix(),
                attend::scaled_dot_product_attention(q2, k2, v2).output.as_matrix(), kFusedTol<S>,
                kFusedTol<S>);
}

TEMPLATE_TEST_CASE("fused.hpp: results do not depend on the work split or thread count", "[fused]",
                   float, double) {
  using S = TestType;
  attend::Rng rng(8);
  const Index B = 2, H = 2, L = 150, Sk = 170, d = 32;
  Tensor<S> q({B, H, L, d}), k({B, H, Sk, d}), v({B, H, Sk, d});
  attend::fill_uniform(q.flat(), 1.0, rng);
  attend::fill_uniform(k.flat(), 1.0, rng);
  attend::fill_uniform(v.flat(), 1.0, rng);
  const Mask mask = Mask::causal(20) & Mask::key_padding_lengths({170, 101}, Sk);
  const Tensor<S> batched = attend::scaled_dot_product_attention_fused(q, k, v, mask);
  // Tensor form (split into (batch, head, query block) items) vs one head at a time:
  // the same arithmetic, so the same bits.
  attend::FusedWorkspace<S> ws(d, d);
  for (Index b = 0; b < B; ++b) {
    for (Index h = 0; h < H; ++h) {
      Matrix<S> out(L, d);
      attend::detail::attention_head_fused<S>(q.matrix(b, h), k.matrix(b, h), v.matrix(b, h), mask,
                                              b, h, S(1 / std::sqrt(double(d))), out, ws);
      REQUIRE(out == Matrix<S>(batched.matrix(b, h)));
    }
  }
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Tensor<S> one = attend::scaled_dot_product_attention_fused(q, k, v, mask);
  omp_set_num_threads(2);
  const Tensor<S> two = attend::scaled_dot_product_attention_fused(q, k, v, mask);
  omp_set_num_threads(saved);
  REQUIRE(std::memcmp(one.data(), two.data(), sizeof(S) * std::size_t(one.size())) == 0);
#endif
}

// ---- errors ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: argument errors name the argument and shapes", "[fused]", float,
                   double) {
  using S = TestType;
  const Matrix<S> q = Matrix<S>::Ones(5, 16);
  const Matrix<S> k = Matrix<S>::Ones(7, 16);
  const Matrix<S> v = Matrix<S>::Ones(7, 8);
  using attend::scaled_dot_product_attention_fused;
  using attend::shape_error;
  using attend::value_error;
  const Matrix<S> k_bad = Matrix<S>::Ones(7, 12);
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(q, k_bad, v), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(q, k_bad, v),
                      "scaled_dot_product_attention_fused: key is [7, 12], expected [S, 16] "
                      "(d_k of query)");
  const Matrix<S> v_bad = Matrix<S>::Ones(6, 8);
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(q, k, v_bad), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(q, k, v_bad),
                      "scaled_dot_product_attention_fused: value is [6, 8], expected [7, d_v] "
                      "(S of key)");
  const Mask small = Mask::deny(attend::BoolMatrix::Zero(3, 4));
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(q, k, v, small), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(q, k, v, small),
                      "scaled_dot_product_attention_fused: mask is [1, 1, 3, 4], expected "
                      "broadcastable to [1, 1, 5, 7]");
  Matrix<S> q_nan = q;
  q_nan(1, 2) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(q_nan, k, v), value_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(q_nan, k, v),
                      "scaled_dot_product_attention_fused: query has a non-finite value (nan) "
                      "at [1, 2]");
  const Matrix<S> q0 = Matrix<S>::Ones(5, 0), k0 = Matrix<S>::Ones(7, 0);
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(q0, k0, v), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(q0, k0, v),
                      "scaled_dot_product_attention_fused: query has d_k = 0, so the default "
                      "scale 1/sqrt(d_k) is undefined; pass a scale");
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(q, k, v, Mask(), inf<double>), value_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(q, k, v, Mask(), inf<double>),
                      "scaled_dot_product_attention_fused: scale is inf, expected a finite value");

  const Tensor<S> tq({2, 3, 5, 16}), tk({2, 3, 7, 16}), tv({2, 3, 7, 8});
  const Tensor<S> t1({5});
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(t1, tk, tv), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(t1, tk, tv),
                      "scaled_dot_product_attention_fused: query is [5], expected rank >= 2 "
                      "([..., L, d_k])");
  const Tensor<S> tk_bad({2, 3, 7, 12});
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(tq, tk_bad, tv), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(tq, tk_bad, tv),
                      "scaled_dot_product_attention_fused: key is [2, 3, 7, 12], expected "
                      "[2, 3, S, 16]");
  const Tensor<S> tv_bad({2, 3, 6, 8});
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(tq, tk, tv_bad), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(tq, tk, tv_bad),
                      "scaled_dot_product_attention_fused: value is [2, 3, 6, 8], expected "
                      "[2, 3, 7, d_v]");
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused(tq, tk, tv, small), shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused(tq, tk, tv, small),
                      "scaled_dot_product_attention_fused: attn_mask is [1, 1, 3, 4], expected "
                      "broadcastable to [2, 3, 5, 7]");
}

// ---- backward (fused_backward.hpp) -------------------------------------------------------

namespace {

/// Fused backward vs reference backward on O(1) inputs: both sum 5 products in different
/// orders and the fused one recomputes P = exp(s - lse) (a few ulps off the reference's
/// softmax, whose exp is Eigen's, while the forward's lse may come from the AVX2 exp2):
/// observed 5.2e-7 in float and 1.2e-15 in double (relative to 1 + |want|) over 40 random
/// sizes and masks; 2e-5 and 1e-12 leave room for other compilers and SIMD widths.
template <typename S>
constexpr double kBackwardTol = std::is_same_v<S, float> ? 2e-5 : 1e-12;

/// Logits near 1e3: the lse and the recomputed logit each carry a few ulps of 1e3 (6e-5
/// in float), so P is off by up to ~3e-4 relative, and dq, dk, dv with it: 4e-4 observed
/// here (up to 1.1e-3 on random sizes with d_k up to 80, i.e. logits near 2e3, where an
/// ulp is twice as large); 1e-3 relative plus 1e-3 absolute in float, 1e-10 in double
/// (8e-13 observed).
template <typename S>
constexpr double kLargeLogitBackwardTol = std::is_same_v<S, float> ? 1e-3 : 1e-10;

/// The log-sum-exp against a direct computation in double: the forward's sums run in S.
template <typename S>
constexpr double kLseTol = std::is_same_v<S, float> ? 1e-5 : 1e-13;

/// Forward with the lse through the detail entry (the tile code chosen by `kernel`).
template <typename S>
Matrix<S> fused_head_lse(const Matrix<S>& q, const Matrix<S>& k, const Matrix<S>& v,
                         const Mask& mask, double scale, FusedKernel kernel,
                         attend::Vector<S>& lse) {
  Matrix<S> out(q.rows(), v.cols());
  lse.resize(q.rows());
  attend::FusedWorkspace<S> ws(q.cols(), v.cols());
  attend::detail::attention_head_fused<S>(q, k, v, mask, 0, 0, static_cast<S>(scale), out, ws,
                                          kernel, lse.data());
  return out;
}

/// The reference backward (scaled_dot_product.hpp) of one case.
template <typename S>
attend::AttentionGrads<S> reference_backward(const Matrix<S>& q, const Matrix<S>& k,
                                             const Matrix<S>& v, const Matrix<S>& d_out,
                                             const Mask& mask, double scale) {
  attend::AttentionCache<S> cache;
  attend::scaled_dot_product_attention_forward(q, k, v, mask, scale, &cache);
  return attend::scaled_dot_product_attention_backward(q, k, v, cache, d_out);
}

template <typename S>
void require_grads_close(const attend::AttentionGrads<S>& got,
                         const attend::AttentionGrads<S>& want, double tol) {
  {
    INFO("dq");
    require_close(got.dq, want.dq, tol, tol);
  }
  {
    INFO("dk");
    require_close(got.dk, want.dk, tol, tol);
  }
  {
    INFO("dv");
    require_close(got.dv, want.dv, tol, tol);
  }
}

/// Fused backward (after either forward tile code) equals the reference backward.
template <typename S>
void check_backward_case(const Matrix<S>& q, const Matrix<S>& k, const Matrix<S>& v,
                         const Matrix<S>& d_out, const Mask& mask, double scale, double tol) {
  const attend::AttentionGrads<S> want = reference_backward<S>(q, k, v, d_out, mask, scale);
  for (const FusedKernel kernel : kKernels) {
    INFO("forward kernel " << kernel_name(kernel));
    attend::Vector<S> lse;
    const Matrix<S> out = fused_head_lse<S>(q, k, v, mask, scale, kernel, lse);
    require_grads_close(
        attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, mask, scale),
        want, tol);
  }
}

/// log sum_j exp(scale q_i . k_j + bias_ij) over unblocked keys, in double (-inf if none).
template <typename S>
Matrix<double> reference_lse(const Matrix<S>& q, const Matrix<S>& k, const Mask& mask,
                             double scale) {
  Matrix<double> z = q.template cast<double>() * k.template cast<double>().transpose() * scale;
  mask.apply<double>(0, 0, 0, 0, z);
  Matrix<double> lse(q.rows(), 1);
  for (Index i = 0; i < z.rows(); ++i) {
    const double m = z.row(i).maxCoeff();
    lse(i, 0) = m == -inf<double> ? -inf<double> : m + std::log((z.row(i).array() - m).exp().sum());
  }
  return lse;
}

}  // namespace

TEMPLATE_TEST_CASE("fused_backward.hpp: one query, two keys, by hand", "[fused][grad]", float,
                   double) {
  using S = TestType;
  // As the forward's hand case: q = [1, 0], k = [[1, 0], [0, 1]], v = [[1, 2], [3, 4]],
  // scale 1: P = [p, 1 - p], p = e / (e + 1) = 0.7310585786, out = [1.5378828427, ...].
  // d_out = [1, 0]:
  //   dv = P^T d_out = [[p, 0], [1 - p, 0]] = [[0.7310585786, 0], [0.2689414214, 0]]
  //   dP = d_out v^T = [1, 3]; D = d_out . out = p + 3 (1 - p) = 1.5378828427
  //   dS = P * (dP - D) = [-2 p (1 - p), 2 p (1 - p)] = [-0.3932238665, 0.3932238665]
  //        (p (1 - p) = e / (e + 1)^2 = 0.1966119332)
  //   dq = dS k = [-0.3932238665, 0.3932238665]; dk = dS^T q = [[-0.3932238665, 0],
  //   [0.3932238665, 0]]
  // lse = log(e + 1) = 1.3132616875.
  Matrix<S> q(1, 2), k(2, 2), v(2, 2), d_out(1, 2), dq(1, 2), dk(2, 2), dv(2, 2);
  q << 1, 0;
  k << 1, 0, 0, 1;
  v << 1, 2, 3, 4;
  d_out << 1, 0;
  dq << S(-0.3932238665), S(0.3932238665);
  dk << S(-0.3932238665), 0, S(0.3932238665), 0;
  dv << S(0.7310585786), 0, S(0.2689414214), 0;
  for (const FusedKernel kernel : kKernels) {
    INFO("forward kernel " << kernel_name(kernel));
    attend::Vector<S> lse;
    const Matrix<S> out = fused_head_lse<S>(q, k, v, Mask(), 1.0, kernel, lse);
    REQUIRE(lse.size() == 1);
    REQUIRE(double(lse(0)) == Approx(1.3132616875).margin(kHandTol<S>));
    const auto g =
        attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, Mask(), 1.0);
    require_close(g.dq, dq, kHandTol<S>);
    require_close(g.dk, dk, kHandTol<S>);
    require_close(g.dv, dv, kHandTol<S>);
  }
}

TEMPLATE_TEST_CASE("fused.hpp: the log-sum-exp output matches a direct computation",
                   "[fused][grad]", float, double) {
  using S = TestType;
  attend::Rng rng(31);
  const std::vector<std::array<Index, 3>> sizes = {{1, 1, 8}, {33, 70, 64}, {97, 129, 16}};
  for (const auto& [L, Sk, d] : sizes) {
    const Matrix<S> q = random_matrix<S>(L, d, rng);
    const Matrix<S> k = random_matrix<S>(Sk, d, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d, rng);
    for (const auto& [name, mask] : all_masks(L, Sk, rng)) {
      INFO("L " << L << ", S " << Sk << ", mask " << name);
      const Matrix<double> want = reference_lse<S>(q, k, mask, 0.3);
      for (const FusedKernel kernel : kKernels) {
        INFO("kernel " << kernel_name(kernel));
        attend::Vector<S> lse;
        const Matrix<S> out = fused_head_lse<S>(q, k, v, mask, 0.3, kernel, lse);
        require_close(lse.template cast<double>(), want, kLseTol<S>, kLseTol<S>);
        // Asking for the lse changes nothing in the output.
        REQUIRE(out == fused_head<S>(q, k, v, mask, 0.3, kernel));
      }
      // Public forms: matrix and tensor.
      attend::Vector<S> lse;
      attend::scaled_dot_product_attention_fused(q, k, v, mask, 0.3, &lse);
      require_close(lse.template cast<double>(), want, kLseTol<S>, kLseTol<S>);
      Tensor<S> lse_t;
      attend::scaled_dot_product_attention_fused(Tensor<S>::from_matrix(q),
                                                 Tensor<S>::from_matrix(k),
                                                 Tensor<S>::from_matrix(v), mask, 0.3, &lse_t);
      REQUIRE(lse_t.shape() == attend::Shape{L});
      require_close(attend::ConstMatrixMap<S>(lse_t.data(), L, 1).template cast<double>(), want,
                    kLseTol<S>, kLseTol<S>);
    }
  }
}

TEMPLATE_TEST_CASE("fused_backward.hpp: equals the reference backward for every mask and odd sizes",
                   "[fused][grad]", float, double) {
  using S = TestType;
  attend::Rng rng(20240601);
  // [L, S, d_k, d_v]: single rows and keys, 33, sizes around the 96-query and 128-key
  // blocks, d_v != d_k, d_v not a multiple of the packet size, L != S both ways.
  const std::vector<std::array<Index, 4>> sizes = {
      {1, 1, 8, 8},       {1, 1, 64, 64},   {33, 33, 64, 64}, {33, 70, 64, 40},  {97, 129, 64, 64},
      {100, 300, 16, 17}, {200, 257, 5, 3}, {1, 200, 32, 32}, {130, 7, 24, 130}, {61, 61, 3, 9}};
  for (const auto& [L, Sk, d_k, d_v] : sizes) {
    const Matrix<S> q = random_matrix<S>(L, d_k, rng);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    const Matrix<S> d_out = random_matrix<S>(L, d_v, rng);
    for (const auto& [name, mask] : all_masks(L, Sk, rng)) {
      INFO("L " << L << ", S " << Sk << ", d_k " << d_k << ", d_v " << d_v << ", mask " << name);
      check_backward_case<S>(q, k, v, d_out, mask, 1.0 / std::sqrt(double(d_k)), kBackwardTol<S>);
    }
    INFO("L " << L << ", S " << Sk << ", scale 0.3, default scale");
    check_backward_case<S>(q, k, v, d_out, Mask::causal(1), 0.3, kBackwardTol<S>);
    // The default scale (nullopt) is 1/sqrt(d_k) in both directions.
    attend::Vector<S> lse;
    const Matrix<S> out = attend::scaled_dot_product_attention_fused(q, k, v, Mask(), {}, &lse);
    require_grads_close(
        attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out),
        reference_backward<S>(q, k, v, d_out, Mask(), 1.0 / std::sqrt(double(d_k))),
        kBackwardTol<S>);
  }
}

TEMPLATE_TEST_CASE("fused_backward.hpp: equals the reference backward on random sizes",
                   "[fused][grad][property]", float, double) {
  using S = TestType;
  attend::Rng rng(78);
  for (int trial = 0; trial < 12; ++trial) {
    const Index L = random_index(rng, 1, 150), Sk = random_index(rng, 1, 300);
    const Index d_k = random_index(rng, 1, 80), d_v = random_index(rng, 1, 80);
    const Matrix<S> q = random_matrix<S>(L, d_k, rng, 2.0);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    const Matrix<S> d_out = random_matrix<S>(L, d_v, rng);
    const auto masks = all_masks(L, Sk, rng);
    const auto& [name, mask] = masks[static_cast<std::size_t>(trial) % masks.size()];
    INFO("L " << L << ", S " << Sk << ", d_k " << d_k << ", d_v " << d_v << ", mask " << name);
    check_backward_case<S>(q, k, v, d_out, mask, 1.0 / std::sqrt(double(d_k)), kBackwardTol<S>);
  }
}

TEMPLATE_TEST_CASE("fused_backward.hpp: logits near 1e3 stay finite and match", "[fused][grad]",
                   float, double) {
  using S = TestType;
  attend::Rng rng(6);
  const Index L = 70, Sk = 150, d = 64;
  // q in [-100, 100], k in [-1, 1], scale 1: logits of a few hundred, the largest near 1e3.
  const Matrix<S> q = random_matrix<S>(L, d, rng, 100.0);
  const Matrix<S> k = random_matrix<S>(Sk, d, rng);
  const Matrix<S> v = random_matrix<S>(Sk, d, rng);
  const Matrix<S> d_out = random_matrix<S>(L, d, rng);
  const Matrix<S> scores = q * k.transpose();
  REQUIRE(scores.cwiseAbs().maxCoeff() > S(800));
  for (const Mask& mask : {Mask(), Mask::causal()}) {
    const attend::AttentionGrads<S> want = reference_backward<S>(q, k, v, d_out, mask, 1.0);
    for (const FusedKernel kernel : kKernels) {
      INFO("forward kernel " << kernel_name(kernel));
      attend::Vector<S> lse;
      const Matrix<S> out = fused_head_lse<S>(q, k, v, mask, 1.0, kernel, lse);
      const auto got =
          attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, mask, 1.0);
      REQUIRE(got.dq.allFinite());
      REQUIRE(got.dk.allFinite());
      REQUIRE(got.dv.allFinite());
      require_grads_close(got, want, kLargeLogitBackwardTol<S>);
    }
  }
}

TEMPLATE_TEST_CASE("fused_backward.hpp: empty extents give zero gradients", "[fused][grad]", float,
                   double) {
  using S = TestType;
  attend::Rng rng(12);
  // [L, S, d_k, d_v]: no queries (dk = dv = 0), no keys (dq = 0), d_k = 0, d_v = 0.
  const std::vector<std::array<Index, 4>> sizes = {
      {0, 5, 4, 3}, {4, 0, 4, 3}, {4, 5, 0, 3}, {4, 5, 4, 0}, {0, 0, 0, 0}};
  for (const auto& [L, Sk, d_k, d_v] : sizes) {
    INFO("L " << L << ", S " << Sk << ", d_k " << d_k << ", d_v " << d_v);
    const Matrix<S> q = random_matrix<S>(L, d_k, rng);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    const Matrix<S> d_out = random_matrix<S>(L, d_v, rng);
    check_backward_case<S>(q, k, v, d_out, Mask(), 0.5, kBackwardTol<S>);
    check_backward_case<S>(q, k, v, d_out, Mask::causal(), 0.5, kBackwardTol<S>);
  }
}

TEMPLATE_TEST_CASE("fused_backward.hpp: fully masked rows give zero gradients, never NaN",
                   "[fused][grad]", float, double) {
  using S = TestType;
  attend::Rng rng(13);
  const Index L = 150, Sk = 140, d = 16;
  const Matrix<S> q = random_matrix<S>(L, d, rng);
  const Matrix<S> k = random_matrix<S>(Sk, d, rng);
  const Matrix<S> v = random_matrix<S>(Sk, d, rng);
  const Matrix<S> d_out = random_matrix<S>(L, d, rng);
  // Rows 3 and 120 blocked everywhere (two query blocks), row 7 by an all -inf bias.
  attend::BoolMatrix blocked = random_bools(L, Sk, 0.2, rng);
  blocked.row(3).setConstant(true);
  blocked.row(120).setConstant(true);
  Matrix<double> bias = random_matrix<double>(L, Sk, rng, 1.0);
  bias.row(7).setConstant(-inf<double>);
  const Matrix<S> zeros_q = Matrix<S>::Zero(L, d), zeros_k = Matrix<S>::Zero(Sk, d);
  for (const Mask& mask : {Mask::deny(blocked), Mask::additive(bias)}) {
    const attend::AttentionGrads<S> want = reference_backward<S>(q, k, v, d_out, mask, 0.25);
    for (const FusedKernel kernel : kKernels) {
      INFO("forward kernel " << kernel_name(kernel));
      attend::Vector<S> lse;
      const Matrix<S> out = fused_head_lse<S>(q, k, v, mask, 0.25, kernel, lse);
      const auto got =
          attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, mask, 0.25);
      REQUIRE(got.dq.allFinite());
      REQUIRE(got.dk.allFinite());
      REQUIRE(got.dv.allFinite());
      for (const Index row : {Index(3), Index(7), Index(120)}) {
        if (mask.bias() && row != 7) continue;
        if (!mask.bias() && row == 7) continue;
        INFO("row " << row);
        REQUIRE(lse(row) == -inf<S>);
        REQUIRE(got.dq.row(row) == zeros_q.row(0));
      }
      require_grads_close(got, want, kBackwardTol<S>);
    }
  }
  // Every key blocked: all three gradients are exactly zero.
  for (const Mask& mask : {Mask::key_padding_lengths({0}, Sk), Mask::causal(-L)}) {
    attend::Vector<S> lse;
    const Matrix<S> out = fused_head_lse<S>(q, k, v, mask, 0.25, FusedKernel::automatic, lse);
    const auto got =
        attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, mask, 0.25);
    REQUIRE(got.dq == zeros_q);
    REQUIRE(got.dk == zeros_k);
    REQUIRE(got.dv == zeros_k);
  }
}

TEMPLATE_TEST_CASE("fused_backward.hpp: tiles the mask blocks entirely are skipped",
                   "[fused][grad]", float, double) {
  using S = TestType;
  attend::Rng rng(14);
  const Index L = 100, Sk = 300, d = 32;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const double scale = 0.2;
  const Matrix<S> q = random_matrix<S>(L, d, rng);
  const Matrix<S> k_ok = random_matrix<S>(Sk, d, rng);
  const Matrix<S> v_ok = random_matrix<S>(Sk, d, rng);
  const Matrix<S> d_out = random_matrix<S>(L, d, rng);
  // The backward reads no key or value of a skipped tile: NaN there would poison dq, and
  // the dk, dv rows of those keys must come out exactly zero. The forward runs on clean
  // inputs (its own skipping is tested above); the backward gets the poisoned ones.
  // Key padding to 130: the key block 256..299 is all padding. Causal: keys 100.. lie in
  // every query's future.
  struct Case {
    const char* name;
    Mask mask;
    Index valid;  // keys 0..valid-1 may be seen
    Index poisoned_from;
  };
  const std::vector<Case> cases = {
      {"key padding 130", Mask::key_padding_lengths({130}, Sk), 130, 256},
      {"causal", Mask::causal(), L, L}};
  for (const Case& c : cases) {
    INFO(c.name);
    Matrix<S> k = k_ok, v = v_ok;
    k.bottomRows(Sk - c.poisoned_from).setConstant(nan);
    v.bottomRows(Sk - c.poisoned_from).setConstant(nan);
    attend::Vector<S> lse;
    const Matrix<S> out =
        fused_head_lse<S>(q, k_ok, v_ok, c.mask, scale, FusedKernel::portable, lse);
    // The detail kernel: the public door would reject the NaN keys.
    attend::AttentionGrads<S> got{Matrix<S>(L, d), Matrix<S>(Sk, d), Matrix<S>(Sk, d)};
    attend::FusedBackwardWorkspace<S> ws(d, d);
    attend::detail::attention_head_fused_backward<S>(q, k, v, out, lse.data(), d_out,
                                                     attend::detail::HeadMaskView(c.mask, 0, 0),
                                                     S(scale), got.dq, got.dk, got.dv, ws);
    // The reference on the visible keys alone (the masks agree on them).
    const Mask visible = c.mask.causal_offset() ? Mask::causal() : Mask();
    const auto want = reference_backward<S>(q, k_ok.topRows(c.valid), v_ok.topRows(c.valid), d_out,
                                            visible, scale);
    require_close(got.dq, want.dq, kBackwardTol<S>, kBackwardTol<S>);
    require_close(got.dk.topRows(c.valid), want.dk, kBackwardTol<S>, kBackwardTol<S>);
    require_close(got.dv.topRows(c.valid), want.dv, kBackwardTol<S>, kBackwardTol<S>);
    REQUIRE(got.dk.bottomRows(Sk - c.valid) == Matrix<S>::Zero(Sk - c.valid, d));
    REQUIRE(got.dv.bottomRows(Sk - c.valid) == Matrix<S>::Zero(Sk - c.valid, d));
  }
}

TEST_CASE("fused_backward.hpp: gradient check in double on a small masked case", "[fused][grad]") {
  attend::Rng rng(15);
  const Index L = 6, Sk = 9, d_k = 5, d_v = 3;
  Matrix<double> q = random_matrix<double>(L, d_k, rng);
  Matrix<double> k = random_matrix<double>(Sk, d_k, rng);
  Matrix<double> v = random_matrix<double>(Sk, d_v, rng);
  const Matrix<double> upstream = random_matrix<double>(L, d_v, rng);
  // Causal with offset 2, one padded key, an additive bias and one fully masked row (row 4,
  // denied everywhere): every mask kind at once.
  attend::BoolMatrix denied = random_bools(L, Sk, 0.2, rng);
  denied.row(4).setConstant(true);
  const Mask mask = Mask::causal(2) & Mask::key_padding_lengths({Sk - 1}, Sk) &
                    Mask::additive(random_matrix<double>(L, Sk, rng, 1.0)) & Mask::deny(denied);
  const double scale = 0.7;
  // loss = sum(out * upstream), out by the fused forward: d_out = upstream.
  const auto loss = [&] {
    return attend::scaled_dot_product_attention_fused(q, k, v, mask, scale)
        .cwiseProduct(upstream)
        .sum();
  };
  attend::Vector<double> lse;
  const Matrix<double> out = attend::scaled_dot_product_attention_fused(q, k, v, mask, scale, &lse);
  const auto g =
      attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, upstream, mask, scale);
  REQUIRE(g.dq.row(4).isZero(0.0));
  const attend::GradCheckResult rq = attend::gradcheck(q, g.dq, loss);
  INFO("dq: " << rq.describe());
  REQUIRE(rq.error < kGradTol);
  const attend::GradCheckResult rk = attend::gradcheck(k, g.dk, loss);
  INFO("dk: " << rk.describe());
  REQUIRE(rk.error < kGradTol);
  const attend::GradCheckResult rv = attend::gradcheck(v, g.dv, loss);
  INFO("dv: " << rv.describe());
  REQUIRE(rv.error < kGradTol);
}

TEMPLATE_TEST_CASE("fused_backward.hpp: the kernel allocates nothing", "[fused][grad]", float,
                   double) {
  using S = TestType;
#ifdef NDEBUG
  WARN("NDEBUG is defined: Eigen's allocation check is an eigen_assert and is off");
#endif
  attend::Rng rng(16);
  const Index L = 200, Sk = 333, d_k = 64, d_v = 48;
  const Matrix<S> q = random_matrix<S>(L, d_k, rng);
  const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
  const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
  const Matrix<S> d_out = random_matrix<S>(L, d_v, rng);
  const Mask mask = Mask::causal(40) & Mask::key_padding_lengths({300}, Sk) &
                    Mask::additive(random_matrix<double>(L, Sk, rng, 1.0));
  attend::FusedWorkspace<S> ws(d_k, d_v);
  attend::FusedBackwardWorkspace<S> bws(d_k, d_v);
  Matrix<S> out(L, d_v), dq(L, d_k), dk(Sk, d_k), dv(Sk, d_v);
  attend::Vector<S> lse(L);
  const attend::detail::HeadMaskView view(mask, 0, 0);
  Eigen::internal::set_is_malloc_allowed(false);
  attend::detail::attention_head_fused<S>(q, k, v, mask, 0, 0, S(0.125), out, ws,
                                          FusedKernel::automatic, lse.data());
  attend::detail::attention_head_fused_backward<S>(q, k, v, out, lse.data(), d_out, view, S(0.125),
                                                   dq, dk, dv, bws);
  Eigen::internal::set_is_malloc_allowed(true);
  require_grads_close(attend::AttentionGrads<S>{dq, dk, dv},
                      reference_backward<S>(q, k, v, d_out, mask, 0.125), kBackwardTol<S>);
}

TEST_CASE("fused_backward.hpp: the workspace is O(block x d + block^2), independent of L and S",
          "[fused][grad]") {
  // 96 x 64 packed queries + 96 x 64 packed d_out + 2 x (128 x 96) tiles + 96 x 64 dq rows
  // + 2 x 96 (D and the renormalisation) = 6144 + 6144 + 24576 + 6144 + 192 = 43200
  // floats (169 KiB), plus at most 64 bytes of alignment.
  const attend::FusedBackwardWorkspace<float> ws(64, 64);
  REQUIRE(ws.bytes() >= 43200 * sizeof(float));
  REQUIRE(ws.bytes() <= 43200 * sizeof(float) + 64);
  REQUIRE(ws.fits(64, 64));
  REQUIRE_FALSE(ws.fits(65, 64));
  REQUIRE_FALSE(attend::FusedBackwardWorkspace<float>().fits(0, 0));
  attend::FusedBackwardWorkspace<float> grown(64, 64);
  grown.reserve(128, 8);
  REQUIRE(grown.fits(128, 64));
}

TEMPLATE_TEST_CASE(
    "fused_backward.hpp: tensor form equals the reference per head, any thread count",
    "[fused][grad]", float, double) {
  using S = TestType;
  attend::Rng rng(17);
  const Index B = 2, H = 3, L = 101, Sk = 140, d_k = 16, d_v = 24;
  const auto random_tensor = [&rng](attend::Shape shape) {
    Tensor<S> t(shape);
    attend::fill_uniform(t.flat(), 1.0, rng);
    return t;
  };
  const Tensor<S> q = random_tensor({B, H, L, d_k});
  const Tensor<S> k = random_tensor({B, H, Sk, d_k});
  const Tensor<S> v = random_tensor({B, H, Sk, d_v});
  const Tensor<S> d_out = random_tensor({B, H, L, d_v});
  Tensor<bool> per_batch({B, 1, L, Sk});
  for (Index i = 0; i < per_batch.size(); ++i) per_batch.flat()[i] = rng.uniform() < 0.3;
  Tensor<double> per_head({H, L, Sk});
  attend::fill_uniform(per_head.flat(), 2.0, rng);
  const std::vector<std::pair<std::string, Mask>> masks = {
      {"none", Mask()},
      {"key padding", Mask::key_padding_lengths({20, 140}, Sk)},
      {"deny [B, 1, L, S]", Mask::deny(per_batch)},
      {"additive [H, L, S] & causal", Mask::additive(per_head) & Mask::causal(4)}};
  const double scale = 1.0 / std::sqrt(double(d_k));
  for (const auto& [name, mask] : masks) {
    INFO("mask " << name);
    Tensor<S> lse;
    const Tensor<S> out =
        attend::scaled_dot_product_attention_fused(q, k, v, mask, std::nullopt, &lse);
    REQUIRE(lse.shape() == attend::Shape{B, H, L});
    const attend::AttentionTensorGrads<S> got =
        attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, mask);
    REQUIRE(got.dq.shape() == q.shape());
    REQUIRE(got.dk.shape() == k.shape());
    REQUIRE(got.dv.shape() == v.shape());
    const auto ref = attend::scaled_dot_product_attention(q, k, v, mask);  // with weights
    attend::FusedBackwardWorkspace<S> ws(d_k, d_v);
    for (Index b = 0; b < B; ++b) {
      for (Index h = 0; h < H; ++h) {
        INFO("b " << b << ", h " << h);
        attend::AttentionCache<S> cache;
        cache.weights = ref.attn_weights.matrix(b, h);
        cache.scale = scale;
        const Matrix<S> qm = q.matrix(b, h), km = k.matrix(b, h), vm = v.matrix(b, h);
        const Matrix<S> dom = d_out.matrix(b, h);
        require_grads_close(attend::AttentionGrads<S>{got.dq.matrix(b, h), got.dk.matrix(b, h),
                                                      got.dv.matrix(b, h)},
                            attend::scaled_dot_product_attention_backward(qm, km, vm, cache, dom),
                            kBackwardTol<S>);
        // One head at a time through the detail kernel: the same bits.
        Matrix<S> dq(L, d_k), dk(Sk, d_k), dv(Sk, d_v);
        attend::detail::attention_head_fused_backward<S>(
            qm, km, vm, Matrix<S>(out.matrix(b, h)), lse.data() + (b * H + h) * L, dom,
            attend::detail::HeadMaskView(mask, b, h), S(scale), dq, dk, dv, ws);
        REQUIRE(dq == Matrix<S>(got.dq.matrix(b, h)));
        REQUIRE(dk == Matrix<S>(got.dk.matrix(b, h)));
        REQUIRE(dv == Matrix<S>(got.dv.matrix(b, h)));
      }
    }
#if defined(_OPENMP)
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const auto one =
        attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, mask);
    omp_set_num_threads(2);
    const auto two =
        attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, mask);
    omp_set_num_threads(saved);
    const auto same = [](const Tensor<S>& a, const Tensor<S>& b) {
      return std::memcmp(a.data(), b.data(), sizeof(S) * std::size_t(a.size())) == 0;
    };
    REQUIRE(same(one.dq, two.dq));
    REQUIRE(same(one.dk, two.dk));
    REQUIRE(same(one.dv, two.dv));
#endif
  }
  // Rank 3 ([N, L, d], N in the H slot) equals rank 4 reshaped.
  Tensor<S> lse4;
  const Tensor<S> out4 =
      attend::scaled_dot_product_attention_fused(q, k, v, Mask::causal(), std::nullopt, &lse4);
  const auto g4 = attend::scaled_dot_product_attention_fused_backward(q, k, v, out4, lse4, d_out,
                                                                      Mask::causal());
  const auto g3 = attend::scaled_dot_product_attention_fused_backward(
      q.reshaped({B * H, L, d_k}), k.reshaped({B * H, Sk, d_k}), v.reshaped({B * H, Sk, d_v}),
      out4.reshaped({B * H, L, d_v}), lse4.reshaped({B * H, L}), d_out.reshaped({B * H, L, d_v}),
      Mask::causal());
  REQUIRE(g3.dq.as_matrix() == g4.dq.as_matrix());
  REQUIRE(g3.dk.as_matrix() == g4.dk.as_matrix());
  REQUIRE(g3.dv.as_matrix() == g4.dv.as_matrix());
}

TEMPLATE_TEST_CASE("fused_backward.hpp: argument errors name the argument and shapes",
                   "[fused][grad]", float, double) {
  using S = TestType;
  using attend::scaled_dot_product_attention_fused_backward;
  using attend::shape_error;
  using attend::value_error;
  const Matrix<S> q = Matrix<S>::Ones(5, 16), k = Matrix<S>::Ones(7, 16);
  const Matrix<S> v = Matrix<S>::Ones(7, 8), out = Matrix<S>::Ones(5, 8);
  const Matrix<S> d_out = Matrix<S>::Ones(5, 8);
  const attend::Vector<S> lse = attend::Vector<S>::Zero(5);
  const Matrix<S> k_bad = Matrix<S>::Ones(7, 12);
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(q, k_bad, v, out, lse, d_out),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(q, k_bad, v, out, lse, d_out),
                      "scaled_dot_product_attention_fused_backward: key is [7, 12], expected "
                      "[S, 16] (d_k of query)");
  const Matrix<S> out_bad = Matrix<S>::Ones(4, 8);
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(q, k, v, out_bad, lse, d_out),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(q, k, v, out_bad, lse, d_out),
                      "scaled_dot_product_attention_fused_backward: out is [4, 8], expected "
                      "[5, 8] ([L, d_v])");
  const attend::Vector<S> lse_bad = attend::Vector<S>::Zero(3);
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(q, k, v, out, lse_bad, d_out),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(q, k, v, out, lse_bad, d_out),
                      "scaled_dot_product_attention_fused_backward: lse is [3], expected [5] "
                      "(L of query)");
  const Matrix<S> d_out_bad = Matrix<S>::Ones(5, 7);
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out_bad),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out_bad),
                      "scaled_dot_product_attention_fused_backward: d_out is [5, 7], expected "
                      "[5, 8] ([L, d_v])");
  const Mask small = Mask::deny(attend::BoolMatrix::Zero(3, 4));
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, small),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, small),
                      "scaled_dot_product_attention_fused_backward: mask is [1, 1, 3, 4], "
                      "expected broadcastable to [1, 1, 5, 7]");
  REQUIRE_THROWS_AS(
      scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d_out, Mask(), inf<double>),
      value_error);

  const Tensor<S> tq({2, 3, 5, 16}), tk({2, 3, 7, 16}), tv({2, 3, 7, 8}), to({2, 3, 5, 8});
  const Tensor<S> tl({2, 3, 5});
  const Tensor<S> to_bad({2, 3, 5, 9});
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(tq, tk, tv, to_bad, tl, to),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(tq, tk, tv, to_bad, tl, to),
                      "scaled_dot_product_attention_fused_backward: output is [2, 3, 5, 9], "
                      "expected [2, 3, 5, 8] ([..., L, d_v])");
  const Tensor<S> tl_bad({2, 3, 5, 1});
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(tq, tk, tv, to, tl_bad, to),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(tq, tk, tv, to, tl_bad, to),
                      "scaled_dot_product_attention_fused_backward: lse is [2, 3, 5, 1], "
                      "expected [2, 3, 5] ([..., L])");
  const Tensor<S> td_bad({2, 3, 4, 8});
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(tq, tk, tv, to, tl, td_bad),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(tq, tk, tv, to, tl, td_bad),
                      "scaled_dot_product_attention_fused_backward: d_output is [2, 3, 4, 8], "
                      "expected [2, 3, 5, 8] ([..., L, d_v])");
  const Tensor<S> tk_bad({2, 3, 7, 12});
  REQUIRE_THROWS_AS(scaled_dot_product_attention_fused_backward(tq, tk_bad, tv, to, tl, to),
                    shape_error);
  REQUIRE_THROWS_WITH(scaled_dot_product_attention_fused_backward(tq, tk_bad, tv, to, tl, to),
                      "scaled_dot_product_attention_fused_backward: key is [2, 3, 7, 12], "
                      "expected [2, 3, S, 16]");
}

// ---- edges: huge mask values, huge scores, soft-capping, extreme sizes ------------------
// Every case runs through every variant this CPU supports, named explicitly.

namespace {

using attend::Vector;

/// float's lowest (-3.4028235e38, torch.finfo(torch.float32).min): Hugging Face's padding.
constexpr double kFloatLowest = -3.4028234663852886e38;

/// Forward of one head through the detail entry: explicit variant, optional lse, softcap.
template <typename S>
Matrix<S> fused_edge(const Matrix<S>& q, const Matrix<S>& k, const Matrix<S>& v, const Mask& mask,
                     double scale, FusedKernel kernel, double softcap = 0.0,
                     Vector<S>* lse = nullptr) {
  Matrix<S> out(q.rows(), v.cols());
  if (lse) lse->resize(q.rows());
  attend::FusedWorkspace<S> ws(q.cols(), v.cols());
  attend::detail::attention_head_fused<S>(q, k, v, mask, 0, 0, static_cast<S>(scale), out, ws,
                                          kernel, lse ? lse->data() : nullptr,
                                          static_cast<S>(softcap));
  return out;
}

/// Backward of one head through the detail entry (its tile code is the portable one).
template <typename S>
attend::AttentionGrads<S> fused_edge_backward(const Matrix<S>& q, const Matrix<S>& k,
                                              const Matrix<S>& v, const Matrix<S>& out,
                                              const Vector<S>& lse, const Matrix<S>& d_out,
                                              const Mask& mask, double scale,
                                              double softcap = 0.0) {
  attend::AttentionGrads<S> g;
  g.dq.resize(q.rows(), q.cols());
  g.dk.resize(k.rows(), k.cols());
  g.dv.resize(v.rows(), v.cols());
  attend::FusedBackwardWorkspace<S> ws(q.cols(), v.cols());
  attend::detail::attention_head_fused_backward<S>(
      q, k, v, out, lse.data(), d_out, attend::detail::HeadMaskView(mask, 0, 0),
      static_cast<S>(scale), g.dq, g.dk, g.dv, ws, static_cast<S>(softcap));
  return g;
}

/// |got - want| <= tol * max(1, term) element-wise: for sums that cancel (the gradient of
/// a query through two identical keys is 0), an error relative to the size of the terms
/// summed rather than to the (cancelled) result.
template <typename A, typename B>
void require_close_to_terms(const Eigen::MatrixBase<A>& got, const Eigen::MatrixBase<B>& want,
                            double tol, double term) {
  require_close(got, want, tol * std::max(1.0, term), 0.0);
}

/// Softmax attention in double written out: u = (q k^T) scale, t = c tanh(u / c) when
/// c > 0, z = t + mask, P = softmax(z) (a row with no finite z gives zeros), out = P v.
/// The gradients follow the chain rule by hand (dT = P (dP - D), dU = dT (1 - (t/c)^2)).
struct SoftcapReference {
  Matrix<double> out, dq, dk, dv;
};
template <typename S>
SoftcapReference softcap_reference(const Matrix<S>& q, const Matrix<S>& k, const Matrix<S>& v,
                                   const Mask& mask, double scale, double c,
                                   const Matrix<S>* d_out = nullptr) {
  const Matrix<double> qd = q.template cast<double>(), kd = k.template cast<double>(),
                       vd = v.template cast<double>();
  const Matrix<double> u = qd * kd.transpose() * scale;
  Matrix<double> t = u;
  if (c > 0) t = c * (u.array() / c).tanh();
  Matrix<double> z = t;
  mask.apply<double>(0, 0, 0, 0, z);
  Matrix<double> p = Matrix<double>::Zero(z.rows(), z.cols());
  for (Index i = 0; i < z.rows(); ++i) {
    const double m = z.row(i).maxCoeff();
    if (m == -inf<double>) continue;
    p.row(i) = (z.row(i).array() - m).exp().matrix();
    p.row(i) /= p.row(i).sum();
  }
  SoftcapReference r;
  r.out = p * vd;
  if (d_out) {
    const Matrix<double> dod = d_out->template cast<double>();
    r.dv = p.transpose() * dod;
    const Matrix<double> dp = dod * vd.transpose();
    const Vector<double> dd = (p.array() * dp.array()).rowwise().sum().matrix();
    Matrix<double> du = (p.array() * (dp.colwise() - dd).array()).matrix();  // dT
    if (c > 0) du = (du.array() * (1.0 - (t.array() / c).square())).matrix();
    r.dq = scale * du * kd;
    r.dk = scale * du.transpose() * qd;
  }
  return r;
}

/// An [L, S] additive mask whose entries are drawn from `values`.
Matrix<double> pick_bias(Index L, Index S, const std::vector<double>& values, attend::Rng& rng) {
  Matrix<double> b(L, S);
  for (Index i = 0; i < L; ++i)
    for (Index j = 0; j < S; ++j)
      b(i, j) = values[static_cast<std::size_t>(random_index(rng, 0, Index(values.size()) - 1))];
  return b;
}

}  // namespace

TEMPLATE_TEST_CASE("fused.hpp: a mask of float's lowest stays finite on every kernel", "[fused][edge]",
                   float, double) {
  using S = TestType;
  // q = [[1]], k = [[1], [2]], v = [[1], [3]], scale 1, bias [lowest, lowest]:
  // scores 1 + lowest and 2 + lowest both round to lowest (an ulp of 3.4e38 is 2e31 in
  // float, 3.8e22 in double): a tie, weights [1/2, 1/2], out = (1 + 3) / 2 = 2 (PyTorch's
  // answer). Bias times log2(e) would overflow to -inf and give 0.
  Matrix<S> q(1, 1), k(2, 1), v(2, 1);
  q << 1;
  k << 1, 2;
  v << 1, 3;
  Matrix<double> bias(1, 2);
  bias << kFloatLowest, kFloatLowest;
  const Mask lowest = Mask::additive(bias);
  const Matrix<S> two = Matrix<S>::Constant(1, 1, S(2));
  require_close(attend::scaled_dot_product_attention(q, k, v, lowest, 1.0), two, kHandTol<S>);
  for (const FusedKernel kernel : attend::fused_kernels_supported()) {
    INFO("kernel " << attend::fused_kernel_name(kernel));
    Vector<S> lse;
    const Matrix<S> out = fused_edge<S>(q, k, v, lowest, 1.0, kernel, 0.0, &lse);
    require_close(out, two, kHandTol<S>);
    REQUIRE(std::isfinite(double(lse(0))));
    // Backward, upstream 1: P = [1/2, 1/2], dv = P^T = [1/2, 1/2]; dP = v^T = [1, 3],
    // D = out = 2, dS = P (dP - D) = [-1/2, 1/2]; dq = dS k = -1/2 + 1 = 1/2,
    // dk = dS^T q = [-1/2, 1/2]. The lse (lowest + ln 2 = lowest after rounding) alone
    // would give P = [1, 1]: the backward renormalises such rows.
    const Matrix<S> d_out = Matrix<S>::Ones(1, 1);
    const auto g = fused_edge_backward<S>(q, k, v, out, lse, d_out, lowest, 1.0);
    Matrix<S> dk(2, 1), dv(2, 1);
    dk << S(-0.5), S(0.5);
    dv << S(0.5), S(0.5);
    require_close(g.dq, Matrix<S>::Constant(1, 1, S(0.5)), kHandTol<S>);
    require_close(g.dk, dk, kHandTol<S>);
    require_close(g.dv, dv, kHandTol<S>);
  }
}

TEMPLATE_TEST_CASE("fused.hpp: boundary mask values -2.3e38 to -inf match the reference",
                   "[fused][edge]", float, double) {
  using S = TestType;
  attend::Rng rng(404);
  const std::vector<double> edge = {-2.3e38, -2.4e38, kFloatLowest, -inf<double>};
  // [L, S, d]: one tile, then several query and key blocks.
  for (const auto& [L, Sk, d] : std::vector<std::array<Index, 3>>{{6, 5, 4}, {130, 300, 16}}) {
    const Matrix<S> q = random_matrix<S>(L, d, rng);
    const Matrix<S> k = random_matrix<S>(Sk, d, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d, rng);
    const Matrix<S> d_out = random_matrix<S>(L, d, rng);
    // Rows: 0 all lowest (uniform average of v); 1 lowest and -inf (uniform over the
    // lowest keys); 2 one key at -2.3e38, the rest -2.4e38 or lower (all weight on that
    // key: 1e37 apart); 3 and on random mixes of the edge values and 0 (Hugging Face's
    // mask: 0 or lowest), some rows with a single 0.
    Matrix<double> bias = pick_bias(L, Sk, edge, rng);
    bias.row(0).setConstant(kFloatLowest);
    for (Index j = 0; j < Sk; ++j) bias(1, j) = j % 2 ? kFloatLowest : -inf<double>;
    bias.row(2) = pick_bias(1, Sk, {-2.4e38, kFloatLowest, -inf<double>}, rng);
    bias(2, Sk / 2) = -2.3e38;
    for (Index i = 3; i < L; i += 2) bias(i, random_index(rng, 0, Sk - 1)) = 0.0;
    for (Index i = 4; i < L; i += 2) {
      for (Index j = 0; j < Sk; ++j)
        if (rng.uniform() < 0.5) bias(i, j) = 0.0;
    }
    const Mask mask = Mask::additive(bias);
    const Matrix<S> want = attend::scaled_dot_product_attention(q, k, v, mask, 0.5);
    // The reference's own edges: row 0 is the mean of v, row 2 is v of key S/2.
    require_close(want.row(0), v.colwise().mean(), kFusedTol<S>, kFusedTol<S>);
    require_close(want.row(2), v.row(Sk / 2), kFusedTol<S>, kFusedTol<S>);
    const auto want_g = reference_backward<S>(q, k, v, d_out, mask, 0.5);
    for (const FusedKernel kernel : attend::fused_kernels_supported()) {
      INFO("L " << L << ", S " << Sk << ", kernel " << attend::fused_kernel_name(kernel));
      Vector<S> lse;
      const Matrix<S> out = fused_edge<S>(q, k, v, mask, 0.5, kernel, 0.0, &lse);
      require_close(out, want, kFusedTol<S>, kFusedTol<S>);
      require_grads_close(fused_edge_backward<S>(q, k, v, out, lse, d_out, mask, 0.5), want_g,
                          kBackwardTol<S>);
    }
  }
}

TEMPLATE_TEST_CASE("fused.hpp: scores near 1e5 to 1e6 keep exact ties", "[fused][edge]", float,
                   double) {
  using S = TestType;
  attend::Rng rng(1000);
  // Integer q and k in [-100, 100], d = 40: every q . k is an integer below 4e5, exact in
  // float (< 2^24) whatever the summation order. Times scale 7.3 the scores reach 1e5 to
  // 1e6 (an ulp of 1e6 is 0.0625 in float). Keys come in identical pairs: each pair's
  // scores are exactly equal when the raw product is scaled once ((q . k) * scale, as the
  // reference), so its two values share the weight equally. Scaling q first (q * scale)
  // . k rounds each product: ties break and outputs moved by up to 3.7 (tolerance 0.29
  // in the reference's own fixture).
  const Index L = 50, pairs = 70, d = 40, d_v = 24;
  const double scale = 7.3;
  const auto integers = [&rng](Index rows, Index cols) {
    Matrix<S> m(rows, cols);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j) m(i, j) = S(random_index(rng, -100, 100));
    return m;
  };
  const Matrix<S> q = integers(L, d), k_half = integers(pairs, d);
  Matrix<S> k(2 * pairs, d);
  for (Index j = 0; j < pairs; ++j) k.row(2 * j) = k.row(2 * j + 1) = k_half.row(j);
  const Matrix<S> v = random_matrix<S>(2 * pairs, d_v, rng);
  const Matrix<S> d_out = random_matrix<S>(L, d_v, rng);
  const Matrix<double> scores = (q * k.transpose()).template cast<double>() * scale;
  REQUIRE(scores.cwiseAbs().maxCoeff() > 1e5);
  // The exact answer, in double: each query's best pair carries all the weight (pairs
  // differ by 7.3 at least, e^-7.3 = 6.7e-4 at most for the runner-up)... computed from
  // the exact scores rather than assumed.
  const SoftcapReference exact = softcap_reference<S>(q, k, v, Mask(), scale, 0.0, &d_out);
  const Matrix<S> want = attend::scaled_dot_product_attention(q, k, v, Mask(), scale);
  // The reference at this magnitude: its scores are exact, so it is within rounding.
  require_close(want, exact.out, kFusedTol<S>, kFusedTol<S>);
  for (const Mask& mask : {Mask(), Mask::causal(30)}) {
    const SoftcapReference ex = softcap_reference<S>(q, k, v, mask, scale, 0.0, &d_out);
    for (const FusedKernel kernel : attend::fused_kernels_supported()) {
      INFO("kernel " << attend::fused_kernel_name(kernel));
      Vector<S> lse;
      const Matrix<S> out = fused_edge<S>(q, k, v, mask, scale, kernel, 0.0, &lse);
      require_close(out, ex.out, kFusedTol<S>, kFusedTol<S>);
      // The backward renormalises (|lse| > 64): P as exact as the forward's. dq and dk
      // sum terms up to scale * 100 * max |dP| (dP = d_out v^T) that cancel (a tied pair
      // gives dS_0 = -dS_1 and equal keys: dq = 0): compared relative to that size.
      const auto g = fused_edge_backward<S>(q, k, v, out, lse, d_out, mask, scale);
      const double term = scale * 100.0 * (d_out * v.transpose()).cwiseAbs().maxCoeff();
      require_close_to_terms(g.dq, ex.dq, kBackwardTol<S>, term);
      require_close_to_terms(g.dk, ex.dk, kBackwardTol<S>, term);
      require_close(g.dv, ex.dv, kBackwardTol<S>, kBackwardTol<S>);
    }
  }
}

TEMPLATE_TEST_CASE("fused.hpp: logit soft-capping, by hand and against the formula",
                   "[fused][edge][softcap]", float, double) {
  using S = TestType;
  // q = [[1]], k = [[1], [2]], v = [[1], [3]], scale 1, softcap c = 1:
  // u = [1, 2], t = tanh(u) = [0.7615941560, 0.9640275801], t1 - t0 = 0.2024334241;
  // w1 = 1 / (1 + e^-0.2024334241) = 0.5504362368, w0 = 0.4495637632;
  // out = 1 w0 + 3 w1 = 1 + 2 w1 = 2.1008724736.
  // c = 2: t = 2 tanh(u / 2) = [0.9242343145, 1.5231883119], t1 - t0 = 0.5989539974,
  // out = 1 + 2 / (1 + e^-0.5989539974) = 2.2908339217.
  Matrix<S> q(1, 1), k(2, 1), v(2, 1);
  q << 1;
  k << 1, 2;
  v << 1, 3;
  for (const FusedKernel kernel : attend::fused_kernels_supported()) {
    INFO("kernel " << attend::fused_kernel_name(kernel));
    require_close(fused_edge<S>(q, k, v, Mask(), 1.0, kernel, 1.0),
                  Matrix<S>::Constant(1, 1, S(2.1008724736)), kHandTol<S>);
    require_close(fused_edge<S>(q, k, v, Mask(), 1.0, kernel, 2.0),
                  Matrix<S>::Constant(1, 1, S(2.2908339217)), kHandTol<S>);
    // Softcap 0 is off: scores [1, 2], out = 1 + 2 e / (1 + e) = 2.4621171573.
    require_close(fused_edge<S>(q, k, v, Mask(), 1.0, kernel, 0.0),
                  Matrix<S>::Constant(1, 1, S(2.4621171573)), kHandTol<S>);
  }
  // Random sizes and masks against the double formula: capped logits are in (-c, c).
  attend::Rng rng(50);
  for (const auto& [L, Sk, d_k, d_v] :
       std::vector<std::array<Index, 4>>{{1, 1, 1, 1}, {33, 70, 64, 40}, {97, 300, 16, 9}}) {
    const Matrix<S> q2 = random_matrix<S>(L, d_k, rng, 3.0);
    const Matrix<S> k2 = random_matrix<S>(Sk, d_k, rng, 3.0);
    const Matrix<S> v2 = random_matrix<S>(Sk, d_v, rng);
    for (const auto& [name, mask] : all_masks(L, Sk, rng)) {
      for (const double c : {5.0, 30.0}) {
        const Matrix<double> want = softcap_reference<S>(q2, k2, v2, mask, 0.4, c).out;
        for (const FusedKernel kernel : attend::fused_kernels_supported()) {
          INFO("L " << L << ", S " << Sk << ", mask " << name << ", c " << c << ", kernel "
                    << attend::fused_kernel_name(kernel));
          require_close(fused_edge<S>(q2, k2, v2, mask, 0.4, kernel, c), want, kFusedTol<S>,
                        kFusedTol<S>);
        }
      }
    }
  }
}

TEST_CASE("fused_backward.hpp: soft-capping gradient check in double", "[fused][grad][softcap]") {
  attend::Rng rng(51);
  const Index L = 7, Sk = 10, d_k = 5, d_v = 3;
  Matrix<double> q = random_matrix<double>(L, d_k, rng, 2.0);
  Matrix<double> k = random_matrix<double>(Sk, d_k, rng, 2.0);
  Matrix<double> v = random_matrix<double>(Sk, d_v, rng);
  const Matrix<double> upstream = random_matrix<double>(L, d_v, rng);
  attend::BoolMatrix denied = random_bools(L, Sk, 0.2, rng);
  denied.row(3).setConstant(true);  // one fully masked row
  const Mask mask = Mask::causal(4) & Mask::additive(random_matrix<double>(L, Sk, rng, 1.0)) &
                    Mask::deny(denied);
  const double scale = 0.9, c = 1.5;  // logits up to ~9 against a cap of 1.5: tanh bends
  const auto loss = [&] {
    return fused_edge<double>(q, k, v, mask, scale, FusedKernel::portable, c)
        .cwiseProduct(upstream)
        .sum();
  };
  Vector<double> lse;
  const Matrix<double> out = fused_edge<double>(q, k, v, mask, scale, FusedKernel::portable, c,
                                                &lse);
  const auto g = fused_edge_backward<double>(q, k, v, out, lse, upstream, mask, scale, c);
  REQUIRE(g.dq.row(3).isZero(0.0));
  const attend::GradCheckResult rq = attend::gradcheck(q, g.dq, loss);
  INFO("dq: " << rq.describe());
  REQUIRE(rq.error < kGradTol);
  const attend::GradCheckResult rk = attend::gradcheck(k, g.dk, loss);
  INFO("dk: " << rk.describe());
  REQUIRE(rk.error < kGradTol);
  const attend::GradCheckResult rv = attend::gradcheck(v, g.dv, loss);
  INFO("dv: " << rv.describe());
  REQUIRE(rv.error < kGradTol);
  // The cap changes the gradient: without it dq differs.
  Vector<double> lse0;
  const Matrix<double> out0 = fused_edge<double>(q, k, v, mask, scale, FusedKernel::portable, 0.0,
                                                 &lse0);
  const auto g0 = fused_edge_backward<double>(q, k, v, out0, lse0, upstream, mask, scale);
  REQUIRE((g0.dq - g.dq).cwiseAbs().maxCoeff() > 1e-3);
}

TEMPLATE_TEST_CASE("fused_backward.hpp: soft-capping equals the written-out gradient",
                   "[fused][grad][softcap]", float, double) {
  using S = TestType;
  attend::Rng rng(52);
  for (const auto& [L, Sk, d_k, d_v] :
       std::vector<std::array<Index, 4>>{{1, 1, 1, 1}, {40, 90, 32, 24}, {100, 260, 16, 17}}) {
    const Matrix<S> q = random_matrix<S>(L, d_k, rng, 2.0);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng, 2.0);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    const Matrix<S> d_out = random_matrix<S>(L, d_v, rng);
    for (const auto& [name, mask] : all_masks(L, Sk, rng)) {
      const SoftcapReference want = softcap_reference<S>(q, k, v, mask, 0.5, 2.0, &d_out);
      for (const FusedKernel kernel : attend::fused_kernels_supported()) {
        INFO("L " << L << ", S " << Sk << ", mask " << name << ", forward kernel "
                  << attend::fused_kernel_name(kernel));
        Vector<S> lse;
        const Matrix<S> out = fused_edge<S>(q, k, v, mask, 0.5, kernel, 2.0, &lse);
        require_close(out, want.out, kFusedTol<S>, kFusedTol<S>);
        const auto g = fused_edge_backward<S>(q, k, v, out, lse, d_out, mask, 0.5, 2.0);
        require_close(g.dq, want.dq, kBackwardTol<S>, kBackwardTol<S>);
        require_close(g.dk, want.dk, kBackwardTol<S>, kBackwardTol<S>);
        require_close(g.dv, want.dv, kBackwardTol<S>, kBackwardTol<S>);
      }
    }
  }
}

TEMPLATE_TEST_CASE("fused.hpp: extreme sizes and head sizes 1 to 256 on every kernel",
                   "[fused][edge]", float, double) {
  using S = TestType;
  attend::Rng rng(53);
  // [L, S, d_k, d_v]: d = 1, L = 1, S = 1, S = 8192 with a small d, the head sizes of
  // real models (40, 72, 80, 112, 256) and d_k != d_v both ways.
  const std::vector<std::array<Index, 4>> sizes = {
      {5, 7, 1, 1},       {1, 300, 64, 64},  {97, 1, 64, 64},   {1, 1, 1, 1},
      {9, 8192, 2, 3},    {50, 140, 40, 40}, {50, 140, 72, 72}, {50, 140, 80, 80},
      {50, 140, 112, 112}, {20, 140, 256, 256}, {40, 130, 80, 24}, {40, 130, 24, 112}};
  for (const auto& [L, Sk, d_k, d_v] : sizes) {
    const Matrix<S> q = random_matrix<S>(L, d_k, rng);
    const Matrix<S> k = random_matrix<S>(Sk, d_k, rng);
    const Matrix<S> v = random_matrix<S>(Sk, d_v, rng);
    const Matrix<S> d_out = random_matrix<S>(L, d_v, rng);
    const double scale = 1.0 / std::sqrt(double(d_k));
    std::vector<std::pair<std::string, Mask>> masks;
    masks.emplace_back("none", Mask());
    masks.emplace_back("causal offset 3", Mask::causal(3));
    masks.emplace_back("padding", Mask::key_padding_lengths({(Sk + 1) / 2}, Sk));
    for (const auto& [name, mask] : masks) {
      const Matrix<S> want = attend::scaled_dot_product_attention(q, k, v, mask, scale);
      const auto want_g = reference_backward<S>(q, k, v, d_out, mask, scale);
      for (const FusedKernel kernel : attend::fused_kernels_supported()) {
        INFO("L " << L << ", S " << Sk << ", d_k " << d_k << ", d_v " << d_v << ", mask "
                  << name << ", kernel " << attend::fused_kernel_name(kernel));
        Vector<S> lse;
        const Matrix<S> out = fused_edge<S>(q, k, v, mask, scale, kernel, 0.0, &lse);
        require_close(out, want, kFusedTol<S>, kFusedTol<S>);
        require_grads_close(fused_edge_backward<S>(q, k, v, out, lse, d_out, mask, scale),
                            want_g, kBackwardTol<S>);
      }
    }
  }
}

TEMPLATE_TEST_CASE("fused.hpp: soft-capping allocates nothing and is thread-count independent",
                   "[fused][softcap]", float, double) {
  using S = TestType;
  attend::Rng rng(54);
  const Index L = 150, Sk = 200, d = 32;
  const Matrix<S> q = random_matrix<S>(L, d, rng, 2.0);
  const Matrix<S> k = random_matrix<S>(Sk, d, rng, 2.0);
  const Matrix<S> v = random_matrix<S>(Sk, d, rng);
  const Matrix<S> d_out = random_matrix<S>(L, d, rng);
  Matrix<double> bias = random_matrix<double>(L, Sk, rng, 1.0);
  bias.row(7).setConstant(kFloatLowest);  // a renormalised row in the backward
  const Mask mask = Mask::causal(20) & Mask::additive(bias);
  for (const FusedKernel kernel : attend::fused_kernels_supported()) {
    INFO("kernel " << attend::fused_kernel_name(kernel));
    attend::FusedWorkspace<S> ws(d, d);
    attend::FusedBackwardWorkspace<S> bws(d, d);
    Matrix<S> out(L, d), dq(L, d), dk(Sk, d), dv(Sk, d);
    Vector<S> lse(L);
    Eigen::internal::set_is_malloc_allowed(false);
    attend::detail::attention_head_fused<S>(q, k, v, mask, 0, 0, S(0.3), out, ws, kernel,
                                            lse.data(), S(4));
    attend::detail::attention_head_fused_backward<S>(q, k, v, out, lse.data(), d_out,
                                                     attend::detail::HeadMaskView(mask, 0, 0),
                                                     S(0.3), dq, dk, dv, bws, S(4));
    Eigen::internal::set_is_malloc_allowed(true);
    const SoftcapReference want = softcap_reference<S>(q, k, v, mask, 0.3, 4.0, &d_out);
    require_close(out, want.out, kFusedTol<S>, kFusedTol<S>);
    require_close(dq, want.dq, kBackwardTol<S>, kBackwardTol<S>);
  }
#if defined(_OPENMP)
  // Tensor form through the detail entry, 1 vs 2 threads: bit-identical (the work split
  // is by query blocks, each block's arithmetic fixed by its own rows).
  const Tensor<S> tq = Tensor<S>::from_matrix(q), tk = Tensor<S>::from_matrix(k),
                  tv = Tensor<S>::from_matrix(v);
  const int threads = omp_get_max_threads();
  for (const FusedKernel kernel : attend::fused_kernels_supported()) {
    omp_set_num_threads(1);
    const Tensor<S> one =
        attend::detail::scaled_dot_product_attention_fused(tq, tk, tv, mask, 0.3, kernel);
    omp_set_num_threads(2);
    const Tensor<S> two =
        attend::detail::scaled_dot_product_attention_fused(tq, tk, tv, mask, 0.3, kernel);
    REQUIRE(std::memcmp(one.data(), two.data(), sizeof(S) * std::size_t(one.size())) == 0);
  }
  omp_set_num_threads(threads);
#endif
}
