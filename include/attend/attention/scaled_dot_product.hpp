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
#include <vector>

namespace attend {

/// Output and attention weights of an attention call on tensors.
template <typename Scalar>
struct AttentionResult {
  Tensor<Scalar> output;        ///< [..., L, d_v]
  Tensor<Scalar> attn_weights;  ///< [..., L, S]; empty when weights were not requested
};

/// The keyword arguments of scaled dot-product attention beyond the mask, as PyTorch's
/// `F.scaled_dot_product_attention(..., scale=None, enable_gqa=False)`, plus logit
/// soft-capping (Gemma 2; ggml's `logit_softcap`). A default-constructed value is plain
/// attention with scale 1/sqrt(d_k).
struct SdpaOptions {
  /// Multiplies q k^T; unset = 1/sqrt(d_k) (PyTorch's default). Must be finite.
  std::optional<double> scale;
  /// Grouped-query attention (PyTorch >= 2.5): key and value may have H_kv heads in
  /// dimension -3 where the query has H, with H % H_kv == 0; query head h reads key/value
  /// head h / (H / H_kv) (as repeat_interleave of K and V along dimension -3). Off: the
  /// head counts must be equal. Ignored for rank-2 inputs (no head dimension).
  bool enable_gqa = false;
  /// Logit soft-capping c > 0 (Gemma 2, ggml): the scores become c tanh(scale q k^T / c),
  /// bounded to (-c, c), before the mask is applied. Unset = off; c <= 0, NaN and inf are
  /// errors.
  std::optional<double> logit_softcap;
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

/// The soft-cap to use: 0 when unset (off), else the given c. Throws value_error unless
/// c is finite and > 0.
inline double attention_softcap(std::optional<double> softcap, const std::string& who) {
  if (!softcap) return 0.0;
  if (!std::isfinite(*softcap) || !(*softcap > 0.0)) {
    throw value_error(who + ": logit_softcap is " + std::to_string(*softcap) +
                      ", expected a finite value > 0 (unset for no soft-capping)");
  }
  return *softcap;
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

/// Extents of a batched attention call in the canonical 4-D scheme [B, H, L, d]: rank 2
/// has B = H = 1, rank 3 `[N, L, d]` puts N in the H slot, rank r > 4 merges the leading
/// dimensions (B = product of all but the last, H = the last).
struct AttentionDims {
  Index B, H, L, S, d_k, d_v;
  double scale;          // given, or 1/sqrt(d_k)
  Index H_kv = 0;        // key/value heads: H, or fewer under enable_gqa
  double softcap = 0.0;  // logit soft-cap c, 0 = off
  /// The mask re-expressed over [B, H, L, S] for inputs of rank > 4 (else unset).
  std::optional<Mask> merged_mask;

  /// The mask to index with canonical (b, h): the merged one, or the caller's.
  const Mask& mask(const Mask& given) const { return merged_mask ? *merged_mask : given; }
  /// Flat index of the key/value [S, d] matrix that query matrix n = b * H + h reads.
  Index kv_index(Index n) const { return (n / H) * H_kv + (n % H) / (H / H_kv); }
};

/// Checks the arguments of the tensor form of attention with messages prefixed by `who`,
/// in the caller's coordinates: query [..., L, d_k], key [..., S, d_k] (dimension -3 may
/// be H_kv under enable_gqa), value [..., S, d_v], mask broadcastable to [..., L, S].
template <typename S>
AttentionDims check_attention_tensors(const Tensor<S>& query, const Tensor<S>& key,
                                      const Tensor<S>& value, const Mask& mask,
                                      const SdpaOptions& options, const std::string& who) {
  const Index r = query.rank();
  if (r < 2) {
    throw shape_error(who + ": query is " + shape_string(query.shape()) +
                      ", expected rank >= 2 ([..., L, d_k])");
  }
  const std::size_t sdim = static_cast<std::size_t>(r - 2);  // S, free in key
  const bool gqa = options.enable_gqa && r >= 3;
  const std::size_t hdim = gqa ? static_cast<std::size_t>(r - 3) : sdim;  // H_kv, free if gqa
  const auto mismatches = [&](const Tensor<S>& t, const Shape& want, std::size_t free1,
                              std::size_t free2) {
    std::vector<std::size_t> out;
    if (t.rank() != r) return std::vector<std::size_t>{want.size()};  // any non-empty list
    for (std::size_t i = 0; i < want.size(); ++i) {
      if (i != free1 && i != free2 && t.shape()[i] != want[i]) out.push_back(i);
    }
    return out;
  };
  const auto shape_with_names = [&](const Shape& s, std::size_t i1, const char* n1,
                                    std::size_t i2, const char* n2) {
    std::string out = "[";
    for (std::size_t j = 0; j < s.size(); ++j) {
      if (j) out += ", ";
      out += (j == i1) ? std::string(n1) : (j == i2) ? std::string(n2) : std::to_string(s[j]);
    }
    return out + "]";
  };
  const std::vector<std::size_t> bad_k = mismatches(key, query.shape(), sdim, hdim);
  if (!bad_k.empty()) {
    std::string msg = who + ": key is " + shape_string(key.shape()) + ", expected " +
                      shape_with_names(query.shape(), sdim, "S", hdim, "H_kv");
    if (!gqa && r >= 3 && bad_k.size() == 1 && bad_k[0] == sdim - 1) {
      msg += " (enable_gqa allows fewer key/value heads)";
    }
    throw shape_error(msg);
  }
  const std::size_t vdim = static_cast<std::size_t>(r - 1);
  if (!mismatches(value, key.shape(), vdim, vdim).empty()) {
    throw shape_error(who + ": value is " + shape_string(value.shape()) + ", expected " +
                      shape_with_names(key.shape(), vdim, "d_v", vdim, "d_v"));
  }
  // Canonical [B, H] leading extents (see AttentionDims).
  Index B = 1, H = 1;
  if (r >= 3) H = query.dim(r - 3);
  for (Index i = 0; i + 3 < r; ++i) B *= query.dim(i);
  const Index H_kv = r >= 3 ? key.dim(r - 3) : 1;
  if (gqa && (H_kv == 0 ? H != 0 : H % H_kv != 0)) {
    throw shape_error(who + ": enable_gqa needs the query's heads to be a multiple of the "
                            "key's heads (dimension -3): query is " +
                      shape_string(query.shape()) + ", key is " + shape_string(key.shape()) +
                      " (H = " + std::to_string(H) + ", H_kv = " + std::to_string(H_kv) + ")");
  }
  const Index L = query.dim(-2), Sk = key.dim(-2), d_k = query.dim(-1), d_v = value.dim(-1);
  Shape scores = query.shape();  // [..., L, S] in the caller's coordinates
  scores.back() = Sk;
  mask.check(scores, who, "attn_mask");
  check_finite(query, who, "query");
  check_finite(key, who, "key");
  check_finite(value, who, "value");
  AttentionDims dims{B, H, L, Sk, d_k, d_v, attention_scale(options.scale, d_k, who), H_kv,
                     attention_softcap(options.logit_softcap, who), std::nullopt};
  if (r > 4) dims.merged_mask = mask.flatten_leading(scores, who, "attn_mask");
  return dims;
}

/// As above with only a scale (no GQA, no soft-capping).
template <typename S>
AttentionDims check_attention_tensors(const Tensor<S>& query, const Tensor<S>& key,
                                      const Tensor<S>& value, const Mask& mask,
                                      std::optional<double> scale, const std::string& who) {
  SdpaOptions options;
  options.scale = scale;
  return check_attention_tensors(query, key, value, mask, options, who);
}

/// One head of reference attention. No checks: the caller validated shapes and mask.
/// \param q [L, d_k] \param k [S, d_k] \param v [S, d_v] \param out [L, d_v] (written)
/// \param weights [L, S] (written): the softmax of the masked, scaled scores.
/// \param softcap logit soft-cap c: scores c tanh(scale q k^T / c) before the mask; 0 = off
template <typename S>
void attention_head_reference(const MatrixCRef<S>& q, const MatrixCRef<S>& k,
                              const MatrixCRef<S>& v, const Mask& mask, Index b, Index h, S scale,
                              MatrixRef<S> out, MatrixRef<S> weights, S softcap = S(0)) {
  weights.noalias() = q * k.transpose();  // [L, S] scores
  weights *= scale;  // a separate pass: folding it into the product halves Eigen's GEMM speed
  if (softcap > S(0)) weights = softcap * (weights.array() / softcap).tanh().matrix();
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

namespace detail {

/// The reference on tensors: checks, then one attention_head_reference per query head.
/// \param weights if not null, receives [..., L, S]
template <typename S>
Tensor<S> sdpa_reference(const Tensor<S>& query, const Tensor<S>& key, const Tensor<S>& value,
                         const Mask& mask, const SdpaOptions& options, const std::string& who,
                         Tensor<S>* weights, AttentionDims* dims_out = nullptr) {
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention: Scalar must be float or double");
  const AttentionDims dims = check_attention_tensors(query, key, value, mask, options, who);
  const Mask& m = dims.mask(mask);
  const Index H = dims.H, L = dims.L, Sk = dims.S, d_k = dims.d_k, d_v = dims.d_v;
  const S sc = static_cast<S>(dims.scale), cap = static_cast<S>(dims.softcap);
  Shape out_shape = query.shape();
  out_shape.back() = d_v;
  Tensor<S> output(out_shape);
  if (weights) {
    Shape w_shape = query.shape();
    w_shape.back() = Sk;
    *weights = Tensor<S>(w_shape);
  }
  Matrix<S> w(L, Sk);  // [L, S] workspace, reused for every head
  for (Index n = 0; n < dims.B * H; ++n) {  // flat index of the query's [L, d] matrix
    const Index kv = dims.kv_index(n);      // and of the key/value matrices it reads
    const ConstMatrixMap<S> q(query.data() + n * L * d_k, L, d_k);
    const ConstMatrixMap<S> k(key.data() + kv * Sk * d_k, Sk, d_k);
    const ConstMatrixMap<S> v(value.data() + kv * Sk * d_v, Sk, d_v);
    MatrixMap<S> out(output.data() + n * L * d_v, L, d_v);
    attention_head_reference<S>(q, k, v, m, n / H, n % H, sc, out, w, cap);
    if (weights) MatrixMap<S>(weights->data() + n * L * Sk, L, Sk) = w;
  }
  if (dims_out) *dims_out = dims;
  return output;
}

}  // namespace detail

/// Scaled dot-product attention on tensors of any rank >= 2, with PyTorch's options:
/// `softmax(scale * q k^T + mask) v` per leading index, or with soft-capping
/// `softmax(c tanh(scale * q k^T / c) + mask) v`.
///
/// Shapes as PyTorch's `F.scaled_dot_product_attention`: query [..., L, E], key [..., S, E],
/// value [..., S, E_v], the leading dimensions equal (no broadcasting), except dimension -3
/// of key and value under `options.enable_gqa`. The mask broadcasts against the weights
/// [..., L, S] over every leading dimension as in PyTorch (right-aligned; a rank-3 mask
/// [N, L, S] lines up with rank-3 inputs [N, L, E]).
/// \param query [..., L, d_k] \param key [..., S, d_k] (or [..., H_kv, S, d_k] under GQA)
/// \param value [..., S, d_v] (as key) \param mask broadcastable to [..., L, S]
/// \param options scale (default 1/sqrt(d_k)), enable_gqa, logit_softcap
/// \param need_weights when false, `attn_weights` is left empty
/// \returns output [..., L, d_v] and attn_weights [..., L, S]; a query whose keys are all
///          masked gets zero weights and a zero output (PyTorch gives NaN).
/// \throws shape_error on a rank < 2, extents that disagree (messages in the caller's
///         shapes), H not a multiple of H_kv under enable_gqa, or a mask that does not
///         broadcast; value_error on NaN/Inf inputs, a non-finite scale, or a logit_softcap
///         that is not finite and > 0.
/// \note PyTorch F.scaled_dot_product_attention (enable_gqa: PyTorch 2.5); soft-capping:
///       Gemma 2 (Gemma Team 2024, sec. 2), ggml_soft_max/flash_attn_ext logit_softcap.
/// \sa scaled_dot_product_attention_forward and _backward (training),
///     scaled_dot_product_attention_fused (fused.hpp)
template <typename S>
AttentionResult<S> scaled_dot_product_attention(const Tensor<S>& query, const Tensor<S>& key,
                                                const Tensor<S>& value, const Mask& mask,
                                                const SdpaOptions& options,
                                                bool need_weights = true) {
  AttentionResult<S> result;
  result.output = detail::sdpa_reference(query, key, value, mask, options,
                                         "scaled_dot_product_attention",
                                         need_weights ? &result.attn_weights : nullptr);
  return result;
}

/// Batched scaled dot-product attention on tensors with only a scale: the SdpaOptions
/// overload with `options.scale = scale` (no GQA, no soft-capping). Pass `std::nullopt`
/// rather than `{}` for the default scale (`{}` would also match SdpaOptions).
/// \param query [..., L, d_k] \param key [..., S, d_k] \param value [..., S, d_v]
/// \param need_weights when false, `attn_weights` is left empty
/// \returns output [..., L, d_v] and attn_weights [..., L, S]
/// \throws as the SdpaOptions overload.
template <typename S>
AttentionResult<S> scaled_dot_product_attention(const Tensor<S>& query, const Tensor<S>& key,
                                                const Tensor<S>& value, const Mask& mask = Mask(),
                                                std::optional<double> scale = std::nullopt,
                                                bool need_weights = true) {
  SdpaOptions options;
  options.scale = scale;
  return scaled_dot_product_attention(query, key, value, mask, options, need_weights);
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

/// What the tensor-form scaled_dot_product_attention_backward needs from the forward.
template <typename Scalar>
struct AttentionTensorCache {
  Tensor<Scalar> weights;      ///< [..., L, S] softmax weights (0 where masked)
  double scale = 0.0;          ///< the scale the forward used
  double logit_softcap = 0.0;  ///< the soft-cap c the forward used; 0 = off
  bool enable_gqa = false;     ///< the forward's enable_gqa
};

/// Input gradients of batched attention on tensors.
template <typename Scalar>
struct AttentionTensorGrads {
  Tensor<Scalar> dq;  ///< [..., L, d_k]
  Tensor<Scalar> dk;  ///< [..., S, d_k] (key's shape: [..., H_kv, S, d_k] under GQA)
  Tensor<Scalar> dv;  ///< [..., S, d_v] (value's shape)
};

/// scaled_dot_product_attention on tensors (SdpaOptions form) that also fills a cache for
/// the backward.
/// \param query [..., L, d_k] \param key [..., S, d_k] \param value [..., S, d_v]
/// \param mask broadcastable to [..., L, S] \param options as scaled_dot_product_attention
/// \param cache if not null, receives the weights [..., L, S] and the options used
/// \returns [..., L, d_v]
/// \throws as scaled_dot_product_attention (its messages name it).
/// \sa scaled_dot_product_attention_backward
template <typename S>
Tensor<S> scaled_dot_product_attention_forward(const Tensor<S>& query, const Tensor<S>& key,
                                               const Tensor<S>& value, const Mask& mask = Mask(),
                                               const SdpaOptions& options = SdpaOptions(),
                                               AttentionTensorCache<S>* cache = nullptr) {
  detail::AttentionDims dims{};
  Tensor<S> out = detail::sdpa_reference(query, key, value, mask, options,
                                         "scaled_dot_product_attention",
                                         cache ? &cache->weights : nullptr, &dims);
  if (cache) {
    cache->scale = dims.scale;
    cache->logit_softcap = dims.softcap;
    cache->enable_gqa = options.enable_gqa;
  }
  return out;
}

/// Gradient of tensor attention `out = softmax(Z + mask) v` with respect to query, key and
/// value, per head as the matrix form, with `Z = scale q k^T`, or with soft-capping
/// `Z = c tanh(u / c)`, `u = scale q k^T`, whose derivative `dZ/du = 1 - tanh^2(u / c)` is
/// recomputed from q and k. Under GQA, dk and dv of a key/value head sum the contributions
/// of its H / H_kv query heads (in increasing head order).
/// \param query [..., L, d_k] \param key [..., S, d_k] \param value [..., S, d_v] the
///        forward's inputs
/// \param cache the forward's weights [..., L, S], scale, soft-cap and enable_gqa
/// \param d_output [..., L, d_v] upstream
/// \returns dq (query's shape), dk (key's), dv (value's), assigned
/// \throws shape_error when the shapes disagree with each other or with the cache;
///         value_error on NaN/Inf inputs.
/// \note Vaswani et al. 2017 eq. 1 differentiated; llm.c attention_backward.
/// \sa scaled_dot_product_attention_forward, scaled_dot_product_attention_fused_backward
template <typename S>
AttentionTensorGrads<S> scaled_dot_product_attention_backward(
    const Tensor<S>& query, const Tensor<S>& key, const Tensor<S>& value,
    const AttentionTensorCache<S>& cache, const Tensor<S>& d_output) {
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention_backward: Scalar must be float or double");
  const std::string who = "scaled_dot_product_attention_backward";
  SdpaOptions options;
  options.scale = cache.scale;
  options.enable_gqa = cache.enable_gqa;
  if (cache.logit_softcap != 0.0) options.logit_softcap = cache.logit_softcap;
  const detail::AttentionDims dims =
      detail::check_attention_tensors(query, key, value, Mask(), options, who);
  const Index H = dims.H, L = dims.L, Sk = dims.S, d_k = dims.d_k, d_v = dims.d_v;
  Shape w_shape = query.shape();  // [..., L, S]
  w_shape.back() = Sk;
  if (cache.weights.shape() != w_shape) {
    throw shape_error(who + ": cache.weights is " + detail::shape_string(cache.weights.shape()) +
                      ", expected " + detail::shape_string(w_shape) + " ([..., L, S])");
  }
  Shape out_shape = query.shape();  // [..., L, d_v]
  out_shape.back() = d_v;
  if (d_output.shape() != out_shape) {
    throw shape_error(who + ": d_output is " + detail::shape_string(d_output.shape()) +
                      ", expected " + detail::shape_string(out_shape) + " ([..., L, d_v])");
  }
  detail::check_finite(d_output, who, "d_output");
  const S scale = static_cast<S>(dims.scale), cap = static_cast<S>(dims.softcap);
  AttentionTensorGrads<S> g{Tensor<S>(query.shape()), Tensor<S>(key.shape()),
                            Tensor<S>(value.shape())};  // zeros: dk, dv accumulate
  Matrix<S> dw(L, Sk), dz(L, Sk), t(L, Sk);             // [L, S] each
  for (Index n = 0; n < dims.B * H; ++n) {
    const Index kv = dims.kv_index(n);
    const ConstMatrixMap<S> q(query.data() + n * L * d_k, L, d_k);
    const ConstMatrixMap<S> k(key.data() + kv * Sk * d_k, Sk, d_k);
    const ConstMatrixMap<S> v(value.data() + kv * Sk * d_v, Sk, d_v);
    const ConstMatrixMap<S> w(cache.weights.data() + n * L * Sk, L, Sk);
    const ConstMatrixMap<S> d_out(d_output.data() + n * L * d_v, L, d_v);
    MatrixMap<S> dq(g.dq.data() + n * L * d_k, L, d_k);
    MatrixMap<S> dk(g.dk.data() + kv * Sk * d_k, Sk, d_k);
    MatrixMap<S> dv(g.dv.data() + kv * Sk * d_v, Sk, d_v);
    // forward: out = W v
    dv.noalias() += w.transpose() * d_out;
    dw.noalias() = d_out * v.transpose();
    // forward: W = softmax(Z + mask) row-wise (masked entries 0: they pass no gradient)
    dz = softmax_backward(w, dw);
    if (cap > S(0)) {
      // forward: Z = c tanh(u / c), u = scale q k^T  =>  dZ/du = 1 - tanh^2(u / c)
      t.noalias() = q * k.transpose();
      t = ((t.array() * scale) / cap).tanh().matrix();
      dz.array() *= S(1) - t.array().square();
    }
    // forward: u = scale q k^T
    dz *= scale;
    dq.noalias() = dz * k;
    dk.noalias() += dz.transpose() * q;
  }
  return g;
}

}  // namespace attend
