// SPDX-License-Identifier: MIT
// Training of a TransformerDecoderLayer: forward with a cache, backward, named parameters.
#pragma once

#include "attend/attention/multihead.hpp"
#include "attend/attention/multihead_backward.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/activation.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"
#include "attend/train/parameters.hpp"
#include "attend/transformer/decoder_layer.hpp"
#include "attend/transformer/layer_options.hpp"

#include <Eigen/Core>

#include <string>

namespace attend {

/// What transformer_decoder_layer_backward needs from the forward. Rows are the positions
/// of tgt in its own order ([L * B, E] for [L, B, E]).
///
/// Named "Training" because TransformerDecoderLayerCache is the incremental-decoding KV
/// cache of decoder_layer.hpp.
template <typename Scalar>
struct TransformerDecoderLayerTrainingCache {
  Shape tgt_shape;                            // the forward's tgt shape
  Shape memory_shape;                         // the forward's memory shape
  MultiheadAttentionCache<Scalar> self_attn;  // its query: norm1(x) or x
  MultiheadAttentionCache<Scalar>
      multihead_attn;                          // its query: norm2(x1) or y1; key = value = memory
  LayerNormCache<Scalar> norm1, norm2, norm3;  // x_hat and rstd of each norm
  Matrix<Scalar> ff_in;                        // [R, E] input of linear1
  Matrix<Scalar> ff_pre;                       // [R, F] linear1 output, before the activation
  Matrix<Scalar> ff_act;                       // [R, F] after the activation (linear2's input)
};

/// Parameter gradients of a TransformerDecoderLayer, one struct per sub-module.
template <typename Scalar>
struct TransformerDecoderLayerGrad {
  MultiheadAttentionGrad<Scalar> self_attn;
  MultiheadAttentionGrad<Scalar> multihead_attn;
  LinearGrad<Scalar> linear1;
  LinearGrad<Scalar> linear2;
  LayerNormGrad<Scalar> norm1;
  LayerNormGrad<Scalar> norm2;
  LayerNormGrad<Scalar> norm3;
};

/// Input gradients of a TransformerDecoderLayer (assigned).
template <typename Scalar>
struct TransformerDecoderLayerInputGrads {
  Tensor<Scalar> d_tgt;     // tgt's shape
  Tensor<Scalar> d_memory;  // memory's shape: through the cross-attention's keys and values
};

/// Visits the parameters in torch.nn.TransformerDecoderLayer's named_parameters() order:
/// self_attn.*, multihead_attn.*, linear1.*, linear2.*, norm1.*, norm2.*, norm3.*.
template <typename Scalar, typename Visit>
void named_parameters(TransformerDecoderLayer<Scalar>& m, TransformerDecoderLayerGrad<Scalar>& g,
                      Visit&& visit, const std::string& prefix = "") {
  named_parameters(m.self_attn, g.self_attn, visit, prefix + "self_attn.");
  named_parameters(m.multihead_attn, g.multihead_attn, visit, prefix + "multihead_attn.");
  named_parameters(m.linear1, g.linear1, visit, prefix + "linear1.");
  named_parameters(m.linear2, g.linear2, visit, prefix + "linear2.");
  named_parameters(m.norm1, g.norm1, visit, prefix + "norm1.");
  named_parameters(m.norm2, g.norm2, visit, prefix + "norm2.");
  named_parameters(m.norm3, g.norm3, visit, prefix + "norm3.");
}

/// TransformerDecoderLayer::forward for training: the same computation (attention on the
/// reference path), filling `cache` for the backward.
///
///     post-norm: y1 = norm1(x + SA(x)); y2 = norm2(y1 + CA(y1, m)); out = norm3(y2 + FF(y2))
///     pre-norm:  x1 = x + SA(norm1(x)); x2 = x1 + CA(norm2(x1), m); out = x2 + FF(norm3(x2))
///
/// with m the memory and FF(z) = linear2(act(linear1(z))).
/// \param layer the module \param tgt [L, B, E] ([B, L, E] batch_first; [L, E] unbatched)
/// \param memory [S, B, E] in tgt's layout \param args masks as for forward
/// \param cache if not null, receives what backward needs
/// \returns shaped as tgt
/// \throws as TransformerDecoderLayer::forward (the messages name
///   TransformerDecoderLayer::forward or MultiheadAttention::forward).
/// \sa transformer_decoder_layer_backward
template <typename Scalar>
Tensor<Scalar> transformer_decoder_layer_forward(
    const TransformerDecoderLayer<Scalar>& layer, const Tensor<Scalar>& tgt,
    const Tensor<Scalar>& memory, const TransformerDecoderLayerArgs& args,
    TransformerDecoderLayerTrainingCache<Scalar>* cache) {
  const std::string who = "TransformerDecoderLayer::forward";
  const TransformerLayerOptions& o = layer.options;
  const detail::SequenceDims t =
      detail::check_sequence(tgt, o.d_model, o.batch_first, nullptr, who, "tgt", "L");
  const detail::SequenceDims m =
      detail::check_sequence(memory, o.d_model, o.batch_first, &t, who, "memory", "S");
  args.tgt_mask.check(t.B, o.nhead, t.L, t.L, who, "tgt_mask");
  args.memory_mask.check(t.B, o.nhead, t.L, m.L, who, "memory_mask");
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
  TransformerDecoderLayerTrainingCache<Scalar> local;
  TransformerDecoderLayerTrainingCache<Scalar>& c = cache ? *cache : local;
  c.tgt_shape = tgt.shape();
  c.memory_shape = memory.shape();

  const auto feed_forward = [&](const Matrix<Scalar>& z) {  // [R, E] -> [R, E]
    c.ff_in = z;
    c.ff_pre = layer.linear1.forward(z);                     // [R, F]
    c.ff_act = activation(c.ff_pre, o.activation);           // [R, F]
    return Matrix<Scalar>(layer.linear2.forward(c.ff_act));  // [R, E]
  };
  // Cross-attention of a [R, E] query over memory (key = value = memory, not self).
  const auto cross = [&](const Tensor<Scalar>& query) {
    return layer.multihead_attn.forward(query, memory, memory, ca, &c.multihead_attn).output;
  };
  Tensor<Scalar> out(tgt.shape());
  Tensor<Scalar> h(tgt.shape());  // the attention inputs, shaped as tgt
  if (o.norm_first) {
    h.as_matrix() = layer.norm1.forward(tgt.as_matrix(), &c.norm1);  // norm1(x)
    const Tensor<Scalar> a1 = layer.self_attn.forward(h, sa, &c.self_attn).output;
    const Matrix<Scalar> x1 = tgt.as_matrix() + a1.as_matrix();  // [R, E]
    h.as_matrix() = layer.norm2.forward(x1, &c.norm2);           // norm2(x1)
    const Tensor<Scalar> a2 = cross(h);
    const Matrix<Scalar> x2 = x1 + a2.as_matrix();                // [R, E]
    const Matrix<Scalar> n3 = layer.norm3.forward(x2, &c.norm3);  // [R, E]
    out.as_matrix() = x2 + feed_forward(n3);
  } else {
    const Tensor<Scalar> a1 = layer.self_attn.forward(tgt, sa, &c.self_attn).output;
    h.as_matrix() = layer.norm1.forward(tgt.as_matrix() + a1.as_matrix(), &c.norm1);  // y1
    const Tensor<Scalar> a2 = cross(h);
    const Matrix<Scalar> y2 = layer.norm2.forward(h.as_matrix() + a2.as_matrix(), &c.norm2);
    const Matrix<Scalar> s3 = y2 + feed_forward(y2);  // [R, E]
    out.as_matrix() = layer.norm3.forward(s3, &c.norm3);
  }
  return out;
}

/// Gradient of transformer_decoder_layer_forward, in reverse order of its lines.
/// \param layer the module (unchanged since the forward) \param cache the forward's
/// \param d_output [tgt's shape] upstream gradient
/// \param grads parameter gradients, accumulated (+=); empty members are zeroed first
/// \returns d_tgt [tgt's shape] (the total through the residual and the self-attention's
///   query, key and value) and d_memory [memory's shape] (through the cross-attention's
///   keys and values), both assigned
/// \throws shape_error when d_output is not shaped as the forward's tgt; value_error on an
///   empty cache.
/// \note Vaswani et al. 2017 section 3.1 and Xiong et al. 2020 (pre-norm) differentiated.
template <typename Scalar>
TransformerDecoderLayerInputGrads<Scalar> transformer_decoder_layer_backward(
    const TransformerDecoderLayer<Scalar>& layer,
    const TransformerDecoderLayerTrainingCache<Scalar>& cache, const Tensor<Scalar>& d_output,
    TransformerDecoderLayerGrad<Scalar>& grads) {
  const std::string who = "transformer_decoder_layer_backward";
  if (cache.tgt_shape.empty()) {
    throw value_error(who +
                      ": cache is empty, expected one filled by "
                      "transformer_decoder_layer_forward");
  }
  if (d_output.shape() != cache.tgt_shape) {
    throw shape_error(who + ": d_output is " + detail::shape_string(d_output.shape()) +
                      ", expected " + detail::shape_string(cache.tgt_shape) +
                      " (the forward's tgt)");
  }
  const TransformerLayerOptions& o = layer.options;
  const auto norm_back = [&](const LayerNormCache<Scalar>& nc, const LayerNorm<Scalar>& norm,
                             LayerNormGrad<Scalar>& g, const Matrix<Scalar>& dy) {
    const bool affine = norm.elementwise_affine();
    return layer_norm_backward(nc, norm.weight, dy, affine ? &g.d_weight : nullptr,
                               affine ? &g.d_bias : nullptr);
  };
  // FF(z) = linear2(act(linear1(z))): returns dz for the upstream d_ff [R, E].
  const auto ff_back = [&](const Matrix<Scalar>& d_ff) {
    const Matrix<Scalar> d_act = layer.linear2.backward(cache.ff_act, d_ff, grads.linear2.d_weight,
                                                        grads.linear2.d_bias);  // [R, F]
    const Matrix<Scalar> d_pre = activation_backward(cache.ff_pre, d_act, o.activation);
    return layer.linear1.backward(cache.ff_in, d_pre, grads.linear1.d_weight,
                                  grads.linear1.d_bias);  // [R, E]
  };
  Tensor<Scalar> d_attn(cache.tgt_shape);  // upstream of an attention output, shaped as tgt
  TransformerDecoderLayerInputGrads<Scalar> result;
  // d(self-attention input) for the upstream d_a [R, E]: q, k, v paths summed by backward.
  const auto self_back = [&](const Matrix<Scalar>& d_a) {
    d_attn.as_matrix() = d_a;
    return Matrix<Scalar>(
        layer.self_attn.backward(cache.self_attn, d_attn, grads.self_attn).d_query.as_matrix());
  };
  // d(cross-attention query) for the upstream d_a [R, E]; sets d_memory = d_key + d_value.
  const auto cross_back = [&](const Matrix<Scalar>& d_a) {
    d_attn.as_matrix() = d_a;
    MultiheadAttentionInputGrads<Scalar> d =
        layer.multihead_attn.backward(cache.multihead_attn, d_attn, grads.multihead_attn);
    result.d_memory = std::move(d.d_key);
    result.d_memory.as_matrix() += d.d_value.as_matrix();  // key = value = memory
    return Matrix<Scalar>(d.d_query.as_matrix());
  };
  const Matrix<Scalar> d_out = d_output.as_matrix();  // [R, E]
  result.d_tgt = Tensor<Scalar>(cache.tgt_shape);
  if (o.norm_first) {
    // out = x2 + FF(norm3(x2))
    const Matrix<Scalar> d_x2 =
        d_out + norm_back(cache.norm3, layer.norm3, grads.norm3, ff_back(d_out));
    // x2 = x1 + CA(norm2(x1), m)
    const Matrix<Scalar> d_x1 =
        d_x2 + norm_back(cache.norm2, layer.norm2, grads.norm2, cross_back(d_x2));
    // x1 = x + SA(norm1(x))
    result.d_tgt.as_matrix() =
        d_x1 + norm_back(cache.norm1, layer.norm1, grads.norm1, self_back(d_x1));
  } else {
    // out = norm3(s3), s3 = y2 + FF(y2)
    const Matrix<Scalar> d_s3 = norm_back(cache.norm3, layer.norm3, grads.norm3, d_out);
    const Matrix<Scalar> d_y2 = d_s3 + ff_back(d_s3);
    // y2 = norm2(s2), s2 = y1 + CA(y1, m)
    const Matrix<Scalar> d_s2 = norm_back(cache.norm2, layer.norm2, grads.norm2, d_y2);
    const Matrix<Scalar> d_y1 = d_s2 + cross_back(d_s2);
    // y1 = norm1(s1), s1 = x + SA(x)
    const Matrix<Scalar> d_s1 = norm_back(cache.norm1, layer.norm1, grads.norm1, d_y1);
    result.d_tgt.as_matrix() = d_s1 + self_back(d_s1);
  }
  return result;
}

}  // namespace attend
