// SPDX-License-Identifier: MIT
// Recurrent cells with PyTorch parity: RNNCell (tanh, relu), LSTMCell and GRUCell.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/random.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/state_dict.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

namespace attend {

/// The activation of an Elman RNN, as `nonlinearity` of torch.nn.RNN.
enum class Nonlinearity { tanh, relu };

/// The state a cell carries from one step to the next: `h` [B, N], and `c` [B, N] for the
/// LSTM (empty for RNN and GRU cells).
template <typename Scalar>
struct CellState {
  Matrix<Scalar> h;  // [B, N]
  Matrix<Scalar> c;  // [B, N] (LSTM) or empty
};

namespace detail {

/// In place `m = 1 / (1 + exp(-m))`; exp overflows to inf for m < -88 (float), giving 0.
template <typename S>
void sigmoid_inplace(MatrixRef<S> m) {
  m.array() = (S(1) + (-m.array()).exp()).inverse();
}

/// Sets the four parameters of a cell with `gates` gate blocks to U(-1/sqrt(N), 1/sqrt(N)),
/// in PyTorch's order (weight_ih, weight_hh, bias_ih, bias_hh), as torch.nn.RNNBase does.
template <typename Cell>
void init_cell(Cell& cell, Index gates, Index input_size, Index hidden_size, bool bias, Rng& rng,
               const char* who) {
  if (input_size <= 0 || hidden_size <= 0) {
    throw value_error(std::string(who) + ": input_size is " + std::to_string(input_size) +
                      " and hidden_size is " + std::to_string(hidden_size) +
                      ", expected both positive");
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden_size));
  cell.weight_ih.resize(gates * hidden_size, input_size);
  cell.weight_hh.resize(gates * hidden_size, hidden_size);
  fill_uniform(cell.weight_ih, bound, rng);
  fill_uniform(cell.weight_hh, bound, rng);
  cell.bias_ih.resize(bias ? gates * hidden_size : 0);
  cell.bias_hh.resize(bias ? gates * hidden_size : 0);
  fill_uniform(cell.bias_ih, bound, rng);
  fill_uniform(cell.bias_hh, bound, rng);
}

/// Loads `prefix + "weight_ih" + suffix` etc. (suffix "_l1_reverse" for layers) into a copy
/// of `cell` and assigns it only when every tensor loaded: all or nothing.
template <typename Cell>
void load_cell(Cell& cell, const SafeTensors& st, const std::string& prefix,
               const std::string& suffix) {
  const Index GN = cell.weight_ih.rows(), in = cell.weight_ih.cols(), N = cell.weight_hh.cols();
  Cell m = cell;
  using S = typename Cell::scalar_type;
  m.weight_ih = load_matrix<S>(st, prefix + "weight_ih" + suffix, GN, in);
  m.weight_hh = load_matrix<S>(st, prefix + "weight_hh" + suffix, GN, N);
  if (cell.bias_ih.size() != 0) {
    m.bias_ih = load_vector<S>(st, prefix + "bias_ih" + suffix, GN);
    m.bias_hh = load_vector<S>(st, prefix + "bias_hh" + suffix, GN);
  }
  cell = std::move(m);
}

/// Checks a cell's step arguments at the door (shapes, then NaN/Inf); `c` only when `with_c`.
template <typename S>
void check_cell_args(const MatrixCRef<S>& input, const Matrix<S>& h, const Matrix<S>& c,
                     Index input_size, Index N, bool with_c, const std::string& who) {
  if (input.cols() != input_size || input.rows() == 0) {
    throw shape_error(who + ": input is " + matrix_shape(input) + ", expected [B, " +
                      std::to_string(input_size) + "] (input_size)");
  }
  const std::string want = shape_string({input.rows(), N});
  if (h.rows() != input.rows() || h.cols() != N) {
    throw shape_error(who + ": hx is " + matrix_shape(h) + ", expected " + want);
  }
  if (with_c && (c.rows() != input.rows() || c.cols() != N)) {
    throw shape_error(who + ": cx is " + matrix_shape(c) + ", expected " + want);
  }
  check_finite(input, who, "input");
  check_finite(h, who, "hx");
  if (with_c) check_finite(c, who, "cx");
}

/// `gates = h_prev W_hh^T + b_hh`, the recurrent half of every cell's pre-activations.
template <typename Cell, typename S>
void recurrent_projection(const Cell& cell, const MatrixCRef<S>& h_prev, MatrixRef<S> gates) {
  gates.noalias() = h_prev * cell.weight_hh.transpose();  // [B, G*N]
  if (cell.bias_hh.size() != 0) gates.rowwise() += cell.bias_hh.transpose();
}

/// The input half of the pre-activations for a whole batch of rows: `x W_ih^T + b_ih`.
template <typename Cell, typename S>
Matrix<S> input_projection(const Cell& cell, const MatrixCRef<S>& x) {
  Matrix<S> xi(x.rows(), cell.weight_ih.rows());  // [R, G*N]
  xi.noalias() = x * cell.weight_ih.transpose();
  if (cell.bias_ih.size() != 0) xi.rowwise() += cell.bias_ih.transpose();
  return xi;
}

}  // namespace detail

/// An Elman RNN cell: `h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)`, act = tanh or relu.
///
/// Parameters keep torch.nn.RNNCell's names and layouts: `weight_ih` [N, in], `weight_hh`
/// [N, N], `bias_ih` [N], `bias_hh` [N] (empty when bias is false).
/// \note torch.nn.RNNCell; Elman 1990.
/// \sa LSTMCell, GRUCell, RNN
template <typename Scalar>
class RNNCell {
  static_assert(is_supported_scalar_v<Scalar>, "attend::RNNCell: Scalar must be float or double");

 public:
  using scalar_type = Scalar;
  static constexpr Index gate_count = 1;
  static constexpr bool has_cell_state = false;

  Matrix<Scalar> weight_ih;  // [N, in]
  Matrix<Scalar> weight_hh;  // [N, N]
  Vector<Scalar> bias_ih;    // [N] or empty
  Vector<Scalar> bias_hh;    // [N] or empty
  Nonlinearity nonlinearity = Nonlinearity::tanh;

  /// Parameters U(-1/sqrt(N), 1/sqrt(N)) from `seed`, as PyTorch initialises them.
  /// \throws value_error when input_size or hidden_size is not positive.
  RNNCell(Index input_size, Index hidden_size, bool bias = true,
          Nonlinearity act = Nonlinearity::tanh, std::uint64_t seed = 0)
      : nonlinearity(act) {
    Rng rng(seed);
    detail::init_cell(*this, gate_count, input_size, hidden_size, bias, rng, "RNNCell");
  }
  /// As above, drawing from a shared generator (layers initialise all cells from one).
  RNNCell(Index input_size, Index hidden_size, bool bias, Nonlinearity act, Rng& rng)
      : nonlinearity(act) {
    detail::init_cell(*this, gate_count, input_size, hidden_size, bias, rng, "RNNCell");
  }

  Index input_size() const noexcept { return weight_ih.cols(); }
  Index hidden_size() const noexcept { return weight_hh.cols(); }
  bool has_bias() const noexcept { return bias_ih.size() != 0; }

  /// Loads `prefix + "weight_ih"`, `"weight_hh"`, `"bias_ih"`, `"bias_hh"`.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    detail::load_cell(*this, st, prefix, "");
  }

  /// One step. \param input [B, in] \param state h [B, N] \returns h' [B, N] (c stays empty)
  /// \throws shape_error when input or hx has the wrong shape; value_error on NaN/Inf in them.
  CellState<Scalar> forward(const MatrixCRef<Scalar>& input, const CellState<Scalar>& state) const {
    detail::check_cell_args<Scalar>(input, state.h, state.c, input_size(), hidden_size(), false,
                                    "RNNCell::forward");
    const Matrix<Scalar> xi = detail::input_projection<RNNCell, Scalar>(*this, input);
    Matrix<Scalar> gates(input.rows(), hidden_size());
    CellState<Scalar> out{Matrix<Scalar>(input.rows(), hidden_size()), Matrix<Scalar>()};
    step_projected(xi, state.h, state.c, gates, out.h, out.c);
    return out;
  }
  /// One step from a zero state. \param input [B, in] \returns h' [B, N]
  CellState<Scalar> forward(const MatrixCRef<Scalar>& input) const {
    return forward(input, {Matrix<Scalar>::Zero(input.rows(), hidden_size()), Matrix<Scalar>()});
  }

  /// The time-loop kernel: one step from the precomputed input projection. No checks, no
  /// allocation; `h_next` may alias `h_prev`. `c_prev`, `c_next` are unused.
  /// \param xi [B, N] `x W_ih^T + b_ih` \param h_prev [B, N] \param gates [B, N] workspace
  /// \param h_next [B, N] written
  void step_projected(const MatrixCRef<Scalar>& xi, const MatrixCRef<Scalar>& h_prev,
                      const MatrixCRef<Scalar>& /*c_prev*/, MatrixRef<Scalar> gates,
                      MatrixRef<Scalar> h_next, MatrixRef<Scalar> /*c_next*/) const {
    detail::recurrent_projection<RNNCell, Scalar>(*this, h_prev, gates);
    gates += xi;
    if (nonlinearity == Nonlinearity::tanh) {
      h_next.array() = gates.array().tanh();
    } else {
      h_next.array() = gates.array().max(Scalar(0));
    }
  }
};

/// A long short-term memory cell with PyTorch's gate order i, f, g, o:
///
///     [i; f; g; o] = x W_ih^T + b_ih + h W_hh^T + b_hh        (blocks of N columns)
///     i = sigmoid(i), f = sigmoid(f), g = tanh(g), o = sigmoid(o)
///     c' = f * c + i * g
///     h' = o * tanh(c')
///
/// Parameters keep torch.nn.LSTMCell's names and layouts: `weight_ih` [4N, in], `weight_hh`
/// [4N, N], `bias_ih` [4N], `bias_hh` [4N] (empty when bias is false), rows in gate order.
/// \note torch.nn.LSTMCell; Hochreiter & Schmidhuber 1997 with the forget gate of Gers et
///       al. 2000.
/// \sa RNNCell, GRUCell, LSTM
template <typename Scalar>
class LSTMCell {
  static_assert(is_supported_scalar_v<Scalar>, "attend::LSTMCell: Scalar must be float or double");

 public:
  using scalar_type = Scalar;
  static constexpr Index gate_count = 4;
  static constexpr bool has_cell_state = true;

  Matrix<Scalar> weight_ih;  // [4N, in]
  Matrix<Scalar> weight_hh;  // [4N, N]
  Vector<Scalar> bias_ih;    // [4N] or empty
  Vector<Scalar> bias_hh;    // [4N] or empty

  /// Parameters U(-1/sqrt(N), 1/sqrt(N)) from `seed`, as PyTorch initialises them.
  /// \throws value_error when input_size or hidden_size is not positive.
  LSTMCell(Index input_size, Index hidden_size, bool bias = true, std::uint64_t seed = 0) {
    Rng rng(seed);
    detail::init_cell(*this, gate_count, input_size, hidden_size, bias, rng, "LSTMCell");
  }
  /// As above, drawing from a shared generator.
  LSTMCell(Index input_size, Index hidden_size, bool bias, Rng& rng) {
    detail::init_cell(*this, gate_count, input_size, hidden_size, bias, rng, "LSTMCell");
  }

  Index input_size() const noexcept { return weight_ih.cols(); }
  Index hidden_size() const noexcept { return weight_hh.cols(); }
  bool has_bias() const noexcept { return bias_ih.size() != 0; }

  /// Loads `prefix + "weight_ih"`, `"weight_hh"`, `"bias_ih"`, `"bias_hh"`.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    detail::load_cell(*this, st, prefix, "");
  }

  /// One step. \param input [B, in] \param state h [B, N], c [B, N]
  /// \returns h' [B, N], c' [B, N]
  /// \throws shape_error when input, hx (state.h) or cx (state.c) has the wrong shape;
  ///   value_error on NaN/Inf in them.
  CellState<Scalar> forward(const MatrixCRef<Scalar>& input, const CellState<Scalar>& state) const {
    detail::check_cell_args<Scalar>(input, state.h, state.c, input_size(), hidden_size(), true,
                                    "LSTMCell::forward");
    const Index B = input.rows(), N = hidden_size();
    const Matrix<Scalar> xi = detail::input_projection<LSTMCell, Scalar>(*this, input);
    Matrix<Scalar> gates(B, 4 * N);
    CellState<Scalar> out{Matrix<Scalar>(B, N), Matrix<Scalar>(B, N)};
    step_projected(xi, state.h, state.c, gates, out.h, out.c);
    return out;
  }
  /// One step from zero states. \param input [B, in] \returns h' [B, N], c' [B, N]
  CellState<Scalar> forward(const MatrixCRef<Scalar>& input) const {
    const Index B = input.rows(), N = hidden_size();
    return forward(input, {Matrix<Scalar>::Zero(B, N), Matrix<Scalar>::Zero(B, N)});
  }

  /// The time-loop kernel: one step from the precomputed input projection. No checks, no
  /// allocation; `h_next` may alias `h_prev` and `c_next` may alias `c_prev`.
  /// \param xi [B, 4N] `x W_ih^T + b_ih` \param h_prev, c_prev [B, N]
  /// \param gates [B, 4N] workspace \param h_next, c_next [B, N] written
  void step_projected(const MatrixCRef<Scalar>& xi, const MatrixCRef<Scalar>& h_prev,
                      const MatrixCRef<Scalar>& c_prev, MatrixRef<Scalar> gates,
                      MatrixRef<Scalar> h_next, MatrixRef<Scalar> c_next) const {
    const Index N = hidden_size();
    detail::recurrent_projection<LSTMCell, Scalar>(*this, h_prev, gates);
    gates += xi;                                             // [B, 4N] pre-activations i, f, g, o
    detail::sigmoid_inplace<Scalar>(gates.leftCols(2 * N));  // i, f
    gates.middleCols(2 * N, N).array() = gates.middleCols(2 * N, N).array().tanh();  // g
    detail::sigmoid_inplace<Scalar>(gates.rightCols(N));                             // o
    c_next.array() = gates.middleCols(N, N).array() * c_prev.array() +
                     gates.leftCols(N).array() * gates.middleCols(2 * N, N).array();
    h_next.array() = gates.rightCols(N).array() * c_next.array().tanh();
  }
};

/// A gated recurrent unit with PyTorch's gate order r, z, n:
///
///     [xr; xz; xn] = x W_ih^T + b_ih,   [hr; hz; hn] = h W_hh^T + b_hh   (blocks of N)
///     r = sigmoid(xr + hr), z = sigmoid(xz + hz)
///     n = tanh(xn + r * hn)           (b_hn stays inside the product with r)
///     h' = (1 - z) * n + z * h
///
/// With `linear_before_reset` false (ONNX GRU's default, Keras `reset_after=False`) the
/// reset gate applies to h before the hidden product of the n gate instead:
///
///     n = tanh(xn + (r * h) W_hn^T + b_hn)
///
/// r and z are unchanged. The parameters are the same either way.
///
/// Parameters keep torch.nn.GRUCell's names and layouts: `weight_ih` [3N, in], `weight_hh`
/// [3N, N], `bias_ih` [3N], `bias_hh` [3N] (empty when bias is false), rows in gate order.
/// \note torch.nn.GRUCell; Cho et al. 2014 (PyTorch applies r after the hidden product; the
///       paper's form, r before it, is ONNX GRU with linear_before_reset = 0).
/// \sa RNNCell, LSTMCell, GRU
template <typename Scalar>
class GRUCell {
  static_assert(is_supported_scalar_v<Scalar>, "attend::GRUCell: Scalar must be float or double");

 public:
  using scalar_type = Scalar;
  static constexpr Index gate_count = 3;
  static constexpr bool has_cell_state = false;

  Matrix<Scalar> weight_ih;  // [3N, in]
  Matrix<Scalar> weight_hh;  // [3N, N]
  Vector<Scalar> bias_ih;    // [3N] or empty
  Vector<Scalar> bias_hh;    // [3N] or empty
  /// true (PyTorch's form, the default): n = tanh(xn + r * (h W_hn^T + b_hn)); false (ONNX
  /// GRU's default, Keras reset_after=False): n = tanh(xn + (r * h) W_hn^T + b_hn).
  bool linear_before_reset = true;

  /// Parameters U(-1/sqrt(N), 1/sqrt(N)) from `seed`, as PyTorch initialises them;
  /// linear_before_reset is true (set the member for the other form).
  /// \throws value_error when input_size or hidden_size is not positive.
  GRUCell(Index input_size, Index hidden_size, bool bias = true, std::uint64_t seed = 0) {
    Rng rng(seed);
    detail::init_cell(*this, gate_count, input_size, hidden_size, bias, rng, "GRUCell");
  }
  /// As above, drawing from a shared generator.
  GRUCell(Index input_size, Index hidden_size, bool bias, Rng& rng) {
    detail::init_cell(*this, gate_count, input_size, hidden_size, bias, rng, "GRUCell");
  }

  Index input_size() const noexcept { return weight_ih.cols(); }
  Index hidden_size() const noexcept { return weight_hh.cols(); }
  bool has_bias() const noexcept { return bias_ih.size() != 0; }

  /// Loads `prefix + "weight_ih"`, `"weight_hh"`, `"bias_ih"`, `"bias_hh"`.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    detail::load_cell(*this, st, prefix, "");
  }

  /// One step. \param input [B, in] \param state h [B, N] \returns h' [B, N]
  /// \throws shape_error when input or hx (state.h) has the wrong shape; value_error on
  ///   NaN/Inf in them.
  CellState<Scalar> forward(const MatrixCRef<Scalar>& input, const CellState<Scalar>& state) const {
    detail::check_cell_args<Scalar>(input, state.h, state.c, input_size(), hidden_size(), false,
                                    "GRUCell::forward");
    const Matrix<Scalar> xi = detail::input_projection<GRUCell, Scalar>(*this, input);
    Matrix<Scalar> gates(input.rows(), 3 * hidden_size());
    CellState<Scalar> out{Matrix<Scalar>(input.rows(), hidden_size()), Matrix<Scalar>()};
    step_projected(xi, state.h, state.c, gates, out.h, out.c);
    return out;
  }
  /// One step from a zero state. \param input [B, in] \returns h' [B, N]
  CellState<Scalar> forward(const MatrixCRef<Scalar>& input) const {
    return forward(input, {Matrix<Scalar>::Zero(input.rows(), hidden_size()), Matrix<Scalar>()});
  }

  /// The time-loop kernel: one step from the precomputed input projection. No checks, no
  /// allocation; `h_next` may alias `h_prev` (with linear_before_reset false that costs one
  /// [B, N] temporary: pass distinct buffers in a loop). `c_prev`, `c_next` are unused.
  /// \param xi [B, 3N] `x W_ih^T + b_ih` \param h_prev [B, N] \param gates [B, 3N]
  /// workspace, left holding the activated r, z, n \param h_next [B, N] written
  void step_projected(const MatrixCRef<Scalar>& xi, const MatrixCRef<Scalar>& h_prev,
                      const MatrixCRef<Scalar>& /*c_prev*/, MatrixRef<Scalar> gates,
                      MatrixRef<Scalar> h_next, MatrixRef<Scalar> /*c_next*/) const {
    const Index N = hidden_size();
    if (linear_before_reset) {
      detail::recurrent_projection<GRUCell, Scalar>(*this, h_prev, gates);  // [hr; hz; hn]
      gates.leftCols(2 * N) += xi.leftCols(2 * N);
      detail::sigmoid_inplace<Scalar>(gates.leftCols(2 * N));  // r, z
      gates.rightCols(N).array() =
          (xi.rightCols(N).array() + gates.leftCols(N).array() * gates.rightCols(N).array()).tanh();
    } else if (h_next.data() != h_prev.data()) {
      reset_before_gates(xi, h_prev, gates, h_next);  // h_next holds the n product meanwhile
    } else {
      Matrix<Scalar> hn(h_prev.rows(), N);  // [B, N]: h_next is h_prev, still to be read
      reset_before_gates(xi, h_prev, gates, hn);
    }
    // h' = (1 - z) * n + z * h = n + z * (h - n), element by element (h_next may be h_prev).
    h_next.array() = gates.rightCols(N).array() +
                     gates.middleCols(N, N).array() * (h_prev.array() - gates.rightCols(N).array());
  }

 private:
  /// The gates r, z, n for linear_before_reset false: one product for the r, z rows of W_hh,
  /// one for the n rows on r * h. `hn` [B, N] is scratch, distinct from h_prev and gates.
  void reset_before_gates(const MatrixCRef<Scalar>& xi, const MatrixCRef<Scalar>& h_prev,
                          MatrixRef<Scalar> gates, MatrixRef<Scalar> hn) const {
    const Index N = hidden_size();
    gates.leftCols(2 * N).noalias() = h_prev * weight_hh.topRows(2 * N).transpose();  // [B, 2N]
    if (has_bias()) gates.leftCols(2 * N).rowwise() += bias_hh.head(2 * N).transpose();
    gates.leftCols(2 * N) += xi.leftCols(2 * N);
    detail::sigmoid_inplace<Scalar>(gates.leftCols(2 * N));  // r, z
    // r * h in the n block, then (r * h) W_hn^T + b_hn in hn.
    gates.rightCols(N).array() = gates.leftCols(N).array() * h_prev.array();
    hn.noalias() = gates.rightCols(N) * weight_hh.bottomRows(N).transpose();
    if (has_bias()) hn.rowwise() += bias_hh.tail(N).transpose();
    gates.rightCols(N).array() = (xi.rightCols(N).array() + hn.array()).tanh();  // n
  }
};

}  // namespace attend
