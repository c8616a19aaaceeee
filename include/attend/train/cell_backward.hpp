// SPDX-License-Identifier: MIT
// Training of the recurrent cells (RNNCell, LSTMCell, GRUCell): one step forward with a
// cache, its backward, and named parameters.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"
#include "attend/rnn/cells.hpp"

#include <Eigen/Core>

#include <string>

namespace attend {

/// Parameter gradients of one cell, named as the cell's parameters (PyTorch's names).
/// Empty members are zero-initialised by the first backward, which then accumulates (+=).
template <typename Scalar>
struct CellGrad {
  Matrix<Scalar> weight_ih;  // [G*N, in]
  Matrix<Scalar> weight_hh;  // [G*N, N]
  Vector<Scalar> bias_ih;    // [G*N], stays empty for a cell without bias
  Vector<Scalar> bias_hh;    // [G*N], stays empty for a cell without bias
};

/// What cell_backward needs from one step of cell_forward (G = 4 LSTM, 3 GRU, 1 RNN).
template <typename Scalar>
struct CellCache {
  Matrix<Scalar> x;       // [B, in] the step's input
  Matrix<Scalar> h_prev;  // [B, N] the state entering the step
  Matrix<Scalar> c_prev;  // [B, N] LSTM cell state entering the step, else empty
  Matrix<Scalar> gates;   // [B, G*N] activated gates: LSTM i, f, g, o; GRU r, z, n; RNN h'
  Matrix<Scalar> aux;     // [B, N] LSTM tanh(c'); GRU hn = h W_hn^T + b_hn (r * h when
                          // linear_before_reset is false); RNN empty
};

namespace detail {

/// LSTM step backward, rows independent. With the forward (LSTMCell's class comment)
///     c' = f * c + i * g,   h' = o * tanh(c'),
/// `dh`, `dc` the total gradients reaching h' and c': writes `dpre` [B, 4N], the gradient
/// of the pre-activations (i, f, g, o), and `dc_prev` [B, N] = dL/dc. `dc_prev` may be `dc`.
template <typename S>
void lstm_step_backward(const MatrixCRef<S>& gates, const MatrixCRef<S>& c_prev,
                        const MatrixCRef<S>& tanh_c, const MatrixCRef<S>& dh,
                        const MatrixCRef<S>& dc, MatrixRef<S> dpre, MatrixRef<S> dc_prev) {
  const Index N = dh.cols();
  const auto i = gates.leftCols(N).array();  // views, no copies
  const auto f = gates.middleCols(N, N).array();
  const auto g = gates.middleCols(2 * N, N).array();
  const auto o = gates.rightCols(N).array();
  const auto tc = tanh_c.array();
  const auto dh_a = dh.array();
  // h' = o * tanh(c'): do = dh' tanh(c'); o = sigmoid(o_pre): sigmoid' = o (1 - o).
  dpre.rightCols(N).array() = dh_a * tc * o * (S(1) - o);
  // dL/dc' in total: the direct dc' plus the path through h' (tanh' = 1 - tanh^2).
  dc_prev.array() = dc.array() + dh_a * o * (S(1) - tc * tc);
  const auto dct = dc_prev.array();
  // c' = f * c + i * g
  dpre.leftCols(N).array() = dct * g * i * (S(1) - i);                    // di_pre
  dpre.middleCols(N, N).array() = dct * c_prev.array() * f * (S(1) - f);  // df_pre
  dpre.middleCols(2 * N, N).array() = dct * i * (S(1) - g * g);           // dg_pre (tanh)
  dc_prev.array() *= f;                                                   // dc = dc' f
}

/// GRU step backward, rows independent. With the forward (GRUCell's class comment)
///     n = tanh(xn + r * hn),   h' = n + z * (h - n),
/// writes `dgx` [B, 3N] (gradient of the input half x W_ih^T + b_ih), `dgh` [B, 3N] (of the
/// hidden half h W_hh^T + b_hh; differs from dgx in the n block by the factor r) and
/// `dh_direct` [B, N] = the part of dL/dh that bypasses W_hh (z * dh').
template <typename S>
void gru_step_backward(const MatrixCRef<S>& gates, const MatrixCRef<S>& hn,
                       const MatrixCRef<S>& h_prev, const MatrixCRef<S>& dh, MatrixRef<S> dgx,
                       MatrixRef<S> dgh, MatrixRef<S> dh_direct) {
  const Index N = dh.cols();
  const auto r = gates.leftCols(N).array();  // views, no copies
  const auto z = gates.middleCols(N, N).array();
  const auto n = gates.rightCols(N).array();
  const auto dh_a = dh.array();
  // h' = (1 - z) n + z h: dn = dh' (1 - z); n = tanh(.): dn_pre = dn (1 - n^2).
  dgx.rightCols(N).array() = dh_a * (S(1) - z) * (S(1) - n * n);
  const auto dn_pre = dgx.rightCols(N).array();
  dgh.rightCols(N).array() = dn_pre * r;                                        // d hn = dn_pre r
  dgx.leftCols(N).array() = dn_pre * hn.array() * r * (S(1) - r);               // dr_pre
  dgx.middleCols(N, N).array() = dh_a * (h_prev.array() - n) * z * (S(1) - z);  // dz_pre
  dgh.leftCols(2 * N) = dgx.leftCols(2 * N);  // r and z: x and h halves add before sigmoid
  dh_direct.array() = dh_a * z;
}

/// GRU step backward for linear_before_reset false, rows independent. With the forward
///     n = tanh(xn + (r * h) W_hn^T + b_hn),   h' = n + z * (h - n),
/// writes `dpre` [B, 3N], the gradient of the pre-activations of r, z and n (the x and h
/// halves share it: both add before the activation), and `dh_direct` [B, N] = the part of
/// dL/dh that bypasses W_hr and W_hz: z * dh' + r * d(r * h), with d(r * h) = dn_pre W_hn.
/// \param weight_hn [N, N] the n rows of W_hh
template <typename S>
void gru_reset_before_step_backward(const MatrixCRef<S>& gates, const MatrixCRef<S>& h_prev,
                                    const MatrixCRef<S>& dh, const MatrixCRef<S>& weight_hn,
                                    MatrixRef<S> dpre, MatrixRef<S> dh_direct) {
  const Index N = dh.cols();
  const auto r = gates.leftCols(N).array();  // views, no copies
  const auto z = gates.middleCols(N, N).array();
  const auto n = gates.rightCols(N).array();
  const auto dh_a = dh.array();
  // h' = (1 - z) n + z h: dn = dh' (1 - z); n = tanh(a): da = dn (1 - n^2).
  dpre.rightCols(N).array() = dh_a * (S(1) - z) * (S(1) - n * n);
  // a = ... + (r * h) W_hn^T: d(r * h) = da W_hn, held in dh_direct for now.
  dh_direct.noalias() = dpre.rightCols(N) * weight_hn;  // [B, N]
  const auto drh = dh_direct.array();
  dpre.leftCols(N).array() = drh * h_prev.array() * r * (S(1) - r);              // dr_pre
  dpre.middleCols(N, N).array() = dh_a * (h_prev.array() - n) * z * (S(1) - z);  // dz_pre
  dh_direct.array() = drh * r + dh_a * z;  // through r * h, and h' = ... + z h
}

/// Elman step backward: h' = act(pre). tanh' = 1 - h'^2; relu' = 1 where h' > 0, else 0
/// (0 at pre = 0, as torch's threshold_backward). \param h_next [B, N] \param dpre [B, N]
template <typename S>
void rnn_step_backward(const MatrixCRef<S>& h_next, Nonlinearity act, const MatrixCRef<S>& dh,
                       MatrixRef<S> dpre) {
  if (act == Nonlinearity::tanh) {
    dpre.array() = dh.array() * (S(1) - h_next.array().square());
  } else {
    dpre.array() = (h_next.array() > S(0)).select(dh.array(), S(0));
  }
}

/// Zeroes an empty gradient buffer to `rows` x `cols`, or checks a non-empty one.
template <typename Plain>
void prepare_grad(Plain& g, Index rows, Index cols, const std::string& who,
                  const std::string& name) {
  if (g.size() == 0) {
    g = Plain::Zero(rows, cols);
  } else if (g.rows() != rows || g.cols() != cols) {
    const bool vec = Plain::ColsAtCompileTime == 1;
    throw shape_error(who + ": " + name + " is " +
                      (vec ? shape_string({g.size()}) : matrix_shape(g)) + ", expected " +
                      (vec ? shape_string({rows}) : shape_string({rows, cols})));
  }
}

/// Zero-initialises (or checks) every member of `grad` for `cell`'s parameters.
template <typename Cell, typename S>
void prepare_cell_grad(const Cell& cell, CellGrad<S>& grad, const std::string& who) {
  const Index GN = cell.weight_ih.rows();
  prepare_grad(grad.weight_ih, GN, cell.weight_ih.cols(), who, "grad.weight_ih");
  prepare_grad(grad.weight_hh, GN, cell.weight_hh.cols(), who, "grad.weight_hh");
  if (cell.has_bias()) {
    prepare_grad(grad.bias_ih, GN, 1, who, "grad.bias_ih");
    prepare_grad(grad.bias_hh, GN, 1, who, "grad.bias_hh");
  }
}

/// Checks cell_backward's arguments: a filled cache of `cell`, dnext.h (and dnext.c for the
/// LSTM) [B, N] or empty.
template <typename Cell, typename S>
void check_cell_backward(const Cell& cell, const CellCache<S>& cache, const CellState<S>& dnext,
                         const std::string& who) {
  const Index G = Cell::gate_count, N = cell.hidden_size(), B = cache.x.rows();
  const auto is_bn = [&](const Matrix<S>& m) { return m.rows() == B && m.cols() == N; };
  // The states too: gates of the same width may come from another kind of cell (GRU N = 4
  // and LSTM N = 3 both have 12), whose c_prev / aux the backward would read out of bounds.
  const bool states_ok = is_bn(cache.h_prev) && (!Cell::has_cell_state || is_bn(cache.c_prev)) &&
                         (G == 1 ? cache.aux.size() == 0 : is_bn(cache.aux));
  if (cache.gates.rows() != B || cache.gates.cols() != G * N || B == 0 ||
      cache.x.cols() != cell.input_size() || !states_ok) {
    throw value_error(who + ": cache is " + matrix_shape(cache.gates) + " gates, expected [B, " +
                      std::to_string(G * N) + "] filled by cell_forward with this cell");
  }
  const std::string want = shape_string({B, N});
  if (dnext.h.size() != 0 && (dnext.h.rows() != B || dnext.h.cols() != N)) {
    throw shape_error(who + ": dnext.h is " + matrix_shape(dnext.h) + ", expected " + want);
  }
  if (Cell::has_cell_state && dnext.c.size() != 0 && (dnext.c.rows() != B || dnext.c.cols() != N)) {
    throw shape_error(who + ": dnext.c is " + matrix_shape(dnext.c) + ", expected " + want);
  }
  if (!Cell::has_cell_state && dnext.c.size() != 0) {
    throw value_error(who + ": dnext.c is " + matrix_shape(dnext.c) +
                      ", expected empty (the cell has no cell state)");
  }
}

/// Accumulates the parameter gradients of one step and assigns dx = dgx W_ih, dh = dgh W_hh.
/// \param dgx [B, G*N] \param dgh [B, G*N] (equal for LSTM and RNN)
template <typename Cell, typename S>
void cell_param_backward(const Cell& cell, const CellCache<S>& cache, const Matrix<S>& dgx,
                         const Matrix<S>& dgh, CellGrad<S>& grad, Matrix<S>& dx, Matrix<S>& dh) {
  grad.weight_ih.noalias() += dgx.transpose() * cache.x;       // [G*N, in]
  grad.weight_hh.noalias() += dgh.transpose() * cache.h_prev;  // [G*N, N]
  if (cell.has_bias()) {
    grad.bias_ih += dgx.colwise().sum().transpose();
    grad.bias_hh += dgh.colwise().sum().transpose();
  }
  dx.noalias() = dgx * cell.weight_ih;  // [B, in]
  dh.noalias() = dgh * cell.weight_hh;  // [B, N]
}

/// dnext.h, or zeros when it is empty.
template <typename S>
Matrix<S> or_zeros(const Matrix<S>& m, Index rows, Index cols) {
  return m.size() != 0 ? m : Matrix<S>(Matrix<S>::Zero(rows, cols));
}

}  // namespace detail

/// One LSTM step for training: the same result as `cell.forward(x, state)` (the same
/// kernel), filling `cache` for cell_backward.
/// \param x [B, in] \param state h [B, N], c [B, N] \param cache if not null, filled
/// \returns h' [B, N], c' [B, N]
/// \throws shape_error as LSTMCell::forward (the messages name LSTMCell::forward).
/// \sa cell_backward
template <typename S>
CellState<S> cell_forward(const LSTMCell<S>& cell,
                          const MatrixCRef<typename LSTMCell<S>::scalar_type>& x,
                          const CellState<S>& state, CellCache<S>* cache) {
  if (!cache) return cell.forward(x, state);
  detail::check_cell_args<S>(x, state.h, state.c, cell.input_size(), cell.hidden_size(), true,
                             "LSTMCell::forward");
  const Index B = x.rows(), N = cell.hidden_size();
  const Matrix<S> xi = detail::input_projection<LSTMCell<S>, S>(cell, x);  // [B, 4N]
  cache->x = x;
  cache->h_prev = state.h;
  cache->c_prev = state.c;
  cache->gates.resize(B, 4 * N);
  CellState<S> out{Matrix<S>(B, N), Matrix<S>(B, N)};
  cell.step_projected(xi, state.h, state.c, cache->gates, out.h, out.c);
  cache->aux = out.c.array().tanh().matrix();
  return out;
}

/// One GRU step for training; as cell_forward(LSTMCell, ...). \returns h' [B, N]
template <typename S>
CellState<S> cell_forward(const GRUCell<S>& cell,
                          const MatrixCRef<typename GRUCell<S>::scalar_type>& x,
                          const CellState<S>& state, CellCache<S>* cache) {
  if (!cache) return cell.forward(x, state);
  detail::check_cell_args<S>(x, state.h, state.c, cell.input_size(), cell.hidden_size(), false,
                             "GRUCell::forward");
  const Index B = x.rows(), N = cell.hidden_size();
  const Matrix<S> xi = detail::input_projection<GRUCell<S>, S>(cell, x);  // [B, 3N]
  cache->x = x;
  cache->h_prev = state.h;
  cache->c_prev.resize(0, 0);
  cache->gates.resize(B, 3 * N);
  CellState<S> out{Matrix<S>(B, N), Matrix<S>()};
  cell.step_projected(xi, state.h, state.c, cache->gates, out.h, out.c);
  cache->aux.resize(B, N);
  if (cell.linear_before_reset) {
    // hn = h W_hn^T + b_hn, which the kernel overwrote with n.
    cache->aux.noalias() = state.h * cell.weight_hh.bottomRows(N).transpose();
    if (cell.has_bias()) cache->aux.rowwise() += cell.bias_hh.tail(N).transpose();
  } else {
    cache->aux.array() = cache->gates.leftCols(N).array() * state.h.array();  // r * h
  }
  return out;
}

/// One Elman step for training; as cell_forward(LSTMCell, ...). \returns h' [B, N]
template <typename S>
CellState<S> cell_forward(const RNNCell<S>& cell,
                          const MatrixCRef<typename RNNCell<S>::scalar_type>& x,
                          const CellState<S>& state, CellCache<S>* cache) {
  if (!cache) return cell.forward(x, state);
  detail::check_cell_args<S>(x, state.h, state.c, cell.input_size(), cell.hidden_size(), false,
                             "RNNCell::forward");
  const Index B = x.rows(), N = cell.hidden_size();
  const Matrix<S> xi = detail::input_projection<RNNCell<S>, S>(cell, x);  // [B, N]
  cache->x = x;
  cache->h_prev = state.h;
  cache->c_prev.resize(0, 0);
  cache->aux.resize(0, 0);
  cache->gates.resize(B, N);
  CellState<S> out{Matrix<S>(B, N), Matrix<S>()};
  cell.step_projected(xi, state.h, state.c, cache->gates, out.h, out.c);
  cache->gates = out.h;  // the backward needs h' (the kernel left the pre-activation)
  return out;
}

/// Backward of one LSTM step (cell_forward), in reverse order of the forward's lines.
/// \param cell the cell of the forward (unchanged since) \param cache the forward's
/// \param dnext h: dL/dh' [B, N]; c: dL/dc' [B, N]; an empty matrix means zero
/// \param grad parameter gradients, accumulated (+=); empty members are zeroed first
/// \param dx [B, in] assigned dL/dx \param dprev h, c [B, N] assigned dL/dh, dL/dc
/// \throws shape_error when dnext.h / dnext.c is not [B, N] or a non-empty grad member has
///   the wrong shape; value_error when the cache was not filled by this cell.
/// \note Hochreiter & Schmidhuber 1997 (LSTMCell's equations) differentiated.
template <typename S>
void cell_backward(const LSTMCell<S>& cell, const CellCache<S>& cache, const CellState<S>& dnext,
                   CellGrad<S>& grad, Matrix<S>& dx, CellState<S>& dprev) {
  const std::string who = "cell_backward";
  detail::check_cell_backward(cell, cache, dnext, who);
  detail::prepare_cell_grad(cell, grad, who);
  const Index B = cache.x.rows(), N = cell.hidden_size();
  const Matrix<S> dh = detail::or_zeros(dnext.h, B, N), dc = detail::or_zeros(dnext.c, B, N);
  Matrix<S> dpre(B, 4 * N);  // [B, 4N]
  dprev.c.resize(B, N);
  detail::lstm_step_backward<S>(cache.gates, cache.c_prev, cache.aux, dh, dc, dpre, dprev.c);
  detail::cell_param_backward(cell, cache, dpre, dpre, grad, dx, dprev.h);
}

/// Backward of one GRU step; as cell_backward(LSTMCell, ...) without c (dprev.c is emptied).
/// Either form of the n gate (cell.linear_before_reset, unchanged since the forward).
template <typename S>
void cell_backward(const GRUCell<S>& cell, const CellCache<S>& cache, const CellState<S>& dnext,
                   CellGrad<S>& grad, Matrix<S>& dx, CellState<S>& dprev) {
  const std::string who = "cell_backward";
  detail::check_cell_backward(cell, cache, dnext, who);
  detail::prepare_cell_grad(cell, grad, who);
  const Index B = cache.x.rows(), N = cell.hidden_size();
  const Matrix<S> dh = detail::or_zeros(dnext.h, B, N);
  Matrix<S> direct(B, N);  // [B, N]
  if (cell.linear_before_reset) {
    Matrix<S> dgx(B, 3 * N), dgh(B, 3 * N);  // [B, 3N]
    detail::gru_step_backward<S>(cache.gates, cache.aux, cache.h_prev, dh, dgx, dgh, direct);
    detail::cell_param_backward(cell, cache, dgx, dgh, grad, dx, dprev.h);
    dprev.h += direct;  // h' = n + z (h - n) also holds h directly
    dprev.c.resize(0, 0);
    return;
  }
  Matrix<S> dpre(B, 3 * N);  // [B, 3N] pre-activations of r, z, n
  detail::gru_reset_before_step_backward<S>(cache.gates, cache.h_prev, dh,
                                            cell.weight_hh.bottomRows(N), dpre, direct);
  // r, z rows of W_hh read h; the n rows read r * h (cache.aux).
  grad.weight_ih.noalias() += dpre.transpose() * cache.x;  // [3N, in]
  grad.weight_hh.topRows(2 * N).noalias() += dpre.leftCols(2 * N).transpose() * cache.h_prev;
  grad.weight_hh.bottomRows(N).noalias() += dpre.rightCols(N).transpose() * cache.aux;
  if (cell.has_bias()) {
    grad.bias_ih += dpre.colwise().sum().transpose();
    grad.bias_hh += dpre.colwise().sum().transpose();
  }
  dx.noalias() = dpre * cell.weight_ih;  // [B, in]
  dprev.h = direct;
  dprev.h.noalias() += dpre.leftCols(2 * N) * cell.weight_hh.topRows(2 * N);  // [B, N]
  dprev.c.resize(0, 0);
}

/// Backward of one Elman step; as cell_backward(LSTMCell, ...) without c.
template <typename S>
void cell_backward(const RNNCell<S>& cell, const CellCache<S>& cache, const CellState<S>& dnext,
                   CellGrad<S>& grad, Matrix<S>& dx, CellState<S>& dprev) {
  const std::string who = "cell_backward";
  detail::check_cell_backward(cell, cache, dnext, who);
  detail::prepare_cell_grad(cell, grad, who);
  const Index B = cache.x.rows(), N = cell.hidden_size();
  const Matrix<S> dh = detail::or_zeros(dnext.h, B, N);
  Matrix<S> dpre(B, N);
  detail::rnn_step_backward<S>(cache.gates, cell.nonlinearity, dh, dpre);
  detail::cell_param_backward(cell, cache, dpre, dpre, grad, dx, dprev.h);
  dprev.c.resize(0, 0);
}

/// Visits `weight_ih`, `weight_hh` and, with bias, `bias_ih`, `bias_hh` (torch.nn.LSTMCell's
/// named_parameters() order) as visit(prefix + name, parameter, gradient).
template <typename S, typename Visit>
void named_parameters(LSTMCell<S>& cell, CellGrad<S>& grad, Visit&& visit,
                      const std::string& prefix = "") {
  visit(prefix + "weight_ih", cell.weight_ih, grad.weight_ih);
  visit(prefix + "weight_hh", cell.weight_hh, grad.weight_hh);
  if (cell.has_bias()) {
    visit(prefix + "bias_ih", cell.bias_ih, grad.bias_ih);
    visit(prefix + "bias_hh", cell.bias_hh, grad.bias_hh);
  }
}

/// As named_parameters(LSTMCell, ...), for a GRU cell.
template <typename S, typename Visit>
void named_parameters(GRUCell<S>& cell, CellGrad<S>& grad, Visit&& visit,
                      const std::string& prefix = "") {
  visit(prefix + "weight_ih", cell.weight_ih, grad.weight_ih);
  visit(prefix + "weight_hh", cell.weight_hh, grad.weight_hh);
  if (cell.has_bias()) {
    visit(prefix + "bias_ih", cell.bias_ih, grad.bias_ih);
    visit(prefix + "bias_hh", cell.bias_hh, grad.bias_hh);
  }
}

/// As named_parameters(LSTMCell, ...), for an Elman cell.
template <typename S, typename Visit>
void named_parameters(RNNCell<S>& cell, CellGrad<S>& grad, Visit&& visit,
                      const std::string& prefix = "") {
  visit(prefix + "weight_ih", cell.weight_ih, grad.weight_ih);
  visit(prefix + "weight_hh", cell.weight_hh, grad.weight_hh);
  if (cell.has_bias()) {
    visit(prefix + "bias_ih", cell.bias_ih, grad.bias_ih);
    visit(prefix + "bias_hh", cell.bias_hh, grad.bias_hh);
  }
}

}  // namespace attend
