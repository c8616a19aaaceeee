// SPDX-License-Identifier: MIT
// AVX2/FMA micro-kernels of the fused attention kernel (float): a 6x16 register block for
// scores K Q^T, a 6x16 block for P V, an exp2 for non-positive inputs, the online softmax.
// Every fixed-trip loop over registers is unrolled explicitly (ATTEND_UNROLL): the same
// code at -O2 as at -O3.
#pragma once

#include "attend/attention/fused_portable.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <limits>

// Compiled on x86-64 with GCC or Clang whatever the -m flags: the functions carry
// `target("avx2,fma")` and run only after a CPU check. Define ATTEND_NO_AVX2 to drop them.
#if !defined(ATTEND_NO_AVX2) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define ATTEND_FUSED_AVX2 1
#include <immintrin.h>
#else
#define ATTEND_FUSED_AVX2 0
#endif

namespace attend::detail {

#if ATTEND_FUSED_AVX2

/// True when the CPU (and OS) run AVX2 and FMA instructions.
inline bool cpu_has_avx2_fma() {
#if defined(__AVX2__) && defined(__FMA__)
  return true;
#else
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#endif
}

/// 2^x for x <= 0 (8 lanes): round to n, a degree-5 fit of 2^f on [-1/2, 1/2] with
/// constant term 1 (relative error 9.1e-8, 1.9e-7 after float rounding: under 2 ulp;
/// degree 6 costs 1.5-3% of the whole kernel for 1 ulp), times 2^n in the exponent bits. Inputs at
/// or below -127, -inf included, give exactly 0 (the exponent field becomes 0).
__attribute__((target("avx2,fma"))) inline __m256 exp2_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-127.0f));
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);         // exact, in [-1/2, 1/2]
  __m256 p = _mm256_set1_ps(1.326472731e-03f);  // c0 = 1 exactly: 2^0 = 1
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.671512991e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550733581e-02f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402224243e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931470037e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);  // 2^n, 0 at -127
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/// e^(x - m) for x <= m (8 lanes) as 2^((x - m) log2 e): the difference in natural units
/// first, then the change of base, so finite x and m of any size (a mask bias of float's
/// lowest) give a finite difference or -inf, and x = m gives exactly 1. x = -inf, or a
/// difference below -88, gives 0.
__attribute__((target("avx2,fma"))) inline __m256 exp_minus(__m256 x, __m256 m) {
  return exp2_nonpositive(_mm256_mul_ps(_mm256_sub_ps(x, m), _mm256_set1_ps(1.44269504088896341f)));
}

/// y[i] = 2^x[i] for x[i] <= 0, i < n (n a multiple of 8): exp2_nonpositive on arrays,
/// callable from code compiled without AVX2 (tests check it against std::exp2).
__attribute__((target("avx2,fma"))) inline void fused_exp2_nonpositive(const float* x, float* y,
                                                                       Index n) {
  eigen_assert(n % 8 == 0);
  for (Index i = 0; i < n; i += 8)
    _mm256_storeu_ps(y + i, exp2_nonpositive(_mm256_loadu_ps(x + i)));
}

/// Scores of R keys (rows of k) against a panel of 16 queries: st[r][0:16] = (k[r] . qp)
/// * scale (the raw dot product scaled once, as the reference: equal products stay equal).
/// \param k [R, d_k] rows with stride ldk \param qp [d_k, 16] packed, unscaled queries
/// \param st [R, 16] with row stride ldst (written)
/// \param colmax [16] running max of the panel's scores over keys (updated)
template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void fused_qk_kernel(
    const float* k, Index ldk, const float* qp, Index d_k, float scale, float* st, Index ldst,
    float* colmax) {
  __m256 c0[R], c1[R];
  ATTEND_UNROLL
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (Index p = 0; p < d_k; ++p) {
    const __m256 b0 = _mm256_load_ps(qp + 16 * p);
    const __m256 b1 = _mm256_load_ps(qp + 16 * p + 8);
    ATTEND_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(k + r * ldk + p);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
  }
  const __m256 sc = _mm256_set1_ps(scale);
  __m256 m0 = _mm256_load_ps(colmax), m1 = _mm256_load_ps(colmax + 8);
  ATTEND_UNROLL
  for (int r = 0; r < R; ++r) {
    c0[r] = _mm256_mul_ps(c0[r], sc);
    c1[r] = _mm256_mul_ps(c1[r], sc);
    _mm256_store_ps(st + r * ldst, c0[r]);
    _mm256_store_ps(st + r * ldst + 8, c1[r]);
    m0 = _mm256_max_ps(m0, c0[r]);
    m1 = _mm256_max_ps(m1, c1[r]);
  }
  _mm256_store_ps(colmax, m0);
  _mm256_store_ps(colmax + 8, m1);
}

/// acc[r][0:8*NV] = alpha[r] * acc[r] + sum_j pt[j][r] * v[j][0:8*NV] for R queries.
/// \param pt [nk, R] probabilities, key-major, row stride ldp \param v [nk, 8*NV] values,
/// row stride ldv; with Tail the last 8 columns load through `tail` (valid lanes only)
/// \param acc [R, 8*NV] row stride ldacc (read, rescaled, written)
template <int R, int NV, bool Tail>
__attribute__((target("avx2,fma"), always_inline)) inline void fused_pv_kernel(
    const float* pt, Index ldp, Index nk, const float* v, Index ldv, float* acc, Index ldacc,
    const float* alpha, __m256i tail) {
  __m256 c[R][NV];
  ATTEND_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m256 a = _mm256_broadcast_ss(alpha + r);
    ATTEND_UNROLL
    for (int n = 0; n < NV; ++n)
      c[r][n] = _mm256_mul_ps(a, _mm256_load_ps(acc + r * ldacc + 8 * n));
  }
  for (Index j = 0; j < nk; ++j) {
    __m256 b[NV];
    ATTEND_UNROLL
    for (int n = 0; n < NV; ++n) {
      b[n] = (Tail && n == NV - 1) ? _mm256_maskload_ps(v + j * ldv + 8 * n, tail)
                                   : _mm256_loadu_ps(v + j * ldv + 8 * n);
    }
    ATTEND_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(pt + j * ldp + r);
      ATTEND_UNROLL
      for (int n = 0; n < NV; ++n) c[r][n] = _mm256_fmadd_ps(a, b[n], c[r][n]);
    }
  }
  ATTEND_UNROLL
  for (int r = 0; r < R; ++r) {
    ATTEND_UNROLL
    for (int n = 0; n < NV; ++n) _mm256_store_ps(acc + r * ldacc + 8 * n, c[r][n]);
  }
}

/// Scores tile of one key block: st[j][i] = (k[j] . q[i]) * a.scale for j < nk, i < 16 * panels,
/// and a.shift[i] = max_j st[j][i] (the block max, valid while no mask is applied).
__attribute__((target("avx2,fma"))) inline void fused_qk_tile(const FusedBlockArgs<float>& a,
                                                              const float* k, Index nk,
                                                              Index panels) {
  constexpr Index ld = fused_block_rows;
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (Index i = 0; i < 16 * panels; i += 8) _mm256_store_ps(a.shift + i, neg_inf);
  for (Index j = 0; j < nk; j += 6) {
    const float* kj = k + j * a.ldk;
    float* st = a.scores + j * ld;
    for (Index pnl = 0; pnl < panels; ++pnl) {
      const float* qp = a.q_pack + pnl * 16 * a.d_k;
      float* out = st + 16 * pnl;
      float* mx = a.shift + 16 * pnl;
      // clang-format off
      switch (nk - j < 6 ? nk - j : 6) {  // keys left in the block
        case 6: fused_qk_kernel<6>(kj, a.ldk, qp, a.d_k, a.scale, out, ld, mx); break;
        case 5: fused_qk_kernel<5>(kj, a.ldk, qp, a.d_k, a.scale, out, ld, mx); break;
        case 4: fused_qk_kernel<4>(kj, a.ldk, qp, a.d_k, a.scale, out, ld, mx); break;
        case 3: fused_qk_kernel<3>(kj, a.ldk, qp, a.d_k, a.scale, out, ld, mx); break;
        case 2: fused_qk_kernel<2>(kj, a.ldk, qp, a.d_k, a.scale, out, ld, mx); break;
        default: fused_qk_kernel<1>(kj, a.ldk, qp, a.d_k, a.scale, out, ld, mx); break;
      }
      // clang-format on
    }
  }
}

/// Online softmax over one key block (natural units, as the scores and the mask): per
/// query column, the new running max m, alpha = 2^((m_old - m) log2 e), scores replaced by
/// p = 2^((s - m) log2 e) = e^(s - m), sum = sum * alpha + sum_j p. The difference is taken
/// before the change of base: a huge finite score (a mask bias of float's lowest) stays
/// finite, and s = m gives p = 1 exactly.
/// A column with no finite score yet keeps m = -inf and gets p = 0, alpha = 0.
/// \param have_max the block max in a.shift is valid (no mask changed the scores)
__attribute__((target("avx2,fma"))) inline void fused_softmax_update(const FusedBlockArgs<float>& a,
                                                                     Index nk, Index nvec,
                                                                     bool have_max) {
  constexpr Index ld = fused_block_rows;
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (Index vi = 0; vi < nvec; ++vi) {
    float* col = a.scores + 8 * vi;
    const __m256 m_old = _mm256_load_ps(a.row_max + 8 * vi);
    __m256 mx = m_old;
    if (have_max) {
      mx = _mm256_max_ps(mx, _mm256_load_ps(a.shift + 8 * vi));
    } else {
      for (Index j = 0; j < nk; ++j) mx = _mm256_max_ps(mx, _mm256_load_ps(col + j * ld));
    }
    // Where nothing is finite yet, subtract 0 instead of -inf: 2^(-inf - 0) = 0, no NaN.
    const __m256 m_use = _mm256_andnot_ps(_mm256_cmp_ps(mx, neg_inf, _CMP_EQ_OQ), mx);
    const __m256 alpha = exp_minus(m_old, m_use);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    Index j = 0;
    for (; j + 1 < nk; j += 2) {
      const __m256 p0 = exp_minus(_mm256_load_ps(col + j * ld), m_use);
      const __m256 p1 = exp_minus(_mm256_load_ps(col + (j + 1) * ld), m_use);
      _mm256_store_ps(col + j * ld, p0);
      _mm256_store_ps(col + (j + 1) * ld, p1);
      s0 = _mm256_add_ps(s0, p0);
      s1 = _mm256_add_ps(s1, p1);
    }
    if (j < nk) {
      const __m256 p0 = exp_minus(_mm256_load_ps(col + j * ld), m_use);
      _mm256_store_ps(col + j * ld, p0);
      s0 = _mm256_add_ps(s0, p0);
    }
    const __m256 sum = _mm256_add_ps(s0, s1);
    _mm256_store_ps(a.row_sum + 8 * vi,
                    _mm256_fmadd_ps(_mm256_load_ps(a.row_sum + 8 * vi), alpha, sum));
    _mm256_store_ps(a.row_max + 8 * vi, mx);
    _mm256_store_ps(a.alpha + 8 * vi, alpha);
  }
}

/// acc[0:nq] = alpha * acc + P V for one key block (v points at the block's first key).
template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void fused_pv_rows(
    const FusedBlockArgs<float>& a, const float* v, Index nk, Index i0, __m256i tail) {
  constexpr Index ld = fused_block_rows;
  const float* pt = a.scores + i0;
  float* acc = a.acc + i0 * a.ld_acc;
  const float* al = a.alpha + i0;
  Index c = 0;
  for (; c + 16 <= a.d_v; c += 16) {
    fused_pv_kernel<R, 2, false>(pt, ld, nk, v + c, a.ldv, acc + c, a.ld_acc, al, tail);
  }
  const Index rem = a.d_v - c;
  if (rem > 8) {
    fused_pv_kernel<R, 2, true>(pt, ld, nk, v + c, a.ldv, acc + c, a.ld_acc, al, tail);
  } else if (rem == 8) {
    fused_pv_kernel<R, 1, false>(pt, ld, nk, v + c, a.ldv, acc + c, a.ld_acc, al, tail);
  } else if (rem > 0) {
    fused_pv_kernel<R, 1, true>(pt, ld, nk, v + c, a.ldv, acc + c, a.ld_acc, al, tail);
  }
}

/// P V product of one key block over the nq queries of the block.
__attribute__((target("avx2,fma"))) inline void fused_pv_tile(const FusedBlockArgs<float>& a,
                                                              const float* v, Index nk, Index nq) {
  // Lanes of the last, partial 8-column vector of V: lane t valid when t < d_v mod 8.
  const int valid = static_cast<int>(a.d_v % 8);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane);
  for (Index i0 = 0; i0 < nq; i0 += 6) {
    // clang-format off
    switch (nq - i0 < 6 ? nq - i0 : 6) {
      case 6: fused_pv_rows<6>(a, v, nk, i0, tail); break;
      case 5: fused_pv_rows<5>(a, v, nk, i0, tail); break;
      case 4: fused_pv_rows<4>(a, v, nk, i0, tail); break;
      case 3: fused_pv_rows<3>(a, v, nk, i0, tail); break;
      case 2: fused_pv_rows<2>(a, v, nk, i0, tail); break;
      default: fused_pv_rows<1>(a, v, nk, i0, tail); break;
    }
    // clang-format on
  }
}

/// Packs queries r0..r0+nq-1 (a.q points at row r0) into 16-query panels [d_k, 16],
/// unscaled (the score tile is scaled); lanes past nq are zero.
__attribute__((target("avx2,fma"))) inline void fused_pack_queries(const FusedBlockArgs<float>& a,
                                                                   Index nq, Index panels) {
  for (Index pnl = 0; pnl < panels; ++pnl) {
    float* dst = a.q_pack + pnl * 16 * a.d_k;
    for (Index t = 0; t < 16; ++t) {
      const Index i = pnl * 16 + t;
      if (i < nq) {
        const float* row = a.q + i * a.ldq;
        for (Index p = 0; p < a.d_k; ++p) dst[16 * p + t] = row[p];
      } else {
        for (Index p = 0; p < a.d_k; ++p) dst[16 * p + t] = 0.0f;
      }
    }
  }
}

#endif  // ATTEND_FUSED_AVX2

}  // namespace attend::detail
