// SPDX-License-Identifier: MIT
// Conformance gradient cases of the functions and small modules: softmax,
// scaled_dot_product_attention (reference and fused backward), layer_norm, the rnn/lstm/gru
// cells, Bahdanau and Luong alignment.
//
// Wiring: grad_cases.hpp's run_grad_case falls through to run_op_grad_case for these
// modules. This file is included at the end of runner.hpp, after grad_cases.hpp; including
// it first works too: it includes runner.hpp.
#pragma once

#include "attend/attention/fused.hpp"
#include "attend/attention/fused_backward.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/softmax.hpp"
#include "attend/rnn/alignment.hpp"
#include "attend/rnn/cells.hpp"
#include "attend/train/alignment_backward.hpp"
#include "attend/train/cell_backward.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runner.hpp"

namespace attend::conformance::detail {

// Of rnn_cases.hpp and transformer_cases.hpp, which may be compiled after this file.
template <typename S>
Matrix<S> read_matrix_input(const Case& c, const std::string& name);
inline BoolMatrix read_key_padding(const Case& c);
template <typename S>
BahdanauAttention<S> read_bahdanau(const Case& c, Index Hq, Index Hk);
template <typename S>
LuongAttention<S> read_luong(const Case& c, Index Hq, Index Hk);
template <typename S>
struct CellInputs;
template <typename S>
CellInputs<S> read_cell_inputs(const Case& c);
struct LayerNormSpec;
inline LayerNormSpec read_layer_norm_spec(const Case& c);

/// Whether run_op_grad_case handles gradient cases of `module`.
inline bool op_grad_module_supported(const std::string& module) {
  return module == "softmax" || module == "scaled_dot_product_attention" ||
         module == "layer_norm" || module == "rnn_cell" || module == "lstm_cell" ||
         module == "gru_cell" || module == "bahdanau_attention" || module == "luong_attention";
}

/// softmax along option `dim`: y = softmax(x), dx = softmax_backward(y, dy) row by row.
template <typename S>
void run_softmax_grad(const Case& c, Outputs<S>& out) {
  allow_options(c, {"dim"});
  allow_inputs(c, {"input"});
  allow_upstreams(c, {"output"});
  const Tensor<S> x = c.st->get<S>("input.input");
  const SoftmaxAxis axis = read_softmax_axis(c, x.shape());  // named: lambdas capture it
  const Index outer = axis.outer, n = axis.n, inner = axis.inner;
  const Tensor<S> dy = upstream_or_zeros<S>(c, "output", x.shape());
  Tensor<S> y(x.shape()), dx(x.shape());
  Matrix<S> row(1, n), drow(1, n);
  for (Index o = 0; o < outer && n > 0; ++o) {
    for (Index in = 0; in < inner; ++in) {
      const auto at = [&](Index j) { return (o * n + j) * inner + in; };
      for (Index j = 0; j < n; ++j) {
        row(0, j) = x.data()[at(j)];
        drow(0, j) = dy.data()[at(j)];
      }
      const Matrix<S> p = softmax(row);
      const Matrix<S> dp = softmax_backward(p, drow);
      for (Index j = 0; j < n; ++j) {
        y.data()[at(j)] = p(0, j);
        dx.data()[at(j)] = dp(0, j);
      }
    }
  }
  out.emplace("output", std::move(y));
  out.emplace("grad.input.input", std::move(dx));
}

/// scaled_dot_product_attention: the reference backward (cached weights) on the reference
/// path, the fused backward (log-sum-exp from the fused forward) on a fused path.
template <typename S>
void run_sdpa_grad(const Case& c, Outputs<S>& out) {
  allow_options(c, {"is_causal", "scale", "dropout_p", "enable_gqa", "logit_softcap"});
  allow_inputs(c, {"query", "key", "value", "attn_mask"});
  allow_upstreams(c, {"output"});
  ignore_dropout(c, "dropout_p");
  const SdpaInputs<S> in = read_sdpa_inputs<S>(c);
  const SdpaOptions o = read_sdpa_options(c);
  Tensor<S> y;
  AttentionTensorGrads<S> g;
  if (c.path.fused()) {
    Tensor<S> lse;
    y = scaled_dot_product_attention_fused(in.q, in.k, in.v, in.mask, o, &lse);
    const Tensor<S> dy = upstream_or_zeros<S>(c, "output", y.shape());
    g = scaled_dot_product_attention_fused_backward(in.q, in.k, in.v, y, lse, dy, in.mask, o);
  } else {
    AttentionTensorCache<S> cache;
    y = scaled_dot_product_attention_forward(in.q, in.k, in.v, in.mask, o, &cache);
    const Tensor<S> dy = upstream_or_zeros<S>(c, "output", y.shape());
    g = scaled_dot_product_attention_backward(in.q, in.k, in.v, cache, dy);
  }
  out.emplace("output", std::move(y));
  out.emplace("grad.input.query", std::move(g.dq));
  out.emplace("grad.input.key", std::move(g.dk));
  out.emplace("grad.input.value", std::move(g.dv));
}

/// layer_norm over the last dimension: grad.input.input, grad.weight, grad.bias.
template <typename S>
void run_layer_norm_grad(const Case& c, Outputs<S>& out) {
  allow_upstreams(c, {"output"});
  const LayerNormSpec spec = read_layer_norm_spec(c);
  if (spec.normalized.size() != 1) throw unsupported("gradient of a multi-dim normalized_shape");
  const Tensor<S> x = c.st->get<S>("input.input");
  const Index N = spec.normalized[0];
  Vector<S> weight, bias;
  if (spec.affine) weight = c.st->get<S>("weight").flat();
  if (spec.bias) bias = c.st->get<S>("bias").flat();
  const ConstMatrixMap<S> rows(x.data(), N == 0 ? 0 : x.size() / N, N);  // [R, N]
  LayerNormCache<S> cache;
  Tensor<S> y(x.shape());
  MatrixMap<S>(y.data(), rows.rows(), N) =
      layer_norm_forward(rows, weight, bias, spec.eps, &cache);
  const Tensor<S> dy = upstream_or_zeros<S>(c, "output", y.shape());
  Vector<S> d_weight, d_bias;
  Tensor<S> dx(x.shape());
  MatrixMap<S>(dx.data(), rows.rows(), N) =
      layer_norm_backward(cache, weight, ConstMatrixMap<S>(dy.data(), rows.rows(), N),
                          spec.affine ? &d_weight : nullptr, spec.bias ? &d_bias : nullptr);
  out.emplace("output", std::move(y));
  out.emplace("grad.input.input", std::move(dx));
  if (spec.affine) out.emplace("grad.weight", vector_tensor<S>(d_weight));
  if (spec.bias) out.emplace("grad.bias", vector_tensor<S>(d_bias));
}

/// One cell step: cell_forward with a cache, cell_backward; grad.<parameter>,
/// grad.input.input, grad.input.hx (and .cx) when the file gives the state.
template <typename S, typename Cell>
void cell_grad(const Case& c, Cell& cell, const CellInputs<S>& in, Outputs<S>& out) {
  const bool lstm = c.module == "lstm_cell";
  cell.load_state_dict(*c.st);
  CellCache<S> cache;
  const CellState<S> next = cell_forward(cell, in.x, in.state, &cache);
  CellState<S> dnext;
  dnext.h = upstream_or_zeros<S>(c, "h", Shape{next.h.rows(), next.h.cols()}).as_matrix();
  if (lstm) dnext.c = upstream_or_zeros<S>(c, "c", Shape{next.c.rows(), next.c.cols()}).as_matrix();
  CellGrad<S> g;
  Matrix<S> dx;
  CellState<S> dprev;
  cell_backward(cell, cache, dnext, g, dx, dprev);
  out.emplace("h", Tensor<S>::from_matrix(next.h));
  if (lstm) out.emplace("c", Tensor<S>::from_matrix(next.c));
  out.emplace("grad.input.input", Tensor<S>::from_matrix(dx));
  if (in.has_hx) out.emplace("grad.input.hx", Tensor<S>::from_matrix(dprev.h));
  if (lstm && in.has_cx) out.emplace("grad.input.cx", Tensor<S>::from_matrix(dprev.c));
  emit_parameter_grads<S>(cell, g, out);
}

template <typename S>
void run_cell_grad(const Case& c, Outputs<S>& out) {
  allow_upstreams(c, c.module == "lstm_cell" ? std::initializer_list<const char*>{"h", "c"}
                                              : std::initializer_list<const char*>{"h"});
  const CellInputs<S> in = read_cell_inputs<S>(c);
  if (c.module == "rnn_cell") {
    RNNCell<S> cell(in.input_size, in.hidden_size, in.bias, read_nonlinearity(c));
    cell_grad<S>(c, cell, in, out);
  } else if (c.module == "lstm_cell") {
    LSTMCell<S> cell(in.input_size, in.hidden_size, in.bias);
    cell_grad<S>(c, cell, in, out);
  } else {
    GRUCell<S> cell(in.input_size, in.hidden_size, in.bias);
    cell.linear_before_reset = opt_bool(c, "linear_before_reset", true);
    cell_grad<S>(c, cell, in, out);
  }
}

/// bahdanau_attention / luong_attention: forward with a cache, backward with the upstream
/// gradients of attn_weights, context (and attentional_hidden); grad.<parameter>,
/// grad.input.query, grad.input.keys.
template <typename S>
void run_alignment_grad(const Case& c, Outputs<S>& out) {
  allow_inputs(c, {"query", "keys", "key_padding_mask"});
  allow_upstreams(c, {"attn_weights", "context", "attentional_hidden"});
  const Matrix<S> query = read_matrix_input<S>(c, "input.query");  // [B, Hq]
  const Tensor<S> keys = c.st->get<S>("input.keys");               // [B, T, Hk]
  if (keys.rank() != 3) {
    throw shape_error("input.keys is " + attend::detail::shape_string(keys.shape()) +
                      ", expected [B, T, Hk]");
  }
  const BoolMatrix mask = read_key_padding(c);
  const Index B = query.rows(), T = keys.dim(1), Hq = query.cols(), Hk = keys.dim(2);
  AlignmentCache<S> cache;
  AlignmentResult<S> r, d;
  AlignmentGrad<S> g;
  const auto upstreams = [&](bool hidden) {
    d.weights = upstream_or_zeros<S>(c, "attn_weights", Shape{B, T}).as_matrix();
    d.context = upstream_or_zeros<S>(c, "context", Shape{B, Hk}).as_matrix();
    if (hidden) d.attentional_hidden = upstream_or_zeros<S>(c, "attentional_hidden", Shape{B, Hq}).as_matrix();
  };
  if (c.module == "bahdanau_attention") {
    allow_options(c, {});
    BahdanauAttention<S> m = read_bahdanau<S>(c, Hq, Hk);
    r = bahdanau_forward(m, query, keys, mask, Tensor<S>(), &cache);
    upstreams(false);
    BahdanauGrad<S> pg;
    g = bahdanau_backward(m, cache, keys, d, pg);
    out.emplace("grad.W1", Tensor<S>::from_matrix(pg.d_W1));
    out.emplace("grad.W2", Tensor<S>::from_matrix(pg.d_W2));
    out.emplace("grad.v", vector_tensor<S>(pg.d_v));
  } else {
    LuongAttention<S> m = read_luong<S>(c, Hq, Hk);
    r = luong_forward(m, query, keys, mask, &cache);
    upstreams(m.attentional());
    LuongGrad<S> pg;
    g = luong_backward(m, cache, keys, d, pg);
    if (m.score == LuongScore::general || m.score == LuongScore::concat) {
      out.emplace("grad.W", Tensor<S>::from_matrix(pg.d_W));
    }
    if (m.score == LuongScore::concat) out.emplace("grad.v", vector_tensor<S>(pg.d_v));
    if (m.attentional()) {
      out.emplace("grad.Wc", Tensor<S>::from_matrix(pg.d_Wc));
      out.emplace("attentional_hidden", Tensor<S>::from_matrix(r.attentional_hidden));
    }
  }
  out.emplace("attn_weights", Tensor<S>::from_matrix(r.weights));
  out.emplace("context", Tensor<S>::from_matrix(r.context));
  out.emplace("grad.input.query", Tensor<S>::from_matrix(g.d_query));
  out.emplace("grad.input.keys", std::move(g.d_keys));
}

/// Runs a gradient case of the modules above. \returns false for other modules.
template <typename S>
bool run_op_grad_case(const Case& c, Outputs<S>& out) {
  if (c.module == "softmax") {
    run_softmax_grad<S>(c, out);
  } else if (c.module == "scaled_dot_product_attention") {
    run_sdpa_grad<S>(c, out);
  } else if (c.module == "layer_norm") {
    run_layer_norm_grad<S>(c, out);
  } else if (c.module == "rnn_cell" || c.module == "lstm_cell" || c.module == "gru_cell") {
    run_cell_grad<S>(c, out);
  } else if (c.module == "bahdanau_attention" || c.module == "luong_attention") {
    run_alignment_grad<S>(c, out);
  } else {
    return false;
  }
  return true;
}

}  // namespace attend::conformance::detail
