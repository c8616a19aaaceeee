// SPDX-License-Identifier: MIT
// Backward of the fused scaled dot-product attention (FlashAttention-2 scheme on a CPU):
// the weights are recomputed tile by tile from the forward's log-sum-exp, never [L, S].
#pragma once

#include "attend/attention/fused.hpp"
#include "attend/attention/fused_kernels.hpp"
#include "attend/attention/fused_portable.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attend {

namespace detail {

/// Workspace slices of the fused backward for one query block (64-byte aligned).
template <typename S>
struct FusedBackwardSlices {
  S* qt;     // [d_k, fused_block_rows] queries of the block (unscaled), transposed
  S* dot;    // [d_v, fused_block_rows] upstream gradient rows of the block, transposed
  S* p;      // [fused_block_keys, fused_block_rows] scores s^T (key-major), then P^T
  S* ds;     // [fused_block_keys, fused_block_rows] dP^T, then scale * dU^T
  S* dq;     // [fused_block_rows, d_k] dq rows of the block, summed over key blocks
  S* d_row;  // [fused_block_rows] D_i = dO_i . O_i
  S* inv;    // [fused_block_rows] 1 / sum_j exp(s_ij - lse_i) when renormalising
};

}  // namespace detail

/// Scratch memory of the fused attention backward for one thread: one allocation of
/// O(block x (d_k + d_v) + 2 block^2) scalars (169 KiB in float for d_k = d_v = 64),
/// reused for every query block and head; the kernel never allocates once it fits.
template <typename Scalar>
class FusedBackwardWorkspace {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::FusedBackwardWorkspace: Scalar must be float or double");

 public:
  FusedBackwardWorkspace() = default;
  /// A workspace for heads with key width d_k and value width d_v.
  FusedBackwardWorkspace(Index d_k, Index d_v) { reserve(d_k, d_v); }

  /// Makes room for heads of widths d_k and d_v; allocates only when it must grow.
  void reserve(Index d_k, Index d_v) {
    d_k = std::max({d_k_, d_k, Index(1)});  // room for every width reserved so far
    d_v = std::max({d_v_, d_v, Index(1)});
    const Index rows = detail::fused_block_rows, keys = detail::fused_block_keys;
    const Index need =
        2 * slot(rows * d_k) + slot(rows * d_v) + 2 * slot(keys * rows) + 2 * slot(rows) + kAlign;
    if (static_cast<Index>(storage_.size()) < need)
      storage_.assign(static_cast<std::size_t>(need), Scalar(0));
    d_k_ = d_k;
    d_v_ = d_v;
  }

  /// True when heads of widths d_k and d_v fit without allocating.
  bool fits(Index d_k, Index d_v) const noexcept {
    return !storage_.empty() && d_k <= d_k_ && d_v <= d_v_;
  }

  /// Bytes held.
  std::size_t bytes() const noexcept { return storage_.size() * sizeof(Scalar); }

  /// The buffers of one query block, carved out of the storage.
  detail::FusedBackwardSlices<Scalar> slices(Index d_k, Index d_v) {
    eigen_assert(fits(d_k, d_v) && "FusedBackwardWorkspace: reserve(d_k, d_v) first");
    (void)d_k;
    (void)d_v;
    const Index rows = detail::fused_block_rows, keys = detail::fused_block_keys;
    const auto u = reinterpret_cast<std::uintptr_t>(storage_.data());
    Scalar* p = reinterpret_cast<Scalar*>((u + 63) & ~std::uintptr_t(63));
    const auto take = [&p](Index n) {
      Scalar* r = p;
      p += slot(n);
      return r;
    };
    detail::FusedBackwardSlices<Scalar> s{};
    s.qt = take(rows * d_k_);
    s.dot = take(rows * d_v_);
    s.p = take(keys * rows);
    s.ds = take(keys * rows);
    s.dq = take(rows * d_k_);
    s.d_row = take(rows);
    s.inv = take(rows);
    return s;
  }

 private:
  static constexpr Index kAlign = 64 / static_cast<Index>(sizeof(Scalar));  // scalars per 64 B
  static Index slot(Index n) { return (n + kAlign - 1) / kAlign * kAlign; }

  std::vector<Scalar> storage_;
  Index d_k_ = 0, d_v_ = 0;
};

namespace detail {

/// Backward of one head of fused attention (FlashAttention-2, Dao 2023, algorithm 2, with
/// the loops swapped: query blocks outside, so D and dq stay in the workspace and dk, dv
/// accumulate in place). For each tile of fused_block_rows queries i and fused_block_keys
/// keys j that the mask does not skip:
///   u_ij = (q_i . k_j) * scale,  t_ij = c tanh(u_ij / c) (softcap c) or u_ij,
///   P_ij = exp(t_ij + mask_ij - lse_i)   (0 where masked)
///   dv_j += P_ij^T do_i,  dP_ij = do_i v_j^T,  dT_ij = P_ij * (dP_ij - D_i),
///   dU_ij = dT_ij (1 - (t_ij / c)^2) (softcap) or dT_ij,
///   dk_j += scale dU_ij^T q_i,  dq_i += scale dU_ij k_j,  with D_i = rowsum(do_i * o_i).
/// Rows with |lse| > 64, where the lse's rounding to S would show in P, are renormalised
/// (P divided by its recomputed row sum, one extra pass over the keys of that block).
/// No checks (the caller validated shapes and the mask); allocates nothing once `ws` fits
/// (d_k, d_v). Sequential within the head, so the result never depends on threads.
/// \param q [L, d_k] \param k [S, d_k] \param v [S, d_v] \param out [L, d_v] the forward's
/// \param lse [L] the forward's log-sum-exp (-inf for a fully masked row)
/// \param d_out [L, d_v] upstream \param dq [L, d_k] \param dk [S, d_k] \param dv [S, d_v]
///        (all three assigned)
/// \param softcap the forward's logit soft-capping c (0 = off)
template <typename S>
void attention_head_fused_backward(const MatrixCRef<S>& q, const MatrixCRef<S>& k,
                                   const MatrixCRef<S>& v, const MatrixCRef<S>& out, const S* lse,
                                   const MatrixCRef<S>& d_out, const HeadMaskView& mask, S scale,
                                   MatrixRef<S> dq, MatrixRef<S> dk, MatrixRef<S> dv,
                                   FusedBackwardWorkspace<S>& ws, S softcap = S(0)) {
  eigen_assert(k.cols() == q.cols() && v.rows() == k.rows());
  eigen_assert(out.rows() == q.rows() && out.cols() == v.cols());
  eigen_assert(d_out.rows() == q.rows() && d_out.cols() == v.cols());
  using ArrayRow = Eigen::Map<Eigen::Array<S, 1, Eigen::Dynamic>>;  // one row of a tile
  using ConstArrayRow = Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>;
  constexpr Index ld = fused_block_rows;
  constexpr Index P = FusedPortable<S>::P;
  constexpr S neg_inf = -std::numeric_limits<S>::infinity();
  const Index L = q.rows(), Sk = k.rows(), d_k = q.cols(), d_v = v.cols();
  const Index ldq = q.outerStride(), ldk = k.outerStride(), ldv = v.outerStride();
  const Index ldd = d_out.outerStride(), lddk = dk.outerStride(), lddv = dv.outerStride();
  const bool capped = softcap > S(0);
  if (!ws.fits(d_k, d_v)) ws.reserve(d_k, d_v);
  const FusedBackwardSlices<S> w = ws.slices(d_k, d_v);
  dk.setZero();
  dv.setZero();
  for (Index r0 = 0; r0 < L; r0 += ld) {
    const Index nq = std::min(ld, L - r0);
    const Index nq_pad = (nq + P - 1) / P * P;  // <= ld: ld is a multiple of every packet
    const S* qi = q.data() + r0 * ldq;          // [nq, d_k] rows of the block
    const S* doi = d_out.data() + r0 * ldd;     // [nq, d_v]
    // Unscaled queries: s = (q . k) * scale, as the forward and the reference.
    fused_pack_transposed<S>(qi, ldq, nq, nq_pad, d_k, S(1), w.qt);
    fused_pack_transposed<S>(doi, ldd, nq, nq_pad, d_v, S(1), w.dot);
    for (Index i = 0; i < nq; ++i) w.d_row[i] = d_out.row(r0 + i).dot(out.row(r0 + i));
    std::fill(w.dq, w.dq + nq * d_k, S(0));
    const ConstArrayRow lse_row(lse + r0, nq), d_row(w.d_row, nq);
    ArrayRow inv_row(w.inv, nq);
    // Keys past the last query's causal horizon are never needed: stop there (as forward).
    const Index c_end = mask.causal ? std::min(Sk, r0 + nq + mask.offset) : Sk;
    // The score tile of keys c0..c0+nk-1 into w.p: s^T = K q^T * scale, capped, masked.
    const auto score_tile = [&](Index c0, Index nk) {
      const S* kj = k.data() + c0 * ldk;
      fused_rank_update<S, false, 0, 1>(kj, ldk, 1, nk, d_k, w.qt, ld, w.p, ld, nq_pad);
      for (Index j = 0; j < nk; ++j) ArrayRow(w.p + j * ld, nq) *= scale;
      if (capped) fused_softcap_tile<S>(w.p, ld, nk, nq, softcap);
    };
    const auto mask_tile = [&](Index c0, Index nk, TileKind kind) {
      if (kind == TileKind::masked) apply_mask_transposed<S>(mask, r0, nq, c0, nk, w.p, ld);
    };
    // P = exp(s - lse) in place (0 where masked); times inv when renormalising.
    const auto exp_tile = [&](Index nk, TileKind kind) {
      for (Index j = 0; j < nk; ++j) {
        ArrayRow pj(w.p + j * ld, nq);  // [nq] P^T row of key c0 + j
        // Select, not exp(-inf): -inf - lse is NaN for a fully masked row (lse = -inf).
        if (kind == TileKind::masked)
          pj = (pj == neg_inf).select(S(0), (pj - lse_row).exp());
        else
          pj = (pj - lse_row).exp();
      }
    };
    // The lse arrives rounded to S: P = exp(s - lse) is off by a row factor e^delta with
    // |delta| up to half an ulp of lse, 2^-24 |lse| in float. Beyond |lse| = 64 (1.9e-6
    // in float, 3.6e-15 in double) the block's rows are renormalised: one extra pass over
    // the keys sums exp(s - lse) per row and P is divided by that sum. This keeps huge
    // scores exact (scores near 1e6, or a mask of float's lowest: lse = lowest loses ln l).
    bool renorm = false;
    for (Index i = 0; i < nq; ++i) {
      if (lse_row[i] != neg_inf && std::abs(lse_row[i]) > S(64)) renorm = true;
    }
    if (renorm) {
      inv_row.setZero();  // the sums, for a moment
      for (Index c0 = 0; c0 < c_end; c0 += fused_block_keys) {
        const Index nk = std::min(fused_block_keys, c_end - c0);
        const TileKind kind = classify_tile(mask, r0, nq, c0, nk);
        if (kind == TileKind::skip) continue;
        score_tile(c0, nk);
        mask_tile(c0, nk, kind);
        exp_tile(nk, kind);
        for (Index j = 0; j < nk; ++j) inv_row += ArrayRow(w.p + j * ld, nq);
      }
      inv_row = (inv_row > S(0)).select(inv_row.inverse(), S(0));
    }
    for (Index c0 = 0; c0 < c_end; c0 += fused_block_keys) {
      const Index nk = std::min(fused_block_keys, c_end - c0);
      const TileKind kind = classify_tile(mask, r0, nq, c0, nk);
      if (kind == TileKind::skip) continue;
      const S* kj = k.data() + c0 * ldk;  // [nk, d_k] keys of the block
      const S* vj = v.data() + c0 * ldv;  // [nk, d_v]
      // forward: u = scale q k^T; t = c tanh(u / c) (capped) or u; s = t + mask;
      // P = exp(s - lse) = softmax(s) (masked: 0); out = P v.
      if (!capped && kind == TileKind::clean && !renorm) {
        // The common case in two passes: s^T, then exp(s * scale - lse) row by row
        // (contiguous maps keep Eigen's exp vectorised).
        fused_rank_update<S, false, 0, 1>(kj, ldk, 1, nk, d_k, w.qt, ld, w.p, ld, nq_pad);
        for (Index j = 0; j < nk; ++j) {
          ArrayRow pj(w.p + j * ld, nq);
          pj = (pj * scale - lse_row).exp();
        }
      } else {
        score_tile(c0, nk);
      }
      if (capped) {
        // dP = d_out v^T first, then, while w.p still holds t (before the mask):
        // dU = dT * (1 - (t / c)^2), dT = P * (dP - D), so ds = (dP - D) (1 - (t/c)^2) scale
        // now and ds *= P once P is known.
        fused_rank_update<S, false, 0, 1>(vj, ldv, 1, nk, d_v, w.dot, ld, w.ds, ld, nq_pad);
        for (Index j = 0; j < nk; ++j) {
          ArrayRow dsj(w.ds + j * ld, nq);
          const ArrayRow tj(w.p + j * ld, nq);
          dsj = (dsj - d_row) * (S(1) - (tj / softcap).square()) * scale;
        }
      }
      if (capped || kind != TileKind::clean || renorm) {
        mask_tile(c0, nk, kind);
        exp_tile(nk, kind);
        if (renorm) {
          for (Index j = 0; j < nk; ++j) ArrayRow(w.p + j * ld, nq) *= inv_row;
        }
      }
      // forward: out = P v  =>  dv += P^T d_out
      fused_rank_update<S, true, ld, 1>(w.p, ld, 1, nk, nq, doi, ldd, dv.data() + c0 * lddv, lddv,
                                        d_v);
      if (capped) {
        for (Index j = 0; j < nk; ++j) ArrayRow(w.ds + j * ld, nq) *= ArrayRow(w.p + j * ld, nq);
      } else {
        // dP = d_out v^T; P = softmax(s) row-wise  =>  dS = P * (dP - D), D_i = sum_j P_ij dP_ij
        fused_rank_update<S, false, 0, 1>(vj, ldv, 1, nk, d_v, w.dot, ld, w.ds, ld, nq_pad);
        for (Index j = 0; j < nk; ++j) {  // dS^T, times scale
          ArrayRow dsj(w.ds + j * ld, nq);
          dsj = ArrayRow(w.p + j * ld, nq) * (dsj - d_row) * scale;
        }
      }
      // forward: u = scale q k^T  =>  dk += scale dU^T q,  dq += scale dU k
      fused_rank_update<S, true, ld, 1>(w.ds, ld, 1, nk, nq, qi, ldq, dk.data() + c0 * lddk, lddk,
                                        d_k);
      fused_rank_update<S, true, 1, ld>(w.ds, 1, ld, nq, nk, kj, ldk, w.dq, d_k, d_k);
    }
    for (Index i = 0; i < nq; ++i) {
      S* row = dq.data() + (r0 + i) * dq.outerStride();
      std::copy(w.dq + i * d_k, w.dq + (i + 1) * d_k, row);
    }
  }
}

}  // namespace detail

/// Gradient of fused attention `out = softmax(scale q k^T + mask) v` with respect to q, k
/// and v, from the forward's output and log-sum-exp, without forming the [L, S] weights:
/// `dv = P^T d_out`, `dS = P * (d_out v^T - rowsum(d_out * out))`, `dq = scale dS k`,
/// `dk = scale dS^T q`, with P recomputed tile by tile as `exp(scale q k^T + mask - lse)`.
/// Masked pairs pass no gradient; a fully masked query row gets a zero dq and adds nothing
/// to dk and dv; tiles the mask blocks entirely are skipped. The additive mask is a constant.
/// \param q [L, d_k] \param k [S, d_k] \param v [S, d_v] the forward's inputs
/// \param out [L, d_v] the forward's output
/// \param lse [L] the forward's log-sum-exp (scaled_dot_product_attention_fused's `lse`)
/// \param d_out [L, d_v] upstream gradient
/// \param mask, scale the forward's (scale defaults to 1/sqrt(d_k))
/// \returns dq [L, d_k], dk [S, d_k], dv [S, d_v] (assigned)
/// \throws shape_error when the shapes disagree; value_error on NaN/Inf q, k, v or scale.
/// \note Dao 2023 (FlashAttention-2), algorithm 2. Equal to
///       scaled_dot_product_attention_backward up to rounding. Extra memory: one
///       FusedBackwardWorkspace (O(block x d + block^2)), whatever L and S are.
/// \sa scaled_dot_product_attention_fused (forward, with `lse`),
///     scaled_dot_product_attention_backward (the reference)
template <typename DQ, typename DK, typename DV, typename DO, typename DL, typename DD>
AttentionGrads<typename DQ::Scalar> scaled_dot_product_attention_fused_backward(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DO>& out, const Eigen::MatrixBase<DL>& lse,
    const Eigen::MatrixBase<DD>& d_out, const Mask& mask = Mask(),
    std::optional<double> scale = std::nullopt) {
  using S = typename DQ::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention_fused_backward: Scalar must be float or "
                "double");
  static_assert(DL::IsVectorAtCompileTime,
                "attend::scaled_dot_product_attention_fused_backward: lse must be a vector [L]");
  const std::string who = "scaled_dot_product_attention_fused_backward";
  const S sc = static_cast<S>(detail::check_attention_matrices(q, k, v, mask, scale, who));
  const Index L = q.rows(), Sk = k.rows(), d_v = v.cols();
  if (out.rows() != L || out.cols() != d_v) {
    throw shape_error(who + ": out is " + detail::matrix_shape(out) + ", expected " +
                      detail::shape_string({L, d_v}) + " ([L, d_v])");
  }
  if (lse.size() != L) {
    throw shape_error(who + ": lse is " + detail::shape_string({lse.size()}) + ", expected " +
                      detail::shape_string({L}) + " (L of query)");
  }
  if (d_out.rows() != L || d_out.cols() != d_v) {
    throw shape_error(who + ": d_out is " + detail::matrix_shape(d_out) + ", expected " +
                      detail::shape_string({L, d_v}) + " ([L, d_v])");
  }
  const MatrixCRef<S> qr(q), kr(k), vr(v), outr(out), dr(d_out);  // no copy for matrices
  const Eigen::Ref<const Vector<S>> lr(lse);
  AttentionGrads<S> g;
  g.dq.resize(L, q.cols());
  g.dk.resize(Sk, q.cols());
  g.dv.resize(Sk, d_v);
  FusedBackwardWorkspace<S> ws(q.cols(), d_v);
  detail::attention_head_fused_backward<S>(
      qr, kr, vr, outr, lr.data(), dr, detail::HeadMaskView(mask, 0, 0), sc, g.dq, g.dk, g.dv, ws);
  return g;
}

/// Fused attention backward on tensors of any rank >= 2 with PyTorch's options: the
/// gradient of scaled_dot_product_attention_fused (SdpaOptions overload) with respect to
/// query, key and value, from its output and log-sum-exp; the shapes, mask broadcasting,
/// checks and messages are the forward's. With soft-capping the recomputed scores pass
/// through `dZ/du = 1 - tanh^2(u / c)`. Under GQA, dk and dv of a key/value head sum the
/// contributions of its H / H_kv query heads, added in increasing head order.
/// \param query [..., L, d_k] \param key [..., S, d_k] (or [..., H_kv, S, d_k] under GQA)
/// \param value [..., S, d_v] (as key) \param output [..., L, d_v] the forward's output
/// \param lse [..., L] the forward's log-sum-exp \param d_output [..., L, d_v] upstream
/// \param mask, options the forward's
/// \returns dq (query's shape), dk (key's), dv (value's), assigned
/// \throws shape_error on rank or extent mismatch (as the forward, and for output, lse and
///         d_output); value_error on NaN/Inf, a bad scale or soft-cap.
/// \note With OpenMP enabled, (batch, query head) items run in parallel, one workspace per
///       thread; each head is computed by one thread and GQA partial sums are reduced in a
///       fixed order, so results are identical for any number of threads. GQA with
///       H_kv < H holds per-query-head partials of dk and dv: (H - H_kv) / H_kv times the
///       size of dk and dv in extra memory.
/// \sa scaled_dot_product_attention_backward (the reference)
template <typename S>
AttentionTensorGrads<S> scaled_dot_product_attention_fused_backward(
    const Tensor<S>& query, const Tensor<S>& key, const Tensor<S>& value, const Tensor<S>& output,
    const Tensor<S>& lse, const Tensor<S>& d_output, const Mask& mask,
    const SdpaOptions& options) {
  static_assert(is_supported_scalar_v<S>,
                "attend::scaled_dot_product_attention_fused_backward: Scalar must be float or "
                "double");
  const std::string who = "scaled_dot_product_attention_fused_backward";
  const detail::AttentionDims dims =
      detail::check_attention_tensors(query, key, value, mask, options, who);
  const Mask& m = dims.mask(mask);  // over the canonical [B, H, L, S]
  const Index H = dims.H, L = dims.L, Sk = dims.S, d_k = dims.d_k, d_v = dims.d_v;
  Shape out_shape = query.shape();
  out_shape.back() = d_v;
  if (output.shape() != out_shape) {
    throw shape_error(who + ": output is " + detail::shape_string(output.shape()) + ", expected " +
                      detail::shape_string(out_shape) + " ([..., L, d_v])");
  }
  Shape lse_shape = query.shape();
  lse_shape.pop_back();
  if (lse.shape() != lse_shape) {
    throw shape_error(who + ": lse is " + detail::shape_string(lse.shape()) + ", expected " +
                      detail::shape_string(lse_shape) + " ([..., L])");
  }
  if (d_output.shape() != out_shape) {
    throw shape_error(who + ": d_output is " + detail::shape_string(d_output.shape()) +
                      ", expected " + detail::shape_string(out_shape) + " ([..., L, d_v])");
  }
  const S sc = static_cast<S>(dims.scale), cap = static_cast<S>(dims.softcap);
  AttentionTensorGrads<S> g{Tensor<S>(query.shape()), Tensor<S>(key.shape()),
                            Tensor<S>(value.shape())};
  const Index n_items = dims.B * H;       // query heads
  const bool grouped = dims.H_kv != H;    // GQA: partial dk, dv per query head
  Tensor<S> dk_part, dv_part;             // [B * H, S, d_k], [B * H, S, d_v] when grouped
  if (grouped) {
    dk_part = Tensor<S>({n_items, Sk, d_k});
    dv_part = Tensor<S>({n_items, Sk, d_v});
  }
  const auto run_item = [&](Index n, FusedBackwardWorkspace<S>& ws) {
    const Index kv = dims.kv_index(n);
    const auto head = [](const Tensor<S>& t, Index i, Index rows, Index cols) {
      return ConstMatrixMap<S>(t.data() + i * rows * cols, rows, cols);
    };
    const auto grad = [](Tensor<S>& t, Index i, Index rows, Index cols) {
      return MatrixMap<S>(t.data() + i * rows * cols, rows, cols);
    };
    Tensor<S>& dk = grouped ? dk_part : g.dk;
    Tensor<S>& dv = grouped ? dv_part : g.dv;
    const Index j = grouped ? n : kv;  // where this head's dk, dv go
    detail::attention_head_fused_backward<S>(
        head(query, n, L, d_k), head(key, kv, Sk, d_k), head(value, kv, Sk, d_v),
        head(output, n, L, d_v), lse.data() + n * L, head(d_output, n, L, d_v),
        detail::HeadMaskView(m, n / H, n % H), sc, grad(g.dq, n, L, d_k), grad(dk, j, Sk, d_k),
        grad(dv, j, Sk, d_v), ws, cap);
  };
#if defined(_OPENMP)
  std::vector<FusedBackwardWorkspace<S>> workspaces(
      static_cast<std::size_t>(omp_get_max_threads()));
  for (auto& ws : workspaces) ws.reserve(d_k, d_v);
#pragma omp parallel for schedule(dynamic, 1)
  for (Index n = 0; n < n_items; ++n) {
    run_item(n, workspaces[static_cast<std::size_t>(omp_get_thread_num())]);
  }
#else
  FusedBackwardWorkspace<S> ws(d_k, d_v);
  for (Index n = 0; n < n_items; ++n) run_item(n, ws);
#endif
  if (grouped && dims.H_kv > 0) {
    // dk, dv of kv head (b, g) = sum over its query heads h = g * group + i, i ascending.
    const Index group = H / dims.H_kv;
    const Index n_kv = dims.B * dims.H_kv;
    const Index nk = Sk * d_k, nv = Sk * d_v;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (Index kv = 0; kv < n_kv; ++kv) {
      const Index first = (kv / dims.H_kv) * H + (kv % dims.H_kv) * group;  // query head
      Eigen::Map<Vector<S>> dk(g.dk.data() + kv * nk, nk), dv(g.dv.data() + kv * nv, nv);
      for (Index i = 0; i < group; ++i) {
        dk += Eigen::Map<const Vector<S>>(dk_part.data() + (first + i) * nk, nk);
        dv += Eigen::Map<const Vector<S>>(dv_part.data() + (first + i) * nv, nv);
      }
    }
  }
  return g;
}

/// Fused attention backward on tensors with only a scale: the SdpaOptions overload with
/// `options.scale = scale` (no GQA, no soft-capping).
/// \param query [..., L, d_k] \param key [..., S, d_k] \param value [..., S, d_v]
/// \param output [..., L, d_v] \param lse [..., L] the forward's log-sum-exp
/// \param d_output [..., L, d_v] upstream \param mask, scale the forward's
/// \returns dq [..., L, d_k], dk [..., S, d_k], dv [..., S, d_v] (assigned)
/// \throws as the SdpaOptions overload.
template <typename S>
AttentionTensorGrads<S> scaled_dot_product_attention_fused_backward(
    const Tensor<S>& query, const Tensor<S>& key, const Tensor<S>& value, const Tensor<S>& output,
    const Tensor<S>& lse, const Tensor<S>& d_output, const Mask& mask = Mask(),
    std::optional<double> scale = std::nullopt) {
  SdpaOptions options;
  options.scale = scale;
  return scaled_dot_product_attention_fused_backward(query, key, value, output, lse, d_output,
                                                     mask, options);
}

}  // namespace attend
