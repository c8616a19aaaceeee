// SPDX-License-Identifier: MIT
// Scaled dot-product attention, the readable reference: softmax(scale * Q K^T + mask) V.
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/softmax.hpp"

#include <Eigen/Core>

#include <cmath>
#include <optional>
#include <string>

namespace attend {

/// Output and attention weights of an attention call on tensors.
template <typename Scalar>
struct AttentionResult {
  Tensor<Scalar> output;        ///< [..., L, d_v]
  Tensor<Scalar> attn_weights;  ///< [..., L, S]; empty when weights were not requested
};

namespace detail {

/// The scale to use: given, or 1/sqrt(d_k). Throws value_error when not finite.
inline double attention_scale(std::optional<double> scale, Index d_k, const std::string& who) {
  if (!scale) {
    if (d_k == 0) {
      throw shape_error(who + ": query has d_k = 0, so the default scale 1/sqrt(d_k) is "
                              "undefined; pass a scale");
    }
    return 1.0 / std::sqrt(static_cast<double>(d_k));
  }
  if (!std::isfinite(*scale)) {
    throw value_error(who + ": scale is " + std::to_string(*scale) + ", expected a finite value");
  }
  return *scale;
}

/// Checks the arguments of the matrix form of attention (shapes, mask, finite values,
/// scale) with messages prefixed by `who`. \returns the scale to use.
template <typename DQ, typename DK, typename DV>
double check_attention_matrices(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                const Eigen::MatrixBase<DV>& v, const Mask& mask,
                                std::optional<double> scale, const std::string& who) {
  if (k.cols() != q.cols()) {
    throw shape_error(who + ": key is " + matrix_shape(k) + ", expected [S, " +
                      std::to_string(q.cols()) + "] (d_k of query)");
  }
  if (v.rows() != k.rows()) {
    throw shape_error(who + ": value is " + matrix_shape(v) + ", expected [" +
                      std::to_string(k.rows()) + ", d_v] (S of key)");
  }
  check_finite(q, who, "query");
  check_finite(k, who, "key");
  check_finite(v, who, "value");
  const Index L = q.rows();
  const Index Sk = k.rows();
  mask.check(1, 1, L, Sk, who, "mask");
  return attention_scale(scale, q.cols(), who);
}

/// Extents of a batched attention call; rank 3 `[N, L, d]` puts N in the H slot.
struct AttentionDims {
  Index B, H, L, S, d_k, d_v;
  double scale;  // given, or 1/sqrt(d_k)
};

/// Checks the arguments of the tensor form of attention with messages prefixed by `who`.
template <typename S>
AttentionDims check_attention_tensors(const Tensor<S>& query, const Tensor<S>& key,
                                      const Tensor<S>& value, const Mask& mask,
                                      std::optional<double> scale, const std::string& who) {
  const Index r = query.rank();
  if (r < 2 || r > 4) {
    throw shape_error(who + ": query is " + shape_string(query.shape()) +
                      ", expected rank 2 to 4 ([B, H, L, d_k])");
  }
  Shape want_k = query.shape();
  want_k[static_cast<std::size_t>(r - 2)] = -1;  // S is free
  const auto matches = [&](const Tensor<S>& t, const Shape& want, std::size_t free_dim) {
    if (t.rank() != r) return false;
    for (std::size_t i = 0; i < want.size(); ++i) {
      if (i != free_dim && t.shape()[i] != want[i]) return false;
    }
    return true;
  };
  const auto shape_with_names = [&](Shape s, std::size_t i, const char* name) {
    std::string out = "[";
    for (std::size_t j = 0; j < s.size(); ++j) {
      if (j) out += ", ";
      out += (j == i) ? std::string(name) : std::to_string(s[j]);
    }
    return out + "]";
  };
  const std::size_t sdim = static_cast<std::size_t>(r - 2);
  if (!matches(key, want_k, sdim)) {
    throw shape_error(who + ": key is " + shape_string(key.shape()) + ", expected " +
                      shape_with_names(want_k, sdim, "S"));
  }
  Shape want_v = key.shape();
  if (!matches(value, want_v, static_cast<std::size_t>(r - 1))) {
    throw shape_error(who + ": value is " + shape_string(value.shape()) + ", expected " +
                      shape_with_names(want_v, static_cast<std::size_t>(r - 1), "d_v"));
  }
  // Canonical [B, H] leading extents: rank 3 puts its leading dim in the H slot.
  const Index B = r == 4 ? query.dim(0) : 1;
  const Index H = r == 4 ? query.dim(1) : (r == 3 ? query.dim(0) : 1);
  const Index L = query.dim(-2), Sk = key.dim(-2), d_k = query.dim(-1), d_v = value.dim(-1);
  mask.check(B, H, L, Sk, who, "attn_mask");
  check_finite(query.as_matrix(), who, "query");
  check_finite(key.as_matrix(), who, "key");
  check_finite(value.as_matrix(), who, "value");
  return {B, H, L, Sk, d_k, d_v, attention_scale(scale, d_k, who)};
}

/// One head of reference attention. No checks: the caller validated shapes and mask.
/// \param q [L, d_k] \param k [S, d_k] \param v [S, d_v] \param out [L, d_v] (written)
/// \param weights [L, S] (written): the softmax of the masked, scaled scores.
template <typename S>
void attention_head_reference(const MatrixCRef<S>& q, const MatrixCRef<S>& k,
                              const MatrixCRef<S>& v, const Mask& mask, Index b, Index h, S scale,
                              MatrixRef<S> out, MatrixRef<S> weights) {
  weights.noalias() = q * k.transpose();  // [L, S] scores
  weights *= scale;  // a separate pass: folding it into the product halves Eigen's GEMM speed
  mask.apply<S>(b, h, 0, 0, weights);
  softmax_rows_inplace<S>(weights);  // fully masked rows become zeros
  out.noalias() = weights * v;       // [L, d_v]
}

}  // namespace detail

/// Scaled dot-product attention of one head: `softmax(scale * q k^T + mask) v`.
/// \param q [L, d_k] queries \param k [S, d_k] keys \param v [S, d_v] values
/// \param mask broadcastable to [1, 1, L, S] (causal, padding, deny/allow, additive)
/// \param scale defaults to 1/sqrt(d_k)
/// \param weights if not null, receives the [L, S] attention weights
/// \returns [L, d_v]; a query whose keys are all masked gets a zero row.
/// \throws shape_error on inconsistent shapes; value_error on NaN/Inf inputs or scale.
/// \note Vaswani et al. 2017, eq. 1; PyTorch F.scaled_dot_product_attention (whose bool
///       masks mean true = attend: use Mask::from_torch_sdpa).
/// \sa multi-head attention in multihead.hpp
template <typename DQ, typename DK, typename DV>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Mask& mask = Mask(), std::optional<double> scale = std::nullopt,
    Matrix<typename DQ::Scalar>* weights = nullptr) {
  using S = typename DQ::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention: Scalar must be float or double");
  const std::string who = "scaled_dot_product_attention";
  const S sc = static_cast<S>(detail::check_attention_matrices(q, k, v, mask, scale, who));
  const Index L = q.rows();
  const Index Sk = k.rows();
  const Matrix<S> qe = q, ke = k, ve = v;
  Matrix<S> out(L, v.cols());
  Matrix<S> w(L, Sk);
  detail::attention_head_reference<S>(qe, ke, ve, mask, 0, 0, sc, out, w);
  if (weights) *weights = std::move(w);
  return out;
}

/// Batched scaled dot-product attention on tensors `[B, H, L, d]`, `[B, L, d]` or `[L, d]`.
///
/// Masks broadcast against `[B, H, L, S]` as in PyTorch; for rank-3 inputs `[N, L, d]` the
/// leading dimension plays the role of H, so a rank-3 mask `[N, L, S]` lines up with it.
/// \param query [..., L, d_k] \param key [..., S, d_k] \param value [..., S, d_v]
/// \param need_weights when false, `attn_weights` is left empty
/// \returns output [..., L, d_v] and attn_weights [..., L, S]
/// \throws shape_error on rank or extent mismatch; value_error on NaN/Inf or a bad scale.
template <typename S>
AttentionResult<S> scaled_dot_product_attention(const Tensor<S>& query, const Tensor<S>& key,
                                                const Tensor<S>& value, const Mask& mask = Mask(),
                                                std::optional<double> scale = std::nullopt,
                                                bool need_weights = true) {
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention: Scalar must be float or double");
  const std::string who = "scaled_dot_product_attention";
  const detail::AttentionDims dims =
      detail::check_attention_tensors(query, key, value, mask, scale, who);
  const Index B = dims.B, H = dims.H, L = dims.L, Sk = dims.S, d_k = dims.d_k, d_v = dims.d_v;
  const S sc = static_cast<S>(dims.scale);

  Shape out_shape = query.shape();
  out_shape.back() = d_v;
  Shape w_shape = query.shape();
  w_shape.back() = Sk;
  AttentionResult<S> result{Tensor<S>(out_shape),
                            need_weights ? Tensor<S>(w_shape) : Tensor<S>()};
  Matrix<S> w(L, Sk);  // [L, S] workspace, reused for every head
  for (Index b = 0; b < B; ++b) {
    for (Index h = 0; h < H; ++h) {
      const Index n = b * H + h;  // flat index of the [L, d] matrix
      const ConstMatrixMap<S> q(query.data() + n * L * d_k, L, d_k);
      const ConstMatrixMap<S> k(key.data() + n * Sk * d_k, Sk, d_k);
      const ConstMatrixMap<S> v(value.data() + n * Sk * d_v, Sk, d_v);
      MatrixMap<S> out(result.output.data() + n * L * d_v, L, d_v);
      detail::attention_head_reference<S>(q, k, v, mask, b, h, sc, out, w);
      if (need_weights) MatrixMap<S>(result.attn_weights.data() + n * L * Sk, L, Sk) = w;
    }
  }
  return result;
}

// ---- training: forward with a cache, and backward (reference path) ----------------------

/// What scaled_dot_product_attention_backward needs from the forward (llm.c caches att).
template <typename Scalar>
struct AttentionCache {
  Matrix<Scalar> weights;  // [L, S] softmax(scale q k^T + mask): 0 where masked
  double scale = 0.0;      // the scale the forward used
};

/// Input gradients of scaled dot-product attention.
template <typename Scalar>
struct AttentionGrads {
  Matrix<Scalar> dq;  // [L, d_k]
  Matrix<Scalar> dk;  // [S, d_k]
  Matrix<Scalar> dv;  // [S, d_v]
};

/// scaled_dot_product_attention (matrix form) that also fills a cache for the backward.
/// \param q [L, d_k] \param k [S, d_k] \param v [S, d_v] \param mask, scale as there
/// \param cache if not null, receives the weights [L, S] and the scale used
/// \returns [L, d_v]
/// \throws as scaled_dot_product_attention (its messages name it).
/// \sa scaled_dot_product_attention_backward
template <typename DQ, typename DK, typename DV>
Matrix<typename DQ::Scalar> scaled_dot_product_attention_forward(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Mask& mask = Mask(), std::optional<double> scale = std::nullopt,
    AttentionCache<typename DQ::Scalar>* cache = nullptr) {
  Matrix<typename DQ::Scalar> out =
      scaled_dot_product_attention(q, k, v, mask, scale, cache ? &cache->weights : nullptr);
  if (cache)
    cache->scale = detail::attention_scale(scale, q.cols(), "scaled_dot_product_attention");
  return out;
}

/// Gradient of `out = softmax(scale q k^T + mask) v` with respect to q, k and v:
/// `dv = W^T d_out`, `dW = d_out v^T`, `dZ = W * (dW - rowsum(W * dW))`,
/// `dq = scale dZ k`, `dk = scale dZ^T q`, with W the cached weights.
/// Masked (query, key) pairs have W = 0 and so pass no gradient; a fully masked query row
/// gets a zero dq and adds nothing to dk and dv. An additive mask is a constant.
/// \param q [L, d_k] \param k [S, d_k] \param v [S, d_v] the forward's inputs
/// \param cache the forward's weights [L, S] and scale \param d_out [L, d_v] upstream
/// \returns dq [L, d_k], dk [S, d_k], dv [S, d_v] (assigned)
/// \throws shape_error when the shapes disagree with each other or with the cache.
/// \note Vaswani et al. 2017 eq. 1 differentiated; llm.c attention_backward.
template <typename DQ, typename DK, typename DV, typename DD>
AttentionGrads<typename DQ::Scalar> scaled_dot_product_attention_backward(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const AttentionCache<typename DQ::Scalar>& cache, const Eigen::MatrixBase<DD>& d_out) {
  using S = typename DQ::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention_backward: Scalar must be float or double");
  const std::string who = "scaled_dot_product_attention_backward";
  const Index L = q.rows(), Sk = k.rows();
  if (k.cols() != q.cols()) {
    throw shape_error(who + ": key is " + detail::matrix_shape(k) + ", expected [S, " +
                      std::to_string(q.cols()) + "] (d_k of query)");
  }
  if (v.rows() != Sk) {
    throw shape_error(who + ": value is " + detail::matrix_shape(v) + ", expected [" +
                      std::to_string(Sk) + ", d_v] (S of key)");
  }
  if (cache.weights.rows() != L || cache.weights.cols() != Sk) {
    throw shape_error(who + ": cache.weights is " + detail::matrix_shape(cache.weights) +
                      ", expected " + detail::shape_string({L, Sk}) + " ([L, S] of query and key)");
  }
  if (d_out.rows() != L || d_out.cols() != v.cols()) {
    throw shape_error(who + ": d_out is " + detail::matrix_shape(d_out) + ", expected " +
                      detail::shape_string({L, v.cols()}) + " ([L, d_v])");
  }
  const Matrix<S>& w = cache.weights;  // [L, S]
  const S scale = static_cast<S>(cache.scale);
  AttentionGrads<S> g;
  // forward: out = W v
  g.dv.noalias() = w.transpose() * d_out;  // [S, d_v]
  Matrix<S> dw(L, Sk);                     // [L, S]
  dw.noalias() = d_out * v.transpose();
  // forward: W = softmax(Z) row-wise (masked entries 0, fully masked rows all 0)
  Matrix<S> dz = softmax_backward(w, dw);  // [L, S]; zero wherever W is zero
  // forward: Z = scale q k^T + mask
  dz *= scale;
  g.dq.noalias() = dz * k;              // [L, d_k]
  g.dk.noalias() = dz.transpose() * q;  // [S, d_k]
  return g;
}

}  // namespace attend
