// SPDX-License-Identifier: MIT
// Tests of attention/: masks, the reference scaled dot-product attention (matrix and tensor
// forms) and multi-head attention: hand-computed cases, properties and error paths.
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::BoolMatrix;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::MultiheadAttention;
using attend::MultiheadAttentionArgs;
using attend::MultiheadAttentionOptions;
using attend::Rng;
using attend::Shape;
using attend::Tensor;

using attend_test::inf;
using attend_test::random_index;
using attend_test::random_matrix;
using attend_test::random_tensor;
using attend_test::randomize_biases;
using attend_test::require_close;

// ---- tolerances ------------------------------------------------------------------------

/// Hand values are written with 12 decimals; float results carry a few ulps of outputs
/// up to ~6 (ulp 4.8e-7).
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 2e-6 : 1e-11;

/// The same kernel on the same numbers, reached through another entry point (tensor vs
/// matrix form, need_weights on/off, a mask built another way): only Eigen's vectorised
/// summation order may differ with memory alignment, a few ulps of O(1) values.
template <typename S>
constexpr double kSameKernelTol = std::is_same_v<S, float> ? 1e-6 : 1e-14;

/// Mathematically equal, rounded in another order (permuted rows, per-row score shifts of
/// up to 10, a KV-cache slice, projections done by hand, packed vs separate GEMMs): scores
/// of magnitude up to ~10 lose a few ulps (float ulp at 8 is 9.5e-7), which exp turns into
/// the same relative error of the weights and outputs.
template <typename S>
constexpr double kReorderTol = std::is_same_v<S, float> ? 2e-6 : 1e-13;

/// float run vs double run on inputs in [-1, 1]: scores O(d_k), outputs O(1); float
/// rounding (6e-8) amplified by exp and the weighted sums stays below 1e-5.
constexpr double kFloatVsDoubleTol = 1e-5;

/// Weight rows that sum to 1: a sum of at most 9 rounded terms in [0, 1].
template <typename S>
constexpr double kRowSumTol = std::is_same_v<S, float> ? 1e-6 : 1e-14;

// ---- builders --------------------------------------------------------------------------

Tensor<bool> random_bools(const Shape& shape, Rng& rng, double p_true) {
  Tensor<bool> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = rng.uniform() < p_true;
  return t;
}

std::vector<Index> random_permutation(Index n, Rng& rng) {
  std::vector<Index> p(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = i;
  for (Index i = n - 1; i > 0; --i)
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(random_index(rng, 0, i))]);
  return p;
}

/// Rows of `x` in the order `perm`: out.row(i) = x.row(perm[i]).
template <typename S>
Matrix<S> permute_rows(const Matrix<S>& x, const std::vector<Index>& perm) {
  Matrix<S> out(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i) out.row(i) = x.row(perm[static_cast<std::size_t>(i)]);
  return out;
}

/// The [L, S] slice (b, h) of a rank-4 bool tensor, as a matrix.
BoolMatrix slice(const Tensor<bool>& t, Index b, Index h) { return BoolMatrix(t.matrix(b, h)); }

/// is_blocked for every (b, h, i, j) of [B, H, L, S], flattened.
std::vector<bool> blocked_grid(const Mask& m, Index B, Index H, Index L, Index S) {
  std::vector<bool> g;
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < L; ++i)
        for (Index j = 0; j < S; ++j) g.push_back(m.is_blocked(b, h, i, j));
  return g;
}

/// Per-sequence matrices [T, W] stacked as [B, T, W] (batch_first) or [T, B, W].
template <typename S>
Tensor<S> stack(const std::vector<Matrix<S>>& seqs, bool batch_first) {
  const Index B = static_cast<Index>(seqs.size()), T = seqs[0].rows(), W = seqs[0].cols();
  Tensor<S> t(batch_first ? Shape{B, T, W} : Shape{T, B, W});
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < T; ++i)
      for (Index w = 0; w < W; ++w)
        (batch_first ? t(b, i, w) : t(i, b, w)) = seqs[static_cast<std::size_t>(b)](i, w);
  return t;
}

/// Sequence b of a [B, T, W] (batch_first) or [T, B, W] tensor.
template <typename S>
Matrix<S> unstack(const Tensor<S>& t, Index b, bool batch_first) {
  const Index T = batch_first ? t.dim(1) : t.dim(0), W = t.dim(2);
  Matrix<S> m(T, W);
  for (Index i = 0; i < T; ++i)
    for (Index w = 0; w < W; ++w) m(i, w) = batch_first ? t(b, i, w) : t(i, b, w);
  return m;
}

// ---- multi-head attention by hand ------------------------------------------------------

MultiheadAttentionOptions mha_options(Index E, Index H, bool batch_first = false, bool bias = true,
                                      Index kdim = 0, Index vdim = 0) {
  MultiheadAttentionOptions o;
  o.embed_dim = E;
  o.num_heads = H;
  o.batch_first = batch_first;
  o.bias = bias;
  o.kdim = kdim;
  o.vdim = vdim;
  return o;
}

/// One sequence through multi-head attention, written out with Eigen and the matrix-form
/// reference SDPA per head: Q = xq W_q^T + b_q, ..., out = concat_h(SDPA(Q_h, K_h, V_h)) W_o^T
/// + b_o. `blocked[h]` is head h's [L, S] deny mask (empty: no mask).
template <typename S>
Matrix<S> mha_by_hand(const MultiheadAttention<S>& m, const Matrix<S>& xq, const Matrix<S>& xk,
                      const Matrix<S>& xv, const std::vector<BoolMatrix>& blocked,
                      std::vector<Matrix<S>>* head_weights = nullptr) {
  const Index E = m.embed_dim(), H = m.num_heads(), dh = m.head_dim();
  const Matrix<S> wq = m.packed() ? Matrix<S>(m.in_proj_weight.topRows(E)) : m.q_proj_weight;
  const Matrix<S> wk = m.packed() ? Matrix<S>(m.in_proj_weight.middleRows(E, E)) : m.k_proj_weight;
  const Matrix<S> wv = m.packed() ? Matrix<S>(m.in_proj_weight.bottomRows(E)) : m.v_proj_weight;
  Matrix<S> q = xq * wq.transpose();  // [L, E]
  Matrix<S> k = xk * wk.transpose();  // [S, E]
  Matrix<S> v = xv * wv.transpose();  // [S, E]
  if (m.options.bias) {
    q.rowwise() += m.in_proj_bias.head(E).transpose();
    k.rowwise() += m.in_proj_bias.segment(E, E).transpose();
    v.rowwise() += m.in_proj_bias.tail(E).transpose();
  }
  Matrix<S> heads(xq.rows(), E);  // [L, E]
  if (head_weights) head_weights->clear();
  for (Index h = 0; h < H; ++h) {
    const Mask mask = blocked.empty() ? Mask() : Mask::deny(blocked[static_cast<std::size_t>(h)]);
    Matrix<S> w;
    heads.middleCols(h * dh, dh) =
        attend::scaled_dot_product_attention(q.middleCols(h * dh, dh), k.middleCols(h * dh, dh),
                                             v.middleCols(h * dh, dh), mask, std::nullopt, &w);
    if (head_weights) head_weights->push_back(w);
  }
  Matrix<S> out = heads * m.out_proj_weight.transpose();  // [L, E]
  if (m.options.bias) out.rowwise() += m.out_proj_bias.transpose();
  return out;
}

// ---- the lecture's worked example ------------------------------------------------------

/// Three tokens, d_k = 4 (sqrt(d_k) = 2), d_v = 2.
template <typename S>
struct Lecture {
  Matrix<S> q{3, 4}, k{3, 4}, v{3, 2};
  Lecture() {
    q << 1, 0, 1, 0,  //
        0, 1, 0, 1,   //
        1, 1, 1, 1;
    k << 1, 0, 1, 0,  //
        0, 1, 0, 1,   //
        1, 1, 0, 0;
    v << 1, 2,  //
        3, 4,   //
        5, 6;
  }
};

}  // namespace

// =======================================================================================
// Hand-computed
// =======================================================================================

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: the lecture's 3-token example by hand", "[attention]",
                   float, double) {
  using S = TestType;
  const Lecture<S> ex;
  // Q K^T = [[2, 0, 1],        scaled by 1/sqrt(4) = 1/2:  [[1, 0, 0.5],
  //          [0, 2, 1],                                     [0, 1, 0.5],
  //          [2, 2, 2]]                                     [1, 1, 1  ]]
  // row 0: exp([1, 0, 0.5]) = [2.718281828459, 1, 1.648721270700], sum 5.367003099159
  //        weights = [0.506480391056, 0.186323723226, 0.307195885718]
  // row 1: the same exponentials in the order [1, e, e^0.5]
  //        weights = [0.186323723226, 0.506480391056, 0.307195885718]
  // row 2: equal scores -> [1/3, 1/3, 1/3]
  Matrix<double> want_w(3, 3);
  want_w << 0.506480391056, 0.186323723226, 0.307195885718,  //
      0.186323723226, 0.506480391056, 0.307195885718,        //
      1.0 / 3, 1.0 / 3, 1.0 / 3;
  // output = weights V, V = [[1, 2], [3, 4], [5, 6]]:
  // row 0: 0.506480391056 * 1 + 0.186323723226 * 3 + 0.307195885718 * 5
  //      = 0.506480391056 + 0.558971169678 + 1.535979428592 = 2.601430989326;
  //        column 1 is column 0 + 1 (V's columns differ by 1 and weights sum to 1)
  // row 1: 0.186323723226 + 1.519441173167 + 1.535979428592 = 3.241744324985
  // row 2: the mean of V's rows = [3, 4]
  Matrix<double> want_out(3, 2);
  want_out << 2.601430989326, 3.601430989326,  //
      3.241744324985, 4.241744324985,          //
      3, 4;

  Matrix<S> w;
  const Matrix<S> out =
      attend::scaled_dot_product_attention(ex.q, ex.k, ex.v, Mask(), std::nullopt, &w);
  require_close(w, want_w, kHandTol<S>);
  require_close(out, want_out, kHandTol<S>, kHandTol<S>);
  // An explicit scale of 1/2 is the default for d_k = 4.
  require_close(attend::scaled_dot_product_attention(ex.q, ex.k, ex.v, Mask(), 0.5), out, 0.0);

  // The tensor form on [3, 4] (rank 2) and [1, 1, 3, 4] (rank 4) gives the same numbers.
  const auto r2 = attend::scaled_dot_product_attention(
      Tensor<S>::from_matrix(ex.q), Tensor<S>::from_matrix(ex.k), Tensor<S>::from_matrix(ex.v));
  REQUIRE(r2.output.shape() == Shape{3, 2});
  REQUIRE(r2.attn_weights.shape() == Shape{3, 3});
  require_close(r2.output.as_matrix(), want_out, kHandTol<S>, kHandTol<S>);
  require_close(r2.attn_weights.as_matrix(), want_w, kHandTol<S>);
  const auto r4 =
      attend::scaled_dot_product_attention(Tensor<S>::from_matrix(ex.q).reshaped({1, 1, 3, 4}),
                                           Tensor<S>::from_matrix(ex.k).reshaped({1, 1, 3, 4}),
                                           Tensor<S>::from_matrix(ex.v).reshaped({1, 1, 3, 2}));
  REQUIRE(r4.output.shape() == Shape{1, 1, 3, 2});
  require_close(r4.output.matrix(0, 0), want_out, kHandTol<S>, kHandTol<S>);
  require_close(r4.attn_weights.matrix(0, 0), want_w, kHandTol<S>);
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: the 3-token example with masks and scale 0 by hand",
                   "[attention]", float, double) {
  using S = TestType;
  const Lecture<S> ex;
  // Causal: row 0 sees key 0 only -> [1, 0, 0], output V[0] = [1, 2].
  // Row 1 sees keys 0, 1 with scaled scores [0, 1]: [1/(1+e), e/(1+e)]
  //   = [0.268941421370, 0.731058578630]; output [1, 2] + 0.731058578630 * [2, 2]
  //   = [2.462117157260, 3.462117157260].
  // Row 2 sees all three with equal scores -> [1/3, 1/3, 1/3], output [3, 4].
  Matrix<double> causal_w(3, 3), causal_out(3, 2);
  causal_w << 1, 0, 0,                    //
      0.268941421370, 0.731058578630, 0,  //
      1.0 / 3, 1.0 / 3, 1.0 / 3;
  causal_out << 1, 2,                  //
      2.462117157260, 3.462117157260,  //
      3, 4;
  Matrix<S> w;
  const Matrix<S> out =
      attend::scaled_dot_product_attention(ex.q, ex.k, ex.v, Mask::causal(), std::nullopt, &w);
  require_close(w, causal_w, kHandTol<S>);
  require_close(out, causal_out, kHandTol<S>, kHandTol<S>);

  // Key padding, 2 valid keys: row 0 scores [1, 0] -> [0.731058578630, 0.268941421370],
  //   output [1, 2] + 0.268941421370 * [2, 2] = [1.537882842740, 2.537882842740];
  // row 1 scores [0, 1] -> output [2.462117157260, 3.462117157260] as above;
  // row 2 scores [1, 1] -> [0.5, 0.5], output [2, 3].
  Matrix<double> pad_w(3, 3), pad_out(3, 2);
  pad_w << 0.731058578630, 0.268941421370, 0,  //
      0.268941421370, 0.731058578630, 0,       //
      0.5, 0.5, 0;
  pad_out << 1.537882842740, 2.537882842740,  //
      2.462117157260, 3.462117157260,         //
      2, 3;
  const Matrix<S> pout = attend::scaled_dot_product_attention(
      ex.q, ex.k, ex.v, Mask::key_padding_lengths({2}, 3), std::nullopt, &w);
  require_close(w, pad_w, kHandTol<S>);
  require_close(pout, pad_out, kHandTol<S>, kHandTol<S>);

  // Additive bias [0, -1, -0.5] on every row turns row 0's scaled scores [1, 0, 0.5] into
  // [1, -1, 0]: exp = [e, e^-1, 1] / (e + e^-1 + 1) = [0.665240955775, 0.090030573170,
  // 0.244728471055] (softmax of [2, 0, 1]).
  const Matrix<S> bias = (Matrix<S>(3, 3) << 0, -1, -0.5, 0, -1, -0.5, 0, -1, -0.5).finished();
  attend::scaled_dot_product_attention(ex.q, ex.k, ex.v, Mask::additive(bias), std::nullopt, &w);
  Matrix<double> bias_w0(1, 3);
  bias_w0 << 0.665240955775, 0.090030573170, 0.244728471055;
  require_close(w.row(0), bias_w0, kHandTol<S>);

  // scale = 0: every score is 0, weights 1/3 each, every output row the mean [3, 4].
  const Matrix<S> flat = attend::scaled_dot_product_attention(ex.q, ex.k, ex.v, Mask(), 0.0, &w);
  require_close(w, Matrix<double>::Constant(3, 3, 1.0 / 3), kHandTol<S>);
  require_close(flat, (Matrix<double>(3, 2) << 3, 4, 3, 4, 3, 4).finished(), kHandTol<S>,
                kHandTol<S>);
}

TEST_CASE("mask.hpp: causal offsets by hand", "[attention]") {
  // causal(offset): query i may see key j when j <= i + offset.
  const Mask c0 = Mask::causal();
  CHECK(c0.causal_offset() == Index(0));
  CHECK_FALSE(c0.is_blocked(0, 0, 1, 1));
  CHECK(c0.is_blocked(0, 0, 1, 2));
  // A KV cache of 2 earlier tokens: query 0 sits at position 2 and sees keys 0..2.
  const Mask c2 = Mask::causal(2);
  CHECK_FALSE(c2.is_blocked(0, 0, 0, 2));
  CHECK(c2.is_blocked(0, 0, 0, 3));
  CHECK_FALSE(c2.is_blocked(0, 0, 1, 3));
  CHECK(c2.is_blocked(0, 0, 1, 4));
  // Negative offset: query 0 sees no key at all.
  const Mask cm = Mask::causal(-1);
  CHECK(cm.is_blocked(0, 0, 0, 0));
  CHECK_FALSE(cm.is_blocked(0, 0, 1, 0));
  CHECK(Mask().empty());
  CHECK_FALSE(c0.empty());
  CHECK_FALSE(Mask().is_blocked(3, 2, 0, 7));

  // apply() on a [3, 5] tile of scores with causal(1): query i keeps keys j <= i + 1.
  Matrix<double> tile = Matrix<double>::Zero(3, 5);
  Mask::causal(1).apply<double>(0, 0, 0, 0, tile);
  Matrix<double> want(3, 5);
  want << 0, 0, -inf<double>, -inf<double>, -inf<double>,  //
      0, 0, 0, -inf<double>, -inf<double>,                 //
      0, 0, 0, 0, -inf<double>;
  require_close(tile, want, 0.0);
}

// =======================================================================================
// Properties of scaled dot-product attention
// =======================================================================================

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: weight rows sum to 1", "[attention][property]", float,
                   double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index B = random_index(rng, 1, 3), H = random_index(rng, 1, 3);
    const Index L = random_index(rng, 1, 6), Sk = random_index(rng, 1, 7);
    const Index dk = random_index(rng, 1, 6), dv = random_index(rng, 1, 5);
    CAPTURE(seed, B, H, L, Sk, dk, dv);
    const Tensor<S> q = random_tensor<S>({B, H, L, dk}, rng, 2.0);
    const Tensor<S> k = random_tensor<S>({B, H, Sk, dk}, rng, 2.0);
    const Tensor<S> v = random_tensor<S>({B, H, Sk, dv}, rng, 2.0);
    const auto r = attend::scaled_dot_product_attention(q, k, v);
    REQUIRE(r.output.shape() == Shape{B, H, L, dv});
    REQUIRE(r.attn_weights.shape() == Shape{B, H, L, Sk});
    const auto w = r.attn_weights.as_matrix();
    REQUIRE((w.array() > S(0)).all());  // no mask: every key gets some weight
    require_close(w.rowwise().sum(), Matrix<double>::Ones(w.rows(), 1), kRowSumTol<S>);
  }
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: masked keys get exactly zero weight",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index B = random_index(rng, 1, 3), H = random_index(rng, 1, 3);
    const Index L = random_index(rng, 1, 6), Sk = random_index(rng, 2, 7);
    const Index dk = random_index(rng, 1, 5);
    CAPTURE(seed, B, H, L, Sk, dk);
    const Tensor<S> q = random_tensor<S>({B, H, L, dk}, rng, 2.0);
    const Tensor<S> k = random_tensor<S>({B, H, Sk, dk}, rng, 2.0);
    const Tensor<S> v = random_tensor<S>({B, H, Sk, 3}, rng, 2.0);
    std::vector<Index> lengths;
    for (Index b = 0; b < B; ++b) lengths.push_back(random_index(rng, 1, Sk));
    Tensor<S> additive = random_tensor<S>({L, Sk}, rng, 1.0);
    for (Index i = 0; i < additive.size(); ++i)
      if (rng.uniform() < 0.3) additive.data()[i] = -inf<S>;
    const Tensor<bool> padded = random_bools({B, Sk}, rng, 0.3);

    const std::vector<std::pair<std::string, Mask>> masks = {
        {"causal", Mask::causal()},
        {"causal(2)", Mask::causal(2)},
        {"key_padding_lengths", Mask::key_padding_lengths(lengths, Sk)},
        {"key_padding", Mask::key_padding(padded)},
        {"deny", Mask::deny(random_bools({B, H, L, Sk}, rng, 0.4))},
        {"allow", Mask::allow(random_bools({H, L, Sk}, rng, 0.6))},
        {"additive -inf", Mask::additive(additive)},
        {"causal & key padding", Mask::causal() & Mask::key_padding_lengths(lengths, Sk)},
    };
    for (const auto& [name, mask] : masks) {
      CAPTURE(name);
      const auto r = attend::scaled_dot_product_attention(q, k, v, mask);
      for (Index b = 0; b < B; ++b) {
        for (Index h = 0; h < H; ++h) {
          for (Index i = 0; i < L; ++i) {
            double sum = 0.0;
            bool any_open = false;
            for (Index j = 0; j < Sk; ++j) {
              const S wij = r.attn_weights(b, h, i, j);
              if (mask.is_blocked(b, h, i, j)) {
                REQUIRE(wij == S(0));
              } else {
                any_open = true;
              }
              sum += static_cast<double>(wij);
            }
            REQUIRE(std::abs(sum - (any_open ? 1.0 : 0.0)) <= kRowSumTol<S>);
          }
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: self-attention is permutation-equivariant",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index L = random_index(rng, 2, 8), d = random_index(rng, 1, 6);
    CAPTURE(seed, L, d);
    const Matrix<S> x = random_matrix<S>(L, d, rng, 2.0);
    const std::vector<Index> perm = random_permutation(L, rng);
    const Matrix<S> px = permute_rows(x, perm);
    Matrix<S> w, pw;
    const Matrix<S> out = attend::scaled_dot_product_attention(x, x, x, Mask(), std::nullopt, &w);
    const Matrix<S> pout =
        attend::scaled_dot_product_attention(px, px, px, Mask(), std::nullopt, &pw);
    // out(P x) = P out(x); weights(P x) = P weights(x) P^T.
    require_close(pout, permute_rows(out, perm), kReorderTol<S>, kReorderTol<S>);
    Matrix<S> want_pw(L, L);
    for (Index i = 0; i < L; ++i)
      for (Index j = 0; j < L; ++j)
        want_pw(i, j) = w(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
    require_close(pw, want_pw, kReorderTol<S>, kReorderTol<S>);
  }
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: a constant added to a row of scores changes nothing",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index B = random_index(rng, 1, 2), H = random_index(rng, 1, 3);
    const Index L = random_index(rng, 1, 6), Sk = random_index(rng, 1, 7);
    const Index dk = random_index(rng, 1, 5), dv = random_index(rng, 1, 4);
    CAPTURE(seed, B, H, L, Sk, dk, dv);
    // Matrix form: an additive [L, S] mask whose row i is the constant c_i in [-10, 10].
    const Matrix<S> q = random_matrix<S>(L, dk, rng), k = random_matrix<S>(Sk, dk, rng);
    const Matrix<S> v = random_matrix<S>(Sk, dv, rng);
    Matrix<S> shift(L, Sk);
    for (Index i = 0; i < L; ++i) shift.row(i).setConstant(static_cast<S>(rng.uniform(-10, 10)));
    Matrix<S> w, ws;
    const Matrix<S> out = attend::scaled_dot_product_attention(q, k, v, Mask(), std::nullopt, &w);
    const Matrix<S> outs =
        attend::scaled_dot_product_attention(q, k, v, Mask::additive(shift), std::nullopt, &ws);
    require_close(ws, w, kReorderTol<S>, kReorderTol<S>);
    require_close(outs, out, kReorderTol<S>, kReorderTol<S>);

    // Tensor form: a [B, H, L, 1] bias broadcasts one constant over each row's keys.
    const Tensor<S> tq = random_tensor<S>({B, H, L, dk}, rng);
    const Tensor<S> tk = random_tensor<S>({B, H, Sk, dk}, rng);
    const Tensor<S> tv = random_tensor<S>({B, H, Sk, dv}, rng);
    const auto plain = attend::scaled_dot_product_attention(tq, tk, tv, Mask::causal());
    const auto shifted = attend::scaled_dot_product_attention(
        tq, tk, tv, Mask::causal() & Mask::additive(random_tensor<S>({B, H, L, 1}, rng, 10.0)));
    require_close(shifted.attn_weights, plain.attn_weights, kReorderTol<S>, kReorderTol<S>);
    require_close(shifted.output, plain.output, kReorderTol<S>, kReorderTol<S>);
  }
}

TEST_CASE("scaled_dot_product.hpp: float and double agree to ~1e-5", "[attention][property]") {
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index B = random_index(rng, 1, 2), H = random_index(rng, 1, 3);
    const Index L = random_index(rng, 1, 8), Sk = random_index(rng, 1, 8);
    const Index dk = random_index(rng, 1, 8), dv = random_index(rng, 1, 6);
    CAPTURE(seed, B, H, L, Sk, dk, dv);
    const Tensor<double> q = random_tensor<double>({B, H, L, dk}, rng);
    const Tensor<double> k = random_tensor<double>({B, H, Sk, dk}, rng);
    const Tensor<double> v = random_tensor<double>({B, H, Sk, dv}, rng);
    const Mask mask = Mask::causal(1) & Mask::additive(random_tensor<double>({L, Sk}, rng));
    const auto rd = attend::scaled_dot_product_attention(q, k, v, mask);
    const auto rf = attend::scaled_dot_product_attention(q.cast<float>(), k.cast<float>(),
                                                         v.cast<float>(), mask);
    require_close(rf.output, rd.output, kFloatVsDoubleTol, kFloatVsDoubleTol);
    require_close(rf.attn_weights, rd.attn_weights, kFloatVsDoubleTol, kFloatVsDoubleTol);
  }
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: the tensor form equals per-head matrix calls",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index B = random_index(rng, 1, 3), H = random_index(rng, 1, 3);
    const Index L = random_index(rng, 1, 6), Sk = random_index(rng, 1, 7);
    const Index dk = random_index(rng, 1, 6), dv = random_index(rng, 1, 5);
    CAPTURE(seed, B, H, L, Sk, dk, dv);
    const Tensor<S> q = random_tensor<S>({B, H, L, dk}, rng, 2.0);
    const Tensor<S> k = random_tensor<S>({B, H, Sk, dk}, rng, 2.0);
    const Tensor<S> v = random_tensor<S>({B, H, Sk, dv}, rng, 2.0);
    const Tensor<bool> blocked = random_bools({B, H, L, Sk}, rng, 0.3);
    const Matrix<S> bias = random_matrix<S>(L, Sk, rng);
    const double scale = rng.uniform(0.1, 2.0);
    const Mask mask = Mask::deny(blocked) & Mask::additive(bias) & Mask::causal(1);
    const auto r = attend::scaled_dot_product_attention(q, k, v, mask, scale);
    const auto r_nw = attend::scaled_dot_product_attention(q, k, v, mask, scale, false);
    CHECK(r_nw.attn_weights.size() == 0);
    require_close(r_nw.output, r.output, 0.0);  // need_weights only drops the copy
    for (Index b = 0; b < B; ++b) {
      for (Index h = 0; h < H; ++h) {
        CAPTURE(b, h);
        const Mask head_mask =
            Mask::deny(slice(blocked, b, h)) & Mask::additive(bias) & Mask::causal(1);
        Matrix<S> w;
        const Matrix<S> out = attend::scaled_dot_product_attention(
            q.matrix(b, h), k.matrix(b, h), v.matrix(b, h), head_mask, scale, &w);
        require_close(r.output.matrix(b, h), out, kSameKernelTol<S>, kSameKernelTol<S>);
        require_close(r.attn_weights.matrix(b, h), w, kSameKernelTol<S>, kSameKernelTol<S>);
      }
    }
  }
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: a fully masked row gives zero weights and output",
                   "[attention][property]", float, double) {
  using S = TestType;
  Rng rng(7);
  const Index L = 4, Sk = 5, dk = 3, dv = 2;
  const Matrix<S> q = random_matrix<S>(L, dk, rng), k = random_matrix<S>(Sk, dk, rng);
  const Matrix<S> v = random_matrix<S>(Sk, dv, rng);
  // Matrix form: deny every key of row 2; causal(-1) leaves row 0 without keys.
  BoolMatrix deny_row = BoolMatrix::Constant(L, Sk, false);
  deny_row.row(2).setConstant(true);
  for (const Mask& mask : {Mask::deny(deny_row), Mask::causal(-1)}) {
    const Index row = mask.causal_offset() ? 0 : 2;
    CAPTURE(row);
    Matrix<S> w;
    const Matrix<S> out = attend::scaled_dot_product_attention(q, k, v, mask, std::nullopt, &w);
    REQUIRE(out.allFinite());
    REQUIRE(w.allFinite());
    require_close(w.row(row), Matrix<S>::Zero(1, Sk), 0.0);
    require_close(out.row(row), Matrix<S>::Zero(1, dv), 0.0);
  }
  // Additive: a row of -inf.
  Matrix<S> bias = Matrix<S>::Zero(L, Sk);
  bias.row(1).setConstant(-inf<S>);
  Matrix<S> w;
  const Matrix<S> out =
      attend::scaled_dot_product_attention(q, k, v, Mask::additive(bias), std::nullopt, &w);
  require_close(w.row(1), Matrix<S>::Zero(1, Sk), 0.0);
  require_close(out.row(1), Matrix<S>::Zero(1, dv), 0.0);

  // Tensor form: batch 1 has no valid key (length 0), so all its rows are zero, with and
  // without weights; batch 0 is normal.
  const Tensor<S> tq = random_tensor<S>({2, 2, L, dk}, rng);
  const Tensor<S> tk = random_tensor<S>({2, 2, Sk, dk}, rng);
  const Tensor<S> tv = random_tensor<S>({2, 2, Sk, dv}, rng);
  const Mask pad = Mask::key_padding_lengths({Sk, 0}, Sk);
  const auto r = attend::scaled_dot_product_attention(tq, tk, tv, pad);
  const auto r_nw = attend::scaled_dot_product_attention(tq, tk, tv, pad, std::nullopt, false);
  REQUIRE(r.output.as_matrix().allFinite());
  for (Index h = 0; h < 2; ++h) {
    require_close(r.attn_weights.matrix(1, h), Matrix<S>::Zero(L, Sk), 0.0);
    require_close(r.output.matrix(1, h), Matrix<S>::Zero(L, dv), 0.0);
    require_close(r_nw.output.matrix(1, h), Matrix<S>::Zero(L, dv), 0.0);
    require_close(r.attn_weights.matrix(0, h).rowwise().sum(), Matrix<S>::Ones(L, 1),
                  kRowSumTol<S>);
  }
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: causal with an offset matches a KV-cache slice",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index T = random_index(rng, 2, 9), n = random_index(rng, 1, T);
    const Index dk = random_index(rng, 1, 6), dv = random_index(rng, 1, 4);
    CAPTURE(seed, T, n, dk, dv);
    // T tokens of keys/values are cached; the last n queries arrive at positions T-n..T-1.
    const Matrix<S> q = random_matrix<S>(T, dk, rng, 2.0), k = random_matrix<S>(T, dk, rng, 2.0);
    const Matrix<S> v = random_matrix<S>(T, dv, rng, 2.0);
    Matrix<S> w_full, w_tail;
    const Matrix<S> full =
        attend::scaled_dot_product_attention(q, k, v, Mask::causal(), std::nullopt, &w_full);
    const Matrix<S> tail = attend::scaled_dot_product_attention(
        q.bottomRows(n), k, v, Mask::causal(T - n), std::nullopt, &w_tail);
    require_close(tail, full.bottomRows(n), kReorderTol<S>, kReorderTol<S>);
    require_close(w_tail, w_full.bottomRows(n), kReorderTol<S>, kReorderTol<S>);
    for (Index i = 0; i < n; ++i)
      for (Index j = T - n + i + 1; j < T; ++j) REQUIRE(w_tail(i, j) == S(0));
  }
}

// =======================================================================================
// Masks: converters, broadcasting, combination
// =======================================================================================

TEST_CASE("mask.hpp: converters from other conventions agree", "[attention][property]") {
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    const Index B = random_index(rng, 1, 3), H = random_index(rng, 1, 3);
    const Index L = random_index(rng, 1, 5), Sk = random_index(rng, 1, 6);
    CAPTURE(seed, B, H, L, Sk);
    const Tensor<bool> m = random_bools({L, Sk}, rng, 0.4);  // true = blocked
    Tensor<bool> not_m = m;
    for (Index i = 0; i < m.size(); ++i) not_m.data()[i] = !m.data()[i];
    const auto grid = [&](const Mask& mask) { return blocked_grid(mask, B, H, L, Sk); };
    const std::vector<bool> want = grid(Mask::deny(m));
    for (Index b = 0; b < B; ++b)  // deny itself: (b, h, i, j) blocked iff m(i, j)
      for (Index h = 0; h < H; ++h)
        for (Index i = 0; i < L; ++i)
          for (Index j = 0; j < Sk; ++j)
            REQUIRE(want[static_cast<std::size_t>(((b * H + h) * L + i) * Sk + j)] == m(i, j));

    // PyTorch MHA bool (true = blocked) == deny; PyTorch SDPA bool (true = attend) ==
    // allow == deny of the complement.
    CHECK(grid(Mask::from_torch_mha(m, H)) == want);
    CHECK(grid(Mask::from_torch_sdpa(not_m)) == want);
    CHECK(grid(Mask::allow(not_m)) == want);
    CHECK(grid(Mask::deny(BoolMatrix(m.as_matrix()))) == want);
    CHECK(grid(Mask::allow(BoolMatrix(not_m.as_matrix()))) == want);
    // Keras 0/1 (1 = attend), as float and as int64.
    CHECK(grid(Mask::from_keras(not_m.cast<float>())) == want);
    CHECK(grid(Mask::from_keras(not_m.cast<std::int64_t>())) == want);
    // Additive 0/-inf.
    Tensor<double> additive({L, Sk}, 0.0);
    for (Index i = 0; i < m.size(); ++i)
      if (m.data()[i]) additive.data()[i] = -inf<double>;
    CHECK(grid(Mask::from_additive(additive)) == want);
    CHECK(grid(Mask::additive(additive.cast<float>())) == want);

    // And the attention they produce is identical (0 + score is exact).
    const Tensor<double> q = random_tensor<double>({B, H, L, 3}, rng);
    const Tensor<double> k = random_tensor<double>({B, H, Sk, 3}, rng);
    const Tensor<double> v = random_tensor<double>({B, H, Sk, 2}, rng);
    const auto ref = attend::scaled_dot_product_attention(q, k, v, Mask::deny(m));
    for (const Mask& other : {Mask::from_torch_sdpa(not_m), Mask::from_keras(not_m.cast<double>()),
                              Mask::from_additive(additive), Mask::from_torch_mha(m, H)}) {
      const auto r = attend::scaled_dot_product_attention(q, k, v, other);
      require_close(r.attn_weights, ref.attn_weights, 0.0);
      require_close(r.output, ref.output, 0.0);
    }

    // PyTorch MHA's [B * H, L, S] mask is indexed b * H + h.
    const Tensor<bool> m3 = random_bools({B * H, L, Sk}, rng, 0.4);
    const Mask per_head = Mask::from_torch_mha(m3, H);
    REQUIRE(per_head.blocked().has_value());
    CHECK(per_head.blocked()->shape() == Shape{B, H, L, Sk});
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h)
        for (Index i = 0; i < L; ++i)
          for (Index j = 0; j < Sk; ++j)
            REQUIRE(per_head.is_blocked(b, h, i, j) == m3(b * H + h, i, j));
    // Its additive twin: finite entries become the bias, -inf entries block.
    Tensor<double> a3 = random_tensor<double>({B * H, L, Sk}, rng);
    a3(0, 0, 0) = -inf<double>;
    const Mask per_head_add = Mask::from_torch_mha_additive(a3, H);
    REQUIRE(per_head_add.bias().has_value());
    CHECK(per_head_add.is_blocked(0, 0, 0, 0));
    const Index bl = B - 1, hl = H - 1;
    CHECK((*per_head_add.bias())(bl, hl, L - 1, Sk - 1) == a3(bl * H + hl, L - 1, Sk - 1));
  }
}

TEST_CASE("mask.hpp: stored tensors broadcast against [B, H, L, S]", "[attention]") {
  Rng rng(3);
  const Index B = 2, H = 3, L = 4, Sk = 5;
  // 2-D [L, S]: the same for every batch and head.
  const Tensor<bool> m2 = random_bools({L, Sk}, rng, 0.5);
  const Mask d2 = Mask::deny(m2);
  CHECK(d2.blocked()->shape() == Shape{1, 1, L, Sk});
  // 3-D [H, L, S]: lines up with H (PyTorch's right alignment).
  const Tensor<bool> m3 = random_bools({H, L, Sk}, rng, 0.5);
  const Mask d3 = Mask::deny(m3);
  CHECK(d3.blocked()->shape() == Shape{1, H, L, Sk});
  // 4-D [B, 1, 1, S]: per batch, shared by heads and queries.
  const Tensor<bool> m4 = random_bools({B, 1, 1, Sk}, rng, 0.5);
  const Mask d4 = Mask::deny(m4);
  for (Index b = 0; b < B; ++b) {
    for (Index h = 0; h < H; ++h) {
      for (Index i = 0; i < L; ++i) {
        for (Index j = 0; j < Sk; ++j) {
          REQUIRE(d2.is_blocked(b, h, i, j) == m2(i, j));
          REQUIRE(d3.is_blocked(b, h, i, j) == m3(h, i, j));
          REQUIRE(d4.is_blocked(b, h, i, j) == m4(b, 0, 0, j));
        }
      }
    }
  }
  // Every one of them fits scores [B, H, L, S]; a 3-D mask with the wrong H does not.
  for (const Mask* m : {&d2, &d3, &d4}) REQUIRE_NOTHROW(m->check(B, H, L, Sk, "f", "mask"));
  REQUIRE_THROWS_AS(d3.check(B, 2, L, Sk, "f", "mask"), attend::shape_error);
  REQUIRE_THROWS_WITH(d3.check(B, 2, L, Sk, "f", "mask"),
                      "f: mask is [1, 3, 4, 5], expected broadcastable to [2, 2, 4, 5]");

  // The same rules drive attention: a 3-D mask on [B, H, L, d] inputs picks mask[h].
  const Tensor<double> q = random_tensor<double>({B, H, L, 3}, rng);
  const Tensor<double> k = random_tensor<double>({B, H, Sk, 3}, rng);
  const Tensor<double> v = random_tensor<double>({B, H, Sk, 2}, rng);
  const auto r = attend::scaled_dot_product_attention(q, k, v, d3);
  for (Index b = 0; b < B; ++b) {
    for (Index h = 0; h < H; ++h) {
      const Matrix<double> want = attend::scaled_dot_product_attention(
          q.matrix(b, h), k.matrix(b, h), v.matrix(b, h), Mask::deny(BoolMatrix(m3.matrix(h))));
      require_close(r.output.matrix(b, h), want, kSameKernelTol<double>);
    }
  }
  // Rank-3 inputs [N, L, d]: N takes the H slot, so a [N, L, S] mask lines up with N.
  const Tensor<double> q3 = q.reshaped({B * H, L, 3}), k3 = k.reshaped({B * H, Sk, 3});
  const Tensor<double> v3 = v.reshaped({B * H, Sk, 2});
  const Tensor<bool> mn = random_bools({B * H, L, Sk}, rng, 0.5);
  const auto r3 = attend::scaled_dot_product_attention(q3, k3, v3, Mask::deny(mn));
  REQUIRE(r3.output.shape() == Shape{B * H, L, 2});
  for (Index n = 0; n < B * H; ++n) {
    const Matrix<double> want = attend::scaled_dot_product_attention(
        q3.matrix(n), k3.matrix(n), v3.matrix(n), Mask::deny(BoolMatrix(mn.matrix(n))));
    require_close(r3.output.matrix(n), want, kSameKernelTol<double>);
  }
}

TEST_CASE("mask.hpp: operator& ORs blocks, adds biases and keeps the smaller causal offset",
          "[attention]") {
  Rng rng(11);
  const Index B = 2, L = 3, Sk = 4;
  const Tensor<bool> a = random_bools({L, Sk}, rng, 0.4);
  const Tensor<bool> p = random_bools({B, Sk}, rng, 0.4);
  // [1, 1, L, S] & [B, 1, 1, S] -> [B, 1, L, S], blocked where either blocks.
  const Mask both = Mask::deny(a) & Mask::key_padding(p);
  REQUIRE(both.blocked().has_value());
  CHECK(both.blocked()->shape() == Shape{B, 1, L, Sk});
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < L; ++i)
      for (Index j = 0; j < Sk; ++j) REQUIRE(both.is_blocked(b, 0, i, j) == (a(i, j) || p(b, j)));
  CHECK(blocked_grid(Mask::key_padding(p) & Mask::deny(a), B, 1, L, Sk) ==
        blocked_grid(both, B, 1, L, Sk));  // commutative

  // Biases add: [L, S] + [L, S]; a -inf in one of them blocks, with a 0 bias there.
  Matrix<double> x(L, Sk), y(L, Sk);
  x << 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12;
  y << 0.5, -inf<double>, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1;
  const Mask sum = Mask::additive(x) & Mask::additive(y);
  REQUIRE(sum.bias().has_value());
  const Tensor<double>& bias = *sum.bias();
  CHECK(bias(0, 0, 0, 0) == 1.5);
  CHECK(bias(0, 0, 0, 1) == 2.0);  // -inf moved to blocked, its bias is 0
  CHECK(bias(0, 0, 2, 3) == 11.0);
  CHECK(sum.is_blocked(0, 0, 0, 1));
  CHECK_FALSE(sum.is_blocked(0, 0, 0, 0));

  // Causal offsets take the minimum; an empty mask is the identity.
  CHECK((Mask::causal(2) & Mask::causal(0)).causal_offset() == Index(0));
  CHECK((Mask::causal(-1) & Mask::causal(3)).causal_offset() == Index(-1));
  CHECK((Mask::causal(1) & Mask()).causal_offset() == Index(1));
  CHECK((Mask() & Mask::causal(4)).causal_offset() == Index(4));
  CHECK((Mask() & Mask()).empty());
  // Causal & deny: both apply.
  const Mask cd = Mask::causal() & Mask::deny(a);
  for (Index i = 0; i < L; ++i)
    for (Index j = 0; j < Sk; ++j) REQUIRE(cd.is_blocked(1, 0, i, j) == (j > i || a(i, j)));

  // apply() on a tile (row0, col0) equals the same block of apply() on the whole matrix.
  const Mask mixed = Mask::causal(1) & Mask::deny(a) & Mask::additive(x);
  Matrix<double> whole = random_matrix<double>(L, Sk, rng);
  Matrix<double> tile = whole.block(1, 2, 2, 2);
  mixed.apply<double>(0, 0, 0, 0, whole);
  mixed.apply<double>(0, 0, 1, 2, tile);
  require_close(tile, whole.block(1, 2, 2, 2), 0.0);

  // Shapes that do not broadcast against each other.
  const Mask m23 = Mask::deny(Tensor<bool>({2, 3}));
  const Mask m43 = Mask::deny(Tensor<bool>({4, 3}));
  REQUIRE_THROWS_AS(m23 & m43, attend::shape_error);
  REQUIRE_THROWS_WITH(m23 & m43,
                      "Mask::operator&: masks [1, 1, 2, 3] and [1, 1, 4, 3] do not "
                      "broadcast");
}

// =======================================================================================
// Multi-head attention
// =======================================================================================

TEMPLATE_TEST_CASE("multihead.hpp: H = 1 equals single-head SDPA on projections by hand",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    Rng rng(seed);
    const Index E = random_index(rng, 1, 8), L = random_index(rng, 1, 6);
    const Index Sk = random_index(rng, 1, 7);
    CAPTURE(seed, E, L, Sk);
    MultiheadAttention<S> mha(mha_options(E, 1), seed);
    randomize_biases(mha, rng);
    const Matrix<S> xq = random_matrix<S>(L, E, rng), xk = random_matrix<S>(Sk, E, rng);
    const Matrix<S> xv = random_matrix<S>(Sk, E, rng);
    // By hand with Eigen: Q = xq W_q^T + b_q, K, V alike; one head of width E.
    const Matrix<S> wq = mha.in_proj_weight.topRows(E), wk = mha.in_proj_weight.middleRows(E, E);
    const Matrix<S> wv = mha.in_proj_weight.bottomRows(E);
    const Matrix<S> q = (xq * wq.transpose()).rowwise() + mha.in_proj_bias.head(E).transpose();
    const Matrix<S> k =
        (xk * wk.transpose()).rowwise() + mha.in_proj_bias.segment(E, E).transpose();
    const Matrix<S> v = (xv * wv.transpose()).rowwise() + mha.in_proj_bias.tail(E).transpose();
    Matrix<S> w;
    const Matrix<S> att = attend::scaled_dot_product_attention(q, k, v, Mask(), std::nullopt, &w);
    const Matrix<S> want =
        (att * mha.out_proj_weight.transpose()).rowwise() + mha.out_proj_bias.transpose();

    const auto r = mha.forward(Tensor<S>::from_matrix(xq), Tensor<S>::from_matrix(xk),
                               Tensor<S>::from_matrix(xv));
    REQUIRE(r.output.shape() == Shape{L, E});
    REQUIRE(r.attn_weights.shape() == Shape{L, Sk});
    require_close(r.output.as_matrix(), want, kReorderTol<S>, kReorderTol<S>);
    require_close(r.attn_weights.as_matrix(), w, kReorderTol<S>, kReorderTol<S>);
  }
}

TEMPLATE_TEST_CASE("multihead.hpp: H heads with masks equal per-head SDPA by hand",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    Rng rng(seed);
    const Index H = random_index(rng, 1, 3), E = H * random_index(rng, 1, 3);
    const Index B = random_index(rng, 1, 3), L = random_index(rng, 1, 5);
    const Index Sk = random_index(rng, 1, 6);
    CAPTURE(seed, H, E, B, L, Sk);
    MultiheadAttention<S> mha(mha_options(E, H), seed + 100);
    randomize_biases(mha, rng);
    std::vector<Matrix<S>> xq, xk, xv;
    for (Index b = 0; b < B; ++b) {
      xq.push_back(random_matrix<S>(L, E, rng));
      xk.push_back(random_matrix<S>(Sk, E, rng));
      xv.push_back(random_matrix<S>(Sk, E, rng));
    }
    // attn_mask in PyTorch's [B * H, L, S] layout, and a bool key padding mask [B, S].
    const Tensor<bool> attn = random_bools({B * H, L, Sk}, rng, 0.3);
    const Tensor<bool> padded = random_bools({B, Sk}, rng, 0.3);
    MultiheadAttentionArgs args;
    args.attn_mask = Mask::from_torch_mha(attn, H);
    args.key_padding_mask = Mask::key_padding(padded);
    args.average_attn_weights = false;
    const auto r = mha.forward(stack(xq, false), stack(xk, false), stack(xv, false), args);
    REQUIRE(r.output.shape() == Shape{L, B, E});
    REQUIRE(r.attn_weights.shape() == Shape{B, H, L, Sk});
    for (Index b = 0; b < B; ++b) {
      CAPTURE(b);
      std::vector<BoolMatrix> blocked;
      for (Index h = 0; h < H; ++h) {
        BoolMatrix m = attn.matrix(b * H + h);
        for (Index j = 0; j < Sk; ++j)
          if (padded(b, j)) m.col(j).setConstant(true);
        blocked.push_back(m);
      }
      std::vector<Matrix<S>> weights;
      const std::size_t ub = static_cast<std::size_t>(b);
      const Matrix<S> want = mha_by_hand(mha, xq[ub], xk[ub], xv[ub], blocked, &weights);
      require_close(unstack(r.output, b, false), want, kReorderTol<S>, kReorderTol<S>);
      for (Index h = 0; h < H; ++h) {
        require_close(r.attn_weights.matrix(b, h), weights[static_cast<std::size_t>(h)],
                      kReorderTol<S>, kReorderTol<S>);
      }
    }
  }
}

TEMPLATE_TEST_CASE("multihead.hpp: separate kdim/vdim projections equal the computation by hand",
                   "[attention][property]", float, double) {
  using S = TestType;
  Rng rng(21);
  const Index E = 6, H = 2, kdim = 4, vdim = 3, L = 3, Sk = 5;
  MultiheadAttention<S> mha(mha_options(E, H, true, true, kdim, vdim), 5);
  REQUIRE_FALSE(mha.packed());
  CHECK(mha.in_proj_weight.size() == 0);
  CHECK(mha.k_proj_weight.rows() == E);
  CHECK(mha.k_proj_weight.cols() == kdim);
  CHECK(mha.v_proj_weight.cols() == vdim);
  randomize_biases(mha, rng);
  const Matrix<S> xq = random_matrix<S>(L, E, rng), xk = random_matrix<S>(Sk, kdim, rng);
  const Matrix<S> xv = random_matrix<S>(Sk, vdim, rng);
  const auto r = mha.forward(Tensor<S>::from_matrix(xq).reshaped({1, L, E}),
                             Tensor<S>::from_matrix(xk).reshaped({1, Sk, kdim}),
                             Tensor<S>::from_matrix(xv).reshaped({1, Sk, vdim}));
  std::vector<Matrix<S>> weights;
  const Matrix<S> want = mha_by_hand(mha, xq, xk, xv, {}, &weights);
  require_close(r.output.matrix(0), want, kReorderTol<S>, kReorderTol<S>);
  require_close(r.attn_weights.matrix(0), Matrix<S>((weights[0] + weights[1]) / S(2)),
                kReorderTol<S>, kReorderTol<S>);
}

TEMPLATE_TEST_CASE("multihead.hpp: self-attention is permutation-equivariant",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    Rng rng(seed);
    const Index H = random_index(rng, 1, 3), E = H * random_index(rng, 1, 3);
    const Index L = random_index(rng, 2, 7);
    CAPTURE(seed, H, E, L);
    MultiheadAttention<S> mha(mha_options(E, H), seed);
    randomize_biases(mha, rng);
    const Matrix<S> x = random_matrix<S>(L, E, rng, 2.0);
    const std::vector<Index> perm = random_permutation(L, rng);
    const auto r = mha.forward(Tensor<S>::from_matrix(x));
    const auto rp = mha.forward(Tensor<S>::from_matrix(permute_rows(x, perm)));
    require_close(rp.output.as_matrix(), permute_rows(Matrix<S>(r.output.as_matrix()), perm),
                  kReorderTol<S>, kReorderTol<S>);
  }
}

TEMPLATE_TEST_CASE("multihead.hpp: the self-attention path equals the cross path on copies",
                   "[attention][property]", float, double) {
  using S = TestType;
  Rng rng(8);
  const Index E = 6, H = 3, B = 2, L = 4;
  MultiheadAttention<S> mha(mha_options(E, H), 3);
  randomize_biases(mha, rng);
  const Tensor<S> x = random_tensor<S>({L, B, E}, rng);
  const Tensor<S> x1 = x, x2 = x;  // other objects: the general (unpacked GEMM) path
  const auto self = mha.forward(x);
  const auto same = mha.forward(x, x, x);
  const auto cross = mha.forward(x, x1, x2);
  require_close(same.output, self.output, 0.0);
  require_close(cross.output, self.output, kReorderTol<S>, kReorderTol<S>);
  require_close(cross.attn_weights, self.attn_weights, kReorderTol<S>, kReorderTol<S>);
}

TEMPLATE_TEST_CASE("multihead.hpp: batch_first, unbatched and averaged weights are consistent",
                   "[attention][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    Rng rng(seed);
    const Index H = random_index(rng, 1, 3), E = H * random_index(rng, 1, 3);
    const Index B = random_index(rng, 1, 3), L = random_index(rng, 1, 5);
    const Index Sk = random_index(rng, 1, 6);
    CAPTURE(seed, H, E, B, L, Sk);
    MultiheadAttention<S> seq_first(mha_options(E, H), seed);
    randomize_biases(seq_first, rng);
    MultiheadAttention<S> batch_first = seq_first;  // same parameters
    batch_first.options.batch_first = true;
    std::vector<Matrix<S>> xq, xkv;
    for (Index b = 0; b < B; ++b) {
      xq.push_back(random_matrix<S>(L, E, rng));
      xkv.push_back(random_matrix<S>(Sk, E, rng));
    }
    MultiheadAttentionArgs per_head;
    per_head.average_attn_weights = false;
    per_head.is_causal = true;
    MultiheadAttentionArgs averaged = per_head;
    averaged.average_attn_weights = true;

    const Tensor<S> kv_sf = stack(xkv, false), kv_bf = stack(xkv, true);
    const auto sf = seq_first.forward(stack(xq, false), kv_sf, kv_sf, per_head);
    const auto bf = batch_first.forward(stack(xq, true), kv_bf, kv_bf, per_head);
    REQUIRE(sf.output.shape() == Shape{L, B, E});
    REQUIRE(bf.output.shape() == Shape{B, L, E});
    // batch_first only transposes the layout of inputs and output; weights are [B, H, L, S]
    // either way.
    for (Index b = 0; b < B; ++b)
      require_close(unstack(bf.output, b, true), unstack(sf.output, b, false), 0.0);
    require_close(bf.attn_weights, sf.attn_weights, 0.0);

    // average_attn_weights = mean over heads of the per-head weights.
    const auto avg = seq_first.forward(stack(xq, false), kv_sf, kv_sf, averaged);
    REQUIRE(avg.attn_weights.shape() == Shape{B, L, Sk});
    for (Index b = 0; b < B; ++b) {
      Matrix<S> mean = Matrix<S>::Zero(L, Sk);
      for (Index h = 0; h < H; ++h) mean += sf.attn_weights.matrix(b, h);
      mean /= S(H);
      require_close(avg.attn_weights.matrix(b), mean, kSameKernelTol<S>, kSameKernelTol<S>);
    }
    require_close(avg.output, sf.output, 0.0);

    // Unbatched [L, E] equals batched with B = 1, in both layouts.
    for (const MultiheadAttention<S>* m : {&seq_first, &batch_first}) {
      const bool bfirst = m->options.batch_first;
      CAPTURE(bfirst);
      const Tensor<S> q1 = Tensor<S>::from_matrix(xq[0]), kv1 = Tensor<S>::from_matrix(xkv[0]);
      const auto un = m->forward(q1, kv1, kv1, per_head);
      const auto un_avg = m->forward(q1, kv1, kv1, averaged);
      const auto one = m->forward(stack(std::vector<Matrix<S>>{xq[0]}, bfirst),
                                  stack(std::vector<Matrix<S>>{xkv[0]}, bfirst),
                                  stack(std::vector<Matrix<S>>{xkv[0]}, bfirst), per_head);
      REQUIRE(un.output.shape() == Shape{L, E});
      REQUIRE(un.attn_weights.shape() == Shape{H, L, Sk});
      REQUIRE(un_avg.attn_weights.shape() == Shape{L, Sk});
      require_close(un.output.as_matrix(), unstack(one.output, 0, bfirst), 0.0);
      require_close(un.attn_weights.as_matrix(), one.attn_weights.as_matrix(), 0.0);
      require_close(un_avg.attn_weights.as_matrix(), avg.attn_weights.matrix(0), 0.0);
    }
  }
}

TEMPLATE_TEST_CASE("multihead.hpp: is_causal, need_weights and weight shapes",
                   "[attention][property]", float, double) {
  using S = TestType;
  Rng rng(4);
  const Index E = 4, H = 2, B = 2, L = 3;
  MultiheadAttention<S> mha(mha_options(E, H, true), 9);
  randomize_biases(mha, rng);
  const Tensor<S> x = random_tensor<S>({B, L, E}, rng);
  MultiheadAttentionArgs causal_flag;
  causal_flag.is_causal = true;
  MultiheadAttentionArgs causal_mask;
  causal_mask.attn_mask = Mask::causal();
  const auto a = mha.forward(x, causal_flag);
  const auto b = mha.forward(x, causal_mask);
  require_close(a.output, b.output, 0.0);
  require_close(a.attn_weights, b.attn_weights, 0.0);
  for (Index bb = 0; bb < B; ++bb)
    for (Index i = 0; i < L; ++i)
      for (Index j = i + 1; j < L; ++j) REQUIRE(a.attn_weights(bb, i, j) == S(0));

  MultiheadAttentionArgs no_weights = causal_flag;
  no_weights.need_weights = false;
  const auto c = mha.forward(x, no_weights);
  CHECK(c.attn_weights.size() == 0);
  // need_weights = false runs the fused kernel (online softmax, another summation order):
  // equal to rounding, a few ulps of the O(1) outputs.
  constexpr double fused_vs_reference = std::is_same_v<S, float> ? 1e-6 : 1e-14;
  require_close(c.output, a.output, fused_vs_reference);
}

TEMPLATE_TEST_CASE("multihead.hpp: fully masked rows give zero weights and a zero attention",
                   "[attention][property]", float, double) {
  using S = TestType;
  Rng rng(6);
  const Index E = 4, H = 2, B = 2, L = 3, Sk = 4;
  // Batch 1 has no valid key; in batch 0, attn_mask blocks every key of query 1.
  Tensor<bool> attn({L, Sk}, false);
  for (Index j = 0; j < Sk; ++j) attn(1, j) = true;
  MultiheadAttentionArgs args;
  args.key_padding_mask = Mask::key_padding_lengths({Sk, 0}, Sk);
  args.attn_mask = Mask::from_torch_mha(attn, H);
  const Tensor<S> q = random_tensor<S>({L, B, E}, rng), kv = random_tensor<S>({Sk, B, E}, rng);
  for (const bool bias : {true, false}) {
    CAPTURE(bias);
    MultiheadAttention<S> mha(mha_options(E, H, false, bias), 2);
    randomize_biases(mha, rng);
    // The heads' concatenation is zero there, so the output row is out_proj(0) = the
    // out_proj bias (exactly zero without bias); PyTorch gives NaN.
    const Matrix<S> out_bias =
        bias ? Matrix<S>(mha.out_proj_bias.transpose()) : Matrix<S>::Zero(1, E);
    for (const bool need_weights : {true, false}) {
      for (const bool average : {true, false}) {
        CAPTURE(need_weights, average);
        MultiheadAttentionArgs a = args;
        a.need_weights = need_weights;
        a.average_attn_weights = average;
        const auto r = mha.forward(q, kv, kv, a);
        REQUIRE(r.output.as_matrix().allFinite());
        const Matrix<S> out0 = unstack(r.output, 0, false), out1 = unstack(r.output, 1, false);
        for (Index i = 0; i < L; ++i) require_close(out1.row(i), out_bias, 0.0);
        require_close(out0.row(1), out_bias, 0.0);
        if (!need_weights) {
          CHECK(r.attn_weights.size() == 0);
          continue;
        }
        const Matrix<S> w = r.attn_weights.as_matrix();  // rows: (b, [h,] i)
        REQUIRE(w.allFinite());
        const Index rows_per_batch = average ? L : H * L;
        for (Index row = 0; row < w.rows(); ++row) {
          const Index b = row / rows_per_batch, i = row % L;
          const bool all_masked = b == 1 || i == 1;
          const double want = all_masked ? 0.0 : 1.0;
          REQUIRE(std::abs(static_cast<double>(w.row(row).sum()) - want) <= kRowSumTol<S>);
          if (all_masked) require_close(w.row(row), Matrix<S>::Zero(1, Sk), 0.0);
        }
      }
    }
  }
}

TEST_CASE("multihead.hpp: float and double agree to ~1e-5", "[attention][property]") {
  Rng rng(12);
  const Index E = 8, H = 2, B = 2, L = 5, Sk = 6;
  MultiheadAttention<double> md(mha_options(E, H), 1);
  randomize_biases(md, rng);
  MultiheadAttention<float> mf(mha_options(E, H), 1);
  mf.in_proj_weight = md.in_proj_weight.cast<float>();
  mf.in_proj_bias = md.in_proj_bias.cast<float>();
  mf.out_proj_weight = md.out_proj_weight.cast<float>();
  mf.out_proj_bias = md.out_proj_bias.cast<float>();
  const Tensor<double> q = random_tensor<double>({L, B, E}, rng);
  const Tensor<double> kv = random_tensor<double>({Sk, B, E}, rng);
  MultiheadAttentionArgs args;
  args.key_padding_mask = Mask::key_padding_lengths({Sk, Sk - 2}, Sk);
  const auto rd = md.forward(q, kv, kv, args);
  const auto rf = mf.forward(q.cast<float>(), kv.cast<float>(), kv.cast<float>(), args);
  require_close(rf.output, rd.output, kFloatVsDoubleTol, kFloatVsDoubleTol);
  require_close(rf.attn_weights, rd.attn_weights, kFloatVsDoubleTol, kFloatVsDoubleTol);
}

// =======================================================================================
// Error paths
// =======================================================================================

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: wrong shapes in the matrix form are rejected",
                   "[attention][error]", float, double) {
  using S = TestType;
  const Matrix<S> q = Matrix<S>::Zero(3, 4), k = Matrix<S>::Zero(5, 4), v = Matrix<S>::Zero(5, 2);
  const auto sdpa = [](const Matrix<S>& a, const Matrix<S>& b, const Matrix<S>& c,
                       const Mask& m = Mask()) {
    return attend::scaled_dot_product_attention(a, b, c, m);
  };
  REQUIRE_THROWS_AS(sdpa(q, Matrix<S>::Zero(5, 3), v), attend::shape_error);
  REQUIRE_THROWS_WITH(
      sdpa(q, Matrix<S>::Zero(5, 3), v),
      "scaled_dot_product_attention: key is [5, 3], expected [S, 4] (d_k of query)");
  REQUIRE_THROWS_AS(sdpa(q, k, Matrix<S>::Zero(4, 2)), attend::shape_error);
  REQUIRE_THROWS_WITH(
      sdpa(q, k, Matrix<S>::Zero(4, 2)),
      "scaled_dot_product_attention: value is [4, 2], expected [5, d_v] (S of key)");
  // A mask that does not broadcast against [1, 1, L, S] = [1, 1, 3, 5].
  const Mask wrong = Mask::deny(BoolMatrix::Constant(2, 5, false));
  REQUIRE_THROWS_AS(sdpa(q, k, v, wrong), attend::shape_error);
  REQUIRE_THROWS_WITH(sdpa(q, k, v, wrong),
                      "scaled_dot_product_attention: mask is [1, 1, 2, 5], expected broadcastable "
                      "to [1, 1, 3, 5]");
  REQUIRE_THROWS_WITH(sdpa(q, k, v, Mask::key_padding_lengths({5, 5}, 5)),
                      "scaled_dot_product_attention: mask is [2, 1, 1, 5], expected broadcastable "
                      "to [1, 1, 3, 5]");
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: NaN/Inf inputs and a non-finite scale are rejected",
                   "[attention][error]", float, double) {
  using S = TestType;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  Matrix<S> q = Matrix<S>::Zero(3, 4), k = Matrix<S>::Zero(5, 4), v = Matrix<S>::Zero(5, 2);
  const auto sdpa = [](const Matrix<S>& a, const Matrix<S>& b, const Matrix<S>& c,
                       std::optional<double> scale = std::nullopt) {
    return attend::scaled_dot_product_attention(a, b, c, Mask(), scale);
  };
  Matrix<S> bad = q;
  bad(1, 2) = nan;
  REQUIRE_THROWS_AS(sdpa(bad, k, v), attend::value_error);
  REQUIRE_THROWS_WITH(sdpa(bad, k, v),
                      "scaled_dot_product_attention: query has a non-finite value (nan) at [1, 2]");
  bad = k;
  bad(4, 0) = inf<S>;
  REQUIRE_THROWS_AS(sdpa(q, bad, v), attend::value_error);
  REQUIRE_THROWS_WITH(sdpa(q, bad, v),
                      "scaled_dot_product_attention: key has a non-finite value (inf) at [4, 0]");
  bad = v;
  bad(0, 1) = -inf<S>;
  REQUIRE_THROWS_AS(sdpa(q, k, bad), attend::value_error);
  REQUIRE_THROWS_WITH(
      sdpa(q, k, bad),
      "scaled_dot_product_attention: value has a non-finite value (-inf) at [0, 1]");
  REQUIRE_THROWS_AS(sdpa(q, k, v, inf<double>), attend::value_error);
  REQUIRE_THROWS_WITH(sdpa(q, k, v, inf<double>),
                      "scaled_dot_product_attention: scale is inf, expected a finite value");
  REQUIRE_THROWS_WITH(sdpa(q, k, v, std::numeric_limits<double>::quiet_NaN()),
                      "scaled_dot_product_attention: scale is nan, expected a finite value");

  // Tensor form: same messages, with the full index into the caller's tensor.
  const Tensor<S> tq({2, 2, 3, 4}), tk({2, 2, 5, 4});
  Tensor<S> tv({2, 2, 5, 2});
  tv(1, 0, 2, 1) = nan;
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(tq, tk, tv), attend::value_error);
  REQUIRE_THROWS_WITH(
      attend::scaled_dot_product_attention(tq, tk, tv),
      "scaled_dot_product_attention: value has a non-finite value (nan) at [1, 0, 2, 1]");
  tv.fill(S(0));
  Tensor<S> tq_bad = tq, tk_bad = tk;
  tq_bad(0, 1, 2, 3) = inf<S>;
  tk_bad(1, 1, 0, 0) = nan;
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(tq_bad, tk, tv), attend::value_error);
  REQUIRE_THROWS_WITH(
      attend::scaled_dot_product_attention(tq_bad, tk, tv),
      "scaled_dot_product_attention: query has a non-finite value (inf) at [0, 1, 2, 3]");
  REQUIRE_THROWS_WITH(
      attend::scaled_dot_product_attention(tq, tk_bad, tv),
      "scaled_dot_product_attention: key has a non-finite value (nan) at [1, 1, 0, 0]");
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(tq, tk, tv, Mask(), -inf<double>),
                      "scaled_dot_product_attention: scale is -inf, expected a finite value");
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: wrong ranks and shapes in the tensor form are rejected",
                   "[attention][error]", float, double) {
  using S = TestType;
  const auto sdpa = [](const Shape& q, const Shape& k, const Shape& v, const Mask& m = Mask()) {
    return attend::scaled_dot_product_attention(Tensor<S>(q), Tensor<S>(k), Tensor<S>(v), m);
  };
  REQUIRE_THROWS_AS(sdpa({4}, {4}, {4}), attend::shape_error);
  REQUIRE_THROWS_WITH(sdpa({4}, {4}, {4}),
                      "scaled_dot_product_attention: query is [4], expected rank >= 2 ([..., L, "
                      "d_k])");
  // Rank 5 is valid (sdpa_options_test.cpp), but key must have the query's rank.
  REQUIRE_THROWS_WITH(sdpa({1, 1, 1, 3, 4}, {1, 1, 5, 4}, {1, 1, 5, 2}),
                      "scaled_dot_product_attention: key is [1, 1, 5, 4], expected [1, 1, 1, S, "
                      "4]");
  // key: rank, d_k, and leading extents must match the query (S is free).
  REQUIRE_THROWS_AS(sdpa({2, 3, 4}, {3, 4}, {3, 2}), attend::shape_error);
  REQUIRE_THROWS_WITH(sdpa({2, 3, 4}, {3, 4}, {3, 2}),
                      "scaled_dot_product_attention: key is [3, 4], expected [2, S, 4]");
  REQUIRE_THROWS_WITH(sdpa({2, 2, 3, 4}, {2, 2, 5, 3}, {2, 2, 5, 2}),
                      "scaled_dot_product_attention: key is [2, 2, 5, 3], expected [2, 2, S, 4]");
  REQUIRE_THROWS_WITH(sdpa({2, 2, 3, 4}, {1, 2, 5, 4}, {1, 2, 5, 2}),
                      "scaled_dot_product_attention: key is [1, 2, 5, 4], expected [2, 2, S, 4]");
  // value: same leading extents and S as the key (d_v is free).
  REQUIRE_THROWS_AS(sdpa({2, 2, 3, 4}, {2, 2, 5, 4}, {2, 2, 4, 6}), attend::shape_error);
  REQUIRE_THROWS_WITH(sdpa({2, 2, 3, 4}, {2, 2, 5, 4}, {2, 2, 4, 6}),
                      "scaled_dot_product_attention: value is [2, 2, 4, 6], expected [2, 2, 5, "
                      "d_v]");
  REQUIRE_THROWS_WITH(sdpa({3, 4}, {5, 4}, {5}),
                      "scaled_dot_product_attention: value is [5], expected [5, d_v]");
  // attn_mask: a [3, L, S] mask lines up with H = 2 and does not broadcast.
  const Mask wrong = Mask::deny(Tensor<bool>({3, 3, 5}));
  REQUIRE_THROWS_AS(sdpa({2, 2, 3, 4}, {2, 2, 5, 4}, {2, 2, 5, 2}, wrong), attend::shape_error);
  REQUIRE_THROWS_WITH(sdpa({2, 2, 3, 4}, {2, 2, 5, 4}, {2, 2, 5, 2}, wrong),
                      "scaled_dot_product_attention: attn_mask is [1, 3, 3, 5], expected "
                      "broadcastable to [2, 2, 3, 5]");
  // Key padding for B = 3 on rank-3 inputs [N, L, d] (which have B = 1).
  REQUIRE_THROWS_WITH(
      sdpa({3, 3, 4}, {3, 5, 4}, {3, 5, 2}, Mask::key_padding_lengths({5, 5, 5}, 5)),
      "scaled_dot_product_attention: attn_mask is [3, 1, 1, 5], expected "
      "broadcastable to [3, 3, 5]");
}

TEMPLATE_TEST_CASE("mask.hpp: bad mask values and shapes are rejected", "[attention][error]", float,
                   double) {
  using S = TestType;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  REQUIRE_THROWS_AS(Mask::additive(Tensor<S>({2, 2}, std::vector<S>{0, nan, 0, 0})),
                    attend::value_error);
  REQUIRE_THROWS_WITH(Mask::additive(Tensor<S>({2, 2}, std::vector<S>{0, nan, 0, 0})),
                      "Mask::additive: bias has NaN at flat index 1; only finite values and -inf "
                      "are allowed");
  REQUIRE_THROWS_AS(Mask::additive(Tensor<S>({2, 2}, std::vector<S>{0, -inf<S>, 0, inf<S>})),
                    attend::value_error);
  REQUIRE_THROWS_WITH(Mask::additive(Tensor<S>({2, 2}, std::vector<S>{0, -inf<S>, 0, inf<S>})),
                      "Mask::additive: bias has +inf at flat index 3; only finite values and -inf "
                      "are allowed");
  REQUIRE_THROWS_WITH(Mask::from_additive(Tensor<S>({1, 2}, std::vector<S>{inf<S>, 0})),
                      "Mask::additive: bias has +inf at flat index 0; only finite values and -inf "
                      "are allowed");
  REQUIRE_THROWS_AS(Mask::additive(Tensor<S>({3})), attend::shape_error);
  REQUIRE_THROWS_WITH(Mask::additive(Tensor<S>({3})),
                      "Mask::additive: bias is [3], expected rank >= 2 broadcastable to [..., "
                      "L, S]");

  REQUIRE_THROWS_AS(Mask::from_keras(Tensor<S>({1, 3}, std::vector<S>{1, 2, 0})),
                    attend::value_error);
  REQUIRE_THROWS_WITH(Mask::from_keras(Tensor<S>({1, 3}, std::vector<S>{1, 2, 0})),
                      "Mask::from_keras: mask has value 2.000000 at flat index 1, expected 0 or 1");
  REQUIRE_THROWS_WITH(
      Mask::from_keras(Tensor<std::int64_t>({2, 2}, std::vector<std::int64_t>{0, 1, 1, -1})),
      "Mask::from_keras: mask has value -1.000000 at flat index 3, expected 0 or 1");
}

TEST_CASE("mask.hpp: bad lengths, ranks and head counts are rejected", "[attention][error]") {
  REQUIRE_THROWS_AS(Mask::key_padding_lengths({3, 6}, 5), attend::value_error);
  REQUIRE_THROWS_WITH(Mask::key_padding_lengths({3, 6}, 5),
                      "Mask::key_padding_lengths: lengths[1] is 6, expected in [0, 5]");
  REQUIRE_THROWS_WITH(Mask::key_padding_lengths({-1}, 5),
                      "Mask::key_padding_lengths: lengths[0] is -1, expected in [0, 5]");
  REQUIRE_NOTHROW(Mask::key_padding_lengths({0, 5}, 5));  // both ends are valid

  REQUIRE_THROWS_AS(Mask::key_padding(Tensor<bool>({2, 3, 4})), attend::shape_error);
  REQUIRE_THROWS_WITH(Mask::key_padding(Tensor<bool>({2, 3, 4})),
                      "Mask::key_padding: padded is [2, 3, 4], expected [B, S]");
  REQUIRE_THROWS_WITH(Mask::key_padding(Tensor<bool>({4})),
                      "Mask::key_padding: padded is [4], expected [B, S]");

  REQUIRE_THROWS_AS(Mask::deny(Tensor<bool>({3})), attend::shape_error);
  REQUIRE_THROWS_WITH(Mask::deny(Tensor<bool>({3})),
                      "Mask::deny: blocked is [3], expected rank >= 2 broadcastable to [..., L, "
                      "S]");
  // Rank 5 is valid now; its leading 1s are dropped down to rank 4.
  CHECK(Mask::deny(Tensor<bool>({1, 1, 1, 2, 3})).blocked()->shape() == Shape{1, 1, 2, 3});

  REQUIRE_THROWS_AS(Mask::from_torch_mha(Tensor<bool>({5, 3, 4}), 2), attend::shape_error);
  REQUIRE_THROWS_WITH(Mask::from_torch_mha(Tensor<bool>({5, 3, 4}), 2),
                      "Mask::from_torch_mha: attn_mask is [5, 3, 4], expected [L, S] or [B * "
                      "num_heads, L, S] with num_heads = 2");
  REQUIRE_THROWS_WITH(Mask::from_torch_mha_additive(Tensor<float>({1, 2, 3, 4}), 1),
                      "Mask::from_torch_mha_additive: attn_mask is [1, 2, 3, 4], expected [L, S] "
                      "or [B * num_heads, L, S] with num_heads = 1");
}

// Regression: allow() and the converters built on it (from_torch_sdpa, from_keras) used to
// forward to deny(), so their rank error named "Mask::deny: blocked" instead of the caller.
TEST_CASE("mask.hpp: allow-style converters name themselves in rank errors",
          "[attention][error][regression]") {
  REQUIRE_THROWS_AS(Mask::allow(Tensor<bool>({3})), attend::shape_error);
  CHECK_THROWS_WITH(Mask::allow(Tensor<bool>({3})),
                    "Mask::allow: allowed is [3], expected rank >= 2 broadcastable to [..., "
                    "L, S]");
  CHECK_THROWS_WITH(Mask::from_torch_sdpa(Tensor<bool>({3})),
                    "Mask::from_torch_sdpa: attn_mask is [3], expected rank >= 2 broadcastable "
                    "to [..., L, S]");
  CHECK_THROWS_WITH(Mask::from_keras(Tensor<float>({3})),
                    "Mask::from_keras: mask is [3], expected rank >= 2 broadcastable to [..., "
                    "L, S]");
}

TEMPLATE_TEST_CASE("multihead.hpp: bad options are rejected", "[attention][error]", float, double) {
  using S = TestType;
  using MHA = MultiheadAttention<S>;
  REQUIRE_THROWS_AS(MHA(mha_options(10, 3)), attend::value_error);
  REQUIRE_THROWS_WITH(MHA(mha_options(10, 3)),
                      "MultiheadAttention: embed_dim 10 is not divisible by num_heads 3");
  REQUIRE_THROWS_AS(MHA(mha_options(0, 2)), attend::value_error);
  REQUIRE_THROWS_WITH(MHA(mha_options(0, 2)),
                      "MultiheadAttention: embed_dim is 0 and num_heads is 2, expected both "
                      "positive");
  REQUIRE_THROWS_WITH(MHA(mha_options(8, 0)),
                      "MultiheadAttention: embed_dim is 8 and num_heads is 0, expected both "
                      "positive");
  REQUIRE_THROWS_WITH(MHA(mha_options(8, 2, false, true, -1, 0)),
                      "MultiheadAttention: kdim and vdim must be non-negative (0 = embed_dim)");
  const MHA ok(mha_options(8, 2));
  CHECK(ok.head_dim() == 4);
  CHECK(ok.packed());
  CHECK(ok.in_proj_weight.rows() == 24);
  CHECK(ok.in_proj_weight.cols() == 8);
  CHECK(ok.in_proj_bias.isZero(0));
  CHECK(ok.out_proj_bias.isZero(0));
  // out_proj.weight ~ U(-1/sqrt(8), 1/sqrt(8)) = U(-0.353553390593, 0.353553390593)
  CHECK(ok.out_proj_weight.cwiseAbs().maxCoeff() <= S(0.353553390593));
}

TEMPLATE_TEST_CASE("multihead.hpp: wrong query/key/value/mask shapes are rejected",
                   "[attention][error]", float, double) {
  using S = TestType;
  const MultiheadAttention<S> mha(mha_options(8, 2));  // seq-first [L, B, E]
  const Tensor<S> q({5, 2, 8}), kv({7, 2, 8});
  const auto fwd = [&](const Tensor<S>& a, const Tensor<S>& b, const Tensor<S>& c,
                       const MultiheadAttentionArgs& args = {}) {
    return mha.forward(a, b, c, args);
  };
  REQUIRE_THROWS_AS(fwd(Tensor<S>({1, 5, 2, 8}), kv, kv), attend::shape_error);
  REQUIRE_THROWS_WITH(fwd(Tensor<S>({1, 5, 2, 8}), kv, kv),
                      "MultiheadAttention::forward: query is [1, 5, 2, 8], expected [L, B, 8] or "
                      "[L, 8]");
  REQUIRE_THROWS_WITH(fwd(Tensor<S>({5, 2, 7}), kv, kv),
                      "MultiheadAttention::forward: query is [5, 2, 7], expected [L, 2, 8] "
                      "(embed_dim)");
  REQUIRE_THROWS_AS(fwd(q, Tensor<S>({7, 2, 6}), kv), attend::shape_error);
  REQUIRE_THROWS_WITH(fwd(q, Tensor<S>({7, 2, 6}), kv),
                      "MultiheadAttention::forward: key is [7, 2, 6], expected [S, 2, 8] (kdim)");
  REQUIRE_THROWS_WITH(fwd(q, Tensor<S>({7, 3, 8}), kv),
                      "MultiheadAttention::forward: key is [7, 3, 8], expected [S, 2, 8] (B of "
                      "query)");
  REQUIRE_THROWS_WITH(fwd(q, Tensor<S>({7, 8}), kv),
                      "MultiheadAttention::forward: key is [7, 8], expected [S, 2, 8] (rank of "
                      "query)");
  REQUIRE_THROWS_AS(fwd(q, kv, Tensor<S>({6, 2, 8})), attend::shape_error);
  REQUIRE_THROWS_WITH(fwd(q, kv, Tensor<S>({6, 2, 8})),
                      "MultiheadAttention::forward: value is [6, 2, 8], expected [7, 2, 8] (S of "
                      "key)");
  REQUIRE_THROWS_WITH(fwd(q, kv, Tensor<S>({7, 2, 4})),
                      "MultiheadAttention::forward: value is [7, 2, 4], expected [7, 2, 8] (vdim)");

  // Unbatched and batch_first spell the expected shapes in their own layout.
  REQUIRE_THROWS_WITH(fwd(Tensor<S>({5, 8}), Tensor<S>({7, 12}), Tensor<S>({7, 8})),
                      "MultiheadAttention::forward: key is [7, 12], expected [S, 8] (kdim)");
  MultiheadAttention<S> bf = mha;
  bf.options.batch_first = true;
  REQUIRE_THROWS_WITH(bf.forward(Tensor<S>({2, 5, 8}), Tensor<S>({3, 7, 8}), Tensor<S>({3, 7, 8})),
                      "MultiheadAttention::forward: key is [3, 7, 8], expected [2, S, 8] (B of "
                      "query)");
  REQUIRE_THROWS_WITH(bf.forward(Tensor<S>({2, 5, 3})),
                      "MultiheadAttention::forward: query is [2, 5, 3], expected [2, L, 8] "
                      "(embed_dim)");

  // key_padding_mask for B = 3 (and for the wrong S) on a batch of 2.
  MultiheadAttentionArgs args;
  args.key_padding_mask = Mask::key_padding(Tensor<bool>({3, 7}));
  REQUIRE_THROWS_AS(fwd(q, kv, kv, args), attend::shape_error);
  REQUIRE_THROWS_WITH(fwd(q, kv, kv, args),
                      "MultiheadAttention::forward: key_padding_mask is [3, 1, 1, 7], expected "
                      "broadcastable to [2, 1, 1, 7]");
  args.key_padding_mask = Mask::key_padding_lengths({6, 6}, 6);
  REQUIRE_THROWS_WITH(fwd(q, kv, kv, args),
                      "MultiheadAttention::forward: key_padding_mask is [2, 1, 1, 6], expected "
                      "broadcastable to [2, 1, 1, 7]");
  // attn_mask [L, S] with the wrong L.
  MultiheadAttentionArgs args2;
  args2.attn_mask = Mask::from_torch_mha(Tensor<bool>({4, 7}), 2);
  REQUIRE_THROWS_AS(fwd(q, kv, kv, args2), attend::shape_error);
  REQUIRE_THROWS_WITH(fwd(q, kv, kv, args2),
                      "MultiheadAttention::forward: attn_mask is [1, 1, 4, 7], expected "
                      "broadcastable to [2, 2, 5, 7]");

  // NaN/Inf in the inputs.
  Tensor<S> bad = q;
  bad(4, 1, 3) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE_THROWS_AS(mha.forward(bad), attend::value_error);
  REQUIRE_THROWS_WITH(mha.forward(bad),
                      "MultiheadAttention::forward: query has a non-finite value (nan) at [4, 1, "
                      "3]");
  Tensor<S> bad_kv = kv;
  bad_kv(0, 0, 0) = inf<S>;
  REQUIRE_THROWS_WITH(fwd(q, bad_kv, kv),
                      "MultiheadAttention::forward: key has a non-finite value (inf) at [0, 0, "
                      "0]");
  REQUIRE_THROWS_WITH(fwd(q, kv, bad_kv),
                      "MultiheadAttention::forward: value has a non-finite value (inf) at [0, 0, "
                      "0]");
}

// Regression: Mask::apply and is_blocked computed `i + offset`, which overflowed for an
// offset near the Index maximum, so a mask that should block nothing blocked every key.
TEMPLATE_TEST_CASE("mask.hpp: a causal offset near the Index maximum blocks nothing",
                   "[attention][regression]", float, double) {
  using S = TestType;
  Rng rng(1);
  const Matrix<S> x = random_matrix<S>(3, 2, rng);
  const Mask huge = Mask::causal(std::numeric_limits<Index>::max());
  CHECK_FALSE(huge.is_blocked(0, 0, 2, 2));
  Matrix<S> w, w_plain;
  attend::scaled_dot_product_attention(x, x, x, Mask(), std::nullopt, &w_plain);
  attend::scaled_dot_product_attention(x, x, x, huge, std::nullopt, &w);
  require_close(w, w_plain, 0.0);
}

// Regression: with d_k = 0 the default scale 1/sqrt(0) = inf turned the empty (0) scores
// into 0 * inf = NaN. The library now rejects d_k = 0 without an explicit scale.
TEMPLATE_TEST_CASE("scaled_dot_product.hpp: d_k = 0 never gives NaN", "[attention][regression]", float,
                   double) {
  using S = TestType;
  const Matrix<S> q(2, 0), k(3, 0), v = Matrix<S>::Ones(3, 2);
  Matrix<S> w;
  bool finite = false;
  try {
    const Matrix<S> out = attend::scaled_dot_product_attention(q, k, v, Mask(), std::nullopt, &w);
    finite = out.allFinite() && w.allFinite();
  } catch (const attend::error&) {
    finite = true;  // rejecting d_k = 0 at the door is fine too
  }
  CHECK(finite);
}

// Regression: with no keys (S = 0) the [L, 0] score rows reached maxCoeff() on an empty
// row, which asserts. Every query has all of its (zero) keys masked, so by the library's
// own rule its weights row is empty and its output row is zero.
TEMPLATE_TEST_CASE("scaled_dot_product.hpp: no keys (S = 0) gives a zero output",
                   "[attention][regression]", float, double) {
  using S = TestType;
  const Matrix<S> q = Matrix<S>::Ones(2, 3), k(0, 3), v(0, 2);
  Matrix<S> w;
  const Matrix<S> out = attend::scaled_dot_product_attention(q, k, v, Mask(), std::nullopt, &w);
  CHECK(w.rows() == 2);
  CHECK(w.cols() == 0);
  require_close(out, Matrix<S>::Zero(2, 2), 0.0);
}
