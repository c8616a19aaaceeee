// SPDX-License-Identifier: MIT
// A transformer decoder layer (self-, cross-attention, feed-forward) as nn.TransformerDecoderLayer.
#pragma once

#include "attend/attention/kv_cache.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"
#include "attend/transformer/layer_options.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <utility>

namespace attend {

/// Forward arguments, named as torch.nn.TransformerDecoderLayer.forward's.
struct TransformerDecoderLayerArgs {
  /// Self-attention score mask broadcastable to [B, H, L, L] (`Mask::causal()` for
  /// autoregressive decoding, `Mask::from_torch_mha(...)`, additive, ...).
  Mask tgt_mask;
  /// Cross-attention score mask broadcastable to [B, H, L, S].
  Mask memory_mask;
  /// Padding positions of tgt: `Mask::key_padding(bool [B, L], true = padding)`.
  Mask tgt_key_padding_mask;
  /// Padding positions of memory: `Mask::key_padding(bool [B, S], true = padding)`.
  Mask memory_key_padding_mask;
  /// Adds a causal mask to the self-attention (key j hidden from query i when j > i).
  bool tgt_is_causal = false;
  /// Adds a causal mask to the cross-attention (top-left aligned, as PyTorch).
  bool memory_is_causal = false;
};

/// The incremental-decoding state of a TransformerDecoderLayer: the self-attention keys and
/// values of the target positions decoded so far, and the memory's keys and values
/// (projected once, on the first step). Make one per sequence batch with
/// `layer.make_cache(B, max_len)`; use a new one (or clear both) for a new memory.
template <typename Scalar>
struct TransformerDecoderLayerCache {
  KVCache<Scalar> self_attn;  // [B, max_len, E]
  KVCache<Scalar> memory;     // [B, S, E], sized by the first step
};

/// A transformer decoder layer:
///
///     post-norm: x = norm1(x + SA(x));  x = norm2(x + CA(x, mem));  x = norm3(x + FF(x))
///     pre-norm:  x = x + SA(norm1(x));  x = x + CA(norm2(x), mem);  x = x + FF(norm3(x))
///
/// with SA the self-attention `self_attn`, CA the cross-attention `multihead_attn` over the
/// encoder output `memory`, and FF(x) = linear2(act(linear1(x))). Members keep PyTorch's
/// state-dict names: `self_attn.*`, `multihead_attn.*`, `linear1.*`, `linear2.*`,
/// `norm1.*`, `norm2.*`, `norm3.*`.
///
/// Incremental decoding: `forward_step` runs new target positions against a cache of the
/// earlier ones, equal to the matching rows of `forward` with tgt_is_causal.
/// \note Vaswani et al. 2017, section 3.1; torch.nn.TransformerDecoderLayer in evaluation
///       mode (dropout is the identity).
/// \sa TransformerEncoderLayer, KVCache
template <typename Scalar>
class TransformerDecoderLayer {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::TransformerDecoderLayer: Scalar must be float or double");

 public:
  TransformerLayerOptions options;
  MultiheadAttention<Scalar> self_attn;
  MultiheadAttention<Scalar> multihead_attn;
  Linear<Scalar> linear1;  // [F, E]
  Linear<Scalar> linear2;  // [E, F]
  LayerNorm<Scalar> norm1;
  LayerNorm<Scalar> norm2;
  LayerNorm<Scalar> norm3;

  /// Parameters initialised as PyTorch does, each sub-module from a stream derived from `seed`.
  /// \throws value_error when d_model or nhead is not positive, nhead does not divide
  ///   d_model, dim_feedforward is not positive, or layer_norm_eps is negative.
  explicit TransformerDecoderLayer(const TransformerLayerOptions& opts, std::uint64_t seed = 0)
      : options(checked(opts)),
        self_attn(attention_options(opts), detail::derive_seed(seed, 0)),
        multihead_attn(attention_options(opts), detail::derive_seed(seed, 1)),
        linear1(opts.d_model, opts.dim_feedforward, true, detail::derive_seed(seed, 2)),
        linear2(opts.dim_feedforward, opts.d_model, true, detail::derive_seed(seed, 3)),
        norm1(opts.d_model, opts.layer_norm_eps),
        norm2(opts.d_model, opts.layer_norm_eps),
        norm3(opts.d_model, opts.layer_norm_eps) {}

  Index d_model() const noexcept { return options.d_model; }
  Index nhead() const noexcept { return options.nhead; }

  /// Loads every parameter by its PyTorch name under `prefix` ("self_attn.in_proj_weight",
  /// "multihead_attn.out_proj.bias", "norm3.weight", ...).
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    TransformerDecoderLayer m = *this;  // all or nothing
    m.self_attn.load_state_dict(st, prefix + "self_attn.");
    m.multihead_attn.load_state_dict(st, prefix + "multihead_attn.");
    m.linear1.load_state_dict(st, prefix + "linear1.");
    m.linear2.load_state_dict(st, prefix + "linear2.");
    m.norm1.load_state_dict(st, prefix + "norm1.");
    m.norm2.load_state_dict(st, prefix + "norm2.");
    m.norm3.load_state_dict(st, prefix + "norm3.");
    *this = std::move(m);
  }

  /// \param tgt [L, B, E] ([B, L, E] when batch_first; [L, E] unbatched)
  /// \param memory [S, B, E] in the same layout as tgt (the encoder output)
  /// \param args masks (see TransformerDecoderLayerArgs)
  /// \returns shaped as tgt
  /// \throws shape_error when tgt is not [L, B, d_model] (or the batch_first/unbatched
  ///   form), memory's rank, batch or width differs, or a mask does not broadcast;
  ///   value_error on NaN/Inf.
  Tensor<Scalar> forward(const Tensor<Scalar>& tgt, const Tensor<Scalar>& memory,
                         const TransformerDecoderLayerArgs& args = {}) const {
    const std::string who = "TransformerDecoderLayer::forward";
    const Index E = options.d_model, H = options.nhead;
    const detail::SequenceDims t =
        detail::check_sequence(tgt, E, options.batch_first, nullptr, who, "tgt", "L");
    const detail::SequenceDims m =
        detail::check_sequence(memory, E, options.batch_first, &t, who, "memory", "S");
    args.tgt_mask.check(t.B, H, t.L, t.L, who, "tgt_mask");
    args.memory_mask.check(t.B, H, t.L, m.L, who, "memory_mask");
    args.tgt_key_padding_mask.check(t.B, 1, 1, t.L, who, "tgt_key_padding_mask");
    args.memory_key_padding_mask.check(t.B, 1, 1, m.L, who, "memory_key_padding_mask");
    MultiheadAttentionArgs sa;
    sa.attn_mask = args.tgt_mask;
    sa.key_padding_mask = args.tgt_key_padding_mask;
    sa.need_weights = false;
    sa.is_causal = args.tgt_is_causal;
    MultiheadAttentionArgs ca;
    ca.attn_mask = args.memory_mask;
    ca.key_padding_mask = args.memory_key_padding_mask;
    ca.need_weights = false;
    ca.is_causal = args.memory_is_causal;

    Tensor<Scalar> x = tgt;                                    // the residual stream
    MatrixMap<Scalar> X = x.as_matrix();                       // [L * B, E]
    Matrix<Scalar> hidden(X.rows(), options.dim_feedforward);  // [L * B, F] workspace
    if (options.norm_first) {
      Tensor<Scalar> h = x;  // norm1(x)
      norm1.forward_inplace(h.as_matrix());
      X += self_attn.forward(h, sa).output.as_matrix();
      h = x;  // norm2(x)
      norm2.forward_inplace(h.as_matrix());
      X += multihead_attn.forward(h, memory, memory, ca).output.as_matrix();
      h = x;  // norm3(x)
      norm3.forward_inplace(h.as_matrix());
      detail::add_feed_forward<Scalar>(h.as_matrix(), linear1, linear2, options.activation, hidden,
                                       X);
    } else {
      X += self_attn.forward(x, sa).output.as_matrix();
      norm1.forward_inplace(X);
      // The attention output is a new tensor, complete before it is added to x.
      X += multihead_attn.forward(x, memory, memory, ca).output.as_matrix();
      norm2.forward_inplace(X);
      // add_feed_forward reads X into `hidden` before it adds to X: the alias is safe.
      detail::add_feed_forward<Scalar>(X, linear1, linear2, options.activation, hidden, X);
      norm3.forward_inplace(X);
    }
    return x;
  }

  /// An empty cache for decoding up to `max_len` target positions of `batch` sequences.
  /// \throws value_error when batch is not positive or max_len is negative.
  TransformerDecoderLayerCache<Scalar> make_cache(Index batch, Index max_len) const {
    return {KVCache<Scalar>(batch, max_len, options.d_model), KVCache<Scalar>()};
  }

  /// Decodes T new target positions (usually 1) after the `cache.self_attn.size()` earlier
  /// ones: the result equals rows n .. n + T - 1 of `forward(tgt_prefix, memory, {tgt_is_causal
  /// = true, memory_key_padding_mask})`, with O(n) attention work per position instead of
  /// O(n^2) for recomputing the prefix. The memory's keys and values are projected on the
  /// first step and reused.
  /// \param tgt [T, B, E] ([B, T, E] when batch_first; [T, E] unbatched), the new positions
  /// \param memory [S, B, E] in the same layout; the same memory at every step
  /// \param cache from make_cache(B, max_len), updated
  /// \param memory_key_padding_mask optional, broadcastable to [B, 1, 1, S]
  /// \returns shaped as tgt
  /// \throws shape_error on wrong shapes (memory's length differing from the cached one);
  ///   index_error when the cache has no room for T more positions; value_error on NaN/Inf.
  Tensor<Scalar> forward_step(const Tensor<Scalar>& tgt, const Tensor<Scalar>& memory,
                              TransformerDecoderLayerCache<Scalar>& cache,
                              const Mask& memory_key_padding_mask = Mask()) const {
    const std::string who = "TransformerDecoderLayer::forward_step";
    const Index E = options.d_model;
    const detail::SequenceDims t =
        detail::check_sequence(tgt, E, options.batch_first, nullptr, who, "tgt", "T");
    const detail::SequenceDims m =
        detail::check_sequence(memory, E, options.batch_first, &t, who, "memory", "S");
    if (cache.memory.size() != 0 && cache.memory.size() != m.L) {
      throw shape_error(who + ": memory has " + std::to_string(m.L) + " positions, expected " +
                        std::to_string(cache.memory.size()) + " (the memory of the cached steps)");
    }
    if (cache.self_attn.batch() != t.B || cache.self_attn.embed_dim() != E) {
      throw shape_error(who + ": cache is for batch " + std::to_string(cache.self_attn.batch()) +
                        " and d_model " + std::to_string(cache.self_attn.embed_dim()) +
                        ", expected " + std::to_string(t.B) + " and " + std::to_string(E) +
                        " (make_cache(B, max_len))");
    }
    memory_key_padding_mask.check(t.B, 1, 1, m.L, who, "memory_key_padding_mask");
    if (cache.memory.size() == 0) append_keys_values(multihead_attn, memory, cache.memory);

    Tensor<Scalar> x = tgt;                                    // the residual stream
    MatrixMap<Scalar> X = x.as_matrix();                       // [T * B, E]
    Matrix<Scalar> hidden(X.rows(), options.dim_feedforward);  // [T * B, F] workspace
    if (options.norm_first) {
      Tensor<Scalar> h = x;  // norm1(x)
      norm1.forward_inplace(h.as_matrix());
      X += self_attention_step(self_attn, h, cache.self_attn).as_matrix();
      h = x;  // norm2(x)
      norm2.forward_inplace(h.as_matrix());
      X += attend_cached(multihead_attn, h, cache.memory, memory_key_padding_mask).as_matrix();
      h = x;  // norm3(x)
      norm3.forward_inplace(h.as_matrix());
      detail::add_feed_forward<Scalar>(h.as_matrix(), linear1, linear2, options.activation, hidden,
                                       X);
    } else {
      X += self_attention_step(self_attn, x, cache.self_attn).as_matrix();
      norm1.forward_inplace(X);
      X += attend_cached(multihead_attn, x, cache.memory, memory_key_padding_mask).as_matrix();
      norm2.forward_inplace(X);
      detail::add_feed_forward<Scalar>(X, linear1, linear2, options.activation, hidden, X);
      norm3.forward_inplace(X);
    }
    return x;
  }

 private:
  static TransformerLayerOptions checked(const TransformerLayerOptions& o) {
    detail::check_layer_options(o, "TransformerDecoderLayer");
    return o;
  }
  static MultiheadAttentionOptions attention_options(const TransformerLayerOptions& o) {
    MultiheadAttentionOptions m;
    m.embed_dim = o.d_model;
    m.num_heads = o.nhead;
    m.batch_first = o.batch_first;
    return m;
  }
};

}  // namespace attend
