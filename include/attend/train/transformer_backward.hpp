// SPDX-License-Identifier: MIT
// Training of the transformer stacks (TransformerEncoder, TransformerDecoder) and of
// Transformer: forwards with caches, backwards, named parameters by state-dict names.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/train/decoder_layer_backward.hpp"
#include "attend/train/encoder_layer_backward.hpp"
#include "attend/train/parameters.hpp"
#include "attend/transformer/decoder.hpp"
#include "attend/transformer/encoder.hpp"
#include "attend/transformer/transformer.hpp"

#include <Eigen/Core>

#include <cstddef>
#include <string>
#include <vector>

namespace attend {

// Caches are named "...TrainingCache": TransformerDecoderCache is the incremental-decoding
// KV cache of decoder.hpp.

/// What transformer_encoder_backward needs: one cache per layer and the final norm's.
template <typename Scalar>
struct TransformerEncoderTrainingCache {
  std::vector<TransformerEncoderLayerCache<Scalar>> layers;
  LayerNormCache<Scalar> norm;  // unused without a final norm
};

/// What transformer_decoder_backward needs: one cache per layer and the final norm's.
template <typename Scalar>
struct TransformerDecoderTrainingCache {
  std::vector<TransformerDecoderLayerTrainingCache<Scalar>> layers;
  LayerNormCache<Scalar> norm;  // unused without a final norm
};

/// Parameter gradients of a TransformerEncoder: `layers[i]` for layer i, `norm` for the
/// final norm (unused without one). named_parameters and the backward size `layers`.
template <typename Scalar>
struct TransformerEncoderGrad {
  std::vector<TransformerEncoderLayerGrad<Scalar>> layers;
  LayerNormGrad<Scalar> norm;
};

/// Parameter gradients of a TransformerDecoder (as TransformerEncoderGrad).
template <typename Scalar>
struct TransformerDecoderGrad {
  std::vector<TransformerDecoderLayerGrad<Scalar>> layers;
  LayerNormGrad<Scalar> norm;
};

/// Parameter gradients of a Transformer.
template <typename Scalar>
struct TransformerGrad {
  TransformerEncoderGrad<Scalar> encoder;
  TransformerDecoderGrad<Scalar> decoder;
};

/// What transformer_backward needs.
template <typename Scalar>
struct TransformerTrainingCache {
  TransformerEncoderTrainingCache<Scalar> encoder;
  TransformerDecoderTrainingCache<Scalar> decoder;
};

/// Input gradients of a Transformer (assigned).
template <typename Scalar>
struct TransformerInputGrads {
  Tensor<Scalar> d_src;  // src's shape
  Tensor<Scalar> d_tgt;  // tgt's shape
};

namespace detail {

/// Gives an empty per-layer gradient list `n` entries; throws when it has another size.
template <typename Grad>
void prepare_layer_grads(std::vector<Grad>& layers, std::size_t n, const std::string& who) {
  if (layers.empty()) layers.resize(n);
  if (layers.size() != n) {
    throw shape_error(who + ": grads.layers has " + std::to_string(layers.size()) +
                      " entries, expected " + std::to_string(n) + " (num_layers)");
  }
}

/// Checks a stack's upstream gradient against the forward's input shape (before the final
/// norm's backward, whose message would not name the stack); an empty shape (a cache not
/// filled) is left to the layer's own check.
template <typename Scalar>
void check_stack_d_output(const Tensor<Scalar>& d_output, const Shape& want,
                          const std::string& who, const char* input) {
  if (!want.empty() && d_output.shape() != want) {
    throw shape_error(who + ": d_output is " + shape_string(d_output.shape()) + ", expected " +
                      shape_string(want) + " (the forward's " + input + ")");
  }
}

/// The final norm of a stack applied to `x` in place, filling `cache`.
template <typename Scalar>
void final_norm_forward(const LayerNorm<Scalar>& norm, Tensor<Scalar>& x,
                        LayerNormCache<Scalar>& cache) {
  x.as_matrix() = norm.forward(x.as_matrix(), &cache);
}

/// Gradient of final_norm_forward: `d` (shaped as x) replaced by the norm's input gradient.
template <typename Scalar>
void final_norm_backward(const LayerNorm<Scalar>& norm, const LayerNormCache<Scalar>& cache,
                         LayerNormGrad<Scalar>& g, Tensor<Scalar>& d) {
  const bool affine = norm.elementwise_affine();
  d.as_matrix() = layer_norm_backward(cache, norm.weight, Matrix<Scalar>(d.as_matrix()),
                                      affine ? &g.d_weight : nullptr, affine ? &g.d_bias : nullptr);
}

}  // namespace detail

// ---- TransformerEncoder ---------------------------------------------------------------------

/// Visits `layers.{i}.*` then `norm.*`, torch.nn.TransformerEncoder's named_parameters()
/// order. Resizes `g.layers` to the layer count first (before any gradient is visited).
template <typename Scalar, typename Visit>
void named_parameters(TransformerEncoder<Scalar>& m, TransformerEncoderGrad<Scalar>& g,
                      Visit&& visit, const std::string& prefix = "") {
  detail::prepare_layer_grads(g.layers, m.layers.size(), "named_parameters(TransformerEncoder)");
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    named_parameters(m.layers[i], g.layers[i], visit, prefix + "layers." + std::to_string(i) + ".");
  }
  if (m.norm) named_parameters(*m.norm, g.norm, visit, prefix + "norm.");
}

/// TransformerEncoder::forward for training: every layer's training forward, then the
/// final norm: `y = norm(layer_{N-1}(... layer_0(src)))`.
/// \param src [L, B, E] ([B, L, E] batch_first; [L, E] unbatched) \param args as forward
/// \param cache if not null, receives what backward needs \returns shaped as src
/// \throws as TransformerEncoder::forward.
/// \sa transformer_encoder_backward
template <typename Scalar>
Tensor<Scalar> transformer_encoder_forward(const TransformerEncoder<Scalar>& encoder,
                                           const Tensor<Scalar>& src,
                                           const TransformerEncoderArgs& args,
                                           TransformerEncoderTrainingCache<Scalar>* cache) {
  TransformerEncoderLayerArgs a;
  a.src_mask = args.mask;
  a.src_key_padding_mask = args.src_key_padding_mask;
  a.is_causal = args.is_causal;
  if (cache) cache->layers.assign(encoder.layers.size(), {});
  Tensor<Scalar> x = src;
  for (std::size_t i = 0; i < encoder.layers.size(); ++i) {
    x = transformer_encoder_layer_forward(encoder.layers[i], x, a,
                                          cache ? &cache->layers[i] : nullptr);
  }
  LayerNormCache<Scalar> unused;
  if (encoder.norm) detail::final_norm_forward(*encoder.norm, x, cache ? cache->norm : unused);
  return x;
}

/// Gradient of transformer_encoder_forward: the final norm, then the layers last to first.
/// \param cache the forward's \param d_output [src's shape] upstream gradient
/// \param grads accumulated (+=); an empty `layers` is sized first
/// \returns [src's shape] d_src (assigned)
/// \throws value_error when the cache has not one entry per layer; shape_error when
///   grads.layers has another non-zero size, or as transformer_encoder_layer_backward.
template <typename Scalar>
Tensor<Scalar> transformer_encoder_backward(const TransformerEncoder<Scalar>& encoder,
                                            const TransformerEncoderTrainingCache<Scalar>& cache,
                                            const Tensor<Scalar>& d_output,
                                            TransformerEncoderGrad<Scalar>& grads) {
  const std::string who = "transformer_encoder_backward";
  if (cache.layers.size() != encoder.layers.size()) {
    throw value_error(who + ": cache has " + std::to_string(cache.layers.size()) +
                      " layers, expected " + std::to_string(encoder.layers.size()) +
                      " from transformer_encoder_forward");
  }
  detail::check_stack_d_output(d_output, cache.layers.back().src_shape, who, "src");
  detail::prepare_layer_grads(grads.layers, encoder.layers.size(), who);
  Tensor<Scalar> d = d_output;
  if (encoder.norm) detail::final_norm_backward(*encoder.norm, cache.norm, grads.norm, d);
  for (std::size_t i = encoder.layers.size(); i-- > 0;) {
    d = transformer_encoder_layer_backward(encoder.layers[i], cache.layers[i], d, grads.layers[i]);
  }
  return d;
}

// ---- TransformerDecoder ---------------------------------------------------------------------

/// Visits `layers.{i}.*` then `norm.*`, torch.nn.TransformerDecoder's named_parameters()
/// order. Resizes `g.layers` to the layer count first.
template <typename Scalar, typename Visit>
void named_parameters(TransformerDecoder<Scalar>& m, TransformerDecoderGrad<Scalar>& g,
                      Visit&& visit, const std::string& prefix = "") {
  detail::prepare_layer_grads(g.layers, m.layers.size(), "named_parameters(TransformerDecoder)");
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    named_parameters(m.layers[i], g.layers[i], visit, prefix + "layers." + std::to_string(i) + ".");
  }
  if (m.norm) named_parameters(*m.norm, g.norm, visit, prefix + "norm.");
}

/// TransformerDecoder::forward for training: `y = norm(layer_{N-1}(... layer_0(tgt, m) ..., m))`.
/// \param tgt [L, B, E] ([B, L, E] batch_first; [L, E] unbatched)
/// \param memory [S, B, E] in tgt's layout, given to every layer \param args as forward
/// \param cache if not null, receives what backward needs \returns shaped as tgt
/// \throws as TransformerDecoder::forward.
/// \sa transformer_decoder_backward
template <typename Scalar>
Tensor<Scalar> transformer_decoder_forward(const TransformerDecoder<Scalar>& decoder,
                                           const Tensor<Scalar>& tgt, const Tensor<Scalar>& memory,
                                           const TransformerDecoderArgs& args,
                                           TransformerDecoderTrainingCache<Scalar>* cache) {
  if (cache) cache->layers.assign(decoder.layers.size(), {});
  Tensor<Scalar> x = tgt;
  for (std::size_t i = 0; i < decoder.layers.size(); ++i) {
    x = transformer_decoder_layer_forward(decoder.layers[i], x, memory, args,
                                          cache ? &cache->layers[i] : nullptr);
  }
  LayerNormCache<Scalar> unused;
  if (decoder.norm) detail::final_norm_forward(*decoder.norm, x, cache ? cache->norm : unused);
  return x;
}

/// Gradient of transformer_decoder_forward.
/// \param cache the forward's \param d_output [tgt's shape] upstream gradient
/// \param grads accumulated (+=); an empty `layers` is sized first
/// \returns d_tgt [tgt's shape] and d_memory [memory's shape], the sum over the layers
///   (assigned)
/// \throws value_error when the cache has not one entry per layer; shape_error when
///   grads.layers has another non-zero size, or as transformer_decoder_layer_backward.
template <typename Scalar>
TransformerDecoderLayerInputGrads<Scalar> transformer_decoder_backward(
    const TransformerDecoder<Scalar>& decoder, const TransformerDecoderTrainingCache<Scalar>& cache,
    const Tensor<Scalar>& d_output, TransformerDecoderGrad<Scalar>& grads) {
  const std::string who = "transformer_decoder_backward";
  if (cache.layers.size() != decoder.layers.size()) {
    throw value_error(who + ": cache has " + std::to_string(cache.layers.size()) +
                      " layers, expected " + std::to_string(decoder.layers.size()) +
                      " from transformer_decoder_forward");
  }
  detail::check_stack_d_output(d_output, cache.layers.back().tgt_shape, who, "tgt");
  detail::prepare_layer_grads(grads.layers, decoder.layers.size(), who);
  TransformerDecoderLayerInputGrads<Scalar> result;
  result.d_tgt = d_output;
  if (decoder.norm)
    detail::final_norm_backward(*decoder.norm, cache.norm, grads.norm, result.d_tgt);
  for (std::size_t i = decoder.layers.size(); i-- > 0;) {
    TransformerDecoderLayerInputGrads<Scalar> d = transformer_decoder_layer_backward(
        decoder.layers[i], cache.layers[i], result.d_tgt, grads.layers[i]);
    result.d_tgt = std::move(d.d_tgt);
    // forward: every layer reads the same memory, so its gradients add up
    if (result.d_memory.size() == 0) {
      result.d_memory = std::move(d.d_memory);
    } else {
      result.d_memory.as_matrix() += d.d_memory.as_matrix();
    }
  }
  return result;
}

// ---- Transformer ----------------------------------------------------------------------------

/// Visits `encoder.*` then `decoder.*`, torch.nn.Transformer's named_parameters() order.
template <typename Scalar, typename Visit>
void named_parameters(Transformer<Scalar>& m, TransformerGrad<Scalar>& g, Visit&& visit,
                      const std::string& prefix = "") {
  named_parameters(m.encoder, g.encoder, visit, prefix + "encoder.");
  named_parameters(m.decoder, g.decoder, visit, prefix + "decoder.");
}

/// Transformer::forward for training: `decoder(tgt, encoder(src))` with the masks of `args`
/// routed as Transformer::encode and Transformer::decode route them.
/// \param src [S, B, E] \param tgt [L, B, E] (batch_first: [B, S, E], [B, L, E]; or both
///        unbatched) \param cache if not null, receives what backward needs
/// \returns [L, B, E], shaped as tgt
/// \throws as Transformer::forward.
/// \sa transformer_backward
template <typename Scalar>
Tensor<Scalar> transformer_forward(const Transformer<Scalar>& model, const Tensor<Scalar>& src,
                                   const Tensor<Scalar>& tgt, const TransformerArgs& args,
                                   TransformerTrainingCache<Scalar>* cache) {
  const std::string who = "Transformer::forward";
  const TransformerLayerOptions& o = model.layer_options();
  const detail::SequenceDims s =
      detail::check_sequence(src, o.d_model, o.batch_first, nullptr, who, "src", "S");
  detail::check_sequence(tgt, o.d_model, o.batch_first, &s, who, "tgt", "L");
  TransformerEncoderArgs ea;
  ea.mask = args.src_mask;
  ea.src_key_padding_mask = args.src_key_padding_mask;
  ea.is_causal = args.src_is_causal;
  TransformerDecoderArgs da;
  da.tgt_mask = args.tgt_mask;
  da.memory_mask = args.memory_mask;
  da.tgt_key_padding_mask = args.tgt_key_padding_mask;
  da.memory_key_padding_mask = args.memory_key_padding_mask;
  da.tgt_is_causal = args.tgt_is_causal;
  da.memory_is_causal = args.memory_is_causal;
  const Tensor<Scalar> memory =
      transformer_encoder_forward(model.encoder, src, ea, cache ? &cache->encoder : nullptr);
  return transformer_decoder_forward(model.decoder, tgt, memory, da,
                                     cache ? &cache->decoder : nullptr);
}

/// Gradient of transformer_forward: the decoder, then the encoder from the memory's gradient.
/// \param cache the forward's \param d_output [tgt's shape] upstream gradient
/// \param grads accumulated (+=)
/// \returns d_src [src's shape] and d_tgt [tgt's shape] (assigned)
/// \throws as transformer_decoder_backward and transformer_encoder_backward.
template <typename Scalar>
TransformerInputGrads<Scalar> transformer_backward(const Transformer<Scalar>& model,
                                                   const TransformerTrainingCache<Scalar>& cache,
                                                   const Tensor<Scalar>& d_output,
                                                   TransformerGrad<Scalar>& grads) {
  TransformerDecoderLayerInputGrads<Scalar> d =
      transformer_decoder_backward(model.decoder, cache.decoder, d_output, grads.decoder);
  TransformerInputGrads<Scalar> result;
  result.d_src =
      transformer_encoder_backward(model.encoder, cache.encoder, d.d_memory, grads.encoder);
  result.d_tgt = std::move(d.d_tgt);
  return result;
}

}  // namespace attend
