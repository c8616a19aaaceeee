// SPDX-License-Identifier: MIT
// The encoder-decoder transformer of "Attention Is All You Need" (nn.Transformer parity).
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/transformer/decoder.hpp"
#include "attend/transformer/encoder.hpp"
#include "attend/transformer/layer_options.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <utility>

namespace attend {

/// Constructor options, named as torch.nn.Transformer's arguments.
struct TransformerOptions {
  TransformerLayerOptions layer;  ///< d_model, nhead, dim_feedforward, activation, ...
  Index num_encoder_layers = 6;
  Index num_decoder_layers = 6;
};

/// Forward arguments, named as torch.nn.Transformer.forward's.
struct TransformerArgs {
  Mask src_mask;                 ///< encoder self-attention, broadcastable to [B, H, S, S]
  Mask tgt_mask;                 ///< decoder self-attention, [B, H, L, L] (Mask::causal())
  Mask memory_mask;              ///< decoder cross-attention, [B, H, L, S]
  Mask src_key_padding_mask;     ///< [B, S] padding of src
  Mask tgt_key_padding_mask;     ///< [B, L] padding of tgt
  Mask memory_key_padding_mask;  ///< [B, S] padding of memory (usually src's)
  bool src_is_causal = false;
  bool tgt_is_causal = false;
  bool memory_is_causal = false;
};

/// `decoder(tgt, encoder(src))`: a TransformerEncoder and a TransformerDecoder, each with a
/// final LayerNorm, as torch.nn.Transformer builds them.
///
/// State-dict names as torch.nn.Transformer: `encoder.layers.{i}.*`, `encoder.norm.*`,
/// `decoder.layers.{i}.*`, `decoder.norm.*`. Token embeddings, positions and the output
/// projection are not part of nn.Transformer; see Embedding, sinusoidal_positional_encoding
/// and Linear.
/// \note Vaswani et al. 2017, figure 1; torch.nn.Transformer in evaluation mode (its
///       constructor re-initialises every matrix Xavier-uniform; here the layers keep their
///       own PyTorch-style initialisation).
/// \sa TransformerEncoder, TransformerDecoder
template <typename Scalar>
class Transformer {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::Transformer: Scalar must be float or double");

 public:
  TransformerEncoder<Scalar> encoder;
  TransformerDecoder<Scalar> decoder;

  /// \throws value_error when a layer count is not positive or the layer options are invalid.
  explicit Transformer(const TransformerOptions& o, std::uint64_t seed = 0)
      : encoder(o.layer, o.num_encoder_layers, true, detail::derive_seed(seed, 0)),
        decoder(o.layer, o.num_decoder_layers, true, detail::derive_seed(seed, 1)) {}

  const TransformerLayerOptions& layer_options() const noexcept {
    return encoder.layers.front().options;
  }

  /// Loads `prefix + "encoder."` and `prefix + "decoder."`.
  /// \throws as the stacks' load_state_dict. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    Transformer m = *this;
    m.encoder.load_state_dict(st, prefix + "encoder.");
    m.decoder.load_state_dict(st, prefix + "decoder.");
    *this = std::move(m);
  }

  /// The encoder output (the decoder's memory).
  /// \param src [S, B, E] ([B, S, E] when batch_first; [S, E] unbatched) \returns as src
  Tensor<Scalar> encode(const Tensor<Scalar>& src, const TransformerArgs& args = {}) const {
    TransformerEncoderArgs a;
    a.mask = args.src_mask;
    a.src_key_padding_mask = args.src_key_padding_mask;
    a.is_causal = args.src_is_causal;
    return encoder.forward(src, a);
  }

  /// The decoder output over an encoded memory. \param tgt [L, B, E] \param memory [S, B, E]
  Tensor<Scalar> decode(const Tensor<Scalar>& tgt, const Tensor<Scalar>& memory,
                        const TransformerArgs& args = {}) const {
    TransformerDecoderArgs a;
    a.tgt_mask = args.tgt_mask;
    a.memory_mask = args.memory_mask;
    a.tgt_key_padding_mask = args.tgt_key_padding_mask;
    a.memory_key_padding_mask = args.memory_key_padding_mask;
    a.tgt_is_causal = args.tgt_is_causal;
    a.memory_is_causal = args.memory_is_causal;
    return decoder.forward(tgt, memory, a);
  }

  /// \param src [S, B, E] \param tgt [L, B, E] (batch_first: [B, S, E], [B, L, E]; or both
  ///        unbatched) \returns [L, B, E], shaped as tgt
  /// \throws shape_error when src or tgt is not [*, B, d_model] with the same B, or a mask
  ///   does not broadcast; value_error on NaN/Inf.
  Tensor<Scalar> forward(const Tensor<Scalar>& src, const Tensor<Scalar>& tgt,
                         const TransformerArgs& args = {}) const {
    const std::string who = "Transformer::forward";
    const TransformerLayerOptions& o = layer_options();
    const detail::SequenceDims s =
        detail::check_sequence(src, o.d_model, o.batch_first, nullptr, who, "src", "S");
    detail::check_sequence(tgt, o.d_model, o.batch_first, &s, who, "tgt", "L");
    return decode(tgt, encode(src, args), args);
  }
};

}  // namespace attend
