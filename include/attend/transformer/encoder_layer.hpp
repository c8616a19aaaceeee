// SPDX-License-Identifier: MIT
// A transformer encoder layer (self-attention, feed-forward) as nn.TransformerEncoderLayer.
#pragma once

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

/// Forward arguments, named as torch.nn.TransformerEncoderLayer.forward's.
struct TransformerEncoderLayerArgs {
  /// Score mask broadcastable to [B, H, L, L]: `Mask::from_torch_mha(bool [L, L] or
  /// [B * nhead, L, L], nhead)` (true = blocked), `Mask::from_torch_mha_additive(...)`,
  /// `Mask::causal()`, ...
  Mask src_mask;
  /// Padding positions per sequence: `Mask::key_padding(bool [B, L], true = padding)` or
  /// `Mask::key_padding_lengths(lengths, L)`. Padded positions are still computed as queries.
  Mask src_key_padding_mask;
  /// Adds a causal mask (key j hidden from query i when j > i). Unlike PyTorch, where
  /// is_causal is only a hint about src_mask, here it is the mask itself.
  bool is_causal = false;
};

/// A transformer encoder layer:
///
///     post-norm (norm_first = false, the paper):  x = norm1(x + SA(x));  x = norm2(x + FF(x))
///     pre-norm  (norm_first = true):              x = x + SA(norm1(x));  x = x + FF(norm2(x))
///
/// with SA the multi-head self-attention `self_attn` and FF(x) = linear2(act(linear1(x))).
/// Members keep PyTorch's state-dict names: `self_attn` (in_proj_weight [3E, E],
/// in_proj_bias [3E], out_proj.weight [E, E], out_proj.bias [E]), `linear1` (weight
/// [F, E], bias [F]), `linear2` (weight [E, F], bias [E]), `norm1`, `norm2` (weight, bias [E]).
/// \note Vaswani et al. 2017, section 3.1; pre-norm: Xiong et al. 2020. Follows
///       torch.nn.TransformerEncoderLayer in evaluation mode (dropout is the identity).
/// \sa TransformerDecoderLayer, TransformerEncoder
template <typename Scalar>
class TransformerEncoderLayer {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::TransformerEncoderLayer: Scalar must be float or double");

 public:
  TransformerLayerOptions options;
  MultiheadAttention<Scalar> self_attn;
  Linear<Scalar> linear1;  // [F, E]
  Linear<Scalar> linear2;  // [E, F]
  LayerNorm<Scalar> norm1;
  LayerNorm<Scalar> norm2;

  /// Parameters initialised as PyTorch does (see MultiheadAttention, Linear, LayerNorm),
  /// each sub-module from its own stream derived from `seed`.
  /// \throws value_error when d_model or nhead is not positive, nhead does not divide
  ///   d_model, dim_feedforward is not positive, or layer_norm_eps is negative.
  explicit TransformerEncoderLayer(const TransformerLayerOptions& opts, std::uint64_t seed = 0)
      : options(checked(opts)),
        self_attn(attention_options(opts), detail::derive_seed(seed, 0)),
        linear1(opts.d_model, opts.dim_feedforward, true, detail::derive_seed(seed, 1)),
        linear2(opts.dim_feedforward, opts.d_model, true, detail::derive_seed(seed, 2)),
        norm1(opts.d_model, opts.layer_norm_eps),
        norm2(opts.d_model, opts.layer_norm_eps) {}

  Index d_model() const noexcept { return options.d_model; }
  Index nhead() const noexcept { return options.nhead; }

  /// Loads every parameter by its PyTorch name under `prefix` ("self_attn.in_proj_weight",
  /// "linear1.weight", "norm2.bias", ...; prefix "layers.0." inside a TransformerEncoder).
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    TransformerEncoderLayer m = *this;  // all or nothing
    m.self_attn.load_state_dict(st, prefix + "self_attn.");
    m.linear1.load_state_dict(st, prefix + "linear1.");
    m.linear2.load_state_dict(st, prefix + "linear2.");
    m.norm1.load_state_dict(st, prefix + "norm1.");
    m.norm2.load_state_dict(st, prefix + "norm2.");
    *this = std::move(m);
  }

  /// \param src [L, B, E] ([B, L, E] when batch_first; [L, E] unbatched)
  /// \param args masks (see TransformerEncoderLayerArgs)
  /// \returns shaped as src
  /// \throws shape_error when src is not [L, B, d_model] (or the batch_first/unbatched
  ///   form) or a mask does not broadcast against [B, nhead, L, L]; value_error on NaN/Inf.
  Tensor<Scalar> forward(const Tensor<Scalar>& src,
                         const TransformerEncoderLayerArgs& args = {}) const {
    const std::string who = "TransformerEncoderLayer::forward";
    const detail::SequenceDims d =
        detail::check_sequence(src, options.d_model, options.batch_first, nullptr, who, "src", "L");
    args.src_mask.check(d.B, options.nhead, d.L, d.L, who, "src_mask");
    args.src_key_padding_mask.check(d.B, 1, 1, d.L, who, "src_key_padding_mask");
    MultiheadAttentionArgs a;
    a.attn_mask = args.src_mask;
    a.key_padding_mask = args.src_key_padding_mask;
    a.need_weights = false;
    a.is_causal = args.is_causal;

    Tensor<Scalar> x = src;                                    // the residual stream, shaped as src
    MatrixMap<Scalar> X = x.as_matrix();                       // [L * B, E], rows in src's order
    Matrix<Scalar> hidden(X.rows(), options.dim_feedforward);  // [L * B, F] workspace
    if (options.norm_first) {
      Tensor<Scalar> h = x;  // norm1(x)
      norm1.forward_inplace(h.as_matrix());
      X += self_attn.forward(h, a).output.as_matrix();
      h = x;  // norm2(x)
      norm2.forward_inplace(h.as_matrix());
      detail::add_feed_forward<Scalar>(h.as_matrix(), linear1, linear2, options.activation, hidden,
                                       X);
    } else {
      X += self_attn.forward(x, a).output.as_matrix();
      norm1.forward_inplace(X);
      // add_feed_forward reads X into `hidden` before it adds to X: the alias is safe.
      detail::add_feed_forward<Scalar>(X, linear1, linear2, options.activation, hidden, X);
      norm2.forward_inplace(X);
    }
    return x;
  }

 private:
  static TransformerLayerOptions checked(const TransformerLayerOptions& o) {
    detail::check_layer_options(o, "TransformerEncoderLayer");
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
