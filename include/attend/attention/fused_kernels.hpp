// SPDX-License-Identifier: MIT
// The fused attention kernel's loop over one query block (online softmax over key blocks,
// tiles skipped by the mask), its per-head mask view, and the choice of tile code.
#pragma once

#include "attend/attention/dispatch.hpp"
#include "attend/attention/fused_avx2.hpp"
#include "attend/attention/fused_portable.hpp"
#include "attend/attention/mask.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace attend::detail {

/// The mask of one (batch, head) as raw pointers: element (i, j) of a broadcast plane is
/// `ptr[i * row_stride + j * col_stride]` (a stride is 0 along a broadcast extent).
struct HeadMaskView {
  bool causal = false;
  Index offset = 0;               // query i may see key j when j <= i + offset
  const bool* blocked = nullptr;  // true = blocked
  Index blocked_rs = 0, blocked_cs = 0;
  const double* bias = nullptr;  // finite, added to the scaled scores
  Index bias_rs = 0, bias_cs = 0;

  HeadMaskView(const Mask& mask, Index b, Index h) {
    if (mask.causal_offset()) {
      // As in Mask: offsets beyond +-2^40 act like +-2^40 for any real L and S, and the
      // tile arithmetic r0 + nq + offset cannot overflow.
      constexpr Index limit = Index(1) << 40;
      causal = true;
      offset = std::clamp<Index>(*mask.causal_offset(), -limit, limit);
    }
    if (mask.blocked()) blocked = plane(*mask.blocked(), b, h, blocked_rs, blocked_cs);
    if (mask.bias()) bias = plane(*mask.bias(), b, h, bias_rs, bias_cs);
  }

 private:
  template <typename T>
  static const T* plane(const Tensor<T>& t, Index b, Index h, Index& rs, Index& cs) {
    const Shape& s = t.shape();  // [B|1, H|1, L|1, S|1]
    const Index bb = s[0] == 1 ? 0 : b;
    const Index hh = s[1] == 1 ? 0 : h;
    rs = s[2] == 1 ? 0 : s[3];
    cs = s[3] == 1 ? 0 : 1;
    return t.data() + (bb * s[1] + hh) * s[2] * s[3];
  }
};

/// What a [nq queries, nk keys] tile needs: nothing computed, no mask, or masking.
enum class TileKind { skip, clean, masked };

/// Classifies the tile of queries r0..r0+nq-1 against keys c0..c0+nk-1. `skip` only when
/// every pair is blocked (by causality alone or by the blocked plane alone).
inline TileKind classify_tile(const HeadMaskView& m, Index r0, Index nq, Index c0, Index nk) {
  bool partial = m.bias != nullptr;
  if (m.causal) {
    if (c0 > r0 + nq - 1 + m.offset) return TileKind::skip;  // all keys in every future
    if (c0 + nk - 1 > r0 + m.offset) partial = true;
  }
  if (m.blocked) {
    const Index rows = m.blocked_rs ? nq : 1;
    const Index cols = m.blocked_cs ? nk : 1;
    Index n_blocked = 0;
    for (Index r = 0; r < rows; ++r) {
      const bool* row = m.blocked + (r0 + r) * m.blocked_rs + c0 * m.blocked_cs;
      for (Index c = 0; c < cols; ++c) n_blocked += row[c * m.blocked_cs] ? 1 : 0;
    }
    if (n_blocked == rows * cols) return TileKind::skip;
    if (n_blocked > 0) partial = true;
  }
  return partial ? TileKind::masked : TileKind::clean;
}

/// Masks a key-major score tile: st[j * ld + i] is query r0 + i, key c0 + j. Adds the
/// bias (natural units, rounded to S first as Mask::apply does: float's lowest stays
/// finite), then sets blocked and future pairs to -inf.
template <typename S>
void apply_mask_transposed(const HeadMaskView& m, Index r0, Index nq, Index c0, Index nk, S* st,
                           Index ld) {
  constexpr S neg_inf = -std::numeric_limits<S>::infinity();
  for (Index j = 0; j < nk; ++j) {
    S* row = st + j * ld;
    const Index key = c0 + j;
    if (m.bias) {
      const double* bias = m.bias + r0 * m.bias_rs + key * m.bias_cs;
      for (Index i = 0; i < nq; ++i) row[i] += static_cast<S>(bias[i * m.bias_rs]);
    }
    if (m.blocked) {
      const bool* blocked = m.blocked + r0 * m.blocked_rs + key * m.blocked_cs;
      for (Index i = 0; i < nq; ++i) {
        if (blocked[i * m.blocked_rs]) row[i] = neg_inf;
      }
    }
    if (m.causal) {
      // query r0 + i sees key when key <= r0 + i + offset, i.e. i >= key - r0 - offset
      const Index first_seen = std::clamp<Index>(key - r0 - m.offset, 0, nq);
      std::fill(row, row + first_seen, neg_inf);
    }
  }
}

#if ATTEND_FUSED_AVX2
/// AVX2/FMA tile code (float): register-blocked micro-kernels, scores in natural units,
/// e^(s - m) as 2^((s - m) log2 e).
struct FusedAvx2 {
  static void pack_queries(const FusedBlockArgs<float>& a, Index nq) {
    fused_pack_queries(a, nq, (nq + 15) / 16);
  }
  static void scores(const FusedBlockArgs<float>& a, const float* k, Index nk, Index nq) {
    fused_qk_tile(a, k, nk, (nq + 15) / 16);
  }
  static void softmax_update(const FusedBlockArgs<float>& a, Index nk, Index nq, bool clean) {
    fused_softmax_update(a, nk, (nq + 7) / 8, clean);
  }
  static void pv(const FusedBlockArgs<float>& a, const float* v, Index nk, Index nq) {
    fused_pv_tile(a, v, nk, nq);
  }
};
#endif

/// One query block: rows r0..r0+nq-1 (a.q and a.out point at row r0) against all Sk keys,
/// one key block at a time; writes the nq output rows. Per tile: s = (q . k) * scale,
/// s = c tanh(s / c) when a.softcap = c > 0, the mask, then the online softmax, all in
/// natural units on every path (row_max and lse too).
template <typename S, typename Path>
void fused_query_block(const FusedBlockArgs<S>& a, const HeadMaskView& mask, Index r0, Index nq,
                       Index Sk) {
  constexpr Index ld = fused_block_rows;
  const bool softcap = a.softcap > S(0);
  Path::pack_queries(a, nq);
  std::fill(a.row_max, a.row_max + ld, -std::numeric_limits<S>::infinity());
  std::fill(a.row_sum, a.row_sum + ld, S(0));
  std::fill(a.acc, a.acc + nq * a.ld_acc, S(0));
  // Keys past the last query's causal horizon are never needed: stop there.
  const Index c_end = mask.causal ? std::min(Sk, r0 + nq + mask.offset) : Sk;
  for (Index c0 = 0; c0 < c_end; c0 += fused_block_keys) {
    const Index nk = std::min(fused_block_keys, c_end - c0);
    const TileKind kind = classify_tile(mask, r0, nq, c0, nk);
    if (kind == TileKind::skip) continue;
    Path::scores(a, a.k + c0 * a.ldk, nk, nq);
    if (softcap) fused_softcap_tile<S>(a.scores, ld, nk, nq, a.softcap);
    if (kind == TileKind::masked) apply_mask_transposed<S>(mask, r0, nq, c0, nk, a.scores, ld);
    // The block max the score kernel kept is stale once the mask or the cap changed scores.
    Path::softmax_update(a, nk, nq, kind == TileKind::clean && !softcap);
    Path::pv(a, a.v + c0 * a.ldv, nk, nq);
  }
  for (Index i = 0; i < nq; ++i) {
    const S l = a.row_sum[i];
    const S inv = l > S(0) ? S(1) / l : S(0);  // no key seen: a zero row, never NaN
    const S* acc = a.acc + i * a.ld_acc;
    S* out = a.out + i * a.ldo;
    for (Index c = 0; c < a.d_v; ++c) out[c] = acc[c] * inv;
  }
  if (a.lse) {
    // For the backward: lse = ln sum_j exp(s_j) = m + ln l (sum_j e^(s_j - m) = l), in
    // double before the one rounding to S.
    for (Index i = 0; i < nq; ++i) {
      const double l = static_cast<double>(a.row_sum[i]);
      a.lse[i] = l > 0.0 ? static_cast<S>(static_cast<double>(a.row_max[i]) + std::log(l))
                         : -std::numeric_limits<S>::infinity();
    }
  }
}

/// Runs one query block with the requested tile code.
template <typename S>
void fused_query_block(const FusedBlockArgs<S>& a, const HeadMaskView& mask, Index r0, Index nq,
                       Index Sk, FusedKernel kernel) {
#if ATTEND_FUSED_AVX2
  if constexpr (std::is_same_v<S, float>) {
    if (resolve_fused_kernel(kernel, true) == FusedKernel::avx2) {
      fused_query_block<float, FusedAvx2>(a, mask, r0, nq, Sk);
      return;
    }
  }
#endif
  (void)kernel;
  fused_query_block<S, FusedPortable<S>>(a, mask, r0, nq, Sk);
}

}  // namespace attend::detail
