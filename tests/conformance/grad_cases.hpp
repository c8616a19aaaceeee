// SPDX-License-Identifier: MIT
// Conformance gradient cases (docs/fixtures.md `upstream.` and `grad.` tensors): forward plus
// backward of multihead_attention, embedding, transformer_encoder_layer,
// transformer_decoder_layer and the recurrent stacks rnn, lstm and gru (backpropagation
// through time); the functions and small modules are in grad_op_cases.hpp.
//
// Wiring (runner.hpp): run_case_bytes calls `run_grad_case<S>(c, out)` for a case holding
// upstream./grad. tensors (UNSUPPORTED when it returns false, i.e. for a module without a
// backward here), and compare() checks every `grad.` tensor as out["grad.<name>"] besides
// every `expected.` one. This file is included at the end of runner.hpp; including it first
// works too: it includes runner.hpp.
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/attention/multihead_backward.hpp"
#include "attend/core/tensor.hpp"
#include "attend/embedding/embedding.hpp"
#include "attend/rnn/cells.hpp"
#include "attend/rnn/recurrent.hpp"
#include "attend/train/decoder_layer_backward.hpp"
#include "attend/train/encoder_layer_backward.hpp"
#include "attend/train/recurrent_backward.hpp"
#include "attend/transformer/decoder_layer.hpp"
#include "attend/transformer/encoder_layer.hpp"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "runner.hpp"

namespace attend::conformance::detail {

// Helpers of transformer_cases.hpp, declared here because that file may be the one being
// included first (it includes runner.hpp, which includes this file before it continues).
inline TransformerLayerOptions read_layer_options(const Case& c);
inline void require_layer_parameters(const Case& c, const TransformerLayerOptions& o,
                                     const std::string& prefix, bool decoder);
template <typename S>
Mask read_optional_mask(const Case& c, const std::string& input, Index heads, bool key_padding);
template <typename S>
TransformerDecoderLayerArgs read_decoder_args(const Case& c, Index nhead);
// Of rnn_cases.hpp, which may likewise be compiled after this file.
inline Nonlinearity read_nonlinearity(const Case& c);
inline RecurrentOptions read_recurrent_options(const Case& c);

// Of grad_op_cases.hpp (the functions and small modules), included after this file.
inline bool op_grad_module_supported(const std::string& module);
template <typename S>
bool run_op_grad_case(const Case& c, Outputs<S>& out);

/// Whether run_grad_case handles gradient cases of `module`.
inline bool grad_module_supported(const std::string& module) {
  return module == "multihead_attention" || module == "embedding" ||
         module == "transformer_encoder_layer" || module == "transformer_decoder_layer" ||
         module == "rnn" || module == "lstm" || module == "gru" || op_grad_module_supported(module);
}

/// Rejects `upstream.` tensors other than those of `known` outputs: an upstream gradient
/// the runner ignored would make it check the wrong L.
inline void allow_upstreams(const Case& c, std::initializer_list<const char*> known) {
  const std::set<std::string> ok(known.begin(), known.end());
  for (const std::string& name : c.st->names()) {
    if (name.rfind("upstream.", 0) == 0 && !ok.count(name.substr(9))) {
      throw unsupported("upstream gradient '" + name.substr(9) + "' of " + c.module);
    }
  }
}

/// upstream.<name> when present, else zeros of `shape` (an output without one is not in L).
template <typename S>
Tensor<S> upstream_or_zeros(const Case& c, const std::string& name, const Shape& shape) {
  const std::string key = "upstream." + name;
  if (!c.st->contains(key)) {
    Tensor<S> z(shape);
    z.fill(S(0));
    return z;
  }
  Tensor<S> u = c.st->get<S>(key);
  if (u.shape() != shape) {
    throw shape_error(key + " is " + attend::detail::shape_string(u.shape()) + ", expected " +
                      attend::detail::shape_string(shape) + " (the shape of output " + name + ")");
  }
  return u;
}

template <typename S>
Tensor<S> vector_tensor(const Vector<S>& v) {
  Tensor<S> t({v.size()});
  t.flat() = v;
  return t;
}

/// Emits every parameter gradient of `m` as out["grad.<state-dict name>"], in PyTorch's
/// shapes (a bias or a norm's weight 1-D, a weight matrix 2-D).
template <typename S, typename Module, typename Grad>
void emit_parameter_grads(Module& m, Grad& g, Outputs<S>& out) {
  named_parameters(m, g, [&](const std::string& name, auto& /*value*/, auto& grad) {
    using Plain = std::decay_t<decltype(grad)>;
    if constexpr (std::is_same_v<Plain, Tensor<S>>) {
      out.emplace("grad." + name, grad);  // MultiheadAttention's bias_k, bias_v [1, 1, E]
    } else if constexpr (Plain::ColsAtCompileTime == 1) {
      out.emplace("grad." + name, vector_tensor<S>(grad));
    } else {
      out.emplace("grad." + name, Tensor<S>::from_matrix(grad));
    }
  });
}

template <typename S>
void run_mha_grad(const Case& c, Outputs<S>& out) {
  const MultiheadAttentionOptions o = read_mha_options(c);
  allow_upstreams(c, {"output", "attn_weights"});
  MultiheadAttention<S> mha(o);
  mha.load_state_dict(*c.st);
  const MultiheadAttentionArgs a = read_mha_args<S>(c, o);
  if (c.st->contains("upstream.attn_weights") && !a.need_weights) {
    throw format_error("upstream.attn_weights given, but need_weights is false");
  }
  const Tensor<S> q = c.st->get<S>("input.query");
  const bool has_k = c.st->contains("input.key"), has_v = c.st->contains("input.value");
  if (has_k != has_v)
    throw format_error("input.key and input.value must both be present or absent");
  MultiheadAttentionCache<S> cache;
  AttentionResult<S> r;
  if (has_k) {
    const Tensor<S> k = c.st->get<S>("input.key");
    const Tensor<S> v = c.st->get<S>("input.value");
    no_empty_rows(k, k.rank() == 3 && o.batch_first ? 1 : 0);
    r = mha.forward(q, k, v, a, &cache);
  } else {
    r = mha.forward(q, a, &cache);
  }
  const Tensor<S> d_output = upstream_or_zeros<S>(c, "output", r.output.shape());
  Tensor<S> d_weights;
  if (c.st->contains("upstream.attn_weights")) {
    d_weights = upstream_or_zeros<S>(c, "attn_weights", r.attn_weights.shape());
  }
  MultiheadAttentionGrad<S> g;
  MultiheadAttentionInputGrads<S> d =
      mha.backward(cache, d_output, g, d_weights.size() ? &d_weights : nullptr);

  out.emplace("output", r.output);
  if (a.need_weights) out.emplace("attn_weights", r.attn_weights);
  if (mha.packed()) {
    out.emplace("grad.in_proj_weight", Tensor<S>::from_matrix(g.d_in_proj_weight));
  } else {
    out.emplace("grad.q_proj_weight", Tensor<S>::from_matrix(g.d_q_proj_weight));
    out.emplace("grad.k_proj_weight", Tensor<S>::from_matrix(g.d_k_proj_weight));
    out.emplace("grad.v_proj_weight", Tensor<S>::from_matrix(g.d_v_proj_weight));
  }
  out.emplace("grad.out_proj.weight", Tensor<S>::from_matrix(g.d_out_proj_weight));
  if (o.bias) {
    out.emplace("grad.in_proj_bias", vector_tensor(g.d_in_proj_bias));
    out.emplace("grad.out_proj.bias", vector_tensor(g.d_out_proj_bias));
  }
  if (o.add_bias_kv) {  // [1, 1, E] in the state dict
    out.emplace("grad.bias_k", g.d_bias_k);
    out.emplace("grad.bias_v", g.d_bias_v);
  }
  out.emplace("grad.input.query", std::move(d.d_query));
  if (has_k) {
    out.emplace("grad.input.key", std::move(d.d_key));
    out.emplace("grad.input.value", std::move(d.d_value));
  }
}

template <typename S>
void run_embedding_grad(const Case& c, Outputs<S>& out) {
  allow_options(c, {"num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                    "scale_grad_by_freq", "sparse"});
  allow_inputs(c, {"input"});
  allow_upstreams(c, {"output"});
  if (opt_number(c, "max_norm")) throw unsupported("option 'max_norm'");
  if (opt_bool(c, "scale_grad_by_freq", false)) throw unsupported("option 'scale_grad_by_freq'");
  const Index V = opt_required_int(c, "num_embeddings");
  const Index D = opt_required_int(c, "embedding_dim");
  const Embedding<S> e = Embedding<S>::from_state_dict(*c.st, "", opt_int(c, "padding_idx"));
  if (e.num_embeddings() != V || e.embedding_dim() != D) {
    throw shape_error("weight is " + attend::detail::matrix_shape(e.weight) + ", expected [" +
                      std::to_string(V) + ", " + std::to_string(D) + "]");
  }
  const Tensor<std::int64_t> ids = c.st->get<std::int64_t>("input.input");
  Tensor<S> y = e.forward(ids);
  const Tensor<S> dy = upstream_or_zeros<S>(c, "output", y.shape());
  Matrix<S> d_weight;  // [V, D], zeroed by backward
  e.backward(ids, dy, d_weight);
  out.emplace("output", std::move(y));
  out.emplace("grad.weight", Tensor<S>::from_matrix(d_weight));
}

template <typename S>
void run_encoder_layer_grad(const Case& c, Outputs<S>& out) {
  allow_options(c, {"d_model", "nhead", "dim_feedforward", "dropout", "activation",
                    "layer_norm_eps", "batch_first", "norm_first", "bias", "is_causal"});
  allow_inputs(c, {"src", "src_mask", "src_key_padding_mask"});
  allow_upstreams(c, {"output"});
  const TransformerLayerOptions o = read_layer_options(c);
  require_layer_parameters(c, o, "", false);
  TransformerEncoderLayer<S> layer(o);
  layer.load_state_dict(*c.st);
  TransformerEncoderLayerArgs a;
  a.src_mask = read_optional_mask<S>(c, "src_mask", o.nhead, false);
  a.src_key_padding_mask = read_optional_mask<S>(c, "src_key_padding_mask", 0, true);
  a.is_causal = opt_bool(c, "is_causal", false);
  const Tensor<S> src = c.st->get<S>("input.src");
  TransformerEncoderLayerCache<S> cache;
  Tensor<S> y = transformer_encoder_layer_forward(layer, src, a, &cache);
  const Tensor<S> dy = upstream_or_zeros<S>(c, "output", y.shape());
  TransformerEncoderLayerGrad<S> g;
  Tensor<S> d_src = transformer_encoder_layer_backward(layer, cache, dy, g);
  out.emplace("output", std::move(y));
  out.emplace("grad.input.src", std::move(d_src));
  emit_parameter_grads<S>(layer, g, out);
}

/// transformer_decoder_layer: built, loaded and masked as run_decoder_layer_case does;
/// grad.<parameter>, grad.input.tgt and grad.input.memory (through the cross-attention's
/// keys and values) of L = sum(output * upstream.output).
template <typename S>
void run_decoder_layer_grad(const Case& c, Outputs<S>& out) {
  allow_options(c,
                {"d_model", "nhead", "dim_feedforward", "dropout", "activation", "layer_norm_eps",
                 "batch_first", "norm_first", "bias", "tgt_is_causal", "memory_is_causal"});
  allow_inputs(c, {"tgt", "memory", "tgt_mask", "memory_mask", "tgt_key_padding_mask",
                   "memory_key_padding_mask"});
  allow_upstreams(c, {"output"});
  const TransformerLayerOptions o = read_layer_options(c);
  require_layer_parameters(c, o, "", true);
  TransformerDecoderLayer<S> layer(o);
  layer.load_state_dict(*c.st);
  const TransformerDecoderLayerArgs a = read_decoder_args<S>(c, o.nhead);
  const Tensor<S> tgt = c.st->get<S>("input.tgt");
  const Tensor<S> memory = c.st->get<S>("input.memory");
  // S = 0 memory positions would leave every cross-attention row fully masked.
  no_empty_rows(memory, memory.rank() == 3 && o.batch_first ? 1 : 0);
  TransformerDecoderLayerTrainingCache<S> cache;
  Tensor<S> y = transformer_decoder_layer_forward(layer, tgt, memory, a, &cache);
  const Tensor<S> dy = upstream_or_zeros<S>(c, "output", y.shape());
  TransformerDecoderLayerGrad<S> g;
  TransformerDecoderLayerInputGrads<S> d = transformer_decoder_layer_backward(layer, cache, dy, g);
  out.emplace("output", std::move(y));
  out.emplace("grad.input.tgt", std::move(d.d_tgt));
  out.emplace("grad.input.memory", std::move(d.d_memory));
  emit_parameter_grads<S>(layer, g, out);
}

/// rnn / lstm / gru: recurrent_forward and recurrent_backward (BPTT) with the upstream
/// gradients of output, h_n and c_n; grad.<parameter>, grad.input.input, .h_0, .c_0.
template <typename S, template <typename> class CellType>
void run_recurrent_grad(const Case& c, Outputs<S>& out) {
  const bool lstm = c.module == "lstm";
  const RecurrentOptions o = read_recurrent_options(c);
  allow_inputs(c, {"input", "h_0", "c_0", "lengths"});
  if (lstm) {
    allow_upstreams(c, {"output", "h_n", "c_n"});
  } else {
    allow_upstreams(c, {"output", "h_n"});
  }
  Recurrent<S, CellType> layer(o);
  layer.load_state_dict(*c.st);
  RecurrentState<S> initial;
  if (c.st->contains("input.h_0")) initial.h = c.st->get<S>("input.h_0");
  if (c.st->contains("input.c_0")) initial.c = c.st->get<S>("input.c_0");
  std::vector<Index> lengths;
  if (c.st->contains("input.lengths")) {
    const Tensor<std::int64_t> l = c.st->get<std::int64_t>("input.lengths");
    if (l.rank() != 1) {
      throw shape_error("input.lengths is " + attend::detail::shape_string(l.shape()) +
                        ", expected [B]");
    }
    lengths.assign(l.data(), l.data() + l.size());
  }
  RecurrentCache<S> cache;
  RecurrentOutput<S> r =
      recurrent_forward(layer, c.st->get<S>("input.input"), initial, lengths, &cache);
  const Tensor<S> d_out = upstream_or_zeros<S>(c, "output", r.output.shape());
  const Tensor<S> d_h = upstream_or_zeros<S>(c, "h_n", r.h_n.shape());
  const Tensor<S> d_c = lstm ? upstream_or_zeros<S>(c, "c_n", r.c_n.shape()) : Tensor<S>();
  RecurrentGrad<S> g;
  RecurrentInputGrads<S> d = recurrent_backward(layer, cache, d_out, d_h, d_c, g);
  out.emplace("output", std::move(r.output));
  out.emplace("h_n", std::move(r.h_n));
  if (lstm) out.emplace("c_n", std::move(r.c_n));
  out.emplace("grad.input.input", std::move(d.d_input));
  if (initial.h.size() != 0) out.emplace("grad.input.h_0", std::move(d.d_h0));
  if (initial.c.size() != 0) out.emplace("grad.input.c_0", std::move(d.d_c0));
  emit_parameter_grads<S>(layer, g, out);
}

/// Runs a gradient case: the forward outputs ("output", ...) and the gradients
/// ("grad.<parameter>", "grad.input.<name>") of L = sum over outputs of
/// sum(output * upstream.output). \returns false for a module without backward support.
template <typename S>
bool run_grad_case(const Case& c, Outputs<S>& out) {
  if (!grad_module_supported(c.module)) return false;
  const std::vector<std::string> names = c.st->names();
  if (std::none_of(names.begin(), names.end(),
                   [](const std::string& n) { return n.rfind("upstream.", 0) == 0; })) {
    throw format_error("no upstream. tensor: the gradient case defines no L");
  }
  if (c.module == "multihead_attention") {
    run_mha_grad<S>(c, out);
  } else if (c.module == "embedding") {
    run_embedding_grad<S>(c, out);
  } else if (c.module == "transformer_encoder_layer") {
    run_encoder_layer_grad<S>(c, out);
  } else if (c.module == "transformer_decoder_layer") {
    run_decoder_layer_grad<S>(c, out);
  } else if (c.module == "lstm") {
    run_recurrent_grad<S, LSTMCell>(c, out);
  } else if (c.module == "gru") {
    run_recurrent_grad<S, GRUCell>(c, out);
  } else if (c.module == "rnn") {
    run_recurrent_grad<S, RNNCell>(c, out);
  } else {
    return run_op_grad_case<S>(c, out);
  }
  return true;
}

}  // namespace attend::conformance::detail
