// SPDX-License-Identifier: MIT
// Backpropagation through time for the RNN / LSTM / GRU stacks: forward with a cache,
// backward, and named parameters with PyTorch's names.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/rnn/cells.hpp"
#include "attend/rnn/recurrent.hpp"
#include "attend/train/cell_backward.hpp"

#include <Eigen/Core>

#include <string>
#include <type_traits>
#include <vector>

namespace attend {

/// What recurrent_backward needs from recurrent_forward. Rows of every matrix follow the
/// input's layout (row t * B + b, or b * T + t when batch_first); slot = k * D + d.
template <typename Scalar>
struct RecurrentCache {
  Shape input_shape;                   // the forward's input shape; empty: not filled
  std::vector<Index> lengths;          // [B] valid steps, or empty (all T)
  std::vector<Matrix<Scalar>> inputs;  // [num_layers] layer k's input [T * B, in_k]
  std::vector<Matrix<Scalar>> gates;   // [slots] [T * B, G * N] activated gates (RNN: h')
  std::vector<Matrix<Scalar>> h_prev;  // [slots] [T * B, N] state entering each step
  std::vector<Matrix<Scalar>> c_prev;  // [slots] [T * B, N] LSTM cell state entering, else empty
  std::vector<Matrix<Scalar>> aux;     // [slots] [T * B, N] LSTM tanh(c'), GRU hn (r * h when
                                       // linear_before_reset is false), RNN empty
};

/// Parameter gradients of a stack: `cells[k * D + d]` belongs to `layer.cells[k * D + d]`.
/// An empty vector is sized by the first backward (or by named_parameters).
template <typename Scalar>
struct RecurrentGrad {
  std::vector<CellGrad<Scalar>> cells;  // [num_layers * D]
};

/// Gradients of a stack's inputs, as recurrent_backward returns them.
template <typename Scalar>
struct RecurrentInputGrads {
  Tensor<Scalar> d_input;  // shaped as the forward's input; 0 at padded steps
  Tensor<Scalar> d_h0;     // [num_layers * D, B, N]
  Tensor<Scalar> d_c0;     // [num_layers * D, B, N] (LSTM) or empty
};

/// Visits every parameter as visit(prefix + name, parameter, gradient) in
/// torch.nn.LSTM.named_parameters() order: per layer k and direction, `weight_ih_l{k}`,
/// `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}` (suffix `_reverse` for the second
/// direction; biases only when present). Sizes `grad.cells` first.
template <typename S, template <typename> class CellType, typename Visit>
void named_parameters(Recurrent<S, CellType>& layer, RecurrentGrad<S>& grad, Visit&& visit,
                      const std::string& prefix = "") {
  const Index D = layer.directions();
  grad.cells.resize(layer.cells.size());
  for (Index k = 0; k < layer.options.num_layers; ++k) {
    for (Index d = 0; d < D; ++d) {
      const auto slot = static_cast<std::size_t>(k * D + d);
      const std::string suffix = "_l" + std::to_string(k) + (d == 1 ? "_reverse" : "");
      auto& cell = layer.cells[slot];
      CellGrad<S>& g = grad.cells[slot];
      visit(prefix + "weight_ih" + suffix, cell.weight_ih, g.weight_ih);
      visit(prefix + "weight_hh" + suffix, cell.weight_hh, g.weight_hh);
      if (cell.has_bias()) {
        visit(prefix + "bias_ih" + suffix, cell.bias_ih, g.bias_ih);
        visit(prefix + "bias_hh" + suffix, cell.bias_hh, g.bias_hh);
      }
    }
  }
}

namespace detail {

/// The door checks of Recurrent::forward (shapes, NaN/Inf, lengths), with its messages.
template <typename S, template <typename> class CellType>
void check_recurrent_forward(const Recurrent<S, CellType>& layer, const Tensor<S>& input,
                             const RecurrentState<S>& initial, const std::vector<Index>& lengths) {
  using Cell = CellType<S>;
  const std::string who = std::string(layer.name()) + "::forward";
  const RecurrentOptions& o = layer.options;
  const bool bf = o.batch_first;
  if (input.rank() != 3 || input.dim(-1) != o.input_size || input.dim(0) == 0 ||
      input.dim(1) == 0) {
    throw shape_error(who + ": input is " + shape_string(input.shape()) + ", expected " +
                      (bf ? "[B, T, " : "[T, B, ") + std::to_string(o.input_size) +
                      "] (input_size) with B, T >= 1");
  }
  const Index T = bf ? input.dim(1) : input.dim(0), B = bf ? input.dim(0) : input.dim(1);
  const Shape want{o.num_layers * layer.directions(), B, o.hidden_size};
  const std::string expected =
      ", expected " + shape_string(want) + " (num_layers * directions, B, hidden_size)";
  if (initial.h.size() != 0 && initial.h.shape() != want) {
    throw shape_error(who + ": h_0 is " + shape_string(initial.h.shape()) + expected);
  }
  if (Cell::has_cell_state) {
    if (initial.c.size() != 0 && initial.c.shape() != want) {
      throw shape_error(who + ": c_0 is " + shape_string(initial.c.shape()) + expected);
    }
  } else if (initial.c.size() != 0) {
    throw value_error(who + ": c_0 is " + shape_string(initial.c.shape()) + ", expected empty (" +
                      layer.name() + " has no cell state)");
  }
  if (initial.h.size() != 0) check_finite(initial.h, who, "h_0");
  if (initial.c.size() != 0) check_finite(initial.c, who, "c_0");
  check_finite(input, who, "input");
  if (!lengths.empty() && static_cast<Index>(lengths.size()) != B) {
    throw shape_error(who + ": lengths has " + std::to_string(lengths.size()) +
                      " entries, expected " + std::to_string(B) + " (B)");
  }
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    if (lengths[b] < 1 || lengths[b] > T) {
      throw value_error(who + ": lengths[" + std::to_string(b) + "] is " +
                        std::to_string(lengths[b]) + ", expected in [1, " + std::to_string(T) +
                        "] (T)");
    }
  }
}

/// The read-only twin of step_rows: `cols` columns of step t's B rows, a strided view.
template <typename S>
Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>> const_step_rows(const S* data, Index t,
                                                                     Index T, Index B, Index cols,
                                                                     Index pitch,
                                                                     bool batch_first) {
  const Index first = batch_first ? t : t * B;  // row of (t, b = 0)
  const Index stride = batch_first ? T : 1;     // rows between (t, b) and (t, b + 1)
  return {data + first * pitch, B, cols, Eigen::OuterStride<>(stride * pitch)};
}

/// Checks an upstream state gradient: empty, or [num_layers * D, B, N].
template <typename S>
void check_state_grad(const Tensor<S>& g, const Shape& want, const std::string& who,
                      const char* name) {
  if (g.size() != 0 && g.shape() != want) {
    throw shape_error(who + ": " + name + " is " + shape_string(g.shape()) + ", expected " +
                      shape_string(want) + " (num_layers * directions, B, hidden_size)");
  }
}

}  // namespace detail

/// Recurrent::forward for training: the same computation (the cells' own step kernel), with
/// every step's gates and states kept in `cache` for recurrent_backward.
/// \param layer the stack \param input [T, B, input_size] ([B, T, input_size] batch_first)
/// \param initial h_0 (and c_0) [num_layers * D, B, N]; empty tensors mean zeros
/// \param lengths [B] valid steps per sequence (packed-sequence semantics), empty = all T
/// \param cache if not null, receives what backward needs (about (G + 3) * N * T * B scalars
///   per layer and direction, plus the layers' inputs)
/// \returns as Recurrent::forward: output, h_n, c_n
/// \throws as Recurrent::forward (the messages name LSTM::forward, GRU::forward, RNN::forward).
/// \sa recurrent_backward
template <typename S, template <typename> class CellType>
RecurrentOutput<S> recurrent_forward(const Recurrent<S, CellType>& layer, const Tensor<S>& input,
                                     const RecurrentState<S>& initial,
                                     const std::vector<Index>& lengths, RecurrentCache<S>* cache) {
  using Cell = CellType<S>;
  if (!cache) return layer.forward(input, initial, lengths);
  detail::check_recurrent_forward(layer, input, initial, lengths);
  const RecurrentOptions& o = layer.options;
  const bool bf = o.batch_first;
  const Index N = o.hidden_size, D = layer.directions(), G = Cell::gate_count;
  const Index layers = o.num_layers, slots = layers * D;
  const Index T = bf ? input.dim(1) : input.dim(0), B = bf ? input.dim(0) : input.dim(1);
  const Index cN = Cell::has_cell_state ? N : 0;
  RecurrentCache<S>& c = *cache;
  c.input_shape = input.shape();
  c.lengths = lengths;
  c.inputs.assign(static_cast<std::size_t>(layers), Matrix<S>());
  c.gates.assign(static_cast<std::size_t>(slots), Matrix<S>(T * B, G * N));
  c.h_prev.assign(static_cast<std::size_t>(slots), Matrix<S>(T * B, N));
  c.c_prev.assign(static_cast<std::size_t>(slots), Matrix<S>(T * B, cN));
  c.aux.assign(static_cast<std::size_t>(slots),
               Matrix<S>(T * B, std::is_same_v<Cell, RNNCell<S>> ? 0 : N));
  c.inputs[0] = input.as_matrix();  // [T * B, in]
  for (Index k = 1; k < layers; ++k) c.inputs[static_cast<std::size_t>(k)].resize(T * B, D * N);

  RecurrentOutput<S> result;
  result.output = Tensor<S>(bf ? Shape{B, T, D * N} : Shape{T, B, D * N});
  result.h_n = Tensor<S>({slots, B, N});
  if (Cell::has_cell_state) result.c_n = Tensor<S>({slots, B, N});
  Matrix<S> xi(T * B, G * N);                               // [T * B, G * N] input projection
  Matrix<S> h(B, N), h_new(B, N), cs(B, cN), c_new(B, cN);  // [B, N]
  for (Index k = 0; k < layers; ++k) {
    const Matrix<S>& x = c.inputs[static_cast<std::size_t>(k)];  // [T * B, in_k]
    S* out_data =
        k + 1 == layers ? result.output.data() : c.inputs[static_cast<std::size_t>(k + 1)].data();
    for (Index d = 0; d < D; ++d) {
      const Index slot = k * D + d;
      const auto us = static_cast<std::size_t>(slot);
      const Cell& cell = layer.cells[us];
      xi.noalias() = x * cell.weight_ih.transpose();  // all T steps in one product
      if (cell.has_bias()) xi.rowwise() += cell.bias_ih.transpose();
      if (initial.h.size()) {
        h = initial.h.matrix(slot);
      } else {
        h.setZero();
      }
      if (Cell::has_cell_state) {
        if (initial.c.size()) {
          cs = initial.c.matrix(slot);
        } else {
          cs.setZero();
        }
      }
      for (Index s = 0; s < T; ++s) {
        const Index t = d == 0 ? s : T - 1 - s;  // the reverse direction runs T-1 .. 0
        const auto xi_t = detail::step_rows<S>(xi.data(), t, T, B, G * N, G * N, bf);
        auto g_t = detail::step_rows<S>(c.gates[us].data(), t, T, B, G * N, G * N, bf);
        detail::step_rows<S>(c.h_prev[us].data(), t, T, B, N, N, bf) = h;
        if (Cell::has_cell_state) detail::step_rows<S>(c.c_prev[us].data(), t, T, B, N, N, bf) = cs;
        cell.step_projected(xi_t, h, cs, g_t, h_new, c_new);
        if constexpr (std::is_same_v<Cell, LSTMCell<S>>) {
          detail::step_rows<S>(c.aux[us].data(), t, T, B, N, N, bf) = c_new.array().tanh().matrix();
        } else if constexpr (std::is_same_v<Cell, RNNCell<S>>) {
          g_t = h_new;  // the backward needs h' (the kernel left the pre-activation)
        }
        auto out_t = detail::step_rows<S>(out_data + d * N, t, T, B, N, D * N, bf);
        for (Index b = 0; b < B; ++b) {
          if (lengths.empty() || t < lengths[static_cast<std::size_t>(b)]) {
            h.row(b) = h_new.row(b);
            if (Cell::has_cell_state) cs.row(b) = c_new.row(b);
            out_t.row(b) = h_new.row(b);
          } else {  // padded step: state unchanged, output 0 (pad_packed_sequence)
            out_t.row(b).setZero();
          }
        }
      }
      if constexpr (std::is_same_v<Cell, GRUCell<S>>) {
        if (cell.linear_before_reset) {
          // hn = h W_hn^T + b_hn of every step, which the kernel overwrote with n: one product.
          c.aux[us].noalias() = c.h_prev[us] * cell.weight_hh.bottomRows(N).transpose();
          if (cell.has_bias()) c.aux[us].rowwise() += cell.bias_hh.tail(N).transpose();
        } else {
          // r * h of every step, the input of the n rows of W_hh (the kernel overwrote it).
          c.aux[us].array() = c.gates[us].leftCols(N).array() * c.h_prev[us].array();
        }
      }
      result.h_n.matrix(slot) = h;
      if (Cell::has_cell_state) result.c_n.matrix(slot) = cs;
    }
  }
  return result;
}

/// Backpropagation through time of recurrent_forward: layers top to bottom, each direction
/// from its last step back to its first, padded steps passing the state gradient through.
///
/// Per step one [B, G*N] x [G*N, N] product gives dL/dh of the previous step; dW_ih, dW_hh,
/// the biases and the layer's input gradient are one product each per layer and direction
/// after the time loop, over all steps at once.
/// \param layer the stack (unchanged since the forward) \param cache the forward's
/// \param d_output [output's shape] dL/d output; empty = zero
/// \param d_h_n, d_c_n [num_layers * D, B, N] dL/dh_n, dL/dc_n (LSTM); empty = zero
/// \param grad parameter gradients, accumulated (+=); empty members are zeroed first
/// \returns d_input [input's shape], d_h0, d_c0 [num_layers * D, B, N] (assigned)
/// \throws value_error on an empty or foreign cache, or a d_c_n for RNN/GRU; shape_error
///   when d_output, d_h_n or d_c_n has the wrong shape, or a grad member does not match.
/// \note Werbos 1990 (BPTT); the cells' equations as in cell_backward.
template <typename S, template <typename> class CellType>
RecurrentInputGrads<S> recurrent_backward(const Recurrent<S, CellType>& layer,
                                          const RecurrentCache<S>& cache, const Tensor<S>& d_output,
                                          const Tensor<S>& d_h_n, const Tensor<S>& d_c_n,
                                          RecurrentGrad<S>& grad) {
  using Cell = CellType<S>;
  constexpr bool is_lstm = std::is_same_v<Cell, LSTMCell<S>>;
  constexpr bool is_gru = std::is_same_v<Cell, GRUCell<S>>;
  const std::string who = "recurrent_backward";
  const RecurrentOptions& o = layer.options;
  const bool bf = o.batch_first;
  const Index N = o.hidden_size, D = layer.directions(), G = Cell::gate_count;
  const Index layers = o.num_layers, slots = layers * D;
  if (cache.input_shape.size() != 3 || static_cast<Index>(cache.inputs.size()) != layers ||
      static_cast<Index>(cache.gates.size()) != slots || cache.input_shape[2] != o.input_size ||
      cache.gates[0].cols() != G * N || cache.h_prev.size() != cache.gates.size() ||
      cache.h_prev[0].cols() != N) {
    throw value_error(who + ": cache is " + (cache.input_shape.empty() ? "empty" : "foreign") +
                      ", expected one filled by recurrent_forward with this layer");
  }
  const Index T = bf ? cache.input_shape[1] : cache.input_shape[0];
  const Index B = bf ? cache.input_shape[0] : cache.input_shape[1];
  const Shape out_shape = bf ? Shape{B, T, D * N} : Shape{T, B, D * N};
  if (d_output.size() != 0 && d_output.shape() != out_shape) {
    throw shape_error(who + ": d_output is " + detail::shape_string(d_output.shape()) +
                      ", expected " + detail::shape_string(out_shape) + " (the forward's output)");
  }
  const Shape state_shape{slots, B, N};
  detail::check_state_grad(d_h_n, state_shape, who, "d_h_n");
  if (is_lstm) {
    detail::check_state_grad(d_c_n, state_shape, who, "d_c_n");
  } else if (d_c_n.size() != 0) {
    throw value_error(who + ": d_c_n is " + detail::shape_string(d_c_n.shape()) +
                      ", expected empty (" + layer.name() + " has no cell state)");
  }
  if (grad.cells.empty()) grad.cells.resize(static_cast<std::size_t>(slots));
  if (static_cast<Index>(grad.cells.size()) != slots) {
    throw shape_error(who + ": grad.cells has " + std::to_string(grad.cells.size()) +
                      " entries, expected " + std::to_string(slots) + " (num_layers * directions)");
  }
  for (Index s = 0; s < slots; ++s) {
    detail::prepare_cell_grad(layer.cells[static_cast<std::size_t>(s)],
                              grad.cells[static_cast<std::size_t>(s)], who);
  }

  RecurrentInputGrads<S> result;
  result.d_h0 = Tensor<S>(state_shape);
  if (is_lstm) result.d_c0 = Tensor<S>(state_shape);
  // dL/d(output of the layer being differentiated), [T * B, D * N]: top layer first.
  Matrix<S> d_above =
      d_output.size() ? Matrix<S>(d_output.as_matrix()) : Matrix<S>(Matrix<S>::Zero(T * B, D * N));
  Matrix<S> d_below;                                                          // [T * B, in_k]
  Matrix<S> dgx(T * B, G * N), dgh(is_gru ? T * B : 0, G * N);                // [T * B, G * N]
  Matrix<S> dh(B, N), dh_tot(B, N), dh_new(B, N), direct(B, is_gru ? N : 0);  // [B, N]
  const Index cN = is_lstm ? N : 0;
  Matrix<S> dc(B, cN), dc_new(B, cN);  // [B, N] (LSTM) or [B, 0]
  const auto valid = [&](Index t, Index b) {
    return cache.lengths.empty() || t < cache.lengths[static_cast<std::size_t>(b)];
  };
  for (Index k = layers - 1; k >= 0; --k) {
    const Matrix<S>& x = cache.inputs[static_cast<std::size_t>(k)];  // [T * B, in_k]
    d_below.setZero(T * B, x.cols());
    for (Index d = 0; d < D; ++d) {
      const Index slot = k * D + d;
      const auto us = static_cast<std::size_t>(slot);
      const Cell& cell = layer.cells[us];
      CellGrad<S>& g = grad.cells[us];
      // GRU with linear_before_reset false: r, z and n pre-activations take one gradient for
      // their x and h halves (dgx), and the n rows of W_hh multiply r * h instead of h.
      bool reset_before = false;
      if constexpr (is_gru) reset_before = !cell.linear_before_reset;
      // gradient of the hidden half h W_hh^T + b_hh
      Matrix<S>& dg_h = is_gru && !reset_before ? dgh : dgx;
      if (d_h_n.size()) {
        dh = d_h_n.matrix(slot);
      } else {
        dh.setZero();
      }
      if (is_lstm) {
        if (d_c_n.size()) {
          dc = d_c_n.matrix(slot);
        } else {
          dc.setZero();
        }
      }
      for (Index s = T - 1; s >= 0; --s) {  // the forward's steps, last first
        const Index t = d == 0 ? s : T - 1 - s;
        const auto rows = [&](const Matrix<S>& m, Index cols) {  // step t's rows, read-only
          return detail::const_step_rows<S>(m.data(), t, T, B, cols, m.cols(), bf);
        };
        // h' feeds the next step (dh) and this step's output columns.
        dh_tot = dh + detail::step_rows<S>(d_above.data() + d * N, t, T, B, N, D * N, bf);
        auto dgx_t = detail::step_rows<S>(dgx.data(), t, T, B, G * N, G * N, bf);
        if constexpr (is_lstm) {
          detail::lstm_step_backward<S>(rows(cache.gates[us], G * N), rows(cache.c_prev[us], N),
                                        rows(cache.aux[us], N), dh_tot, dc, dgx_t, dc_new);
        } else if constexpr (is_gru) {
          if (reset_before) {
            detail::gru_reset_before_step_backward<S>(rows(cache.gates[us], G * N),
                                                      rows(cache.h_prev[us], N), dh_tot,
                                                      cell.weight_hh.bottomRows(N), dgx_t, direct);
          } else {
            detail::gru_step_backward<S>(
                rows(cache.gates[us], G * N), rows(cache.aux[us], N), rows(cache.h_prev[us], N),
                dh_tot, dgx_t, detail::step_rows<S>(dgh.data(), t, T, B, G * N, G * N, bf), direct);
          }
        } else {
          detail::rnn_step_backward<S>(rows(cache.gates[us], N), cell.nonlinearity, dh_tot, dgx_t);
        }
        auto dgh_t = detail::step_rows<S>(dg_h.data(), t, T, B, G * N, G * N, bf);
        for (Index b = 0; b < B; ++b) {  // padded steps: no gradient reaches the gates
          if (!valid(t, b)) {
            dgx_t.row(b).setZero();
            if (is_gru) dgh_t.row(b).setZero();
          }
        }
        if (reset_before) {  // [B, N]: through h W_hr^T, h W_hz^T; direct holds the rest
          dh_new.noalias() = dgh_t.leftCols(2 * N) * cell.weight_hh.topRows(2 * N);
        } else {
          dh_new.noalias() = dgh_t * cell.weight_hh;  // [B, N]: through h W_hh^T
        }
        if constexpr (is_gru) dh_new += direct;  // h' = n + z (h - n) (and r * h)
        for (Index b = 0; b < B; ++b) {
          if (valid(t, b)) {  // else: the state passed through unchanged, so does dh (dc)
            dh.row(b) = dh_new.row(b);
            if (is_lstm) dc.row(b) = dc_new.row(b);
          }
        }
      }
      result.d_h0.matrix(slot) = dh;
      if (is_lstm) result.d_c0.matrix(slot) = dc;
      // Parameter and input gradients of all steps, one product each.
      g.weight_ih.noalias() += dgx.transpose() * x;  // [G*N, in_k]
      if (reset_before) {                            // the n rows read r * h (cache.aux)
        g.weight_hh.topRows(2 * N).noalias() += dg_h.leftCols(2 * N).transpose() * cache.h_prev[us];
        g.weight_hh.bottomRows(N).noalias() += dg_h.rightCols(N).transpose() * cache.aux[us];
      } else {
        g.weight_hh.noalias() += dg_h.transpose() * cache.h_prev[us];  // [G*N, N]
      }
      if (cell.has_bias()) {
        g.bias_ih += dgx.colwise().sum().transpose();
        g.bias_hh += dg_h.colwise().sum().transpose();
      }
      d_below.noalias() += dgx * cell.weight_ih;  // [T * B, in_k]
    }
    d_above.swap(d_below);
  }
  result.d_input = Tensor<S>(cache.input_shape);
  result.d_input.as_matrix() = d_above;
  return result;
}

}  // namespace attend
