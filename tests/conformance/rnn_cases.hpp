// SPDX-License-Identifier: MIT
// Conformance cases of the recurrent modules: rnn/lstm/gru cells and layers, Bahdanau and
// Luong alignment (docs/fixtures.md names; variable lengths as `input.lengths`, tests/data/README.md).
//
// Wiring (runner.hpp): declare `template <typename S> bool run_rnn_module(const Case&,
// Outputs<S>&);` in attend::conformance::detail before run_module, dispatch there with
// `if (Outputs<S> out; run_rnn_module<S>(c, out)) return out;`, and include this file at the
// end of runner.hpp. Including this file first works too: it includes runner.hpp.
#pragma once

#include "attend/rnn/alignment.hpp"
#include "attend/rnn/cells.hpp"
#include "attend/rnn/recurrent.hpp"

#include <cstdint>
#include <string>
#include <vector>

#include "runner.hpp"

namespace attend::conformance::detail {

/// Input `name` as a [rows, cols] matrix; it must be rank 2.
template <typename S>
Matrix<S> read_matrix_input(const Case& c, const std::string& name) {
  const Tensor<S> t = c.st->get<S>(name);
  if (t.rank() != 2) {
    throw shape_error(name + " is " + attend::detail::shape_string(t.shape()) +
                      ", expected rank 2");
  }
  return t.as_matrix();
}

/// A [B, T] boolean key padding mask (BOOL or I64 0/1, true = masked out), or empty.
inline BoolMatrix read_key_padding(const Case& c) {
  const std::string name = "input.key_padding_mask";
  if (!c.st->contains(name)) return BoolMatrix();
  if (!is_bool_dtype(c.st->dtype(name))) throw unsupported("additive " + name + " of " + c.module);
  const Tensor<bool> m = c.st->get<bool>(name);
  if (m.rank() != 2) {
    throw shape_error(name + " is " + attend::detail::shape_string(m.shape()) +
                      ", expected [B, T]");
  }
  return m.as_matrix();
}

inline Nonlinearity read_nonlinearity(const Case& c) {
  const std::string nl = opt_string(c, "nonlinearity", "tanh");
  if (nl == "tanh") return Nonlinearity::tanh;
  if (nl == "relu") return Nonlinearity::relu;
  throw unsupported("nonlinearity '" + nl + "'");
}

/// The options and inputs of an rnn_cell / lstm_cell / gru_cell case.
template <typename S>
struct CellInputs {
  Index input_size = 0, hidden_size = 0;
  bool bias = true;
  Matrix<S> x;          // [B, in]
  CellState<S> state;   // h [B, N], c [B, N] (LSTM); zeros when the file gives none
  bool has_hx = false;  // the file gives input.hx
  bool has_cx = false;  // the file gives input.cx
};

template <typename S>
CellInputs<S> read_cell_inputs(const Case& c) {
  allow_options(c, {"input_size", "hidden_size", "bias", "nonlinearity", "linear_before_reset"});
  allow_inputs(c, {"input", "hx", "cx"});
  if (c.module != "gru_cell" && c.options.contains("linear_before_reset")) {
    throw unsupported("option 'linear_before_reset' of " + c.module);
  }
  CellInputs<S> in;
  in.input_size = opt_required_int(c, "input_size");
  in.hidden_size = opt_required_int(c, "hidden_size");
  in.bias = opt_bool(c, "bias", true);
  in.x = read_matrix_input<S>(c, "input.input");
  in.has_hx = c.st->contains("input.hx");
  in.has_cx = c.module == "lstm_cell" && c.st->contains("input.cx");
  const Matrix<S> zeros = Matrix<S>::Zero(in.x.rows(), in.hidden_size);
  in.state.h = in.has_hx ? read_matrix_input<S>(c, "input.hx") : zeros;
  if (c.module == "lstm_cell") in.state.c = in.has_cx ? read_matrix_input<S>(c, "input.cx") : zeros;
  return in;
}

template <typename S>
void run_cell_case(const Case& c, Outputs<S>& out) {
  const CellInputs<S> in = read_cell_inputs<S>(c);
  CellState<S> next;
  if (c.module == "rnn_cell") {
    RNNCell<S> cell(in.input_size, in.hidden_size, in.bias, read_nonlinearity(c));
    cell.load_state_dict(*c.st);
    next = cell.forward(in.x, in.state);
  } else if (c.module == "lstm_cell") {
    LSTMCell<S> cell(in.input_size, in.hidden_size, in.bias);
    cell.load_state_dict(*c.st);
    next = cell.forward(in.x, in.state);
  } else {
    GRUCell<S> cell(in.input_size, in.hidden_size, in.bias);
    cell.linear_before_reset = opt_bool(c, "linear_before_reset", true);
    cell.load_state_dict(*c.st);
    next = cell.forward(in.x, in.state);
  }
  out.emplace("h", Tensor<S>::from_matrix(next.h));
  if (c.module == "lstm_cell") out.emplace("c", Tensor<S>::from_matrix(next.c));
}

/// The options of an rnn / lstm / gru case (linear_before_reset: gru only).
inline RecurrentOptions read_recurrent_options(const Case& c) {
  allow_options(c, {"input_size", "hidden_size", "num_layers", "bias", "batch_first",
                    "bidirectional", "nonlinearity", "dropout", "proj_size",
                    "linear_before_reset"});
  ignore_dropout(c, "dropout");
  if (opt_int(c, "proj_size").value_or(0) != 0) throw unsupported("option 'proj_size' != 0");
  if (c.module != "gru" && c.options.contains("linear_before_reset")) {
    throw unsupported("option 'linear_before_reset' of " + c.module);
  }
  RecurrentOptions o;
  o.input_size = opt_required_int(c, "input_size");
  o.hidden_size = opt_required_int(c, "hidden_size");
  o.num_layers = opt_int(c, "num_layers").value_or(1);
  o.bias = opt_bool(c, "bias", true);
  o.batch_first = opt_bool(c, "batch_first", false);
  o.bidirectional = opt_bool(c, "bidirectional", false);
  o.linear_before_reset = opt_bool(c, "linear_before_reset", true);
  if (c.module == "rnn") o.nonlinearity = read_nonlinearity(c);
  return o;
}

template <typename S, template <typename> class CellType>
void run_layer_case(const Case& c, Outputs<S>& out) {
  const RecurrentOptions o = read_recurrent_options(c);
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
  RecurrentOutput<S> r = layer.forward(c.st->get<S>("input.input"), initial, lengths);
  out.emplace("output", std::move(r.output));
  out.emplace("h_n", std::move(r.h_n));
  if (c.module == "lstm") out.emplace("c_n", std::move(r.c_n));
}

/// A BahdanauAttention sized by the file's W1 [A, Hk] and loaded from it.
template <typename S>
BahdanauAttention<S> read_bahdanau(const Case& c, Index Hq, Index Hk) {
  const Shape& w1 = c.st->shape("W1");
  if (w1.size() != 2)
    throw shape_error("W1 is " + attend::detail::shape_string(w1) + ", expected [A, Hk]");
  BahdanauAttention<S> att(Hq, Hk, w1[0]);
  att.load_state_dict(*c.st);
  return att;
}

/// A LuongAttention with the case's score (W [A, Hq + Hk] sizes concat; Wc present makes it
/// attentional), loaded from the file.
template <typename S>
LuongAttention<S> read_luong(const Case& c, Index Hq, Index Hk) {
  allow_options(c, {"score"});
  const std::string s = opt_string(c, "score", "");
  LuongScore score = LuongScore::dot;
  Index A = 0;
  if (s == "general") {
    score = LuongScore::general;
  } else if (s == "concat") {
    score = LuongScore::concat;
    const Shape& w = c.st->shape("W");
    if (w.size() != 2)
      throw shape_error("W is " + attend::detail::shape_string(w) + ", expected [A, Hq + Hk]");
    A = w[0];
  } else if (s.empty()) {
    throw format_error("option 'score' is required for luong_attention");
  } else if (s != "dot") {
    throw unsupported("score '" + s + "'");
  }
  LuongAttention<S> att(score, Hq, Hk, A, c.st->contains("Wc"));
  att.load_state_dict(*c.st);
  return att;
}

template <typename S>
void run_alignment_case(const Case& c, Outputs<S>& out) {
  allow_inputs(c, {"query", "keys", "key_padding_mask"});
  const Matrix<S> query = read_matrix_input<S>(c, "input.query");  // [B, Hq]
  const Tensor<S> keys = c.st->get<S>("input.keys");               // [B, T, Hk]
  if (keys.rank() != 3) {
    throw shape_error("input.keys is " + attend::detail::shape_string(keys.shape()) +
                      ", expected [B, T, Hk]");
  }
  const BoolMatrix mask = read_key_padding(c);
  const Index Hq = query.cols(), Hk = keys.dim(2);
  AlignmentResult<S> r;
  if (c.module == "bahdanau_attention") {
    allow_options(c, {});
    r = read_bahdanau<S>(c, Hq, Hk).forward(query, keys, mask);
  } else {
    const LuongAttention<S> att = read_luong<S>(c, Hq, Hk);
    r = att.forward(query, keys, mask);
    if (att.attentional()) {
      out.emplace("attentional_hidden", Tensor<S>::from_matrix(r.attentional_hidden));
    }
  }
  out.emplace("attn_weights", Tensor<S>::from_matrix(r.weights));
  out.emplace("context", Tensor<S>::from_matrix(r.context));
}

/// Runs the case when its module is one of the recurrent modules; false for other modules.
template <typename S>
bool run_rnn_module(const Case& c, Outputs<S>& out) {
  if (c.module == "rnn_cell" || c.module == "lstm_cell" || c.module == "gru_cell") {
    run_cell_case<S>(c, out);
  } else if (c.module == "rnn") {
    run_layer_case<S, RNNCell>(c, out);
  } else if (c.module == "lstm") {
    run_layer_case<S, LSTMCell>(c, out);
  } else if (c.module == "gru") {
    run_layer_case<S, GRUCell>(c, out);
  } else if (c.module == "bahdanau_attention" || c.module == "luong_attention") {
    run_alignment_case<S>(c, out);
  } else {
    return false;
  }
  return true;
}

}  // namespace attend::conformance::detail
