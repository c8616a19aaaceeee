// SPDX-License-Identifier: MIT
// A key/value cache for incremental decoding with MultiheadAttention: O(L) work per new token.
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>

namespace attend {

/// The projected keys and values of the positions seen so far, per sequence, for one
/// multi-head attention: `keys(b)` is `[size, E]` = `x W_k^T + b_k` of every cached
/// position (head h is the column block `h * d_k .. (h + 1) * d_k`), likewise `values(b)`.
///
/// Storage for `capacity` positions is allocated once; appending never allocates.
/// \sa append_keys_values, attend_cached, self_attention_step
template <typename Scalar>
class KVCache {
  static_assert(is_supported_scalar_v<Scalar>, "attend::KVCache: Scalar must be float or double");

 public:
  /// An empty cache of capacity 0 (sized by the first append_keys_values of a memory).
  KVCache() = default;

  /// Room for `capacity` positions of `batch` sequences of width `embed_dim`.
  /// \throws value_error when a size is negative or batch/embed_dim is 0.
  KVCache(Index batch, Index capacity, Index embed_dim)
      : k_({batch, capacity, embed_dim}), v_({batch, capacity, embed_dim}) {
    if (batch <= 0 || capacity < 0 || embed_dim <= 0) {
      throw value_error("KVCache: batch is " + std::to_string(batch) + ", capacity " +
                        std::to_string(capacity) + " and embed_dim " + std::to_string(embed_dim) +
                        ", expected batch, embed_dim > 0 and capacity >= 0");
    }
  }

  Index batch() const noexcept { return k_.rank() == 3 ? k_.dim(0) : 0; }
  Index capacity() const noexcept { return k_.rank() == 3 ? k_.dim(1) : 0; }
  Index embed_dim() const noexcept { return k_.rank() == 3 ? k_.dim(2) : 0; }
  /// Positions cached so far.
  Index size() const noexcept { return size_; }
  /// Forgets every position (the storage stays).
  void clear() noexcept { size_ = 0; }

  /// Sequence b's cached keys `[size, E]`.
  auto keys(Index b) const { return k_.matrix(b).topRows(size_); }
  /// Sequence b's cached values `[size, E]`.
  auto values(Index b) const { return v_.matrix(b).topRows(size_); }

  /// Row storage `[capacity, E]` of sequence b, for the functions below.
  MatrixMap<Scalar> key_rows(Index b) { return k_.matrix(b); }
  MatrixMap<Scalar> value_rows(Index b) { return v_.matrix(b); }
  /// Marks `n` more positions as filled (the caller wrote their rows).
  void grow(Index n) noexcept { size_ += n; }

 private:
  Tensor<Scalar> k_;  // [B, capacity, E]
  Tensor<Scalar> v_;  // [B, capacity, E]
  Index size_ = 0;
};

namespace detail {

/// Extents of an MHA-layout input `[T, B, W]` / `[B, T, W]` / `[T, W]`.
struct StepDims {
  Index B = 1, T = 0;
  bool unbatched = false;
};

template <typename S>
StepDims check_step_input(const Tensor<S>& x, Index width, bool batch_first, Index B_want,
                          const std::string& who, const std::string& arg) {
  StepDims d;
  const bool rank_ok = x.rank() == 2 || x.rank() == 3;
  d.unbatched = x.rank() == 2;
  if (rank_ok) {
    d.B = d.unbatched ? 1 : (batch_first ? x.dim(0) : x.dim(1));
    d.T = d.unbatched || !batch_first ? x.dim(0) : x.dim(1);
  }
  if (!rank_ok || x.dim(-1) != width || (B_want > 0 && d.B != B_want)) {
    const std::string w = std::to_string(width);
    const std::string b = B_want > 0 ? std::to_string(B_want) : "B";
    const std::string want =
        batch_first ? "[" + b + ", T, " + w + "]" : "[T, " + b + ", " + w + "]";
    throw shape_error(who + ": " + arg + " is " + shape_string(x.shape()) + ", expected " + want +
                      (B_want <= 1 ? " or [T, " + w + "]" : std::string()));
  }
  return d;
}

/// Row t of sequence b of an MHA-layout tensor.
template <typename S>
auto step_row(const Tensor<S>& x, const StepDims& d, bool batch_first, Index b, Index t) {
  const Index row = d.unbatched ? t : (batch_first ? b * d.T + t : t * d.B + b);
  return x.as_matrix().row(row);
}
template <typename S>
auto step_row(Tensor<S>& x, const StepDims& d, bool batch_first, Index b, Index t) {
  const Index row = d.unbatched ? t : (batch_first ? b * d.T + t : t * d.B + b);
  return x.as_matrix().row(row);
}

template <typename S>
void check_cache(const KVCache<S>& cache, Index B, Index E, const std::string& who) {
  if (cache.batch() != B || cache.embed_dim() != E) {
    throw shape_error(who + ": cache is " +
                      shape_string({cache.batch(), cache.capacity(), cache.embed_dim()}) +
                      ", expected [" + std::to_string(B) + ", capacity, " + std::to_string(E) +
                      "] (batch, embed_dim)");
  }
}

}  // namespace detail

/// Projects `kv_input` with the key and value projections of `mha` and appends the results
/// to `cache`: `K = kv_input W_k^T + b_k`, `V = kv_input W_v^T + b_v`.
/// \param mha the attention whose projections are used (kdim must equal vdim)
/// \param kv_input [T, B, kdim] in mha's layout ([B, T, kdim] when batch_first; [T, kdim])
/// \param cache [B, capacity, E]; an empty default-constructed cache is sized to hold
///        exactly these T positions (the usual way to cache an encoder memory)
/// \throws shape_error on a wrong input or cache shape; index_error when the cache has no
///   room for T more positions.
template <typename S>
void append_keys_values(const MultiheadAttention<S>& mha, const Tensor<S>& kv_input,
                        KVCache<S>& cache) {
  const std::string who = "append_keys_values";
  if (mha.options.position != PositionKind::none) {
    throw value_error(who + ": the KV cache does not apply rotary or ALiBi positions yet; "
                            "use a MultiheadAttention with position none");
  }
  if (mha.options.add_bias_kv || mha.options.add_zero_attn) {
    throw value_error(who + ": the KV cache does not append bias_k/bias_v or the zero key; "
                            "use a MultiheadAttention without add_bias_kv and add_zero_attn");
  }
  const auto& o = mha.options;
  if (o.kdim != o.vdim) {
    throw shape_error(who + ": kdim " + std::to_string(o.kdim) + " differs from vdim " +
                      std::to_string(o.vdim) + ", expected one input for keys and values");
  }
  const detail::StepDims d =
      detail::check_step_input(kv_input, o.kdim, o.batch_first, cache.batch(), who, "kv_input");
  const Index E = o.embed_dim;
  if (cache.capacity() == 0 && cache.size() == 0) cache = KVCache<S>(d.B, d.T, E);
  detail::check_cache(cache, d.B, E, who);
  if (cache.size() + d.T > cache.capacity()) {
    throw index_error(
        who + ": kv_input has " + std::to_string(d.T) + " new position(s), expected at most " +
        std::to_string(cache.capacity() - cache.size()) + " (cache capacity " +
        std::to_string(cache.capacity()) + ", " + std::to_string(cache.size()) + " cached)");
  }
  detail::check_finite(kv_input, who, "kv_input");
  const auto wk = mha.packed() ? mha.in_proj_weight.middleRows(E, E) : mha.k_proj_weight.topRows(E);
  const auto wv = mha.packed() ? mha.in_proj_weight.bottomRows(E) : mha.v_proj_weight.topRows(E);
  Matrix<S> rows(d.T, o.kdim);  // [T, kdim] sequence b's new inputs
  for (Index b = 0; b < d.B; ++b) {
    for (Index t = 0; t < d.T; ++t)
      rows.row(t) = detail::step_row(kv_input, d, o.batch_first, b, t);
    auto k = cache.key_rows(b).middleRows(cache.size(), d.T);  // [T, E]
    auto v = cache.value_rows(b).middleRows(cache.size(), d.T);
    k.noalias() = rows * wk.transpose();
    v.noalias() = rows * wv.transpose();
    if (o.bias) {
      k.rowwise() += mha.in_proj_bias.segment(E, E).transpose();
      v.rowwise() += mha.in_proj_bias.tail(E).transpose();
    }
  }
  cache.grow(d.T);
}

/// Multi-head attention of `query` over every position in `cache`:
/// `concat_h(softmax(Q_h K_h^T / sqrt(d_k) + mask) V_h) W_o^T + b_o`, Q = query W_q^T + b_q.
/// \param query [T, B, E] in mha's layout ([B, T, E] when batch_first; [T, E])
/// \param cache [B, capacity, E] holding S = cache.size() positions
/// \param mask broadcastable to [B, H, T, S], key index = cache position
///        (`Mask::causal(S - T)` when the last T cached positions are the queries themselves)
/// \returns shaped as query
/// \throws shape_error on wrong shapes or a mask that does not broadcast; index_error when
///   the cache is empty; value_error on NaN/Inf.
template <typename S>
Tensor<S> attend_cached(const MultiheadAttention<S>& mha, const Tensor<S>& query,
                        const KVCache<S>& cache, const Mask& mask = Mask()) {
  const std::string who = "attend_cached";
  if (mha.options.position != PositionKind::none) {
    throw value_error(who + ": the KV cache does not apply rotary or ALiBi positions yet; "
                            "use a MultiheadAttention with position none");
  }
  if (mha.options.add_bias_kv || mha.options.add_zero_attn) {
    throw value_error(who + ": the KV cache does not append bias_k/bias_v or the zero key; "
                            "use a MultiheadAttention without add_bias_kv and add_zero_attn");
  }
  const auto& o = mha.options;
  const Index E = o.embed_dim, H = o.num_heads, dh = mha.head_dim();
  const detail::StepDims d =
      detail::check_step_input(query, E, o.batch_first, cache.batch(), who, "query");
  detail::check_cache(cache, d.B, E, who);
  const Index n = cache.size();
  if (n == 0) {
    throw index_error(who + ": cache holds 0 positions, expected at least 1 to attend to");
  }
  mask.check(d.B, H, d.T, n, who, "mask");
  detail::check_finite(query, who, "query");
  const auto wq = mha.packed() ? mha.in_proj_weight.topRows(E) : mha.q_proj_weight.topRows(E);
  const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(dh)));
  Tensor<S> result(query.shape());
  Matrix<S> rows(d.T, E), q(d.T, E), heads(d.T, E), out(d.T, E);  // [T, E] each
  Matrix<S> w(d.T, n);                                            // [T, S] one head's weights
  for (Index b = 0; b < d.B; ++b) {
    for (Index t = 0; t < d.T; ++t) rows.row(t) = detail::step_row(query, d, o.batch_first, b, t);
    q.noalias() = rows * wq.transpose();
    if (o.bias) q.rowwise() += mha.in_proj_bias.head(E).transpose();
    const auto keys = cache.keys(b);
    const auto values = cache.values(b);
    for (Index h = 0; h < H; ++h) {
      detail::attention_head_reference<S>(q.middleCols(h * dh, dh), keys.middleCols(h * dh, dh),
                                          values.middleCols(h * dh, dh), mask, b, h, scale,
                                          heads.middleCols(h * dh, dh), w);
    }
    out.noalias() = heads * mha.out_proj_weight.transpose();
    if (o.bias) out.rowwise() += mha.out_proj_bias.transpose();
    for (Index t = 0; t < d.T; ++t) detail::step_row(result, d, o.batch_first, b, t) = out.row(t);
  }
  return result;
}

/// Causal self-attention of T new positions given the cached earlier ones: appends their
/// keys and values, then attends with `Mask::causal(n)` (n = positions cached before), so
/// new position i, at absolute position n + i, sees positions 0 .. n + i. Equals the last T
/// rows of `mha.forward(prefix, {is_causal = true})` over the whole prefix, with O(n) work
/// per new position instead of recomputing the prefix.
/// \param x [T, B, E] in mha's layout \param cache [B, capacity, E], updated
/// \param key_padding_mask optional, broadcastable to [B, 1, 1, n + T] (cache positions)
/// \returns shaped as x
/// \throws as append_keys_values and attend_cached (index_error when the cache is full).
template <typename S>
Tensor<S> self_attention_step(const MultiheadAttention<S>& mha, const Tensor<S>& x,
                              KVCache<S>& cache, const Mask& key_padding_mask = Mask()) {
  if (cache.capacity() == 0) {
    throw index_error(
        "self_attention_step: cache has capacity 0, expected a cache made with "
        "room for the positions to decode");
  }
  const Index before = cache.size();
  append_keys_values(mha, x, cache);
  return attend_cached(mha, x, cache, key_padding_mask & Mask::causal(before));
}

}  // namespace attend
