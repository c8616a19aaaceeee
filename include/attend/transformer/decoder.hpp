// SPDX-License-Identifier: MIT
// A stack of transformer decoder layers with an optional final LayerNorm (nn.TransformerDecoder).
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/transformer/decoder_layer.hpp"
#include "attend/transformer/layer_options.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// Forward arguments of the stack: those of every layer (torch.nn.TransformerDecoder.forward
/// takes the same names).
using TransformerDecoderArgs = TransformerDecoderLayerArgs;

/// The incremental-decoding state of a TransformerDecoder: one cache per layer.
template <typename Scalar>
struct TransformerDecoderCache {
  std::vector<TransformerDecoderLayerCache<Scalar>> layers;
  /// Target positions decoded so far.
  Index size() const noexcept { return layers.empty() ? 0 : layers.front().self_attn.size(); }
};

/// `num_layers` decoder layers applied in turn, then the optional final `norm`:
/// `y = norm(layer_{N-1}(... layer_0(tgt, memory) ..., memory))`.
///
/// State-dict names as torch.nn.TransformerDecoder: `layers.{i}.` + the layer's names, and
/// `norm.weight`, `norm.bias` for the final norm (LayerNorm(d_model, layer_norm_eps), as
/// torch.nn.Transformer builds it).
/// \note torch.nn.TransformerDecoder in evaluation mode.
/// \sa TransformerDecoderLayer, TransformerEncoder
template <typename Scalar>
class TransformerDecoder {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::TransformerDecoder: Scalar must be float or double");

 public:
  std::vector<TransformerDecoderLayer<Scalar>> layers;
  std::optional<LayerNorm<Scalar>> norm;  ///< the final norm, if any

  /// `num_layers` layers with the same options, each initialised from its own stream
  /// derived from `seed`.
  /// \throws value_error when num_layers is not positive or the options are invalid.
  TransformerDecoder(const TransformerLayerOptions& layer, Index num_layers,
                     bool final_norm = false, std::uint64_t seed = 0) {
    if (num_layers <= 0) {
      throw value_error("TransformerDecoder: num_layers is " + std::to_string(num_layers) +
                        ", expected a positive count");
    }
    layers.reserve(static_cast<std::size_t>(num_layers));
    for (Index i = 0; i < num_layers; ++i) {
      layers.emplace_back(layer, detail::derive_seed(seed, static_cast<std::uint64_t>(i)));
    }
    if (final_norm) norm.emplace(layer.d_model, layer.layer_norm_eps);
  }

  Index num_layers() const noexcept { return static_cast<Index>(layers.size()); }

  /// Loads `prefix + "layers.{i}."` for every layer and `prefix + "norm."` for the final norm.
  /// \throws index_error when a parameter is missing; shape_error on a wrong shape;
  ///   value_error on NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    TransformerDecoder m = *this;  // all or nothing
    for (std::size_t i = 0; i < m.layers.size(); ++i) {
      m.layers[i].load_state_dict(st, prefix + "layers." + std::to_string(i) + ".");
    }
    if (m.norm) m.norm->load_state_dict(st, prefix + "norm.");
    *this = std::move(m);
  }

  /// \param tgt [L, B, E] ([B, L, E] when batch_first; [L, E] unbatched)
  /// \param memory [S, B, E] in the same layout \returns shaped as tgt
  /// \throws as TransformerDecoderLayer::forward.
  Tensor<Scalar> forward(const Tensor<Scalar>& tgt, const Tensor<Scalar>& memory,
                         const TransformerDecoderArgs& args = {}) const {
    Tensor<Scalar> x = layers.front().forward(tgt, memory, args);
    for (std::size_t i = 1; i < layers.size(); ++i) x = layers[i].forward(x, memory, args);
    if (norm) norm->forward_inplace(x.as_matrix());
    return x;
  }

  /// An empty cache for decoding up to `max_len` positions of `batch` sequences.
  TransformerDecoderCache<Scalar> make_cache(Index batch, Index max_len) const {
    TransformerDecoderCache<Scalar> c;
    for (const auto& layer : layers) c.layers.push_back(layer.make_cache(batch, max_len));
    return c;
  }

  /// Decodes T new positions after the cached ones; equals the matching rows of `forward`
  /// with tgt_is_causal (see TransformerDecoderLayer::forward_step).
  /// \param tgt [T, B, E] \param memory [S, B, E] \param cache from make_cache, updated
  /// \throws as TransformerDecoderLayer::forward_step; shape_error when the cache was made
  ///   for another number of layers.
  Tensor<Scalar> forward_step(const Tensor<Scalar>& tgt, const Tensor<Scalar>& memory,
                              TransformerDecoderCache<Scalar>& cache,
                              const Mask& memory_key_padding_mask = Mask()) const {
    if (cache.layers.size() != layers.size()) {
      throw shape_error("TransformerDecoder::forward_step: cache has " +
                        std::to_string(cache.layers.size()) + " layers, expected " +
                        std::to_string(layers.size()) + " (make_cache)");
    }
    Tensor<Scalar> x = tgt;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      x = layers[i].forward_step(x, memory, cache.layers[i], memory_key_padding_mask);
    }
    if (norm) norm->forward_inplace(x.as_matrix());
    return x;
  }
};

}  // namespace attend
