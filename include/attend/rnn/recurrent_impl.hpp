// SPDX-License-Identifier: MIT
// Member definitions of attend::Recurrent (RNN, LSTM, GRU stacks); include recurrent.hpp.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/rnn/cells.hpp"
#include "attend/rnn/recurrent.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace attend {

namespace detail {

/// A cell of a layer: the RNN cell also takes the nonlinearity, the GRU cell
/// linear_before_reset.
template <typename Cell>
Cell make_cell(Index input_size, const RecurrentOptions& o, Rng& rng) {
  if constexpr (std::is_same_v<Cell, RNNCell<typename Cell::scalar_type>>) {
    return Cell(input_size, o.hidden_size, o.bias, o.nonlinearity, rng);
  } else if constexpr (std::is_same_v<Cell, GRUCell<typename Cell::scalar_type>>) {
    Cell cell(input_size, o.hidden_size, o.bias, rng);
    cell.linear_before_reset = o.linear_before_reset;
    return cell;
  } else {
    return Cell(input_size, o.hidden_size, o.bias, rng);
  }
}

/// Throws value_error naming the first NaN/Inf the stack would read from `input` [T, B, W]
/// ([B, T, W] when batch_first): every step when `lengths` is empty, else steps
/// t < lengths[b] only (padded steps are never read and may hold anything).
template <typename S>
void check_finite_steps(const Tensor<S>& input, Index T, Index B, bool batch_first,
                        const std::vector<Index>& lengths, const std::string& who) {
  const auto rows = input.as_matrix();     // [T * B, W], row t * B + b or b * T + t
  const auto finite = [](const auto& x) {  // one vectorised pass, as check_finite
    return std::isfinite(static_cast<double>((x.array() - x.array()).sum()));
  };
  if (lengths.empty() && finite(rows)) return;
  for (Index b = 0; b < B; ++b) {
    const Index len = lengths.empty() ? T : lengths[static_cast<std::size_t>(b)];
    for (Index t = 0; t < len; ++t) {
      const auto row = rows.row(batch_first ? b * T + t : t * B + b);
      if (finite(row)) continue;
      for (Index j = 0; j < row.size(); ++j) {
        if (std::isfinite(row(j))) continue;
        throw value_error(who + ": input has a non-finite value (" +
                          std::to_string(static_cast<double>(row(j))) + ") at " +
                          shape_string(batch_first ? Shape{b, t, j} : Shape{t, b, j}));
      }
    }
  }
}

/// `cols` columns of the B rows of step t in a buffer of `[T * B, pitch]` rows stored
/// time-major (row t * B + b) or batch-first (row b * T + t), starting at `data` (a column
/// offset is added to `data` by the caller): a strided [B, cols] view, no copy.
template <typename S>
Eigen::Map<Matrix<S>, 0, Eigen::OuterStride<>> step_rows(S* data, Index t, Index T, Index B,
                                                         Index cols, Index pitch,
                                                         bool batch_first) {
  const Index first = batch_first ? t : t * B;  // row of (t, b = 0)
  const Index stride = batch_first ? T : 1;     // rows between (t, b) and (t, b + 1)
  return {data + first * pitch, B, cols, Eigen::OuterStride<>(stride * pitch)};
}

}  // namespace detail

template <typename Scalar, template <typename> class CellType>
Recurrent<Scalar, CellType>::Recurrent(const RecurrentOptions& opts, std::uint64_t seed)
    : options(opts) {
  if (options.input_size <= 0 || options.hidden_size <= 0 || options.num_layers <= 0) {
    throw value_error(std::string(name()) + ": input_size is " +
                      std::to_string(options.input_size) + ", hidden_size is " +
                      std::to_string(options.hidden_size) + " and num_layers is " +
                      std::to_string(options.num_layers) + ", expected all positive");
  }
  const Index N = options.hidden_size, D = directions();
  Rng rng(seed);
  cells.reserve(static_cast<std::size_t>(options.num_layers * D));
  for (Index k = 0; k < options.num_layers; ++k) {
    const Index in = k == 0 ? options.input_size : D * N;
    for (Index d = 0; d < D; ++d) {
      cells.push_back(detail::make_cell<Cell>(in, options, rng));
    }
  }
}

template <typename Scalar, template <typename> class CellType>
const char* Recurrent<Scalar, CellType>::name() noexcept {
  if constexpr (std::is_same_v<Cell, LSTMCell<Scalar>>) {
    return "LSTM";
  } else if constexpr (std::is_same_v<Cell, GRUCell<Scalar>>) {
    return "GRU";
  } else {
    return "RNN";
  }
}

template <typename Scalar, template <typename> class CellType>
void Recurrent<Scalar, CellType>::load_state_dict(const SafeTensors& st,
                                                  const std::string& prefix) {
  std::vector<Cell> loaded = cells;  // all or nothing
  const Index D = directions();
  for (Index k = 0; k < options.num_layers; ++k) {
    for (Index d = 0; d < D; ++d) {
      const std::string suffix = "_l" + std::to_string(k) + (d == 1 ? "_reverse" : "");
      detail::load_cell(loaded[static_cast<std::size_t>(k * D + d)], st, prefix, suffix);
    }
  }
  cells = std::move(loaded);
}

template <typename Scalar, template <typename> class CellType>
RecurrentState<Scalar> Recurrent<Scalar, CellType>::zero_state(Index batch) const {
  const Shape s{options.num_layers * directions(), batch, options.hidden_size};
  RecurrentState<Scalar> state;
  state.h = Tensor<Scalar>(s);
  if (Cell::has_cell_state) state.c = Tensor<Scalar>(s);
  return state;
}

template <typename Scalar, template <typename> class CellType>
void Recurrent<Scalar, CellType>::check_state(const RecurrentState<Scalar>& s, Index B,
                                              const std::string& who, const char* h_name,
                                              const char* c_name) const {
  const Shape want{options.num_layers * directions(), B, options.hidden_size};
  const std::string expected =
      ", expected " + detail::shape_string(want) + " (num_layers * directions, B, hidden_size)";
  if (s.h.size() != 0 && s.h.shape() != want) {
    throw shape_error(who + ": " + h_name + " is " + detail::shape_string(s.h.shape()) + expected);
  }
  if (Cell::has_cell_state) {
    if (s.c.size() != 0 && s.c.shape() != want) {
      throw shape_error(who + ": " + c_name + " is " + detail::shape_string(s.c.shape()) +
                        expected);
    }
  } else if (s.c.size() != 0) {
    throw value_error(who + ": " + c_name + " is " + detail::shape_string(s.c.shape()) +
                      ", expected empty (" + name() + " has no cell state)");
  }
  if (s.h.size() != 0) detail::check_finite(s.h, who, h_name);
  if (s.c.size() != 0) detail::check_finite(s.c, who, c_name);
}

template <typename Scalar, template <typename> class CellType>
RecurrentOutput<Scalar> Recurrent<Scalar, CellType>::forward(
    const Tensor<Scalar>& input, const RecurrentState<Scalar>& initial,
    const std::vector<Index>& lengths) const {
  const std::string who = std::string(name()) + "::forward";
  const bool bf = options.batch_first;
  const Index in = options.input_size, N = options.hidden_size, D = directions();
  const Index G = Cell::gate_count, layers = options.num_layers;
  if (input.rank() != 3 || input.dim(-1) != in || input.dim(0) == 0 || input.dim(1) == 0) {
    throw shape_error(who + ": input is " + detail::shape_string(input.shape()) + ", expected " +
                      (bf ? "[B, T, " : "[T, B, ") + std::to_string(in) +
                      "] (input_size) with B, T >= 1");
  }
  const Index T = bf ? input.dim(1) : input.dim(0);
  const Index B = bf ? input.dim(0) : input.dim(1);
  check_state(initial, B, who, "h_0", "c_0");
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
  detail::check_finite_steps(input, T, B, bf, lengths, who);

  RecurrentOutput<Scalar> result;
  result.output = Tensor<Scalar>(bf ? Shape{B, T, D * N} : Shape{T, B, D * N});
  result.h_n = Tensor<Scalar>({layers * D, B, N});
  if (Cell::has_cell_state) result.c_n = Tensor<Scalar>({layers * D, B, N});

  // Workspaces, sized once: nothing below allocates inside the time loop.
  const Index cN = Cell::has_cell_state ? N : 0;
  Matrix<Scalar> below, current;  // [T * B, D * N] outputs of layers k - 1 and k
  if (layers > 1) current.resize(T * B, D * N);
  Matrix<Scalar> xi(T * B, G * N);        // [T * B, G * N] input projection, all steps
  Matrix<Scalar> gates(B, G * N);         // [B, G * N]
  Matrix<Scalar> h(B, N), h_new(B, N);    // [B, N]
  Matrix<Scalar> c(B, cN), c_new(B, cN);  // [B, N] (LSTM) or [B, 0]

  for (Index k = 0; k < layers; ++k) {
    // Rows of input, below, current and output share one layout (time-major or batch-first).
    const Scalar* x_data = k == 0 ? input.data() : below.data();
    const Index x_width = k == 0 ? in : D * N;
    Scalar* out_data = k + 1 == layers ? result.output.data() : current.data();
    for (Index d = 0; d < D; ++d) {
      const Cell& cell = cells[static_cast<std::size_t>(k * D + d)];
      const Index slot = k * D + d;  // index into h_0, c_0, h_n, c_n
      // The input projection of all T steps in one product (STYLE 6).
      xi.noalias() = ConstMatrixMap<Scalar>(x_data, T * B, x_width) * cell.weight_ih.transpose();
      if (cell.has_bias()) xi.rowwise() += cell.bias_ih.transpose();
      if (initial.h.size() == 0) {
        h.setZero();
      } else {
        h = initial.h.matrix(slot);
      }
      if (Cell::has_cell_state) {
        if (initial.c.size() == 0) {
          c.setZero();
        } else {
          c = initial.c.matrix(slot);
        }
      }
      for (Index s = 0; s < T; ++s) {
        const Index t = d == 0 ? s : T - 1 - s;  // the reverse direction runs T-1 .. 0
        const auto xi_t = detail::step_rows<Scalar>(xi.data(), t, T, B, G * N, G * N, bf);
        cell.step_projected(xi_t, h, c, gates, h_new, c_new);
        // [B, N]: this direction's columns of step t's output rows.
        auto out_t = detail::step_rows<Scalar>(out_data + d * N, t, T, B, N, D * N, bf);
        for (Index b = 0; b < B; ++b) {
          if (lengths.empty() || t < lengths[static_cast<std::size_t>(b)]) {
            h.row(b) = h_new.row(b);
            if (Cell::has_cell_state) c.row(b) = c_new.row(b);
            out_t.row(b) = h_new.row(b);
          } else {  // padded step: state unchanged, output 0 (pad_packed_sequence)
            out_t.row(b).setZero();
          }
        }
      }
      result.h_n.matrix(slot) = h;
      if (Cell::has_cell_state) result.c_n.matrix(slot) = c;
    }
    if (k + 1 < layers) below.swap(current);  // pointer swap, then current is reused
    if (k + 2 < layers && current.rows() != T * B) current.resize(T * B, D * N);
  }
  return result;
}

template <typename Scalar, template <typename> class CellType>
void Recurrent<Scalar, CellType>::step(const MatrixCRef<Scalar>& x, RecurrentState<Scalar>& state,
                                       Matrix<Scalar>& output,
                                       RecurrentWorkspace<Scalar>& ws) const {
  const std::string who = std::string(name()) + "::step";
  if (options.bidirectional) {
    throw value_error(who +
                      ": the stack is bidirectional, expected bidirectional false (the "
                      "reverse direction needs the whole sequence)");
  }
  const Index in = options.input_size, N = options.hidden_size, G = Cell::gate_count;
  if (x.cols() != in || x.rows() == 0) {
    throw shape_error(who + ": x is " + detail::matrix_shape(x) + ", expected [B, " +
                      std::to_string(in) + "] (input_size) with B >= 1");
  }
  const Index B = x.rows();
  check_state(state, B, who, "state.h", "state.c");
  detail::check_finite(x, who, "x");
  if (state.h.size() == 0) state.h = zero_state(B).h;
  if (Cell::has_cell_state && state.c.size() == 0) state.c = zero_state(B).c;
  ws.xi.resize(B, G * N);  // no-ops after the first frame of the same batch size
  ws.gates.resize(B, G * N);
  Matrix<Scalar> no_cell;  // stands in for c in RNN/GRU cells (never read, never allocated)
  for (Index k = 0; k < options.num_layers; ++k) {
    const Cell& cell = cells[static_cast<std::size_t>(k)];
    if (k == 0) {
      ws.xi.noalias() = x * cell.weight_ih.transpose();
    } else {
      ws.xi.noalias() = state.h.matrix(k - 1) * cell.weight_ih.transpose();
    }
    if (cell.has_bias()) ws.xi.rowwise() += cell.bias_ih.transpose();
    MatrixMap<Scalar> h = state.h.matrix(k);  // [B, N], updated in place
    if constexpr (Cell::has_cell_state) {
      MatrixMap<Scalar> c = state.c.matrix(k);
      cell.step_projected(ws.xi, h, c, ws.gates, h, c);
    } else if constexpr (std::is_same_v<Cell, GRUCell<Scalar>>) {
      if (cell.linear_before_reset) {
        cell.step_projected(ws.xi, h, no_cell, ws.gates, h, no_cell);
      } else {  // h is read after the n product: a distinct output, then copied back
        ws.h_new.resize(B, N);
        cell.step_projected(ws.xi, h, no_cell, ws.gates, ws.h_new, no_cell);
        h = ws.h_new;
      }
    } else {
      cell.step_projected(ws.xi, h, no_cell, ws.gates, h, no_cell);
    }
  }
  output = state.h.matrix(options.num_layers - 1);
}

}  // namespace attend
