// SPDX-License-Identifier: MIT
// Training of a TransformerEncoderLayer: forward with a cache, backward, named parameters.
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
#include "attend/transformer/encoder_layer.hpp"
#include "attend/transformer/layer_options.hpp"

#include <Eigen/Core>

#include <string>

namespace attend {

/// What transformer_encoder_layer_backward needs from the forward. Rows are the positions
/// of src in its own order ([L * B, E] for [L, B, E]).
template <typename Scalar>
struct TransformerEncoderLayerCache {
  Shape src_shape;                        // the forward's src shape
  MultiheadAttentionCache<Scalar> attn;   // self-attention (its input: norm1(x) or x)
  LayerNormCache<Scalar> norm1, norm2;    // x_hat and rstd of each norm
  Matrix<Scalar> ff_in;                   // [R, E] input of linear1
  Matrix<Scalar> ff_pre;                  // [R, F] linear1 output, before the activation
  Matrix<Scalar> ff_act;                  // [R, F] after the activation (linear2's input)
};

/// Parameter gradients of a TransformerEncoderLayer, one struct per sub-module.
template <typename Scalar>
struct TransformerEncoderLayerGrad {
  MultiheadAttentionGrad<Scalar> self_attn;
  LinearGrad<Scalar> linear1;
  LinearGrad<Scalar> linear2;
  LayerNormGrad<Scalar> norm1;
  LayerNormGrad<Scalar> norm2;
};

/// Visits the parameters in torch.nn.TransformerEncoderLayer's named_parameters() order:
/// self_attn.*, linear1.*, linear2.*, norm1.*, norm2.*.
template <typename Scalar, typename Visit>
void named_parameters(TransformerEncoderLayer<Scalar>& m, TransformerEncoderLayerGrad<Scalar>& g,
                      Visit&& visit, const std::string& prefix = "") {
  named_parameters(m.self_attn, g.self_attn, visit, prefix + "self_attn.");
  named_parameters(m.linear1, g.linear1, visit, prefix + "linear1.");
  named_parameters(m.linear2, g.linear2, visit, prefix + "linear2.");
  named_parameters(m.norm1, g.norm1, visit, prefix + "norm1.");
  named_parameters(m.norm2, g.norm2, visit, prefix + "norm2.");
}

/// TransformerEncoderLayer::forward for training: the same computation (self-attention on
/// the reference path), filling `cache` for the backward.
///
///     post-norm: s1 = x + SA(x); y1 = norm1(s1); out = norm2(y1 + FF(y1))
///     pre-norm:  x1 = x + SA(norm1(x)); out = x1 + FF(norm2(x1))
///
/// with FF(z) = linear2(act(linear1(z))).
/// \param layer the module \param src [L, B, E] ([B, L, E] batch_first; [L, E] unbatched)
/// \param args masks as for forward \param cache if not null, receives what backward needs
/// \returns shaped as src
/// \throws as TransformerEncoderLayer::forward (the messages name MultiheadAttention::forward
///   or TransformerEncoderLayer::forward).
/// \sa transformer_encoder_layer_backward
template <typename Scalar>
Tensor<Scalar> transformer_encoder_layer_forward(const TransformerEncoderLayer<Scalar>& layer,
                                                 const Tensor<Scalar>& src,
                                                 const TransformerEncoderLayerArgs& args,
                                                 TransformerEncoderLayerCache<Scalar>* cache) {
  const std::string who = "TransformerEncoderLayer::forward";
  const TransformerLayerOptions& o = layer.options;
  const detail::SequenceDims d =
      detail::check_sequence(src, o.d_model, o.batch_first, nullptr, who, "src", "L");
  args.src_mask.check(d.B, o.nhead, d.L, d.L, who, "src_mask");
  args.src_key_padding_mask.check(d.B, 1, 1, d.L, who, "src_key_padding_mask");
  MultiheadAttentionArgs a;
  a.attn_mask = args.src_mask;
  a.key_padding_mask = args.src_key_padding_mask;
  a.need_weights = false;
  a.is_causal = args.is_causal;
  TransformerEncoderLayerCache<Scalar> local;
  TransformerEncoderLayerCache<Scalar>& c = cache ? *cache : local;
  c.src_shape = src.shape();

  const auto feed_forward = [&](const Matrix<Scalar>& z) {  // [R, E] -> [R, E]
    c.ff_in = z;
    c.ff_pre = layer.linear1.forward(z);                 // [R, F]
    c.ff_act = activation(c.ff_pre, o.activation);       // [R, F]
    return Matrix<Scalar>(layer.linear2.forward(c.ff_act));  // [R, E]
  };
  Tensor<Scalar> out(src.shape());
  if (o.norm_first) {
    Tensor<Scalar> n1(src.shape());  // norm1(x)
    n1.as_matrix() = layer.norm1.forward(src.as_matrix(), &c.norm1);
    const Tensor<Scalar> attn = layer.self_attn.forward(n1, a, &c.attn).output;
    const Matrix<Scalar> x1 = src.as_matrix() + attn.as_matrix();  // [R, E]
    const Matrix<Scalar> n2 = layer.norm2.forward(x1, &c.norm2);
    out.as_matrix() = x1 + feed_forward(n2);
  } else {
    const Tensor<Scalar> attn = layer.self_attn.forward(src, a, &c.attn).output;
    const Matrix<Scalar> s1 = src.as_matrix() + attn.as_matrix();
    const Matrix<Scalar> y1 = layer.norm1.forward(s1, &c.norm1);
    const Matrix<Scalar> s2 = y1 + feed_forward(y1);
    out.as_matrix() = layer.norm2.forward(s2, &c.norm2);
  }
  return out;
}

/// Gradient of transformer_encoder_layer_forward, in reverse order of its lines.
/// \param layer the module (unchanged since the forward) \param cache the forward's
/// \param d_output [src's shape] upstream gradient
/// \param grads parameter gradients, accumulated (+=); empty members are zeroed first
/// \returns [src's shape] d_src (assigned): the total through the residual and attention
/// \throws shape_error when d_output is not shaped as the forward's src; value_error on an
///   empty cache.
/// \note Vaswani et al. 2017 section 3.1 and Xiong et al. 2020 (pre-norm) differentiated.
template <typename Scalar>
Tensor<Scalar> transformer_encoder_layer_backward(const TransformerEncoderLayer<Scalar>& layer,
                                                  const TransformerEncoderLayerCache<Scalar>& cache,
                                                  const Tensor<Scalar>& d_output,
                                                  TransformerEncoderLayerGrad<Scalar>& grads) {
  const std::string who = "transformer_encoder_layer_backward";
  if (cache.src_shape.empty()) {
    throw value_error(who + ": cache is empty, expected one filled by "
                            "transformer_encoder_layer_forward");
  }
  if (d_output.shape() != cache.src_shape) {
    throw shape_error(who + ": d_output is " + detail::shape_string(d_output.shape()) +
                      ", expected " + detail::shape_string(cache.src_shape) +
                      " (the forward's src)");
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
  const auto attn_back = [&](const Matrix<Scalar>& d_attn) {  // [R, E] -> d(attention input)
    Tensor<Scalar> t(cache.src_shape);
    t.as_matrix() = d_attn;
    return Matrix<Scalar>(
        layer.self_attn.backward(cache.attn, t, grads.self_attn).d_query.as_matrix());
  };
  const Matrix<Scalar> d_out = d_output.as_matrix();  // [R, E]
  Tensor<Scalar> d_src(cache.src_shape);
  if (o.norm_first) {
    // out = x1 + FF(norm2(x1))
    const Matrix<Scalar> d_x1 =
        d_out + norm_back(cache.norm2, layer.norm2, grads.norm2, ff_back(d_out));
    // x1 = x + SA(norm1(x))
    d_src.as_matrix() = d_x1 + norm_back(cache.norm1, layer.norm1, grads.norm1, attn_back(d_x1));
  } else {
    // out = norm2(s2), s2 = y1 + FF(y1)
    const Matrix<Scalar> d_s2 = norm_back(cache.norm2, layer.norm2, grads.norm2, d_out);
    const Matrix<Scalar> d_y1 = d_s2 + ff_back(d_s2);
    // y1 = norm1(s1), s1 = x + SA(x)
    const Matrix<Scalar> d_s1 = norm_back(cache.norm1, layer.norm1, grads.norm1, d_y1);
    d_src.as_matrix() = d_s1 + attn_back(d_s1);
  }
  return d_src;
}

}  // namespace attend
