// SPDX-License-Identifier: MIT
// The fused attention kernel's block sizes and arguments, and its portable tile code:
// register-blocked micro-kernels on Eigen packets (any SIMD width Eigen was built for),
// for the forward and for the backward (one rank-update kernel for its five products).
#pragma once

#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>

// Full unrolling of the micro-kernels' fixed-trip loops over register arrays, whatever the
// optimisation level: GCC 12 at -O2 leaves `for (int r = 0; r < R; ++r)` loops rolled,
// the accumulator arrays stay in memory and the kernels run 2.5x slower. GCC and Clang
// both honour `#pragma GCC unroll` (a trip count up to 16 is unrolled completely).
#if defined(__GNUC__) || defined(__clang__)
#define ATTEND_UNROLL _Pragma("GCC unroll 16")
#else
#define ATTEND_UNROLL
#endif

namespace attend::detail {

/// Queries per block of the fused kernel: 6 panels of 16 (AVX2 scores micro-kernel) and
/// 16 groups of 6 (AVX2 P V micro-kernel); also the row stride of the transposed score
/// tile. 96 rather than 48 halves the passes over K and V (+2-5% at L = 4096).
inline constexpr Index fused_block_rows = 96;
/// Keys per block of the fused kernel: the score tile [keys, queries] is 48 KiB in float.
inline constexpr Index fused_block_keys = 128;

/// Everything one query block of the fused kernel reads and writes, as raw row-major
/// pointers with row strides (heads are column blocks, so strides may exceed widths).
template <typename S>
struct FusedBlockArgs {
  const S* q;  // [L, d_k] (row r0 is the first of the block)
  Index ldq;
  const S* k;  // [S, d_k]
  Index ldk;
  const S* v;  // [S, d_v]
  Index ldv;
  S* out;  // [L, d_v]
  Index ldo;
  S* lse;  // [L] log-sum-exp of each query's masked, scaled scores (row r0 first), natural
           // log, -inf for a fully masked row; null when not requested (the usual case)
  Index d_k, d_v;
  S scale;    // multiplies the raw q . k when the score tile is stored (natural units)
  S softcap;  // logit soft-capping c: scores = c tanh(s / c) before the mask; 0 = off
  // Workspace slices (see FusedWorkspace): 64-byte aligned.
  S* q_pack;  // [fused_block_rows, d_k] unscaled queries in transposed panels
  S* scores;  // [fused_block_keys, fused_block_rows] scores, key-major (S^T tile)
  S* acc;     // [fused_block_rows, ld_acc] unnormalised output rows
  Index ld_acc;
  S* row_max;  // [fused_block_rows] running max per query (-inf: nothing seen yet)
  S* row_sum;  // [fused_block_rows] running sum of exp per query
  S* alpha;    // [fused_block_rows] rescale factor of the current key block
  S* shift;    // [fused_block_rows] value subtracted before exp (portable), block max (AVX2)
};

/// Logit soft-capping of a key-major tile, in place: st[j * ld + i] = c tanh(st[j * ld + i]
/// / c) for j < rows, i < cols (Gemma 2, ggml's softcap). Eigen's vectorised tanh, row by
/// row (contiguous maps); no allocation.
template <typename S>
void fused_softcap_tile(S* st, Index ld, Index rows, Index cols, S c) {
  using ArrayRow = Eigen::Map<Eigen::Array<S, 1, Eigen::Dynamic>>;
  for (Index j = 0; j < rows; ++j) {
    ArrayRow row(st + j * ld, cols);
    row = (row / c).tanh() * c;
  }
}

/// Portable tile code for any scalar: scores and P V by micro-kernels on Eigen packets
/// (R keys or queries x NP packets held in registers, no packing of K or V, no Eigen
/// GEMM, which would allocate and spawn threads under OpenMP), softmax by Eigen arrays
/// with Eigen's exp, natural-log units. Scores are (q . k) * scale: the scale multiplies
/// the raw dot product as the reference does, so equal dot products stay equal.
template <typename S>
struct FusedPortable {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr int P = Eigen::internal::unpacket_traits<Packet>::size;
  static constexpr int NP = 2 * P <= 16 ? 2 : 1;  // packets per panel of queries
  static constexpr Index W = NP * P;              // queries per panel
  static_assert(fused_block_rows % W == 0, "query panels must tile the query block");
  using Tile = Eigen::Map<Matrix<S>, 0, Eigen::OuterStride<>>;
  using Row = Eigen::Map<RowVector<S>>;

  /// Queries r0.. (a.q) into panels [d_k, W], unscaled; lanes past nq are zero.
  static void pack_queries(const FusedBlockArgs<S>& a, Index nq) {
    for (Index pnl = 0; pnl * W < nq; ++pnl) {
      S* dst = a.q_pack + pnl * W * a.d_k;
      for (Index t = 0; t < W; ++t) {
        const Index i = pnl * W + t;
        if (i < nq) {
          const S* row = a.q + i * a.ldq;
          for (Index p = 0; p < a.d_k; ++p) dst[W * p + t] = row[p];
        } else {
          for (Index p = 0; p < a.d_k; ++p) dst[W * p + t] = S(0);
        }
      }
    }
  }

  /// st[r][0:W] = (k[r] . qp) * scale for R keys.
  template <int R>
  static void qk_kernel(const S* k, Index ldk, const S* qp, Index d_k, S* st, S scale) {
    using Eigen::internal::pload;
    using Eigen::internal::pmadd;
    using Eigen::internal::pset1;
    Packet c[R][NP];
    ATTEND_UNROLL
    for (int r = 0; r < R; ++r) {
      ATTEND_UNROLL
      for (int n = 0; n < NP; ++n) c[r][n] = pset1<Packet>(S(0));
    }
    for (Index p = 0; p < d_k; ++p) {
      Packet b[NP];
      ATTEND_UNROLL
      for (int n = 0; n < NP; ++n) b[n] = pload<Packet>(qp + W * p + P * n);
      ATTEND_UNROLL
      for (int r = 0; r < R; ++r) {
        const Packet x = pset1<Packet>(k[r * ldk + p]);
        ATTEND_UNROLL
        for (int n = 0; n < NP; ++n) c[r][n] = pmadd(x, b[n], c[r][n]);
      }
    }
    const Packet sc = pset1<Packet>(scale);
    ATTEND_UNROLL
    for (int r = 0; r < R; ++r) {
      ATTEND_UNROLL
      for (int n = 0; n < NP; ++n)
        Eigen::internal::pstore(st + r * fused_block_rows + P * n, Eigen::internal::pmul(c[r][n], sc));
    }
  }

  /// Scores of one key block: st[j][i] = (k[j] . q[i]) * scale, j < nk, i < nq (padded to W).
  static void scores(const FusedBlockArgs<S>& a, const S* k, Index nk, Index nq) {
    for (Index j = 0; j < nk; j += 4) {
      for (Index pnl = 0; pnl * W < nq; ++pnl) {
        const S* qp = a.q_pack + pnl * W * a.d_k;
        S* st = a.scores + j * fused_block_rows + pnl * W;
        const S* kj = k + j * a.ldk;
        // clang-format off
        switch (std::min<Index>(nk - j, 4)) {
          case 4: qk_kernel<4>(kj, a.ldk, qp, a.d_k, st, a.scale); break;
          case 3: qk_kernel<3>(kj, a.ldk, qp, a.d_k, st, a.scale); break;
          case 2: qk_kernel<2>(kj, a.ldk, qp, a.d_k, st, a.scale); break;
          default: qk_kernel<1>(kj, a.ldk, qp, a.d_k, st, a.scale); break;
        }
        // clang-format on
      }
    }
  }

  /// Online softmax over one key block (see fused_softmax_update for the AVX2 twin).
  static void softmax_update(const FusedBlockArgs<S>& a, Index nk, Index nq,
                             bool /*clean: unused, the max is always recomputed here*/) {
    constexpr S neg_inf = -std::numeric_limits<S>::infinity();
    Tile st(a.scores, nk, nq, Eigen::OuterStride<>(fused_block_rows));
    Row m(a.row_max, nq), l(a.row_sum, nq), alpha(a.alpha, nq), shift(a.shift, nq);
    alpha = st.colwise().maxCoeff();  // block max, for a moment
    for (Index i = 0; i < nq; ++i) {
      const S m_new = std::max(m[i], alpha[i]);
      // Subtract 0 instead of -inf where nothing is finite yet: no NaN from -inf - -inf.
      shift[i] = m_new == neg_inf ? S(0) : m_new;
      alpha[i] = std::exp(m[i] - shift[i]);  // exactly 0 when m_old = -inf
      m[i] = m_new;
    }
    for (Index j = 0; j < nk; ++j) st.row(j).array() = (st.row(j) - shift).array().exp();
    for (Index i = 0; i < nq; ++i) {
      // Eigen's exp(-inf) can be a denormal rather than 0: a column with no finite score
      // yet is zeroed so its sum stays 0 (a fully masked row gives zeros).
      if (m[i] == neg_inf) st.col(i).setZero();
    }
    l = l.cwiseProduct(alpha) + st.colwise().sum();
  }

  /// acc[r][0:NV*P] = alpha[r] acc[r] + sum_j pt[j][r] v[j][0:NV*P] for R queries.
  template <int R, int NV>
  static void pv_kernel(const S* pt, Index nk, const S* v, Index ldv, S* acc, Index ldacc,
                        const S* alpha) {
    using Eigen::internal::ploadu;
    using Eigen::internal::pmadd;
    using Eigen::internal::pset1;
    Packet c[R][NV];
    ATTEND_UNROLL
    for (int r = 0; r < R; ++r) {
      ATTEND_UNROLL
      for (int n = 0; n < NV; ++n)
        c[r][n] =
            Eigen::internal::pmul(pset1<Packet>(alpha[r]), ploadu<Packet>(acc + r * ldacc + P * n));
    }
    for (Index j = 0; j < nk; ++j) {
      Packet b[NV];
      ATTEND_UNROLL
      for (int n = 0; n < NV; ++n) b[n] = ploadu<Packet>(v + j * ldv + P * n);
      ATTEND_UNROLL
      for (int r = 0; r < R; ++r) {
        const Packet x = pset1<Packet>(pt[j * fused_block_rows + r]);
        ATTEND_UNROLL
        for (int n = 0; n < NV; ++n) c[r][n] = pmadd(x, b[n], c[r][n]);
      }
    }
    ATTEND_UNROLL
    for (int r = 0; r < R; ++r) {
      ATTEND_UNROLL
      for (int n = 0; n < NV; ++n) Eigen::internal::pstoreu(acc + r * ldacc + P * n, c[r][n]);
    }
  }

  template <int R>
  static void pv_rows(const FusedBlockArgs<S>& a, const S* v, Index nk, Index i0) {
    const S* pt = a.scores + i0;
    S* acc = a.acc + i0 * a.ld_acc;
    const S* al = a.alpha + i0;
    Index c = 0;
    for (; c + 2 * P <= a.d_v; c += 2 * P)
      pv_kernel<R, 2>(pt, nk, v + c, a.ldv, acc + c, a.ld_acc, al);
    for (; c + P <= a.d_v; c += P) pv_kernel<R, 1>(pt, nk, v + c, a.ldv, acc + c, a.ld_acc, al);
    for (; c < a.d_v; ++c) {  // columns past the last full packet
      for (int r = 0; r < R; ++r) {
        S sum = al[r] * acc[r * a.ld_acc + c];
        for (Index j = 0; j < nk; ++j) sum += pt[j * fused_block_rows + r] * v[j * a.ldv + c];
        acc[r * a.ld_acc + c] = sum;
      }
    }
  }

  /// acc[0:nq] = alpha * acc + P V for one key block (v points at the block's first key).
  static void pv(const FusedBlockArgs<S>& a, const S* v, Index nk, Index nq) {
    for (Index i0 = 0; i0 < nq; i0 += 4) {
      // clang-format off
      switch (std::min<Index>(nq - i0, 4)) {
        case 4: pv_rows<4>(a, v, nk, i0); break;
        case 3: pv_rows<3>(a, v, nk, i0); break;
        case 2: pv_rows<2>(a, v, nk, i0); break;
        default: pv_rows<1>(a, v, nk, i0); break;
      }
      // clang-format on
    }
  }
};

// ---- the backward's tile code (fused_backward.hpp) ---------------------------------

/// Rows of C per register block of fused_rank_update: R x 2 packets of accumulators plus
/// 2 packets of B and a broadcast must fit the register file (32 with AVX-512, 16 with
/// SSE/AVX on x86-64, 8 without SIMD).
inline constexpr int fused_rank_rows = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32   ? 8
                                       : EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 16 ? 6
                                                                                      : 2;

/// c[r][0:NV*P] (+)= sum_{j<n} a[r*ars + j*acs] * b[j][0:NV*P] for R rows of c (Eigen
/// packets: R x NV accumulators in registers, b rows loaded once per j); Acc = false
/// overwrites c instead of adding to it.
template <typename S, bool Acc, Index AR, Index AC, int R, int NV>
void fused_rank_update_kernel(const S* a, Index ars_rt, Index acs_rt, Index n, const S* b,
                              Index ldb, S* c, Index ldc) {
  const Index ars = AR ? AR : ars_rt, acs = AC ? AC : acs_rt;  // immediates when known
  using Packet = typename FusedPortable<S>::Packet;            // as the forward's tile code
  constexpr int P = FusedPortable<S>::P;
  using Eigen::internal::ploadu;
  using Eigen::internal::pmadd;
  using Eigen::internal::pset1;
  Packet acc[R][NV];
  ATTEND_UNROLL
  for (int r = 0; r < R; ++r) {
    ATTEND_UNROLL
    for (int t = 0; t < NV; ++t)
      acc[r][t] = Acc ? ploadu<Packet>(c + r * ldc + P * t) : pset1<Packet>(S(0));
  }
  for (Index j = 0; j < n; ++j) {
    Packet bj[NV];
    ATTEND_UNROLL
    for (int t = 0; t < NV; ++t) bj[t] = ploadu<Packet>(b + j * ldb + P * t);
    ATTEND_UNROLL
    for (int r = 0; r < R; ++r) {
      const Packet x = pset1<Packet>(a[r * ars + j * acs]);
      ATTEND_UNROLL
      for (int t = 0; t < NV; ++t) acc[r][t] = pmadd(x, bj[t], acc[r][t]);
    }
  }
  ATTEND_UNROLL
  for (int r = 0; r < R; ++r) {
    ATTEND_UNROLL
    for (int t = 0; t < NV; ++t) Eigen::internal::pstoreu(c + r * ldc + P * t, acc[r][t]);
  }
}

/// R rows of C[., ncols] (+)= A[., n] B[n, ncols]: double packets, single packets, then the
/// columns past the last packet one by one.
template <typename S, bool Acc, Index AR, Index AC, int R>
void fused_rank_update_rows(const S* a, Index ars, Index acs, Index n, const S* b, Index ldb, S* c,
                            Index ldc, Index ncols) {
  constexpr Index P = FusedPortable<S>::P;
  Index col = 0;
  for (; col + 2 * P <= ncols; col += 2 * P)
    fused_rank_update_kernel<S, Acc, AR, AC, R, 2>(a, ars, acs, n, b + col, ldb, c + col, ldc);
  for (; col + P <= ncols; col += P)
    fused_rank_update_kernel<S, Acc, AR, AC, R, 1>(a, ars, acs, n, b + col, ldb, c + col, ldc);
  for (; col < ncols; ++col) {
    for (int r = 0; r < R; ++r) {
      S sum = Acc ? c[r * ldc + col] : S(0);
      for (Index j = 0; j < n; ++j) sum += a[r * ars + j * acs] * b[j * ldb + col];
      c[r * ldc + col] = sum;
    }
  }
}

/// The last `rows` (< fused_rank_rows) rows, by the largest register block that fits.
template <typename S, bool Acc, Index AR, Index AC, int R>
void fused_rank_update_tail(const S* a, Index ars, Index acs, Index rows, Index n, const S* b,
                            Index ldb, S* c, Index ldc, Index ncols) {
  if constexpr (R > 1) {
    if (rows < R) {
      fused_rank_update_tail<S, Acc, AR, AC, R - 1>(a, ars, acs, rows, n, b, ldb, c, ldc, ncols);
      return;
    }
  }
  fused_rank_update_rows<S, Acc, AR, AC, R>(a, ars, acs, n, b, ldb, c, ldc, ncols);
}

/// C[m, ncols] (+)= A[m, n] B[n, ncols], with A(r, j) = a[r*ars + j*acs] (either layout of
/// a key-major tile, or K rows), B and C row-major with row strides ldb and ldc; Acc =
/// false assigns; AR, AC, when not 0, are ars and acs known at compile time. No allocation,
/// no Eigen GEMM (which allocates and spawns threads).
template <typename S, bool Acc, Index AR = 0, Index AC = 0>
void fused_rank_update(const S* a, Index ars, Index acs, Index m, Index n, const S* b, Index ldb,
                       S* c, Index ldc, Index ncols) {
  constexpr int R = fused_rank_rows;
  Index r = 0;
  for (; r + R <= m; r += R)
    fused_rank_update_rows<S, Acc, AR, AC, R>(a + r * ars, ars, acs, n, b, ldb, c + r * ldc, ldc,
                                              ncols);
  if (r < m) {
    fused_rank_update_tail<S, Acc, AR, AC, R - 1>(a + r * ars, ars, acs, m - r, n, b, ldb,
                                                  c + r * ldc, ldc, ncols);
  }
}

/// Packs rows r0..r0+nq-1 of x (x points at row r0) transposed and times `scale` into
/// xt [cols, fused_block_rows]; lanes nq..nq_pad-1 are zero (nq_pad: nq rounded up to a
/// packet, so score tiles run on whole packets).
template <typename S>
void fused_pack_transposed(const S* x, Index ldx, Index nq, Index nq_pad, Index cols, S scale,
                           S* xt) {
  for (Index p = 0; p < cols; ++p) {
    S* dst = xt + p * fused_block_rows;
    for (Index i = 0; i < nq; ++i) dst[i] = x[i * ldx + p] * scale;
    std::fill(dst + nq, dst + nq_pad, S(0));
  }
}

}  // namespace attend::detail
