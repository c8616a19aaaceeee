// SPDX-License-Identifier: MIT
// Tests of backpropagation through time: the cells' one-step backward (by hand, central
// differences) and the RNN / LSTM / GRU stacks over whole sequences (central differences
// through every parameter and input, variable lengths, float against double, accumulation,
// errors).
#include "attend/core/errors.hpp"
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
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::CellCache;
using attend::CellGrad;
using attend::CellState;
using attend::GRUCell;
using attend::Index;
using attend::LSTMCell;
using attend::Matrix;
using attend::Nonlinearity;
using attend::ParameterList;
using attend::Recurrent;
using attend::RecurrentCache;
using attend::RecurrentGrad;
using attend::RecurrentInputGrads;
using attend::RecurrentOptions;
using attend::RecurrentOutput;
using attend::RecurrentState;
using attend::Rng;
using attend::RNNCell;
using attend::Shape;
using attend::Tensor;

using attend_test::dot;
using attend_test::random_matrix;
using attend_test::random_tensor;
using attend_test::require_gradient;

/// One-sided slopes of a smooth function differ by about h |f''| ~ 1e-6; at a ReLU kink
/// by the jump of the derivative, O(0.1) and more. 1e-4 separates the two.
constexpr double kKinkTol = 1e-4;

/// Float backward against double on the same (float-rounded) parameters and inputs: each
/// step rounds to float eps 6e-8 relative, compounded over T = 5 steps, 2 layers and sums
/// of <= 20 rows, so ||float - double|| / ||float + double|| stays near 1e-7; 1e-5 leaves
/// two orders of headroom while a wrong float path (a dropped term) gives 1e-2 and more.
constexpr double kFloatVsDouble = 1e-5;

/// Two backends of the same double arithmetic (cell by cell vs the layer's batched time
/// loop) differ only in summation order: ~1e-15 relative; 1e-12 is rounding, not a bug.
constexpr double kSameMathTol = 1e-12;

/// Checks every parameter, x, h (and c) of one cell step against central differences, with
/// L = sum(h' * up_h) + sum(c' * up_c).
template <typename Cell>
void check_cell(Cell& cell, const attend::GradCheckOptions& options = {}) {
  constexpr bool lstm = Cell::has_cell_state;
  Rng rng(42);
  const Index B = 3, N = cell.hidden_size();
  Matrix<double> x = random_matrix<double>(B, cell.input_size(), rng);
  CellState<double> state{random_matrix<double>(B, N, rng),
                          lstm ? random_matrix<double>(B, N, rng) : Matrix<double>()};
  const Matrix<double> up_h = random_matrix<double>(B, N, rng);
  const Matrix<double> up_c = lstm ? random_matrix<double>(B, N, rng) : Matrix<double>();
  CellCache<double> cache;
  const CellState<double> y = attend::cell_forward(cell, x, state, &cache);
  const CellState<double> ref = cell.forward(x, state);
  REQUIRE(y.h == ref.h);  // the same kernel: bit for bit
  REQUIRE(y.c == ref.c);
  CellGrad<double> grad;
  Matrix<double> dx;
  CellState<double> dprev;
  attend::cell_backward(cell, cache, CellState<double>{up_h, up_c}, grad, dx, dprev);
  const auto loss = [&] {
    const CellState<double> s = cell.forward(x, state);
    return dot(s.h, up_h) + dot(s.c, up_c);
  };
  ParameterList<double> params;
  attend::named_parameters(cell, grad, params);
  REQUIRE(params.size() == (cell.has_bias() ? 4 : 2));
  for (const auto& p : params) require_gradient(p.name(), p.value(), p.grad(), loss, options);
  require_gradient("x", x, dx, loss, options);
  require_gradient("h", state.h, dprev.h, loss, options);
  if (lstm) {
    require_gradient("c", state.c, dprev.c, loss, options);
  } else {
    REQUIRE(dprev.c.size() == 0);
  }
}

/// One whole-sequence gradient-check scenario.
struct LayerCase {
  const char* name;
  RecurrentOptions options;
  Index T, B;
  std::vector<Index> lengths;  // empty: all T
  bool given_state;            // h_0 (and c_0) given, else zeros
  bool output_upstream;        // L includes sum(output * upstream); else d_output is empty
};

RecurrentOptions opts(Index in, Index N, Index layers, bool bidirectional, bool batch_first,
                      bool bias = true, Nonlinearity act = Nonlinearity::tanh) {
  RecurrentOptions o;
  o.input_size = in;
  o.hidden_size = N;
  o.num_layers = layers;
  o.bidirectional = bidirectional;
  o.batch_first = batch_first;
  o.bias = bias;
  o.nonlinearity = act;
  return o;
}

/// Checks every parameter, the input, h_0 and c_0 of a stack against central differences,
/// with L = sum(output * up) + sum(h_n * up_h) + sum(c_n * up_c).
template <template <typename> class CellType>
void check_layer(const LayerCase& lc, const attend::GradCheckOptions& options = {}) {
  INFO(lc.name);
  constexpr bool lstm = std::is_same_v<CellType<double>, LSTMCell<double>>;
  Recurrent<double, CellType> layer(lc.options, 11);
  const RecurrentOptions& o = layer.options;
  const Index D = layer.directions(), N = o.hidden_size, slots = o.num_layers * D;
  Rng rng(7);
  Tensor<double> input = random_tensor<double>(
      o.batch_first ? Shape{lc.B, lc.T, o.input_size} : Shape{lc.T, lc.B, o.input_size}, rng);
  RecurrentState<double> initial;
  if (lc.given_state) {
    initial.h = random_tensor<double>({slots, lc.B, N}, rng);
    if (lstm) initial.c = random_tensor<double>({slots, lc.B, N}, rng);
  }
  const Shape out_shape = o.batch_first ? Shape{lc.B, lc.T, D * N} : Shape{lc.T, lc.B, D * N};
  const Tensor<double> up =
      lc.output_upstream ? random_tensor<double>(out_shape, rng) : Tensor<double>();
  const Tensor<double> up_h = random_tensor<double>({slots, lc.B, N}, rng);
  const Tensor<double> up_c =
      lstm ? random_tensor<double>({slots, lc.B, N}, rng) : Tensor<double>();
  RecurrentCache<double> cache;
  const RecurrentOutput<double> y =
      attend::recurrent_forward(layer, input, initial, lc.lengths, &cache);
  RecurrentGrad<double> grad;
  const RecurrentInputGrads<double> d =
      attend::recurrent_backward(layer, cache, up, up_h, up_c, grad);
  const auto loss = [&] {
    const RecurrentOutput<double> r = layer.forward(input, initial, lc.lengths);
    return (up.size() ? dot(r.output.flat(), up.flat()) : 0.0) + dot(r.h_n.flat(), up_h.flat()) +
           (lstm ? dot(r.c_n.flat(), up_c.flat()) : 0.0);
  };
  REQUIRE(std::abs(loss() - ((up.size() ? dot(y.output.flat(), up.flat()) : 0.0) +
                             dot(y.h_n.flat(), up_h.flat()) +
                             (lstm ? dot(y.c_n.flat(), up_c.flat()) : 0.0))) == 0.0);
  ParameterList<double> params;
  attend::named_parameters(layer, grad, params);
  REQUIRE(params.size() == slots * (o.bias ? 4 : 2));
  for (const auto& p : params) require_gradient(p.name(), p.value(), p.grad(), loss, options);
  REQUIRE(d.d_input.shape() == input.shape());
  require_gradient("input", input.flat(), d.d_input.flat(), loss, options);
  if (lc.given_state) {
    require_gradient("h_0", initial.h.flat(), d.d_h0.flat(), loss, options);
    if (lstm) require_gradient("c_0", initial.c.flat(), d.d_c0.flat(), loss, options);
  }
  // Padded steps pass no gradient to the input: exactly 0 there.
  for (Index b = 0; b < static_cast<Index>(lc.lengths.size()); ++b) {
    for (Index t = lc.lengths[static_cast<std::size_t>(b)]; t < lc.T; ++t) {
      for (Index j = 0; j < o.input_size; ++j) {
        REQUIRE((o.batch_first ? d.d_input(b, t, j) : d.d_input(t, b, j)) == 0.0);
      }
    }
  }
}

}  // namespace

// ========================================================================================
// cell_backward.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("cell_backward.hpp: LSTM cell with one unit by hand", "[grad]", float, double) {
  using S = TestType;
  // in = N = B = 1; rows of the weights in gate order i, f, g, o.
  //   W_ih = [0, 0, a, 0] with a = atanh(0.5) = 0.5493061443340548, x = 1
  //   W_hh = [0.2, 0, 0, 0], b_hh = [-0.1, 0, 0, 0], b_ih = 0, h = 0.5, c = 0.4
  // Pre-activations: i = 0.2 * 0.5 - 0.1 = 0, f = 0, g = a, o = 0, so
  //   i = f = o = sigmoid(0) = 0.5, g = tanh(a) = 0.5
  //   c' = f c + i g = 0.2 + 0.25 = 0.45;  h' = o tanh(c') = 0.5 tau, tau = tanh(0.45)
  //   = 0.4218990052500079, h' = 0.21094950262500395.
  // Backward with dL/dh' = 1, dL/dc' = 0:
  //   do_pre = tau * o (1 - o) = tau / 4 = 0.10547475131250197
  //   dc'    = o (1 - tau^2) = 0.41100061468452692 (call it k)
  //   di_pre = k g i (1 - i) = k / 8 = 0.051375076835565865
  //   df_pre = k c f (1 - f) = k / 10 = 0.041100061468452694
  //   dg_pre = k i (1 - g^2) = 0.375 k = 0.1541252305066976
  //   dc     = k f = 0.20550030734226346
  //   dx     = dpre . W_ih = a dg_pre = 0.084661936114231492
  //   dh     = dpre . W_hh = 0.2 di_pre = 0.010275015367113173
  //   d W_ih = dpre x = dpre; d W_hh = dpre h = dpre / 2; d b_ih = d b_hh = dpre.
  LSTMCell<S> cell(1, 1);
  const S a = S(0.5493061443340548);
  cell.weight_ih << S(0), S(0), a, S(0);
  cell.weight_hh << S(0.2), S(0), S(0), S(0);
  cell.bias_ih.setZero();
  cell.bias_hh << S(-0.1), S(0), S(0), S(0);
  Matrix<S> x(1, 1);
  x << S(1);
  CellState<S> state{Matrix<S>::Constant(1, 1, S(0.5)), Matrix<S>::Constant(1, 1, S(0.4))};
  CellCache<S> cache;
  const CellState<S> y = attend::cell_forward(cell, x, state, &cache);
  REQUIRE(y.c(0, 0) == Approx(0.45));
  REQUIRE(y.h(0, 0) == Approx(0.21094950262500395));
  CellGrad<S> grad;
  Matrix<S> dx;
  CellState<S> dprev;
  attend::cell_backward(cell, cache, CellState<S>{Matrix<S>::Ones(1, 1), Matrix<S>()}, grad, dx,
                        dprev);
  const double dpre[4] = {0.051375076835565865, 0.041100061468452694, 0.1541252305066976,
                          0.10547475131250197};
  for (Index r = 0; r < 4; ++r) {
    INFO("gate row " << r);
    REQUIRE(grad.weight_ih(r, 0) == Approx(dpre[r]));
    REQUIRE(grad.weight_hh(r, 0) == Approx(dpre[r] / 2));
    REQUIRE(grad.bias_ih(r) == Approx(dpre[r]));
    REQUIRE(grad.bias_hh(r) == Approx(dpre[r]));
  }
  REQUIRE(dx(0, 0) == Approx(0.084661936114231492));
  REQUIRE(dprev.h(0, 0) == Approx(0.010275015367113173));
  REQUIRE(dprev.c(0, 0) == Approx(0.20550030734226346));
}

TEST_CASE("cell_backward.hpp: every cell against central differences", "[grad]") {
  SECTION("LSTM") {
    LSTMCell<double> cell(5, 4, true, 3);
    check_cell(cell);
  }
  SECTION("LSTM without bias") {
    LSTMCell<double> cell(5, 4, false, 3);
    check_cell(cell);
  }
  SECTION("GRU") {
    GRUCell<double> cell(5, 4, true, 3);
    check_cell(cell);
  }
  SECTION("GRU without bias") {
    GRUCell<double> cell(5, 4, false, 3);
    check_cell(cell);
  }
  SECTION("RNN tanh") {
    RNNCell<double> cell(5, 4, true, Nonlinearity::tanh, 3);
    check_cell(cell);
  }
  SECTION("RNN relu") {
    RNNCell<double> cell(5, 4, true, Nonlinearity::relu, 3);
    attend::GradCheckOptions o;
    o.kink_tolerance = kKinkTol;
    check_cell(cell, o);
  }
}

TEMPLATE_TEST_CASE("cell_backward.hpp: gradients accumulate, input gradients are assigned",
                   "[grad]", float, double) {
  using S = TestType;
  GRUCell<S> cell(3, 2, true, 5);
  Rng rng(3);
  const Matrix<S> x = random_matrix<S>(2, 3, rng);
  const CellState<S> state{random_matrix<S>(2, 2, rng), Matrix<S>()};
  const CellState<S> up{random_matrix<S>(2, 2, rng), Matrix<S>()};
  CellCache<S> cache;
  attend::cell_forward(cell, x, state, &cache);
  CellGrad<S> once, twice;
  Matrix<S> dx1, dx2;
  CellState<S> d1, d2;
  attend::cell_backward(cell, cache, up, once, dx1, d1);
  attend::cell_backward(cell, cache, up, twice, dx2, d2);
  attend::cell_backward(cell, cache, up, twice, dx2, d2);
  REQUIRE(twice.weight_ih == S(2) * once.weight_ih);  // x + x == 2x exactly in floating point
  REQUIRE(twice.weight_hh == S(2) * once.weight_hh);
  REQUIRE(twice.bias_ih == S(2) * once.bias_ih);
  REQUIRE(twice.bias_hh == S(2) * once.bias_hh);
  REQUIRE(dx2 == dx1);
  REQUIRE(d2.h == d1.h);
}

TEMPLATE_TEST_CASE("cell_backward.hpp: errors name the argument", "[grad]", float, double) {
  using S = TestType;
  LSTMCell<S> cell(3, 4);
  CellCache<S> cache;
  CellGrad<S> grad;
  Matrix<S> dx;
  CellState<S> dprev;
  const CellState<S> dnext{Matrix<S>::Zero(2, 4), Matrix<S>::Zero(2, 4)};
  REQUIRE_THROWS_AS(attend::cell_backward(cell, cache, dnext, grad, dx, dprev),
                    attend::value_error);
  REQUIRE_THROWS_WITH(attend::cell_backward(cell, cache, dnext, grad, dx, dprev),
                      "cell_backward: cache is [0, 0] gates, expected [B, 16] filled by "
                      "cell_forward with this cell");
  const CellState<S> state{Matrix<S>::Zero(2, 4), Matrix<S>::Zero(2, 4)};
  attend::cell_forward(cell, Matrix<S>(Matrix<S>::Ones(2, 3)), state, &cache);
  const CellState<S> bad_h{Matrix<S>::Zero(2, 3), Matrix<S>()};
  REQUIRE_THROWS_AS(attend::cell_backward(cell, cache, bad_h, grad, dx, dprev),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::cell_backward(cell, cache, bad_h, grad, dx, dprev),
                      "cell_backward: dnext.h is [2, 3], expected [2, 4]");
  const CellState<S> bad_c{Matrix<S>(), Matrix<S>::Zero(1, 4)};
  REQUIRE_THROWS_WITH(attend::cell_backward(cell, cache, bad_c, grad, dx, dprev),
                      "cell_backward: dnext.c is [1, 4], expected [2, 4]");
  CellGrad<S> wrong;
  wrong.weight_ih = Matrix<S>::Zero(4, 3);
  REQUIRE_THROWS_AS(attend::cell_backward(cell, cache, dnext, wrong, dx, dprev),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::cell_backward(cell, cache, dnext, wrong, dx, dprev),
                      "cell_backward: grad.weight_ih is [4, 3], expected [16, 3]");
  GRUCell<S> gru(3, 4);
  CellCache<S> gcache;
  attend::cell_forward(gru, Matrix<S>(Matrix<S>::Ones(2, 3)),
                       CellState<S>{Matrix<S>::Zero(2, 4), Matrix<S>()}, &gcache);
  CellGrad<S> ggrad;
  REQUIRE_THROWS_AS(attend::cell_backward(gru, gcache, dnext, ggrad, dx, dprev),
                    attend::value_error);
  REQUIRE_THROWS_WITH(attend::cell_backward(gru, gcache, dnext, ggrad, dx, dprev),
                      "cell_backward: dnext.c is [2, 4], expected empty (the cell has no cell "
                      "state)");
  // cell_forward checks as the cell's forward.
  REQUIRE_THROWS_WITH(attend::cell_forward(cell, Matrix<S>(Matrix<S>::Ones(2, 5)), state, &cache),
                      "LSTMCell::forward: input is [2, 5], expected [B, 3] (input_size)");
}

// ========================================================================================
// recurrent_backward.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("recurrent_backward.hpp: recurrent_forward returns forward's results", "[grad]",
                   float, double) {
  using S = TestType;
  Rng rng(9);
  const auto same = [&](auto& layer, const std::vector<Index>& lengths, bool state) {
    const RecurrentOptions& o = layer.options;
    const Index T = 4, B = 3, slots = o.num_layers * layer.directions();
    const Tensor<S> x = random_tensor<S>(
        o.batch_first ? Shape{B, T, o.input_size} : Shape{T, B, o.input_size}, rng);
    RecurrentState<S> initial;
    if (state) {
      initial.h = random_tensor<S>({slots, B, o.hidden_size}, rng);
      if (layer.gate_count() == 4) initial.c = random_tensor<S>({slots, B, o.hidden_size}, rng);
    }
    RecurrentCache<S> cache;
    const RecurrentOutput<S> a = attend::recurrent_forward(layer, x, initial, lengths, &cache);
    const RecurrentOutput<S> b = layer.forward(x, initial, lengths);
    REQUIRE(a.output.flat() == b.output.flat());  // the same kernel: bit for bit
    REQUIRE(a.h_n.flat() == b.h_n.flat());
    REQUIRE(a.c_n.flat() == b.c_n.flat());
  };
  attend::LSTM<S> lstm(opts(3, 4, 2, true, false), 1);
  same(lstm, {4, 1, 3}, true);
  attend::GRU<S> gru(opts(3, 4, 2, true, true), 2);
  same(gru, {2, 4, 3}, true);
  attend::RNN<S> rnn(opts(3, 4, 1, false, true, false, Nonlinearity::relu), 3);
  same(rnn, {}, false);
}

TEST_CASE("recurrent_backward.hpp: every parameter and input against central differences",
          "[grad]") {
  SECTION("LSTM, 2 layers bidirectional, variable lengths, h_0 and c_0 given") {
    check_layer<LSTMCell>({"lstm bidir", opts(3, 4, 2, true, false), 5, 3, {5, 2, 4}, true, true});
  }
  SECTION("LSTM, batch_first, no bias, zero state, all steps") {
    check_layer<LSTMCell>({"lstm bf", opts(3, 4, 2, false, true, false), 4, 2, {}, false, true});
  }
  SECTION("LSTM, only h_n and c_n enter the loss (d_output empty), lengths < T") {
    check_layer<LSTMCell>({"lstm state", opts(2, 3, 1, true, true), 5, 3, {3, 4, 1}, true, false});
  }
  SECTION("GRU, 2 layers bidirectional, batch_first, lengths, h_0 given") {
    check_layer<GRUCell>({"gru bidir", opts(3, 4, 2, true, true), 5, 3, {3, 5, 1}, true, true});
  }
  SECTION("GRU, 1 layer, no bias, zero state") {
    check_layer<GRUCell>({"gru", opts(3, 4, 1, false, false, false), 4, 2, {}, false, true});
  }
  SECTION("RNN tanh, 2 layers bidirectional, lengths, h_0 given") {
    check_layer<RNNCell>({"rnn tanh", opts(3, 4, 2, true, false), 5, 3, {4, 5, 2}, true, true});
  }
  SECTION("RNN relu, 2 layers bidirectional, batch_first, lengths") {
    attend::GradCheckOptions o;
    o.kink_tolerance = kKinkTol;
    check_layer<RNNCell>({"rnn relu",
                          opts(3, 4, 2, true, true, true, Nonlinearity::relu),
                          5,
                          3,
                          {5, 1, 3},
                          true,
                          true},
                         o);
  }
}

TEST_CASE("recurrent_backward.hpp: one-layer BPTT equals chained cell backwards", "[grad]") {
  // The layer's batched time loop against cell_forward / cell_backward step by step.
  const Index T = 4, B = 2, in = 3, N = 3;
  attend::LSTM<double> layer(opts(in, N, 1, false, false), 4);
  const LSTMCell<double>& cell = layer.cells[0];
  Rng rng(5);
  const Tensor<double> x = random_tensor<double>({T, B, in}, rng);
  const Tensor<double> up = random_tensor<double>({T, B, N}, rng);
  RecurrentCache<double> cache;
  attend::recurrent_forward(layer, x, {}, {}, &cache);
  RecurrentGrad<double> lg;
  const RecurrentInputGrads<double> ld =
      attend::recurrent_backward(layer, cache, up, Tensor<double>(), Tensor<double>(), lg);

  std::vector<CellCache<double>> steps(T);
  CellState<double> s{Matrix<double>::Zero(B, N), Matrix<double>::Zero(B, N)};
  for (Index t = 0; t < T; ++t) s = attend::cell_forward(cell, x.matrix(t), s, &steps[t]);
  CellGrad<double> cg;
  CellState<double> d{Matrix<double>::Zero(B, N), Matrix<double>::Zero(B, N)};
  Tensor<double> dx({T, B, in});
  for (Index t = T - 1; t >= 0; --t) {
    d.h += up.matrix(t);  // h_t feeds the output at t and the next step
    Matrix<double> dx_t;
    CellState<double> prev;
    attend::cell_backward(cell, steps[t], d, cg, dx_t, prev);
    dx.matrix(t) = dx_t;
    d = prev;
  }
  REQUIRE(attend::relative_error(lg.cells[0].weight_ih, cg.weight_ih) < kSameMathTol);
  REQUIRE(attend::relative_error(lg.cells[0].weight_hh, cg.weight_hh) < kSameMathTol);
  REQUIRE(attend::relative_error(lg.cells[0].bias_ih, cg.bias_ih) < kSameMathTol);
  REQUIRE(attend::relative_error(lg.cells[0].bias_hh, cg.bias_hh) < kSameMathTol);
  REQUIRE(attend::relative_error(ld.d_input.flat(), dx.flat()) < kSameMathTol);
  REQUIRE(attend::relative_error(ld.d_h0.as_matrix(), d.h) < kSameMathTol);
  REQUIRE(attend::relative_error(ld.d_c0.as_matrix(), d.c) < kSameMathTol);
}

TEST_CASE("recurrent_backward.hpp: float matches double", "[grad]") {
  const RecurrentOptions o = opts(3, 4, 2, true, false);
  attend::LSTM<float> lf(o, 8);
  attend::LSTM<double> ld(o, 8);
  for (std::size_t i = 0; i < lf.cells.size(); ++i) {  // the same float-rounded parameters
    ld.cells[i].weight_ih = lf.cells[i].weight_ih.cast<double>();
    ld.cells[i].weight_hh = lf.cells[i].weight_hh.cast<double>();
    ld.cells[i].bias_ih = lf.cells[i].bias_ih.cast<double>();
    ld.cells[i].bias_hh = lf.cells[i].bias_hh.cast<double>();
  }
  Rng rng(6);
  const std::vector<Index> lengths{5, 3, 4};
  const Tensor<float> x = random_tensor<float>({5, 3, 3}, rng);
  const Tensor<float> h0 = random_tensor<float>({4, 3, 4}, rng);
  const Tensor<float> c0 = random_tensor<float>({4, 3, 4}, rng);
  const Tensor<float> up = random_tensor<float>({5, 3, 8}, rng);
  const Tensor<float> up_h = random_tensor<float>({4, 3, 4}, rng);
  const Tensor<float> up_c = random_tensor<float>({4, 3, 4}, rng);
  RecurrentCache<float> cf;
  RecurrentCache<double> cd;
  attend::recurrent_forward(lf, x, {h0, c0}, lengths, &cf);
  attend::recurrent_forward(ld, x.cast<double>(), {h0.cast<double>(), c0.cast<double>()}, lengths,
                            &cd);
  RecurrentGrad<float> gf;
  RecurrentGrad<double> gd;
  const auto df = attend::recurrent_backward(lf, cf, up, up_h, up_c, gf);
  const auto dd = attend::recurrent_backward(ld, cd, up.cast<double>(), up_h.cast<double>(),
                                             up_c.cast<double>(), gd);
  ParameterList<float> pf;
  ParameterList<double> pd;
  attend::named_parameters(lf, gf, pf);
  attend::named_parameters(ld, gd, pd);
  for (Index i = 0; i < pf.size(); ++i) {
    const double e = attend::relative_error(pf[i].grad(), pd[i].grad());
    INFO(pf[i].name() << ": " << e);
    REQUIRE(e < kFloatVsDouble);
  }
  REQUIRE(attend::relative_error(df.d_input.flat(), dd.d_input.flat()) < kFloatVsDouble);
  REQUIRE(attend::relative_error(df.d_h0.flat(), dd.d_h0.flat()) < kFloatVsDouble);
  REQUIRE(attend::relative_error(df.d_c0.flat(), dd.d_c0.flat()) < kFloatVsDouble);
}

TEMPLATE_TEST_CASE("recurrent_backward.hpp: gradients accumulate over two backwards", "[grad]",
                   float, double) {
  using S = TestType;
  attend::LSTM<S> layer(opts(3, 4, 2, true, true), 2);
  Rng rng(4);
  const Tensor<S> x = random_tensor<S>({3, 5, 3}, rng);
  const Tensor<S> up = random_tensor<S>({3, 5, 8}, rng);
  RecurrentCache<S> cache;
  attend::recurrent_forward(layer, x, {}, {5, 2, 4}, &cache);
  RecurrentGrad<S> once, twice;
  const auto d1 = attend::recurrent_backward(layer, cache, up, Tensor<S>(), Tensor<S>(), once);
  attend::recurrent_backward(layer, cache, up, Tensor<S>(), Tensor<S>(), twice);
  const auto d2 = attend::recurrent_backward(layer, cache, up, Tensor<S>(), Tensor<S>(), twice);
  ParameterList<S> p1, p2;
  attend::named_parameters(layer, once, p1);
  attend::named_parameters(layer, twice, p2);
  REQUIRE(p1.size() == 16);
  for (Index i = 0; i < p1.size(); ++i) {
    INFO(p1[i].name());
    REQUIRE(p2[i].grad() == S(2) * p1[i].grad());  // x + x == 2x exactly
  }
  REQUIRE(d2.d_input.flat() == d1.d_input.flat());  // assigned, not accumulated
  REQUIRE(d2.d_h0.flat() == d1.d_h0.flat());
}

TEMPLATE_TEST_CASE("recurrent_backward.hpp: named_parameters in nn.LSTM order", "[grad]", float,
                   double) {
  using S = TestType;
  attend::GRU<S> layer(opts(3, 4, 2, true, false), 1);
  RecurrentGrad<S> grad;
  ParameterList<S> params;
  attend::named_parameters(layer, grad, params, "enc.");
  const std::vector<std::string> want{
      "enc.weight_ih_l0",         "enc.weight_hh_l0",         "enc.bias_ih_l0",
      "enc.bias_hh_l0",           "enc.weight_ih_l0_reverse", "enc.weight_hh_l0_reverse",
      "enc.bias_ih_l0_reverse",   "enc.bias_hh_l0_reverse",   "enc.weight_ih_l1",
      "enc.weight_hh_l1",         "enc.bias_ih_l1",           "enc.bias_hh_l1",
      "enc.weight_ih_l1_reverse", "enc.weight_hh_l1_reverse", "enc.bias_ih_l1_reverse",
      "enc.bias_hh_l1_reverse"};
  REQUIRE(params.size() == static_cast<Index>(want.size()));
  for (Index i = 0; i < params.size(); ++i)
    REQUIRE(params[i].name() == want[static_cast<std::size_t>(i)]);
  REQUIRE(params.at("enc.weight_ih_l1").shape() == Shape{12, 8});
  REQUIRE(params.at("enc.bias_hh_l0_reverse").shape() == Shape{12});
}

TEMPLATE_TEST_CASE("recurrent_backward.hpp: errors name the argument", "[grad]", float, double) {
  using S = TestType;
  attend::LSTM<S> lstm(opts(3, 4, 2, true, false), 1);
  RecurrentCache<S> cache;
  RecurrentGrad<S> grad;
  const Tensor<S> none;
  REQUIRE_THROWS_AS(attend::recurrent_backward(lstm, cache, none, none, none, grad),
                    attend::value_error);
  REQUIRE_THROWS_WITH(attend::recurrent_backward(lstm, cache, none, none, none, grad),
                      "recurrent_backward: cache is empty, expected one filled by "
                      "recurrent_forward with this layer");
  Tensor<S> x({5, 3, 3});
  x.fill(S(0.5));
  attend::recurrent_forward(lstm, x, {}, {}, &cache);
  REQUIRE_THROWS_AS(attend::recurrent_backward(lstm, cache, Tensor<S>({5, 3, 7}), none, none, grad),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(
      attend::recurrent_backward(lstm, cache, Tensor<S>({5, 3, 7}), none, none, grad),
      "recurrent_backward: d_output is [5, 3, 7], expected [5, 3, 8] (the forward's output)");
  REQUIRE_THROWS_WITH(
      attend::recurrent_backward(lstm, cache, none, Tensor<S>({1, 3, 4}), none, grad),
      "recurrent_backward: d_h_n is [1, 3, 4], expected [4, 3, 4] (num_layers * directions, B, "
      "hidden_size)");
  REQUIRE_THROWS_WITH(
      attend::recurrent_backward(lstm, cache, none, none, Tensor<S>({4, 2, 4}), grad),
      "recurrent_backward: d_c_n is [4, 2, 4], expected [4, 3, 4] (num_layers * directions, B, "
      "hidden_size)");
  attend::GRU<S> gru(opts(3, 4, 1, false, false), 1);
  RecurrentCache<S> gcache;
  attend::recurrent_forward(gru, x, {}, {}, &gcache);
  RecurrentGrad<S> ggrad;
  REQUIRE_THROWS_AS(
      attend::recurrent_backward(gru, gcache, none, none, Tensor<S>({1, 3, 4}), ggrad),
      attend::value_error);
  REQUIRE_THROWS_WITH(
      attend::recurrent_backward(gru, gcache, none, none, Tensor<S>({1, 3, 4}), ggrad),
      "recurrent_backward: d_c_n is [1, 3, 4], expected empty (GRU has no cell state)");
  // A cache of another layer (the GRU's 1 layer against the LSTM's 2).
  REQUIRE_THROWS_WITH(attend::recurrent_backward(lstm, gcache, none, none, none, grad),
                      "recurrent_backward: cache is foreign, expected one filled by "
                      "recurrent_forward with this layer");
  attend::GRU<S> gru2(opts(3, 4, 2, true, false), 1);  // same sizes, another cell type
  RecurrentGrad<S> g2;
  REQUIRE_THROWS_WITH(attend::recurrent_backward(gru2, cache, none, none, none, g2),
                      "recurrent_backward: cache is foreign, expected one filled by "
                      "recurrent_forward with this layer");
  // recurrent_forward checks as the layer's forward, with its messages.
  REQUIRE_THROWS_AS(attend::recurrent_forward(lstm, Tensor<S>({5, 3, 2}), {}, {}, &cache),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::recurrent_forward(lstm, Tensor<S>({5, 3, 2}), {}, {}, &cache),
                      "LSTM::forward: input is [5, 3, 2], expected [T, B, 3] (input_size) with "
                      "B, T >= 1");
  REQUIRE_THROWS_WITH(attend::recurrent_forward(lstm, x, {}, {5, 6, 1}, &cache),
                      "LSTM::forward: lengths[1] is 6, expected in [1, 5] (T)");
}
