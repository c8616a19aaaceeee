// SPDX-License-Identifier: MIT
// Conformance cases of the transformer blocks: layer_norm, transformer_encoder_layer,
// transformer_decoder_layer (docs/fixtures.md names), transformer_encoder, transformer_decoder,
// transformer and transformer_seq2seq (names in tests/data/README.md).
//
// Wiring (runner.hpp): declare `template <typename S> bool run_transformer_module(const Case&,
// Outputs<S>&);` in attend::conformance::detail before run_module, dispatch there with
// `if (Outputs<S> out; run_transformer_module<S>(c, out)) return out;`, and include this file
// at the end of runner.hpp. Including this file first works too: it includes runner.hpp.
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/ops/activation.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/transformer/decoder.hpp"
#include "attend/transformer/decoder_layer.hpp"
#include "attend/transformer/encoder.hpp"
#include "attend/transformer/encoder_layer.hpp"
#include "attend/transformer/layer_options.hpp"
#include "attend/transformer/seq2seq.hpp"
#include "attend/transformer/transformer.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runner.hpp"

namespace attend::conformance::detail {

/// A key padding mask input: BOOL/I64 (true = padding) or additive float, `[B, S]`, or
/// `[S]` for an unbatched case (PyTorch's shape there).
template <typename S>
Mask read_key_padding_mask(const Case& c, const std::string& name) {
  const auto as_2d = [&](auto m) {
    if (m.rank() == 1) return m.reshaped({1, m.dim(0)});
    if (m.rank() != 2) {
      throw shape_error(name + " is " + attend::detail::shape_string(m.shape()) +
                        ", expected [B, S] or [S]");
    }
    return m;
  };
  if (is_bool_dtype(c.st->dtype(name))) return Mask::key_padding(as_2d(c.st->get<bool>(name)));
  const Tensor<S> m = as_2d(c.st->get<S>(name));
  return Mask::additive(m.reshaped({m.dim(0), 1, 1, m.dim(1)}));
}

/// An optional input mask: a score mask (heads > 0 splits a 3-D one) or a key padding mask.
template <typename S>
Mask read_optional_mask(const Case& c, const std::string& input, Index heads, bool key_padding) {
  const std::string name = "input." + input;
  if (!c.st->contains(name)) return Mask();
  return key_padding ? read_key_padding_mask<S>(c, name) : read_mask<S>(c, name, heads);
}

/// The options of a layer_norm case.
struct LayerNormSpec {
  Shape normalized;  // normalized_shape (the input's trailing dims)
  double eps = 1e-5;
  bool affine = true;  // weight present
  bool bias = true;    // bias present
};

inline LayerNormSpec read_layer_norm_spec(const Case& c) {
  allow_options(c, {"normalized_shape", "eps", "elementwise_affine", "bias"});
  allow_inputs(c, {"input"});
  // normalized_shape: an integer or a list of integers (the trailing dims of the input).
  const auto it = c.options.find("normalized_shape");
  if (it == c.options.end())
    throw format_error("option 'normalized_shape' is required for layer_norm");
  LayerNormSpec spec;
  Shape& ns = spec.normalized;
  if (it->is_number_integer()) {
    ns.push_back(static_cast<Index>(it->get<std::int64_t>()));
  } else if (it->is_array() && !it->empty()) {
    for (const auto& d : *it) {
      if (!d.is_number_integer()) {
        throw format_error("option 'normalized_shape' is " + describe(*it) + ", expected integers");
      }
      ns.push_back(static_cast<Index>(d.get<std::int64_t>()));
    }
  } else {
    throw format_error("option 'normalized_shape' is " + describe(*it) +
                       ", expected an integer or a list of integers");
  }
  spec.eps = opt_number(c, "eps").value_or(1e-5);
  spec.affine = opt_bool(c, "elementwise_affine", true);
  spec.bias = spec.affine && opt_bool(c, "bias", true);
  const Shape& x = c.st->shape("input.input");
  // The input's trailing dims must be normalized_shape: checked before anything is sized.
  const std::size_t k = ns.size();
  if (x.size() < k || !std::equal(ns.begin(), ns.end(), x.end() - static_cast<std::ptrdiff_t>(k))) {
    throw shape_error("input.input is " + attend::detail::shape_string(x) + ", expected [..., " +
                      attend::detail::shape_string(ns).substr(1));
  }
  const Index N = attend::detail::checked_numel(ns, "layer_norm");
  (void)N;
  if (spec.affine) attend::detail::require_parameter(*c.st, "weight", ns, "layer_norm");
  if (spec.bias) attend::detail::require_parameter(*c.st, "bias", ns, "layer_norm");
  return spec;
}

template <typename S>
void run_layer_norm_case(const Case& c, Outputs<S>& out) {
  const LayerNormSpec spec = read_layer_norm_spec(c);
  const Tensor<S> x = c.st->get<S>("input.input");
  const Index N = attend::detail::checked_numel(spec.normalized, "layer_norm");
  Tensor<S> y(x.shape());
  if (spec.normalized.size() == 1 && spec.bias == spec.affine) {
    // the module, loaded by its state-dict names
    LayerNorm<S> ln(N, spec.eps, spec.affine);
    ln.load_state_dict(*c.st);
    y = ln.forward(x);
  } else {  // multi-dim normalized_shape, or bias=False: the free function on flat rows
    Vector<S> weight, bias;
    if (spec.affine) weight = c.st->get<S>("weight").flat();
    if (spec.bias) bias = c.st->get<S>("bias").flat();
    const ConstMatrixMap<S> rows(x.data(), N == 0 ? 0 : x.size() / N, N);  // [R, N]
    MatrixMap<S>(y.data(), rows.rows(), N) = layer_norm_forward(rows, weight, bias, spec.eps);
  }
  out.emplace("output", std::move(y));
}

/// The layer options of a transformer case (shared by the layers and the stack).
inline TransformerLayerOptions read_layer_options(const Case& c) {
  ignore_dropout(c, "dropout");
  if (!opt_bool(c, "bias", true)) throw unsupported("option 'bias' = false of " + c.module);
  TransformerLayerOptions o;
  o.d_model = opt_required_int(c, "d_model");
  o.nhead = opt_required_int(c, "nhead");
  o.dim_feedforward = opt_int(c, "dim_feedforward").value_or(2048);
  const std::string act = opt_string(c, "activation", "relu");
  if (act == "relu") {
    o.activation = Activation::relu;
  } else if (act == "gelu") {
    o.activation = Activation::gelu;
  } else {
    throw unsupported("activation '" + act + "'");
  }
  o.layer_norm_eps = opt_number(c, "layer_norm_eps").value_or(1e-5);
  o.batch_first = opt_bool(c, "batch_first", false);
  o.norm_first = opt_bool(c, "norm_first", false);
  return o;
}

/// The constructors allocate parameters as large as the options say: require the file to
/// hold the largest ones first, so a small malformed file cannot make the runner allocate GBs.
inline void require_layer_parameters(const Case& c, const TransformerLayerOptions& o,
                                     const std::string& prefix, bool decoder) {
  const Index E = o.d_model, F = o.dim_feedforward;
  if (E <= 0 || F <= 0) return;  // the constructor rejects these with its own message
  std::vector<std::pair<std::string, Shape>> params{{"self_attn.in_proj_weight", {3 * E, E}},
                                                    {"linear1.weight", {F, E}},
                                                    {"linear2.weight", {E, F}}};
  if (decoder) params.push_back({"multihead_attn.in_proj_weight", {3 * E, E}});
  for (const auto& p : params) {
    attend::detail::require_parameter(*c.st, prefix + p.first, p.second, c.module.c_str());
  }
}

template <typename S>
void run_encoder_layer_case(const Case& c, Outputs<S>& out) {
  allow_options(c, {"d_model", "nhead", "dim_feedforward", "dropout", "activation",
                    "layer_norm_eps", "batch_first", "norm_first", "bias", "is_causal"});
  allow_inputs(c, {"src", "src_mask", "src_key_padding_mask"});
  const TransformerLayerOptions o = read_layer_options(c);
  require_layer_parameters(c, o, "", false);
  TransformerEncoderLayer<S> layer(o);
  layer.load_state_dict(*c.st);
  TransformerEncoderLayerArgs a;
  a.src_mask = read_optional_mask<S>(c, "src_mask", o.nhead, false);
  a.src_key_padding_mask = read_optional_mask<S>(c, "src_key_padding_mask", 0, true);
  a.is_causal = opt_bool(c, "is_causal", false);
  out.emplace("output", layer.forward(c.st->get<S>("input.src"), a));
}

template <typename S>
void run_encoder_case(const Case& c, Outputs<S>& out) {
  allow_options(c, {"d_model", "nhead", "dim_feedforward", "dropout", "activation",
                    "layer_norm_eps", "batch_first", "norm_first", "bias", "is_causal",
                    "num_layers", "enable_nested_tensor", "mask_check"});
  allow_inputs(c, {"src", "mask", "src_key_padding_mask"});
  const TransformerLayerOptions o = read_layer_options(c);
  const Index n = opt_required_int(c, "num_layers");
  for (Index i = 0; i < n; ++i)
    require_layer_parameters(c, o, "layers." + std::to_string(i) + ".", false);
  // The final norm is there exactly when its parameters are (tests/data/README.md).
  const bool final_norm = c.st->contains("norm.weight") || c.st->contains("norm.bias");
  TransformerEncoder<S> encoder(o, n, final_norm);
  encoder.load_state_dict(*c.st);
  TransformerEncoderArgs a;
  a.mask = read_optional_mask<S>(c, "mask", o.nhead, false);
  a.src_key_padding_mask = read_optional_mask<S>(c, "src_key_padding_mask", 0, true);
  a.is_causal = opt_bool(c, "is_causal", false);
  out.emplace("output", encoder.forward(c.st->get<S>("input.src"), a));
}

/// The decoder-side masks and flags of a case (decoder layer, decoder stack, transformer).
template <typename S>
TransformerDecoderLayerArgs read_decoder_args(const Case& c, Index nhead) {
  TransformerDecoderLayerArgs a;
  a.tgt_mask = read_optional_mask<S>(c, "tgt_mask", nhead, false);
  a.memory_mask = read_optional_mask<S>(c, "memory_mask", nhead, false);
  a.tgt_key_padding_mask = read_optional_mask<S>(c, "tgt_key_padding_mask", 0, true);
  a.memory_key_padding_mask = read_optional_mask<S>(c, "memory_key_padding_mask", 0, true);
  a.tgt_is_causal = opt_bool(c, "tgt_is_causal", false);
  a.memory_is_causal = opt_bool(c, "memory_is_causal", false);
  return a;
}

template <typename S>
void run_decoder_layer_case(const Case& c, Outputs<S>& out) {
  allow_options(c,
                {"d_model", "nhead", "dim_feedforward", "dropout", "activation", "layer_norm_eps",
                 "batch_first", "norm_first", "bias", "tgt_is_causal", "memory_is_causal"});
  allow_inputs(c, {"tgt", "memory", "tgt_mask", "memory_mask", "tgt_key_padding_mask",
                   "memory_key_padding_mask"});
  const TransformerLayerOptions o = read_layer_options(c);
  require_layer_parameters(c, o, "", true);
  TransformerDecoderLayer<S> layer(o);
  layer.load_state_dict(*c.st);
  const TransformerDecoderLayerArgs a = read_decoder_args<S>(c, o.nhead);
  const Tensor<S> memory = c.st->get<S>("input.memory");
  // S = 0 memory positions would leave every cross-attention row fully masked.
  no_empty_rows(memory, memory.rank() == 3 && o.batch_first ? 1 : 0);
  out.emplace("output", layer.forward(c.st->get<S>("input.tgt"), memory, a));
}

template <typename S>
void run_decoder_case(const Case& c, Outputs<S>& out) {
  allow_options(
      c, {"d_model", "nhead", "dim_feedforward", "dropout", "activation", "layer_norm_eps",
          "batch_first", "norm_first", "bias", "tgt_is_causal", "memory_is_causal", "num_layers"});
  allow_inputs(c, {"tgt", "memory", "tgt_mask", "memory_mask", "tgt_key_padding_mask",
                   "memory_key_padding_mask"});
  const TransformerLayerOptions o = read_layer_options(c);
  const Index n = opt_required_int(c, "num_layers");
  for (Index i = 0; i < n; ++i) {
    require_layer_parameters(c, o, "layers." + std::to_string(i) + ".", true);
  }
  // The final norm is there exactly when its parameters are (tests/data/README.md).
  const bool final_norm = c.st->contains("norm.weight") || c.st->contains("norm.bias");
  TransformerDecoder<S> decoder(o, n, final_norm);
  decoder.load_state_dict(*c.st);
  const Tensor<S> memory = c.st->get<S>("input.memory");
  no_empty_rows(memory, memory.rank() == 3 && o.batch_first ? 1 : 0);
  out.emplace("output",
              decoder.forward(c.st->get<S>("input.tgt"), memory, read_decoder_args<S>(c, o.nhead)));
}

template <typename S>
void run_transformer_case(const Case& c, Outputs<S>& out) {
  allow_options(c, {"d_model", "nhead", "dim_feedforward", "dropout", "activation",
                    "layer_norm_eps", "batch_first", "norm_first", "bias", "num_encoder_layers",
                    "num_decoder_layers", "src_is_causal", "tgt_is_causal", "memory_is_causal"});
  allow_inputs(c, {"src", "tgt", "src_mask", "tgt_mask", "memory_mask", "src_key_padding_mask",
                   "tgt_key_padding_mask", "memory_key_padding_mask"});
  TransformerOptions o;
  o.layer = read_layer_options(c);
  // PyTorch's defaults (6 and 6) apply when the options are absent.
  o.num_encoder_layers = opt_int(c, "num_encoder_layers").value_or(6);
  o.num_decoder_layers = opt_int(c, "num_decoder_layers").value_or(6);
  for (Index i = 0; i < o.num_encoder_layers; ++i) {
    require_layer_parameters(c, o.layer, "encoder.layers." + std::to_string(i) + ".", false);
  }
  for (Index i = 0; i < o.num_decoder_layers; ++i) {
    require_layer_parameters(c, o.layer, "decoder.layers." + std::to_string(i) + ".", true);
  }
  Transformer<S> model(o);
  model.load_state_dict(*c.st);
  const TransformerDecoderLayerArgs d = read_decoder_args<S>(c, o.layer.nhead);
  TransformerArgs a;
  a.src_mask = read_optional_mask<S>(c, "src_mask", o.layer.nhead, false);
  a.src_key_padding_mask = read_optional_mask<S>(c, "src_key_padding_mask", 0, true);
  a.src_is_causal = opt_bool(c, "src_is_causal", false);
  a.tgt_mask = d.tgt_mask;
  a.memory_mask = d.memory_mask;
  a.tgt_key_padding_mask = d.tgt_key_padding_mask;
  a.memory_key_padding_mask = d.memory_key_padding_mask;
  a.tgt_is_causal = d.tgt_is_causal;
  a.memory_is_causal = d.memory_is_causal;
  const Tensor<S> src = c.st->get<S>("input.src");
  no_empty_rows(src, src.rank() == 3 && o.layer.batch_first ? 1 : 0);
  out.emplace("output", model.forward(src, c.st->get<S>("input.tgt"), a));
}

/// The TransformerArgs of a transformer or transformer_seq2seq case.
template <typename S>
TransformerArgs read_transformer_args(const Case& c, Index nhead) {
  const TransformerDecoderLayerArgs d = read_decoder_args<S>(c, nhead);
  TransformerArgs a;
  a.src_mask = read_optional_mask<S>(c, "src_mask", nhead, false);
  a.src_key_padding_mask = read_optional_mask<S>(c, "src_key_padding_mask", 0, true);
  a.src_is_causal = opt_bool(c, "src_is_causal", false);
  a.tgt_mask = d.tgt_mask;
  a.memory_mask = d.memory_mask;
  a.tgt_key_padding_mask = d.tgt_key_padding_mask;
  a.memory_key_padding_mask = d.memory_key_padding_mask;
  a.tgt_is_causal = d.tgt_is_causal;
  a.memory_is_causal = d.memory_is_causal;
  return a;
}

/// A full model over token ids (tests/data/README.md): outputs `output` (logits) and
/// `memory` (the encoder output).
template <typename S>
void run_seq2seq_case(const Case& c, Outputs<S>& out) {
  allow_options(c, {"d_model", "nhead", "dim_feedforward", "dropout", "activation",
                    "layer_norm_eps", "batch_first", "norm_first", "bias", "num_encoder_layers",
                    "num_decoder_layers", "src_is_causal", "tgt_is_causal", "memory_is_causal",
                    "src_vocab_size", "tgt_vocab_size", "max_len", "scale_embedding",
                    "positional_layout"});
  allow_inputs(c, {"src", "tgt", "src_mask", "tgt_mask", "memory_mask", "src_key_padding_mask",
                   "tgt_key_padding_mask", "memory_key_padding_mask"});
  TransformerSeq2SeqOptions o;
  o.transformer.layer = read_layer_options(c);
  o.transformer.num_encoder_layers = opt_int(c, "num_encoder_layers").value_or(6);
  o.transformer.num_decoder_layers = opt_int(c, "num_decoder_layers").value_or(6);
  o.src_vocab_size = opt_required_int(c, "src_vocab_size");
  o.tgt_vocab_size = opt_required_int(c, "tgt_vocab_size");
  o.scale_embedding = opt_bool(c, "scale_embedding", true);
  const std::string layout = opt_string(c, "positional_layout", "interleaved");
  if (layout == "concatenated") {
    o.positional_layout = PositionalLayout::concatenated;
  } else if (layout != "interleaved") {
    throw unsupported("positional_layout '" + layout + "'");
  }
  const Index E = o.transformer.layer.d_model;
  for (Index i = 0; i < o.transformer.num_encoder_layers; ++i) {
    require_layer_parameters(c, o.transformer.layer,
                             "transformer.encoder.layers." + std::to_string(i) + ".", false);
  }
  for (Index i = 0; i < o.transformer.num_decoder_layers; ++i) {
    require_layer_parameters(c, o.transformer.layer,
                             "transformer.decoder.layers." + std::to_string(i) + ".", true);
  }
  // The vocabularies size the tables: the file must hold them before anything is allocated.
  for (const auto& p : {std::make_pair("src_embed.weight", o.src_vocab_size),
                        std::make_pair("tgt_embed.weight", o.tgt_vocab_size),
                        std::make_pair("generator.weight", o.tgt_vocab_size)}) {
    attend::detail::require_parameter(*c.st, p.first, {p.second, E}, c.module.c_str());
  }
  const Tensor<std::int64_t> src = c.st->get<std::int64_t>("input.src");
  const Tensor<std::int64_t> tgt = c.st->get<std::int64_t>("input.tgt");
  // The table holds max_len rows, but rows past the longest sequence are never read (and a
  // hostile max_len must not allocate): build only those, and still reject a sequence
  // longer than max_len.
  const Index max_len = opt_required_int(c, "max_len");
  const auto length = [&](const Tensor<std::int64_t>& ids) {
    return ids.rank() == 2 && o.transformer.layer.batch_first ? ids.dim(1)
                                                              : (ids.rank() ? ids.dim(0) : 0);
  };
  const Index longest = std::max(length(src), length(tgt));
  if (max_len < longest) {
    throw index_error("input.src or input.tgt has " + std::to_string(longest) +
                      " positions, more than max_len " + std::to_string(max_len));
  }
  o.max_len = std::max<Index>(longest, 1);
  TransformerSeq2Seq<S> model(o);
  model.load_state_dict(*c.st);
  if (length(src) == 0) throw format_error("input.src has S = 0 positions");
  const TransformerArgs a = read_transformer_args<S>(c, o.transformer.layer.nhead);
  Tensor<S> memory = model.encode(src, a);
  out.emplace("output", model.decode(tgt, memory, a));
  out.emplace("memory", std::move(memory));
}

/// Runs the case when its module is one of the transformer blocks; false for other modules.
template <typename S>
bool run_transformer_module(const Case& c, Outputs<S>& out) {
  if (c.module == "layer_norm") {
    run_layer_norm_case<S>(c, out);
  } else if (c.module == "transformer_encoder_layer") {
    run_encoder_layer_case<S>(c, out);
  } else if (c.module == "transformer_decoder_layer") {
    run_decoder_layer_case<S>(c, out);
  } else if (c.module == "transformer_encoder") {
    run_encoder_case<S>(c, out);
  } else if (c.module == "transformer_decoder") {
    run_decoder_case<S>(c, out);
  } else if (c.module == "transformer") {
    run_transformer_case<S>(c, out);
  } else if (c.module == "transformer_seq2seq") {
    run_seq2seq_case<S>(c, out);
  } else {
    return false;
  }
  return true;
}

}  // namespace attend::conformance::detail
