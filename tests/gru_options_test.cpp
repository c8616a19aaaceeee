// SPDX-License-Identifier: MIT
// Tests of the GRU's linear_before_reset option (false: ONNX GRU's default and Keras
// reset_after=False, n = tanh(xn + (r * h) W_hn^T + b_hn)): one step by hand in both forms,
// the default is PyTorch's form bit for bit, the cell against scalar loops, the stack against
// a per-step loop over its cells, streaming without allocation, and the backward by hand and
// by central differences (cell and stack), float against double.

// Eigen's run-time allocation check (set_is_malloc_allowed) exists only when this macro is
// defined before Eigen is first included, so it comes first and holds for the whole TU.
#ifndef EIGEN_RUNTIME_NO_MALLOC
#define EIGEN_RUNTIME_NO_MALLOC
#endif

#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/rnn/cells.hpp"
#include "attend/rnn/recurrent.hpp"
#include "attend/train/cell_backward.hpp"
#include "attend/train/gradcheck.hpp"
#include "attend/train/parameters.hpp"
#include "attend/train/recurrent_backward.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::CellCache;
using attend::CellGrad;
using attend::CellState;
using attend::GRU;
using attend::GRUCell;
using attend::Index;
using attend::Matrix;
using attend::ParameterList;
using attend::RecurrentCache;
using attend::RecurrentGrad;
using attend::RecurrentInputGrads;
using attend::RecurrentOptions;
using attend::RecurrentOutput;
using attend::RecurrentState;
using attend::Rng;
using attend::Shape;
using attend::Tensor;

using attend_test::dot;
using attend_test::mat;
using attend_test::random_matrix;
using attend_test::random_tensor;
using attend_test::require_close;
using attend_test::require_gradient;
using attend_test::vec;

// ---- tolerances ------------------------------------------------------------------------

/// Hand-computed values are exact or written with 16 digits; the float path rounds ln 3 and
/// each of a handful of exp/tanh/products (~1 ulp each, 6e-8) on O(1) values.
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 1e-6 : 1e-13;

/// Two computations of the same recurrence that differ only in summation order (a product
/// of B rows instead of one row, a scalar loop instead of a GEMM): a few ulps per step on
/// O(1) values, over at most 6 steps and 3 layers of contractive recurrences.
template <typename S>
constexpr double kReorderTol = std::is_same_v<S, float> ? 1e-5 : 1e-13;

/// Float backward against double on the same (float-rounded) parameters and inputs: each
/// step rounds to float eps 6e-8 relative, compounded over T = 5 steps, 2 layers and sums
/// of <= 15 rows, so ||float - double|| / ||float + double|| stays near 1e-7; 1e-5 leaves
/// two orders of headroom while a wrong float path (a dropped term) gives 1e-2 and more.
constexpr double kFloatVsDouble = 1e-5;

/// Two backends of the same double arithmetic (cell by cell vs the layer's batched time
/// loop) differ only in summation order: ~1e-15 relative; 1e-12 is rounding, not a bug.
constexpr double kSameMathTol = 1e-12;

/// ln 3: sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4.
constexpr double kLn3 = 1.0986122886681098;

// ---- helpers ---------------------------------------------------------------------------

RecurrentOptions gru_options(Index in, Index N, Index layers, bool bidirectional, bool batch_first,
                             bool linear_before_reset, bool bias = true) {
  RecurrentOptions o;
  o.input_size = in;
  o.hidden_size = N;
  o.num_layers = layers;
  o.bidirectional = bidirectional;
  o.batch_first = batch_first;
  o.bias = bias;
  o.linear_before_reset = linear_before_reset;
  return o;
}

/// The 1-unit cell of the hand-computed cases; rows in gate order r, z, n:
///   W_ih = [ln 3, -ln 3, -1.25], b_ih = 0, W_hh = [0.4, 0.8, 2], b_hh = [-0.2, -0.4, 0.5]
template <typename S>
GRUCell<S> one_unit_cell(bool linear_before_reset) {
  GRUCell<S> cell(1, 1);
  cell.weight_ih = mat<S>(3, 1, {kLn3, -kLn3, -1.25});
  cell.bias_ih = vec<S>({0, 0, 0});
  cell.weight_hh = mat<S>(3, 1, {0.4, 0.8, 2});
  cell.bias_hh = vec<S>({-0.2, -0.4, 0.5});
  cell.linear_before_reset = linear_before_reset;
  return cell;
}

/// One GRU step with linear_before_reset false written as scalar loops straight from the
/// equations (no Eigen products): the oracle of the cell's kernel.
/// \param x [B, in] \param h [B, N] \returns h' [B, N]
template <typename S>
Matrix<S> scalar_reset_before_step(const GRUCell<S>& cell, const Matrix<S>& x, const Matrix<S>& h) {
  const Index B = x.rows(), N = cell.hidden_size(), in = cell.input_size();
  const auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  const auto b = [&](const attend::Vector<S>& v, Index i) {
    return cell.has_bias() ? static_cast<double>(v(i)) : 0.0;
  };
  Matrix<S> out(B, N);
  for (Index row = 0; row < B; ++row) {
    std::vector<double> r(static_cast<std::size_t>(N)), z(r);
    for (Index i = 0; i < N; ++i) {
      double pr = b(cell.bias_ih, i) + b(cell.bias_hh, i);
      double pz = b(cell.bias_ih, N + i) + b(cell.bias_hh, N + i);
      for (Index j = 0; j < in; ++j) {
        pr += cell.weight_ih(i, j) * static_cast<double>(x(row, j));
        pz += cell.weight_ih(N + i, j) * static_cast<double>(x(row, j));
      }
      for (Index j = 0; j < N; ++j) {
        pr += cell.weight_hh(i, j) * static_cast<double>(h(row, j));
        pz += cell.weight_hh(N + i, j) * static_cast<double>(h(row, j));
      }
      r[static_cast<std::size_t>(i)] = sigmoid(pr);
      z[static_cast<std::size_t>(i)] = sigmoid(pz);
    }
    for (Index i = 0; i < N; ++i) {
      double a = b(cell.bias_ih, 2 * N + i) + b(cell.bias_hh, 2 * N + i);
      for (Index j = 0; j < in; ++j) a += cell.weight_ih(2 * N + i, j) * double(x(row, j));
      for (Index j = 0; j < N; ++j) {  // W_hn (r * h): r indexed by the column j
        a += cell.weight_hh(2 * N + i, j) * r[static_cast<std::size_t>(j)] * double(h(row, j));
      }
      const double n = std::tanh(a), zi = z[static_cast<std::size_t>(i)];
      out(row, i) = static_cast<S>((1.0 - zi) * n + zi * static_cast<double>(h(row, i)));
    }
  }
  return out;
}

/// The stack written as a per-step loop over its own cells, one sequence at a time: layer
/// k reads layer k - 1's output, the forward direction runs t = 0 .. len - 1, the reverse
/// len - 1 .. 0, padded steps output 0 and h_n is the state after the last valid step.
template <typename S>
RecurrentOutput<S> per_step_loop(const GRU<S>& gru, const Tensor<S>& input, const Tensor<S>& h0,
                                 const std::vector<Index>& lengths) {
  const RecurrentOptions& o = gru.options;
  const bool bf = o.batch_first;
  const Index T = bf ? input.dim(1) : input.dim(0), B = bf ? input.dim(0) : input.dim(1);
  const Index N = o.hidden_size, D = gru.directions();
  std::vector<Matrix<S>> seq(static_cast<std::size_t>(T));  // [T] of [B, width]
  for (Index t = 0; t < T; ++t) {
    Matrix<S>& m = seq[static_cast<std::size_t>(t)];
    m.resize(B, o.input_size);
    for (Index b = 0; b < B; ++b) {
      for (Index j = 0; j < o.input_size; ++j) m(b, j) = bf ? input(b, t, j) : input(t, b, j);
    }
  }
  RecurrentOutput<S> result;
  result.h_n = Tensor<S>({o.num_layers * D, B, N});
  for (Index k = 0; k < o.num_layers; ++k) {
    std::vector<Matrix<S>> out(static_cast<std::size_t>(T), Matrix<S>::Zero(B, D * N));
    for (Index d = 0; d < D; ++d) {
      const Index slot = k * D + d;
      const GRUCell<S>& cell = gru.cells[static_cast<std::size_t>(slot)];
      for (Index b = 0; b < B; ++b) {
        const Index len = lengths.empty() ? T : lengths[static_cast<std::size_t>(b)];
        Matrix<S> h = Matrix<S>::Zero(1, N);
        if (h0.size() != 0) h = h0.matrix(slot).row(b);
        for (Index s = 0; s < len; ++s) {
          const Index t = d == 0 ? s : len - 1 - s;
          const Matrix<S> x = seq[static_cast<std::size_t>(t)].row(b);  // [1, width]
          h = cell.forward(x, CellState<S>{h, Matrix<S>()}).h;
          out[static_cast<std::size_t>(t)].block(b, d * N, 1, N) = h;
        }
        result.h_n.matrix(slot).row(b) = h;
      }
    }
    seq = out;
  }
  result.output = Tensor<S>(bf ? Shape{B, T, D * N} : Shape{T, B, D * N});
  for (Index t = 0; t < T; ++t) {
    for (Index b = 0; b < B; ++b) {
      for (Index j = 0; j < D * N; ++j) {
        (bf ? result.output(b, t, j) : result.output(t, b, j)) =
            seq[static_cast<std::size_t>(t)](b, j);
      }
    }
  }
  return result;
}

/// Checks every parameter, x and h of one cell step against central differences, with
/// L = sum(h' * up_h).
void check_cell_gradients(GRUCell<double>& cell) {
  Rng rng(42);
  const Index B = 3, N = cell.hidden_size();
  Matrix<double> x = random_matrix<double>(B, cell.input_size(), rng);
  CellState<double> state{random_matrix<double>(B, N, rng), Matrix<double>()};
  const Matrix<double> up_h = random_matrix<double>(B, N, rng);
  CellCache<double> cache;
  const CellState<double> y = attend::cell_forward(cell, x, state, &cache);
  REQUIRE(y.h == cell.forward(x, state).h);  // the same kernel: bit for bit
  CellGrad<double> grad;
  Matrix<double> dx;
  CellState<double> dprev;
  attend::cell_backward(cell, cache, CellState<double>{up_h, Matrix<double>()}, grad, dx, dprev);
  const auto loss = [&] { return dot(cell.forward(x, state).h, up_h); };
  ParameterList<double> params;
  attend::named_parameters(cell, grad, params);
  REQUIRE(params.size() == (cell.has_bias() ? 4 : 2));
  for (const auto& p : params) require_gradient(p.name(), p.value(), p.grad(), loss);
  require_gradient("x", x, dx, loss);
  require_gradient("h", state.h, dprev.h, loss);
  REQUIRE(dprev.c.size() == 0);
}

/// Checks every parameter, the input and h_0 of a GRU stack against central differences,
/// with L = sum(output * up) + sum(h_n * up_h); padded steps get exactly 0 input gradient.
void check_stack_gradients(const RecurrentOptions& options, Index T, Index B,
                           const std::vector<Index>& lengths, bool given_state) {
  GRU<double> layer(options, 11);
  const RecurrentOptions& o = layer.options;
  for (const auto& cell : layer.cells) REQUIRE(cell.linear_before_reset == o.linear_before_reset);
  const Index D = layer.directions(), N = o.hidden_size, slots = o.num_layers * D;
  Rng rng(7);
  Tensor<double> input = random_tensor<double>(
      o.batch_first ? Shape{B, T, o.input_size} : Shape{T, B, o.input_size}, rng);
  RecurrentState<double> initial;
  if (given_state) initial.h = random_tensor<double>({slots, B, N}, rng);
  const Tensor<double> up =
      random_tensor<double>(o.batch_first ? Shape{B, T, D * N} : Shape{T, B, D * N}, rng);
  const Tensor<double> up_h = random_tensor<double>({slots, B, N}, rng);
  RecurrentCache<double> cache;
  const RecurrentOutput<double> y =
      attend::recurrent_forward(layer, input, initial, lengths, &cache);
  const RecurrentOutput<double> ref = layer.forward(input, initial, lengths);
  REQUIRE(y.output.flat() == ref.output.flat());  // the same kernel: bit for bit
  REQUIRE(y.h_n.flat() == ref.h_n.flat());
  RecurrentGrad<double> grad;
  const RecurrentInputGrads<double> d =
      attend::recurrent_backward(layer, cache, up, up_h, Tensor<double>(), grad);
  const auto loss = [&] {
    const RecurrentOutput<double> r = layer.forward(input, initial, lengths);
    return dot(r.output.flat(), up.flat()) + dot(r.h_n.flat(), up_h.flat());
  };
  ParameterList<double> params;
  attend::named_parameters(layer, grad, params);
  REQUIRE(params.size() == slots * (o.bias ? 4 : 2));
  for (const auto& p : params) require_gradient(p.name(), p.value(), p.grad(), loss);
  REQUIRE(d.d_input.shape() == input.shape());
  require_gradient("input", input.flat(), d.d_input.flat(), loss);
  if (given_state) require_gradient("h_0", initial.h.flat(), d.d_h0.flat(), loss);
  for (Index b = 0; b < static_cast<Index>(lengths.size()); ++b) {
    for (Index t = lengths[static_cast<std::size_t>(b)]; t < T; ++t) {
      for (Index j = 0; j < o.input_size; ++j) {
        REQUIRE((o.batch_first ? d.d_input(b, t, j) : d.d_input(t, b, j)) == 0.0);
      }
    }
  }
}

}  // namespace

// ========================================================================================
// forward
// ========================================================================================

TEMPLATE_TEST_CASE("gru_options: one 1-unit GRU step by hand in both forms", "[gru_options]", float,
                   double) {
  using S = TestType;
  // one_unit_cell, x = 1, h = 0.5 (L = ln 3):
  //   r = sigmoid(L + 0.4 * 0.5 - 0.2)  = sigmoid(L)  = 3/4
  //   z = sigmoid(-L + 0.8 * 0.5 - 0.4) = sigmoid(-L) = 1/4
  // linear_before_reset false (r before the product):
  //   n = tanh(-1.25 + 2 * (r h) + 0.5) = tanh(-1.25 + 2 * 3/8 + 0.5) = tanh(0) = 0
  //   h' = (1 - z) n + z h = 3/4 * 0 + 1/4 * 1/2 = 0.125
  // linear_before_reset true (PyTorch, r after the product):
  //   n = tanh(-1.25 + r (2 h + 0.5)) = tanh(-1.25 + 3/4 * 1.5) = tanh(-0.125)
  //     = -0.1243530017715962
  //   h' = 3/4 * -0.1243530017715962 + 1/8 = 0.031735248671302854
  const Matrix<S> x = mat<S>(1, 1, {1.0});
  const CellState<S> state{mat<S>(1, 1, {0.5}), Matrix<S>()};
  const GRUCell<S> before = one_unit_cell<S>(false), after = one_unit_cell<S>(true);
  require_close(before.forward(x, state).h, mat<S>(1, 1, {0.125}), kHandTol<S>);
  require_close(after.forward(x, state).h, mat<S>(1, 1, {0.031735248671302854}), kHandTol<S>);

  // The same step through 1-layer stacks: the option reaches the cell from RecurrentOptions.
  for (const bool lbr : {false, true}) {
    INFO("linear_before_reset " << lbr);
    GRU<S> gru(gru_options(1, 1, 1, false, false, lbr));
    REQUIRE(gru.cells[0].linear_before_reset == lbr);
    const GRUCell<S>& src = lbr ? after : before;
    gru.cells[0].weight_ih = src.weight_ih;  // parameters only, not the flag
    gru.cells[0].weight_hh = src.weight_hh;
    gru.cells[0].bias_ih = src.bias_ih;
    gru.cells[0].bias_hh = src.bias_hh;
    const RecurrentOutput<S> r =
        gru.forward(Tensor<S>({1, 1, 1}, std::vector<S>{S(1)}),
                    RecurrentState<S>{Tensor<S>({1, 1, 1}, std::vector<S>{S(0.5)}), Tensor<S>()});
    const double want = lbr ? 0.031735248671302854 : 0.125;
    require_close(r.output.as_matrix(), mat<S>(1, 1, {want}), kHandTol<S>);
    require_close(r.h_n.as_matrix(), mat<S>(1, 1, {want}), kHandTol<S>);
  }
}

TEMPLATE_TEST_CASE("gru_options: linear_before_reset true is the default, bit for bit",
                   "[gru_options]", float, double) {
  using S = TestType;
  // PyTorch's form is checked against PyTorch fixtures in rnn_test.cpp; here the explicit
  // option true must give the default's results exactly, on every path of the stack.
  REQUIRE(GRUCell<S>(3, 4).linear_before_reset);
  REQUIRE(RecurrentOptions().linear_before_reset);
  Rng rng(5);
  GRUCell<S> cell(3, 4, true, 2), explicit_true = cell, other = cell;
  explicit_true.linear_before_reset = true;
  other.linear_before_reset = false;
  const Matrix<S> x = random_matrix<S>(2, 3, rng);
  const CellState<S> state{random_matrix<S>(2, 4, rng), Matrix<S>()};
  REQUIRE(explicit_true.forward(x, state).h == cell.forward(x, state).h);
  // The two forms differ on the same parameters (else the option would be untested).
  REQUIRE(attend::relative_error(other.forward(x, state).h, cell.forward(x, state).h) > 1e-3);

  for (const bool bf : {false, true}) {
    INFO("batch_first " << bf);
    RecurrentOptions o = gru_options(3, 4, 2, true, bf, true);
    const GRU<S> with(o, 9);
    RecurrentOptions d = o;
    d.linear_before_reset = RecurrentOptions().linear_before_reset;
    const GRU<S> dflt(d, 9);
    const Index T = 5, B = 3;
    const Tensor<S> in = random_tensor<S>(bf ? Shape{B, T, 3} : Shape{T, B, 3}, rng);
    const RecurrentState<S> h0{random_tensor<S>({4, B, 4}, rng), Tensor<S>()};
    const std::vector<Index> lengths{5, 2, 4};
    const auto a = with.forward(in, h0, lengths), b = dflt.forward(in, h0, lengths);
    REQUIRE(a.output.flat() == b.output.flat());
    REQUIRE(a.h_n.flat() == b.h_n.flat());
    RecurrentCache<S> ca, cb;
    attend::recurrent_forward(with, in, h0, lengths, &ca);
    attend::recurrent_forward(dflt, in, h0, lengths, &cb);
    const Tensor<S> up = random_tensor<S>(a.output.shape(), rng);
    RecurrentGrad<S> ga, gb;
    const auto da = attend::recurrent_backward(with, ca, up, Tensor<S>(), Tensor<S>(), ga);
    const auto db = attend::recurrent_backward(dflt, cb, up, Tensor<S>(), Tensor<S>(), gb);
    REQUIRE(da.d_input.flat() == db.d_input.flat());
    REQUIRE(da.d_h0.flat() == db.d_h0.flat());
    for (std::size_t i = 0; i < ga.cells.size(); ++i) {
      REQUIRE(ga.cells[i].weight_ih == gb.cells[i].weight_ih);
      REQUIRE(ga.cells[i].weight_hh == gb.cells[i].weight_hh);
      REQUIRE(ga.cells[i].bias_ih == gb.cells[i].bias_ih);
      REQUIRE(ga.cells[i].bias_hh == gb.cells[i].bias_hh);
    }
  }
}

TEMPLATE_TEST_CASE("gru_options: GRUCell with linear_before_reset false against scalar loops",
                   "[gru_options]", float, double) {
  using S = TestType;
  for (const bool bias : {true, false}) {
    INFO("bias " << bias);
    GRUCell<S> cell(2, 3, bias, 4);
    cell.linear_before_reset = false;
    Rng rng(8);
    const Matrix<S> x = random_matrix<S>(4, 2, rng);
    const Matrix<S> h = random_matrix<S>(4, 3, rng);
    const CellState<S> next = cell.forward(x, CellState<S>{h, Matrix<S>()});
    require_close(next.h, scalar_reset_before_step(cell, x, h), kReorderTol<S>);
    // The kernel in place (h_next aliasing h_prev) gives the same bits as distinct buffers.
    const Matrix<S> xi =
        x * cell.weight_ih.transpose() + (bias ? Matrix<S>(cell.bias_ih.transpose().replicate(4, 1))
                                               : Matrix<S>(Matrix<S>::Zero(4, 9)));
    Matrix<S> gates(4, 9), in_place = h, none;
    cell.step_projected(xi, in_place, none, gates, in_place, none);
    Matrix<S> distinct(4, 3);
    cell.step_projected(xi, h, none, gates, distinct, none);
    REQUIRE(in_place == distinct);
    require_close(distinct, next.h, kReorderTol<S>);
  }
}

TEMPLATE_TEST_CASE("gru_options: stack with linear_before_reset false against a per-step loop",
                   "[gru_options]", float, double) {
  using S = TestType;
  for (const bool bf : {false, true}) {
    for (const bool given_state : {false, true}) {
      INFO("batch_first " << bf << ", h_0 given " << given_state);
      const GRU<S> gru(gru_options(3, 4, 3, true, bf, false), 21);
      for (const auto& cell : gru.cells) REQUIRE_FALSE(cell.linear_before_reset);
      Rng rng(6);
      const Index T = 6, B = 4;
      const Tensor<S> x = random_tensor<S>(bf ? Shape{B, T, 3} : Shape{T, B, 3}, rng);
      const Tensor<S> h0 = given_state ? random_tensor<S>({6, B, 4}, rng) : Tensor<S>();
      for (const std::vector<Index>& lengths :
           {std::vector<Index>{}, std::vector<Index>{6, 1, 4, 3}}) {
        INFO("lengths given " << !lengths.empty());
        const RecurrentOutput<S> got = gru.forward(x, {h0, Tensor<S>()}, lengths);
        const RecurrentOutput<S> want = per_step_loop(gru, x, h0, lengths);
        require_close(got.output, want.output, kReorderTol<S>);
        require_close(got.h_n, want.h_n, kReorderTol<S>);
        REQUIRE(got.c_n.size() == 0);
      }
      // PyTorch's form on the same parameters gives another result.
      GRU<S> pytorch_form = gru;
      for (auto& cell : pytorch_form.cells) cell.linear_before_reset = true;
      REQUIRE(attend::relative_error(pytorch_form.forward(x, {h0, Tensor<S>()}).output.flat(),
                                     gru.forward(x, {h0, Tensor<S>()}).output.flat()) > 1e-3);
    }
  }
}

TEMPLATE_TEST_CASE("gru_options: streaming step equals forward and allocates nothing warmed",
                   "[gru_options]", float, double) {
  using S = TestType;
#ifdef NDEBUG
  WARN("NDEBUG is defined: Eigen's allocation check is an eigen_assert and is off");
#endif
  // Sizes below Eigen's stack limit for GEMM packing (EIGEN_STACK_ALLOCATION_LIMIT).
  const Index B = 8, in = 16, N = 32, T = 4;
  const GRU<S> gru(gru_options(in, N, 2, false, false, false), 8);
  Rng rng(4);
  const Tensor<S> x = random_tensor<S>({T, B, in}, rng);
  const RecurrentOutput<S> whole = gru.forward(x);
  RecurrentState<S> state = gru.zero_state(B);
  attend::RecurrentWorkspace<S> ws;
  Matrix<S> out;
  gru.step(x.matrix(0), state, out, ws);  // sizes the workspace and the output
  require_close(out, Matrix<S>(whole.output.matrix(0)), kReorderTol<S>);
  for (Index t = 1; t < T; ++t) {
    const Matrix<S> frame = x.matrix(t);
    Eigen::internal::set_is_malloc_allowed(false);
    gru.step(frame, state, out, ws);
    Eigen::internal::set_is_malloc_allowed(true);
    require_close(out, Matrix<S>(whole.output.matrix(t)), kReorderTol<S>);
  }
  require_close(state.h, whole.h_n, kReorderTol<S>);

  // The time-loop kernel with distinct h buffers allocates nothing either.
  const GRUCell<S>& cell = gru.cells[0];
  const Matrix<S> xi = random_matrix<S>(B, 3 * N, rng);
  Matrix<S> h = random_matrix<S>(B, N, rng), h_new(B, N), gates(B, 3 * N), none;
  Eigen::internal::set_is_malloc_allowed(false);
  cell.step_projected(xi, h, none, gates, h_new, none);
  Eigen::internal::set_is_malloc_allowed(true);
  REQUIRE(h_new.allFinite());
}

// ========================================================================================
// backward
// ========================================================================================

TEMPLATE_TEST_CASE("gru_options: cell_backward of the 1-unit step by hand (reset before)",
                   "[gru_options]", float, double) {
  using S = TestType;
  // Forward as in the hand-computed step: r = 3/4, z = 1/4, r h = 3/8, a = 0, n = 0,
  // h' = 1/8. Backward with dL/dh' = 1:
  //   da     = dh' (1 - z) (1 - n^2) = 3/4                        (n pre-activation)
  //   d(rh)  = da W_hn = 3/2;   dr = d(rh) h = 3/4;   dr_pre = dr r (1 - r) = 9/64
  //   dz_pre = dh' (h - n) z (1 - z) = 1/2 * 3/16 = 3/32
  //   d W_ih = dpre x = [9/64, 3/32, 3/4] = d b_ih = d b_hh
  //   d W_hh = [dr_pre h, dz_pre h, da (r h)] = [9/128, 3/64, 9/32]
  //   dx = W_ir dr_pre + W_iz dz_pre + W_in da = 3L/64 - 15/16 = -0.8860025489686824
  //   dh = d(rh) r + dh' z + W_hr dr_pre + W_hz dz_pre = 9/8 + 1/4 + 0.05625 + 0.075 = 1.50625
  const GRUCell<S> cell = one_unit_cell<S>(false);
  CellCache<S> cache;
  const CellState<S> y = attend::cell_forward(
      cell, mat<S>(1, 1, {1.0}), CellState<S>{mat<S>(1, 1, {0.5}), Matrix<S>()}, &cache);
  require_close(y.h, mat<S>(1, 1, {0.125}), kHandTol<S>);
  CellGrad<S> grad;
  Matrix<S> dx;
  CellState<S> dprev;
  attend::cell_backward(cell, cache, CellState<S>{mat<S>(1, 1, {1.0}), Matrix<S>()}, grad, dx,
                        dprev);
  require_close(grad.weight_ih, mat<S>(3, 1, {9.0 / 64, 3.0 / 32, 0.75}), kHandTol<S>);
  require_close(grad.weight_hh, mat<S>(3, 1, {9.0 / 128, 3.0 / 64, 9.0 / 32}), kHandTol<S>);
  require_close(grad.bias_ih, vec<S>({9.0 / 64, 3.0 / 32, 0.75}), kHandTol<S>);
  require_close(grad.bias_hh, vec<S>({9.0 / 64, 3.0 / 32, 0.75}), kHandTol<S>);
  require_close(dx, mat<S>(1, 1, {-0.8860025489686824}), kHandTol<S>);
  require_close(dprev.h, mat<S>(1, 1, {1.50625}), kHandTol<S>);
  REQUIRE(dprev.c.size() == 0);
}

TEST_CASE(
    "gru_options: cell_backward with linear_before_reset false against central "
    "differences",
    "[gru_options]") {
  SECTION("with bias") {
    GRUCell<double> cell(5, 4, true, 3);
    cell.linear_before_reset = false;
    check_cell_gradients(cell);
  }
  SECTION("without bias") {
    GRUCell<double> cell(5, 4, false, 3);
    cell.linear_before_reset = false;
    check_cell_gradients(cell);
  }
}

TEST_CASE(
    "gru_options: recurrent_backward with linear_before_reset false against central "
    "differences",
    "[gru_options]") {
  SECTION("2 layers bidirectional, lengths, h_0 given") {
    check_stack_gradients(gru_options(3, 4, 2, true, false, false), 5, 3, {5, 2, 4}, true);
  }
  SECTION("2 layers bidirectional, batch_first, lengths, h_0 given") {
    check_stack_gradients(gru_options(3, 4, 2, true, true, false), 5, 3, {3, 5, 1}, true);
  }
  SECTION("1 layer, no bias, zero state, all steps") {
    check_stack_gradients(gru_options(3, 4, 1, false, false, false, false), 4, 2, {}, false);
  }
}

TEST_CASE("gru_options: one-layer BPTT equals chained cell backwards (reset before)",
          "[gru_options]") {
  // The layer's batched time loop against cell_forward / cell_backward step by step.
  const Index T = 4, B = 2, in = 3, N = 3;
  GRU<double> layer(gru_options(in, N, 1, false, false, false), 4);
  const GRUCell<double>& cell = layer.cells[0];
  Rng rng(5);
  const Tensor<double> x = random_tensor<double>({T, B, in}, rng);
  const Tensor<double> h0 = random_tensor<double>({1, B, N}, rng);
  const Tensor<double> up = random_tensor<double>({T, B, N}, rng);
  RecurrentCache<double> cache;
  attend::recurrent_forward(layer, x, {h0, Tensor<double>()}, {}, &cache);
  RecurrentGrad<double> lg;
  const RecurrentInputGrads<double> ld =
      attend::recurrent_backward(layer, cache, up, Tensor<double>(), Tensor<double>(), lg);

  std::vector<CellCache<double>> steps(T);
  CellState<double> s{h0.matrix(0), Matrix<double>()};
  for (Index t = 0; t < T; ++t) {
    s = attend::cell_forward(cell, Matrix<double>(x.matrix(t)), s, &steps[std::size_t(t)]);
  }
  CellGrad<double> cg;
  CellState<double> d{Matrix<double>::Zero(B, N), Matrix<double>()};
  Tensor<double> dx({T, B, in});
  for (Index t = T - 1; t >= 0; --t) {
    d.h += up.matrix(t);  // h_t feeds the output at t and the next step
    Matrix<double> dx_t;
    CellState<double> prev;
    attend::cell_backward(cell, steps[std::size_t(t)], d, cg, dx_t, prev);
    dx.matrix(t) = dx_t;
    d = prev;
  }
  REQUIRE(attend::relative_error(lg.cells[0].weight_ih, cg.weight_ih) < kSameMathTol);
  REQUIRE(attend::relative_error(lg.cells[0].weight_hh, cg.weight_hh) < kSameMathTol);
  REQUIRE(attend::relative_error(lg.cells[0].bias_ih, cg.bias_ih) < kSameMathTol);
  REQUIRE(attend::relative_error(lg.cells[0].bias_hh, cg.bias_hh) < kSameMathTol);
  REQUIRE(attend::relative_error(ld.d_input.flat(), dx.flat()) < kSameMathTol);
  REQUIRE(attend::relative_error(ld.d_h0.as_matrix(), d.h) < kSameMathTol);
}

TEST_CASE("gru_options: float backward matches double (reset before)", "[gru_options]") {
  const RecurrentOptions o = gru_options(3, 4, 2, true, false, false);
  GRU<float> lf(o, 8);
  GRU<double> ld(o, 8);
  for (std::size_t i = 0; i < lf.cells.size(); ++i) {  // the same float-rounded parameters
    REQUIRE_FALSE(ld.cells[i].linear_before_reset);
    ld.cells[i].weight_ih = lf.cells[i].weight_ih.cast<double>();
    ld.cells[i].weight_hh = lf.cells[i].weight_hh.cast<double>();
    ld.cells[i].bias_ih = lf.cells[i].bias_ih.cast<double>();
    ld.cells[i].bias_hh = lf.cells[i].bias_hh.cast<double>();
  }
  Rng rng(6);
  const std::vector<Index> lengths{5, 3, 4};
  const Tensor<float> x = random_tensor<float>({5, 3, 3}, rng);
  const Tensor<float> h0 = random_tensor<float>({4, 3, 4}, rng);
  const Tensor<float> up = random_tensor<float>({5, 3, 8}, rng);
  const Tensor<float> up_h = random_tensor<float>({4, 3, 4}, rng);
  RecurrentCache<float> cf;
  RecurrentCache<double> cd;
  const auto yf = attend::recurrent_forward(lf, x, {h0, Tensor<float>()}, lengths, &cf);
  const auto yd = attend::recurrent_forward(ld, x.cast<double>(),
                                            {h0.cast<double>(), Tensor<double>()}, lengths, &cd);
  REQUIRE(attend::relative_error(yf.output.flat(), yd.output.flat()) < kFloatVsDouble);
  RecurrentGrad<float> gf;
  RecurrentGrad<double> gd;
  const auto df = attend::recurrent_backward(lf, cf, up, up_h, Tensor<float>(), gf);
  const auto dd = attend::recurrent_backward(ld, cd, up.cast<double>(), up_h.cast<double>(),
                                             Tensor<double>(), gd);
  ParameterList<float> pf;
  ParameterList<double> pd;
  attend::named_parameters(lf, gf, pf);
  attend::named_parameters(ld, gd, pd);
  REQUIRE(pf.size() == 16);
  for (Index i = 0; i < pf.size(); ++i) {
    REQUIRE(pf[i].name() == pd[i].name());  // PyTorch's names, as for the default form
    const double e = attend::relative_error(pf[i].grad(), pd[i].grad());
    INFO(pf[i].name() << ": " << e);
    REQUIRE(e < kFloatVsDouble);
  }
  REQUIRE(pf[0].name() == "weight_ih_l0");
  REQUIRE(pf[15].name() == "bias_hh_l1_reverse");
  REQUIRE(attend::relative_error(df.d_input.flat(), dd.d_input.flat()) < kFloatVsDouble);
  REQUIRE(attend::relative_error(df.d_h0.flat(), dd.d_h0.flat()) < kFloatVsDouble);

  // The cell alone, float against double on the same rounded values.
  GRUCell<float> cf1(3, 4, true, 2);
  cf1.linear_before_reset = false;
  GRUCell<double> cd1(3, 4, true, 2);
  cd1.linear_before_reset = false;
  cd1.weight_ih = cf1.weight_ih.cast<double>();
  cd1.weight_hh = cf1.weight_hh.cast<double>();
  cd1.bias_ih = cf1.bias_ih.cast<double>();
  cd1.bias_hh = cf1.bias_hh.cast<double>();
  const Matrix<float> xc = random_matrix<float>(2, 3, rng), hc = random_matrix<float>(2, 4, rng);
  const Matrix<float> uc = random_matrix<float>(2, 4, rng);
  CellCache<float> kf;
  CellCache<double> kd;
  attend::cell_forward(cf1, xc, CellState<float>{hc, Matrix<float>()}, &kf);
  attend::cell_forward(cd1, Matrix<double>(xc.cast<double>()),
                       CellState<double>{hc.cast<double>(), Matrix<double>()}, &kd);
  CellGrad<float> cgf;
  CellGrad<double> cgd;
  Matrix<float> dxf;
  Matrix<double> dxd;
  CellState<float> dpf;
  CellState<double> dpd;
  attend::cell_backward(cf1, kf, CellState<float>{uc, Matrix<float>()}, cgf, dxf, dpf);
  attend::cell_backward(cd1, kd, CellState<double>{uc.cast<double>(), Matrix<double>()}, cgd, dxd,
                        dpd);
  REQUIRE(attend::relative_error(cgf.weight_ih, cgd.weight_ih) < kFloatVsDouble);
  REQUIRE(attend::relative_error(cgf.weight_hh, cgd.weight_hh) < kFloatVsDouble);
  REQUIRE(attend::relative_error(cgf.bias_hh, cgd.bias_hh) < kFloatVsDouble);
  REQUIRE(attend::relative_error(dxf, dxd) < kFloatVsDouble);
  REQUIRE(attend::relative_error(dpf.h, dpd.h) < kFloatVsDouble);
}
