// SPDX-License-Identifier: MIT
// Writes the parameters of the transformer modules under their PyTorch state-dict names.
#pragma once

#include "attend/attention/multihead.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"
#include "attend/transformer/decoder.hpp"
#include "attend/transformer/decoder_layer.hpp"
#include "attend/transformer/encoder.hpp"
#include "attend/transformer/encoder_layer.hpp"
#include "attend/transformer/transformer.hpp"

#include <Eigen/Core>

#include <string>

namespace attend {

namespace detail {

template <typename S>
void add_matrix(SafeTensorsWriter& w, const std::string& name, const Matrix<S>& m) {
  w.add(name, Tensor<S>::from_matrix(m));  // [rows, cols], PyTorch's layout
}

template <typename S>
void add_vector(SafeTensorsWriter& w, const std::string& name, const Vector<S>& v) {
  Tensor<S> t({v.size()});  // [n]
  t.flat() = v;
  w.add(name, t);
}

}  // namespace detail

/// Adds `prefix + "weight"` [out, in] and, with a bias, `prefix + "bias"` [out].
/// The `add_state_dict` overloads write what the matching `load_state_dict` reads, so a
/// module saved and loaded again computes the same bits; a PyTorch module with the same
/// structure loads the file with `load_state_dict(safetensors.torch.load_file(path))`.
/// \throws value_error when a name was already added (SafeTensorsWriter::add).
/// \sa SafeTensorsWriter, load_matrix
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const Linear<S>& m, const std::string& prefix = "") {
  detail::add_matrix(w, prefix + "weight", m.weight);
  if (m.has_bias()) detail::add_vector(w, prefix + "bias", m.bias);
}

/// Adds `prefix + "weight"` and `prefix + "bias"` [N] when elementwise_affine (else nothing).
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const LayerNorm<S>& m, const std::string& prefix = "") {
  if (!m.elementwise_affine()) return;
  detail::add_vector(w, prefix + "weight", m.weight);
  detail::add_vector(w, prefix + "bias", m.bias);
}

/// Adds `in_proj_weight` [3E, E] (or `q_proj_weight`, `k_proj_weight`, `v_proj_weight`),
/// `in_proj_bias` [3E], `bias_k` and `bias_v` [1, 1, E] (add_bias_kv), `out_proj.weight`
/// [E, E], `out_proj.bias` [E], each after `prefix`.
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const MultiheadAttention<S>& m,
                    const std::string& prefix = "") {
  if (m.packed()) {
    detail::add_matrix(w, prefix + "in_proj_weight", m.in_proj_weight);
  } else {
    detail::add_matrix(w, prefix + "q_proj_weight", m.q_proj_weight);
    detail::add_matrix(w, prefix + "k_proj_weight", m.k_proj_weight);
    detail::add_matrix(w, prefix + "v_proj_weight", m.v_proj_weight);
  }
  if (m.options.bias) detail::add_vector(w, prefix + "in_proj_bias", m.in_proj_bias);
  if (m.options.add_bias_kv) {
    w.add(prefix + "bias_k", m.bias_k);  // [1, 1, E]
    w.add(prefix + "bias_v", m.bias_v);  // [1, 1, E]
  }
  detail::add_matrix(w, prefix + "out_proj.weight", m.out_proj_weight);
  if (m.options.bias) detail::add_vector(w, prefix + "out_proj.bias", m.out_proj_bias);
}

/// Adds `self_attn.*`, `linear1.*`, `linear2.*`, `norm1.*`, `norm2.*` after `prefix`.
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const TransformerEncoderLayer<S>& m,
                    const std::string& prefix = "") {
  add_state_dict(w, m.self_attn, prefix + "self_attn.");
  add_state_dict(w, m.linear1, prefix + "linear1.");
  add_state_dict(w, m.linear2, prefix + "linear2.");
  add_state_dict(w, m.norm1, prefix + "norm1.");
  add_state_dict(w, m.norm2, prefix + "norm2.");
}

/// Adds `self_attn.*`, `multihead_attn.*`, `linear1.*`, `linear2.*`, `norm1.*` .. `norm3.*`.
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const TransformerDecoderLayer<S>& m,
                    const std::string& prefix = "") {
  add_state_dict(w, m.self_attn, prefix + "self_attn.");
  add_state_dict(w, m.multihead_attn, prefix + "multihead_attn.");
  add_state_dict(w, m.linear1, prefix + "linear1.");
  add_state_dict(w, m.linear2, prefix + "linear2.");
  add_state_dict(w, m.norm1, prefix + "norm1.");
  add_state_dict(w, m.norm2, prefix + "norm2.");
  add_state_dict(w, m.norm3, prefix + "norm3.");
}

/// Adds `layers.{i}.*` for every layer and `norm.*` when there is a final norm.
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const TransformerEncoder<S>& m,
                    const std::string& prefix = "") {
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    add_state_dict(w, m.layers[i], prefix + "layers." + std::to_string(i) + ".");
  }
  if (m.norm) add_state_dict(w, *m.norm, prefix + "norm.");
}

/// Adds `layers.{i}.*` for every layer and `norm.*` when there is a final norm.
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const TransformerDecoder<S>& m,
                    const std::string& prefix = "") {
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    add_state_dict(w, m.layers[i], prefix + "layers." + std::to_string(i) + ".");
  }
  if (m.norm) add_state_dict(w, *m.norm, prefix + "norm.");
}

/// Adds `encoder.*` and `decoder.*`, as torch.nn.Transformer's state dict.
template <typename S>
void add_state_dict(SafeTensorsWriter& w, const Transformer<S>& m,
                    const std::string& prefix = "") {
  add_state_dict(w, m.encoder, prefix + "encoder.");
  add_state_dict(w, m.decoder, prefix + "decoder.");
}

}  // namespace attend
