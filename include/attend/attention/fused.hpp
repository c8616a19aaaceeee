// SPDX-License-Identifier: MIT
// Fused, tiled scaled dot-product attention (flash-attention scheme on a CPU): online
// softmax over key blocks, never an [L, S] matrix, O(block x d) scratch per thread.
#pragma once

#include "attend/attention/fused_avx2.hpp"
#include "attend/attention/fused_kernels.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attend {

/// Scratch memory of the fused attention kernel for one thread: one allocation of
/// O(block x (d_k + d_v)) scalars (98 KiB in float for d_k = d_v = 64), reused for
/// every query block and head. Sized by `reserve`; the kernel itself never allocates.
template <typename Scalar>
class FusedWorkspace {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::FusedWorkspace: Scalar must be float or double");

 public:
  FusedWorkspace() = default;
  /// A workspace for heads with key width d_k and value width d_v.
  FusedWorkspace(Index d_k, Index d_v) { reserve(d_k, d_v); }

  /// Makes room for heads of widths d_k and d_v; allocates only when it must grow.
  void reserve(Index d_k, Index d_v) {
    d_k = std::max(d_k_, d_k);  // room for every width reserved so far
    d_v = std::max(d_v_, d_v);
    const Index ld_acc = round_up(std::max<Index>(d_v, 1), 8);
    const Index rows = detail::fused_block_rows;
    const Index need = slot(rows * std::max<Index>(d_k, 1)) +          // q_pack
                       slot(detail::fused_block_keys * rows) +         // scores
                       slot(rows * ld_acc) + 4 * slot(rows) + kAlign;  // acc, 4 vectors
    if (static_cast<Index>(storage_.size()) < need)
      storage_.assign(static_cast<std::size_t>(need), Scalar(0));
    d_k_ = d_k;
    d_v_ = d_v;
  }

  /// True when heads of widths d_k and d_v fit without allocating.
  bool fits(Index d_k, Index d_v) const noexcept { return d_k <= d_k_ && d_v <= d_v_; }

  /// Bytes held.
  std::size_t bytes() const noexcept { return storage_.size() * sizeof(Scalar); }

  /// Kernel arguments with this workspace's buffers carved out (64-byte aligned).
  detail::FusedBlockArgs<Scalar> args(Index d_k, Index d_v) {
    eigen_assert(fits(d_k, d_v) && "FusedWorkspace: reserve(d_k, d_v) first");
    detail::FusedBlockArgs<Scalar> a{};
    const Index rows = detail::fused_block_rows;
    Scalar* p = aligned(storage_.data());
    const auto take = [&p](Index n) {
      Scalar* r = p;
      p += slot(n);
      return r;
    };
    a.d_k = d_k;
    a.d_v = d_v;
    a.ld_acc = round_up(std::max<Index>(d_v, 1), 8);
    a.q_pack = take(rows * std::max<Index>(d_k, 1));
    a.scores = take(detail::fused_block_keys * rows);
    a.acc = take(rows * a.ld_acc);
    a.row_max = take(rows);
    a.row_sum = take(rows);
    a.alpha = take(rows);
    a.shift = take(rows);
    return a;
  }

 private:
  static constexpr Index kAlign = 64 / static_cast<Index>(sizeof(Scalar));  // scalars per 64 B
  static Index round_up(Index n, Index m) { return (n + m - 1) / m * m; }
  static Index slot(Index n) { return round_up(n, kAlign); }
  static Scalar* aligned(Scalar* p) {
    const auto u = reinterpret_cast<std::uintptr_t>(p);
    return reinterpret_cast<Scalar*>((u + 63) & ~std::uintptr_t(63));
  }

  std::vector<Scalar> storage_;
  Index d_k_ = 0, d_v_ = 0;
};

namespace detail {

/// Fused attention of query rows r0..r0+nq-1 of one head (a slice of the output). No checks.
/// \param lse [L] the head's log-sum-exp per query (rows r0.. written), or null
/// \param softcap logit soft-capping c > 0 (Gemma 2): scores c tanh(scale q.k / c) before
///        the mask; 0 = off
template <typename S>
void attention_rows_fused(const MatrixCRef<S>& q, const MatrixCRef<S>& k, const MatrixCRef<S>& v,
                          const HeadMaskView& mask, S scale, Index r0, Index nq, MatrixRef<S> out,
                          FusedWorkspace<S>& ws, FusedKernel kernel, S* lse = nullptr,
                          S softcap = S(0)) {
  FusedBlockArgs<S> a = ws.args(q.cols(), v.cols());
  a.ldq = q.outerStride();
  a.k = k.data();
  a.ldk = k.outerStride();
  a.v = v.data();
  a.ldv = v.outerStride();
  a.ldo = out.outerStride();
  a.scale = scale;
  a.softcap = softcap;
  for (Index i = r0; i < r0 + nq; i += fused_block_rows) {
    const Index n = std::min(fused_block_rows, r0 + nq - i);
    a.q = q.data() + i * a.ldq;
    a.out = out.data() + i * a.ldo;
    a.lse = lse ? lse + i : nullptr;
    fused_query_block<S>(a, mask, i, n, k.rows(), kernel);
  }
}

/// One head of fused attention: `out = softmax(scale * q k^T + mask(b, h)) v`, computed one
/// block of fused_block_rows queries against one block of fused_block_keys keys at a time.
/// No checks: the caller validated shapes, values and the mask (`Mask::check`). Allocates
/// nothing once `ws` fits (d_k, d_v) (`ws.reserve`; grown here otherwise). Rows whose keys
/// are all blocked get zeros.
/// \param q [L, d_k] \param k [S, d_k] \param v [S, d_v] \param out [L, d_v] (written)
/// \param kernel `portable` forces the Eigen-packet tile code (otherwise AVX2/FMA kernels
///        for float on CPUs that have them)
/// \param lse [L] if not null, receives `log sum_j exp(scale q_i . k_j + mask_ij)` per query
///        (natural log; -inf for a fully masked row): what the backward needs
/// \param softcap logit soft-capping c > 0 as Gemma 2 / ggml: the scores are
///        c tanh(scale q.k / c), then the mask is added; 0 (default) = off
/// \note Online softmax: Milakov & Gimelshein 2018; tiling: Dao et al. 2022 (FlashAttention).
template <typename S>
void attention_head_fused(const MatrixCRef<S>& q, const MatrixCRef<S>& k, const MatrixCRef<S>& v,
                          const Mask& mask, Index b, Index h, S scale, MatrixRef<S> out,
                          FusedWorkspace<S>& ws, FusedKernel kernel = FusedKernel::automatic,
                          S* lse = nullptr, S softcap = S(0)) {
  eigen_assert(k.cols() == q.cols() && v.rows() == k.rows());
  eigen_assert(out.rows() == q.rows() && out.cols() == v.cols());
  if (!ws.fits(q.cols(), v.cols())) ws.reserve(q.cols(), v.cols());
  attention_rows_fused<S>(q, k, v, HeadMaskView(mask, b, h), scale, 0, q.rows(), out, ws, kernel,
                          lse, softcap);
}

/// Tensor form with the tile code chosen by `kernel` (the public overloads use automatic):
/// any rank >= 2, enable_gqa and logit_softcap as scaled_dot_product_attention.
/// \param lse if not null, receives [..., L] (query's shape without d_k)
template <typename S>
Tensor<S> scaled_dot_product_attention_fused(const Tensor<S>& query, const Tensor<S>& key,
                                             const Tensor<S>& value, const Mask& mask,
                                             const SdpaOptions& options, FusedKernel kernel,
                                             Tensor<S>* lse = nullptr) {
  const std::string who = "scaled_dot_product_attention_fused";
  const AttentionDims dims = check_attention_tensors(query, key, value, mask, options, who);
  const Mask& m = dims.mask(mask);  // over the canonical [B, H, L, S]
  const Index H = dims.H, L = dims.L, Sk = dims.S, d_k = dims.d_k, d_v = dims.d_v;
  const S sc = static_cast<S>(dims.scale), cap = static_cast<S>(dims.softcap);
  Shape out_shape = query.shape();
  out_shape.back() = d_v;
  Tensor<S> output(out_shape);
  if (lse) {
    Shape lse_shape = query.shape();
    lse_shape.pop_back();  // [..., L]
    *lse = Tensor<S>(lse_shape);
  }
  S* const lse_data = lse ? lse->data() : nullptr;

  // Work items: (batch, head, query block). Each item's arithmetic is fixed by its own
  // rows alone, so the result is bit-identical for any number of threads.
  const Index n_qblocks = (L + fused_block_rows - 1) / fused_block_rows;
  const Index n_items = dims.B * H * n_qblocks;
  const auto run_item = [&](Index item, FusedWorkspace<S>& ws) {
    const Index n = item / n_qblocks;  // flat (batch, head) index of the query's [L, d]
    const Index kv = dims.kv_index(n);  // and of the key/value matrices it reads (GQA)
    const Index r0 = (item % n_qblocks) * fused_block_rows;
    const ConstMatrixMap<S> q(query.data() + n * L * d_k, L, d_k);
    const ConstMatrixMap<S> k(key.data() + kv * Sk * d_k, Sk, d_k);
    const ConstMatrixMap<S> v(value.data() + kv * Sk * d_v, Sk, d_v);
    MatrixMap<S> out(output.data() + n * L * d_v, L, d_v);
    attention_rows_fused<S>(q, k, v, HeadMaskView(m, n / H, n % H), sc, r0,
                            std::min(fused_block_rows, L - r0), out, ws, kernel,
                            lse_data ? lse_data + n * L : nullptr, cap);
  };
#if defined(_OPENMP)
  std::vector<FusedWorkspace<S>> workspaces(static_cast<std::size_t>(omp_get_max_threads()));
  for (auto& ws : workspaces) ws.reserve(d_k, d_v);
    // Dynamic schedule: causal masks make later query blocks longer.
#pragma omp parallel for schedule(dynamic, 1)
  for (Index item = 0; item < n_items; ++item) {
    run_item(item, workspaces[static_cast<std::size_t>(omp_get_thread_num())]);
  }
#else
  FusedWorkspace<S> ws(d_k, d_v);
  for (Index item = 0; item < n_items; ++item) run_item(item, ws);
#endif
  return output;
}

/// As above with only a scale (no GQA, no soft-capping).
template <typename S>
Tensor<S> scaled_dot_product_attention_fused(const Tensor<S>& query, const Tensor<S>& key,
                                             const Tensor<S>& value, const Mask& mask,
                                             std::optional<double> scale, FusedKernel kernel,
                                             Tensor<S>* lse = nullptr) {
  SdpaOptions options;
  options.scale = scale;
  return scaled_dot_product_attention_fused(query, key, value, mask, options, kernel, lse);
}

}  // namespace detail

/// Scaled dot-product attention of one head by the fused kernel:
/// `softmax(scale * q k^T + mask) v`, without forming the [L, S] scores.
/// \param q [L, d_k] queries \param k [S, d_k] keys \param v [S, d_v] values
/// \param mask broadcastable to [1, 1, L, S] (causal, padding, deny/allow, additive)
/// \param scale defaults to 1/sqrt(d_k)
/// \param lse if not null, receives [L] the log-sum-exp of each query's masked, scaled
///        scores (-inf for a fully masked row), for scaled_dot_product_attention_fused_backward
/// \returns [L, d_v]; a query whose keys are all masked gets a zero row.
/// \throws shape_error on inconsistent shapes; value_error on NaN/Inf inputs or scale.
/// \note Equal to scaled_dot_product_attention up to rounding (a different summation
///       order). Extra memory: one FusedWorkspace (O(block x d)).
/// \sa scaled_dot_product_attention (the reference, which can return the weights),
///     scaled_dot_product_attention_fused_backward (fused_backward.hpp)
template <typename DQ, typename DK, typename DV>
Matrix<typename DQ::Scalar> scaled_dot_product_attention_fused(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Mask& mask = Mask(), std::optional<double> scale = std::nullopt,
    Vector<typename DQ::Scalar>* lse = nullptr) {
  using S = typename DQ::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention_fused: Scalar must be float or double");
  const std::string who = "scaled_dot_product_attention_fused";
  const S sc = static_cast<S>(detail::check_attention_matrices(q, k, v, mask, scale, who));
  const MatrixCRef<S> qr(q), kr(k), vr(v);  // no copy for matrices, maps and heads
  Matrix<S> out(q.rows(), v.cols());
  FusedWorkspace<S> ws(q.cols(), v.cols());
  if (lse) lse->resize(q.rows());
  detail::attention_head_fused<S>(qr, kr, vr, mask, 0, 0, sc, out, ws,
                                  FusedKernel::automatic, lse ? lse->data() : nullptr);
  return out;
}

/// Fused attention on tensors of any rank >= 2 with PyTorch's options (enable_gqa) and
/// logit soft-capping: the same shapes, mask broadcasting, checks and messages as the
/// SdpaOptions overload of scaled_dot_product_attention (the reference), without forming
/// the [L, S] weights.
/// \param query [..., L, d_k] \param key [..., S, d_k] (or [..., H_kv, S, d_k] under GQA)
/// \param value [..., S, d_v] (as key) \param mask broadcastable to [..., L, S]
/// \param options scale (default 1/sqrt(d_k)), enable_gqa, logit_softcap
/// \param lse if not null, receives [..., L] the log-sum-exp per query of the masked,
///        scaled (soft-capped) scores, for scaled_dot_product_attention_fused_backward
/// \returns output [..., L, d_v]
/// \throws shape_error on rank or extent mismatch, H % H_kv != 0 under enable_gqa, or a
///         mask that does not broadcast; value_error on NaN/Inf, a bad scale or soft-cap.
/// \note With OpenMP enabled, (batch, head, query block) items run in parallel, one
///       workspace per thread; results are identical for any number of threads. The
///       process-wide fused_kernel() setting chooses the tile code.
/// \sa scaled_dot_product_attention (the reference, which can return the weights)
template <typename S>
Tensor<S> scaled_dot_product_attention_fused(const Tensor<S>& query, const Tensor<S>& key,
                                             const Tensor<S>& value, const Mask& mask,
                                             const SdpaOptions& options,
                                             Tensor<S>* lse = nullptr) {
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention_fused: Scalar must be float or double");
  return detail::scaled_dot_product_attention_fused(query, key, value, mask, options,
                                                    FusedKernel::automatic, lse);
}

/// Batched fused attention on tensors with only a scale: the SdpaOptions overload with
/// `options.scale = scale`. Pass `std::nullopt` rather than `{}` for the default scale
/// (`{}` would also match SdpaOptions).
/// \param query [..., L, d_k] \param key [..., S, d_k] \param value [..., S, d_v]
/// \param lse if not null, receives [..., L] the log-sum-exp per query (for the backward)
/// \returns output [..., L, d_v]
/// \throws as the SdpaOptions overload.
template <typename S>
Tensor<S> scaled_dot_product_attention_fused(const Tensor<S>& query, const Tensor<S>& key,
                                             const Tensor<S>& value, const Mask& mask = Mask(),
                                             std::optional<double> scale = std::nullopt,
                                             Tensor<S>* lse = nullptr) {
  SdpaOptions options;
  options.scale = scale;
  return scaled_dot_product_attention_fused(query, key, value, mask, options, lse);
}

}  // namespace attend
