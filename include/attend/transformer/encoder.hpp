// SPDX-License-Identifier: MIT
// A stack of transformer encoder layers with an optional final LayerNorm (nn.TransformerEncoder).
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/transformer/encoder_layer.hpp"
#include "attend/transformer/layer_options.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// Forward arguments, named as torch.nn.TransformerEncoder.forward's; every layer gets them.
struct TransformerEncoderArgs {
  Mask mask;                  ///< score mask, as TransformerEncoderLayerArgs::src_mask
  Mask src_key_padding_mask;  ///< padding, as TransformerEncoderLayerArgs::src_key_padding_mask
  bool is_causal = false;     ///< adds a causal mask to every layer
};

/// `num_layers` encoder layers applied in turn, then the optional final `norm`:
/// `y = norm(layer_{N-1}(... layer_0(src)))`.
///
/// State-dict names as torch.nn.TransformerEncoder: `layers.{i}.` + the layer's names, and
/// `norm.weight`, `norm.bias` for the final norm (a LayerNorm(d_model, layer_norm_eps), as
/// torch.nn.Transformer builds it). Pre-norm stacks usually need the final norm, since
/// their last residual sum is not normalised.
/// \note torch.nn.TransformerEncoder in evaluation mode. Unlike its nested-tensor fast path
///       (enable_nested_tensor), padded positions are computed, not zeroed.
/// \sa TransformerEncoderLayer
template <typename Scalar>
class TransformerEncoder {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::TransformerEncoder: Scalar must be float or double");

 public:
  std::vector<TransformerEncoderLayer<Scalar>> layers;
  std::optional<LayerNorm<Scalar>> norm;  ///< the final norm, if any

  /// `num_layers` layers with the same options, each initialised from its own stream
  /// derived from `seed` (PyTorch deep-copies one layer, so its layers start equal).
  /// \throws value_error when num_layers is not positive or the options are invalid.
  TransformerEncoder(const TransformerLayerOptions& layer, Index num_layers,
                     bool final_norm = false, std::uint64_t seed = 0) {
    if (num_layers <= 0) {
      throw value_error("TransformerEncoder: num_layers is " + std::to_string(num_layers) +
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
    TransformerEncoder m = *this;  // all or nothing
    for (std::size_t i = 0; i < m.layers.size(); ++i) {
      m.layers[i].load_state_dict(st, prefix + "layers." + std::to_string(i) + ".");
    }
    if (m.norm) m.norm->load_state_dict(st, prefix + "norm.");
    *this = std::move(m);
  }

  /// \param src [L, B, E] ([B, L, E] when batch_first; [L, E] unbatched)
  /// \returns shaped as src
  /// \throws as TransformerEncoderLayer::forward (messages name that function).
  Tensor<Scalar> forward(const Tensor<Scalar>& src, const TransformerEncoderArgs& args = {}) const {
    TransformerEncoderLayerArgs a;
    a.src_mask = args.mask;
    a.src_key_padding_mask = args.src_key_padding_mask;
    a.is_causal = args.is_causal;
    Tensor<Scalar> x = layers.front().forward(src, a);
    for (std::size_t i = 1; i < layers.size(); ++i) x = layers[i].forward(x, a);
    if (norm) norm->forward_inplace(x.as_matrix());
    return x;
  }
};

}  // namespace attend
