// SPDX-License-Identifier: MIT
// Tests of the network ops of ops/: Linear, LayerNorm, activations and dropout (hand-computed,
// gradient, statistical and error-path cases). Softmax is tested in ops_test.cpp.
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/ops/activation.hpp"
#include "attend/ops/dropout.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <type_traits>

#include "test_util.hpp"

namespace {

using attend::Activation;
using attend::Index;
using attend::Matrix;
using attend::Rng;
using attend::Tensor;
using attend::Vector;

using attend_test::dot_loss;
using attend_test::kGradTol;
using attend_test::mat;
using attend_test::random_matrix;
using attend_test::require_close;
using attend_test::vec;

// ---- tolerances ------------------------------------------------------------------------

/// Hand values are written with 10 decimals (rounding error <= 5e-11); float results
/// carry a few ulps of values up to ~4 (ulp 4.8e-7).
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 2e-6 : 1e-10;

/// The central-difference step of numeric_grad below; attend_test::kGradTol, the bound on
/// ||analytic - numeric|| / ||analytic + numeric||, is derived for this h = 1e-6.
constexpr double kStep = 1e-6;

/// The same arithmetic reached through two entry points (module vs free function, tensor
/// vs matrix): only Eigen's summation order may differ, a few ulps of O(1) values.
template <typename S>
constexpr double kSameTol = std::is_same_v<S, float> ? 1e-6 : 1e-14;

// ---- helpers ---------------------------------------------------------------------------

/// Numerical gradient of `loss` with respect to every entry of `p` (central differences).
template <typename Derived>
Matrix<double> numeric_grad(Eigen::MatrixBase<Derived>& p, const std::function<double()>& loss) {
  Matrix<double> g(p.rows(), p.cols());
  for (Index i = 0; i < p.rows(); ++i) {
    for (Index j = 0; j < p.cols(); ++j) {
      const double keep = p(i, j);
      p(i, j) = keep + kStep;
      const double up = loss();
      p(i, j) = keep - kStep;
      const double down = loss();
      p(i, j) = keep;
      g(i, j) = (up - down) / (2 * kStep);
    }
  }
  return g;
}

/// ||a - b|| / ||a + b|| (mlpack CheckGradient), 0 when both are 0.
template <typename A, typename B>
double grad_error(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const double denom = (a + b).norm();
  return denom == 0.0 ? 0.0 : (a - b).norm() / denom;
}

// ========================================================================================
// linear.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("linear.hpp: Linear forward by hand, matrix and tensor forms", "[ops]", float,
                   double) {
  using S = TestType;
  attend::Linear<S> lin(3, 2, true, 7);
  lin.weight = mat<S>(2, 3, {1, 2, 3, 4, 5, 6});  // [out = 2, in = 3]
  lin.bias = vec<S>({0.5, -1});
  const Matrix<S> x = mat<S>(2, 3, {1, 0, -1, 2, 1, 0});
  // row 0: [1*1 + 2*0 + 3*(-1) + 0.5, 4*1 + 5*0 + 6*(-1) - 1] = [-1.5, -3]
  // row 1: [1*2 + 2*1 + 3*0 + 0.5,   4*2 + 5*1 + 6*0 - 1]    = [4.5, 12]
  const Matrix<S> want = mat<S>(2, 2, {-1.5, -3, 4.5, 12});
  require_close(lin.forward(x), want, kHandTol<S>);
  require_close(attend::linear_forward(x, lin.weight, lin.bias), want, kHandTol<S>);

  // [2, 1, 3] -> [2, 1, 2]: any leading shape, rows in order.
  Tensor<S> xt({2, 1, 3});
  xt.as_matrix() = x;
  const Tensor<S> yt = lin.forward(xt);
  REQUIRE(yt.shape() == attend::Shape{2, 1, 2});
  require_close(yt.as_matrix(), want, kHandTol<S>);

  // Without bias: row 0 = [-2, -2], row 1 = [4, 13].
  require_close(attend::linear_forward(x, lin.weight), mat<S>(2, 2, {-2, -2, 4, 13}), kHandTol<S>);
}

TEMPLATE_TEST_CASE("linear.hpp: linear_backward by hand, and gradients accumulate", "[ops][grad]",
                   float, double) {
  using S = TestType;
  const Matrix<S> w = mat<S>(2, 3, {1, 2, 3, 4, 5, 6});
  const Matrix<S> x = mat<S>(2, 3, {1, 0, -1, 2, 1, 0});
  const Matrix<S> dy = mat<S>(2, 2, {1, 0, 0, 1});
  Matrix<S> dw;
  Vector<S> db;
  // dx = dy W = W (dy is the identity); dW = dy^T x = x; db = column sums of dy = [1, 1].
  const Matrix<S> dx = attend::linear_backward(x, w, dy, dw, &db);
  require_close(dx, w, kHandTol<S>);
  require_close(dw, x, kHandTol<S>);
  require_close(db, vec<S>({1, 1}), kHandTol<S>);
  // A second call adds: dW = 2x, db = [2, 2]; dx is assigned, not accumulated.
  const Matrix<S> dx2 = attend::linear_backward(x, w, dy, dw, &db);
  require_close(dx2, w, kHandTol<S>);
  require_close(dw, Matrix<S>(2 * x), kHandTol<S>);
  require_close(db, vec<S>({2, 2}), kHandTol<S>);
}

TEST_CASE("linear.hpp: linear_backward matches central differences", "[ops][grad]") {
  Rng rng(11);
  Matrix<double> x = random_matrix(4, 5, rng), w = random_matrix(3, 5, rng);
  Vector<double> b = random_matrix(3, 1, rng);
  const Matrix<double> up = random_matrix(4, 3, rng);
  const auto loss = [&] { return dot_loss(attend::linear_forward(x, w, b), up); };
  Matrix<double> dw;
  Vector<double> db;
  const Matrix<double> dx = attend::linear_backward(x, w, up, dw, &db);
  CHECK(grad_error(dx, numeric_grad(x, loss)) < kGradTol);
  CHECK(grad_error(dw, numeric_grad(w, loss)) < kGradTol);
  CHECK(grad_error(db, numeric_grad(b, loss)) < kGradTol);
}

TEMPLATE_TEST_CASE("linear.hpp: PyTorch initialisation, seeded", "[ops]", float, double) {
  using S = TestType;
  const attend::Linear<S> a(16, 4, true, 3), b(16, 4, true, 3), c(16, 4, true, 4);
  const double bound = 1.0 / std::sqrt(16.0);  // 1/sqrt(in_features) = 0.25
  REQUIRE(a.weight.rows() == 4);
  REQUIRE(a.weight.cols() == 16);
  REQUIRE(a.bias.size() == 4);
  CHECK(a.weight.cwiseAbs().maxCoeff() <= S(bound));
  CHECK(a.bias.cwiseAbs().maxCoeff() <= S(bound));
  CHECK(a.weight.cwiseAbs().maxCoeff() > S(0.5 * bound));  // really spread over the range
  CHECK(a.weight == b.weight);
  CHECK(a.bias == b.bias);
  CHECK(a.weight != c.weight);
  const attend::Linear<S> nb(16, 4, false);
  CHECK_FALSE(nb.has_bias());
  CHECK(nb.bias.size() == 0);
}

TEMPLATE_TEST_CASE("linear.hpp: load_state_dict by PyTorch names, all or nothing", "[ops]", float,
                   double) {
  using S = TestType;
  attend::SafeTensorsWriter wr;
  wr.add("fc.weight", Tensor<S>::from_matrix(mat<S>(2, 3, {1, 2, 3, 4, 5, 6})));
  wr.add("fc.bias", Tensor<S>::from_matrix(Matrix<S>(mat<S>(1, 2, {0.5, -1}))).reshaped({2}));
  wr.add("bad.weight", Tensor<S>::from_matrix(mat<S>(3, 2, {1, 2, 3, 4, 5, 6})));
  const attend::SafeTensors st = attend::SafeTensors::parse(wr.to_bytes(), "mem");
  attend::Linear<S> lin(3, 2);
  lin.load_state_dict(st, "fc.");
  require_close(lin.forward(mat<S>(1, 3, {1, 0, -1})), mat<S>(1, 2, {-1.5, -3}), kHandTol<S>);

  attend::Linear<S> other(3, 2, true, 9);
  const Matrix<S> before = other.weight;
  REQUIRE_THROWS_AS(other.load_state_dict(st, "bad."), attend::shape_error);
  REQUIRE_THROWS_WITH(other.load_state_dict(st, "bad."),
                      "load_matrix: 'bad.weight' in mem is [3, 2], expected [2, 3]");
  REQUIRE_THROWS_AS(other.load_state_dict(st, "nope."), attend::index_error);
  REQUIRE_THROWS_WITH(other.load_state_dict(st, "nope."),
                      "load_matrix: no parameter named 'nope.weight' in mem");
  CHECK(other.weight == before);
}

TEMPLATE_TEST_CASE("linear.hpp: bad shapes and sizes are rejected", "[ops][error]", float, double) {
  using S = TestType;
  REQUIRE_THROWS_AS(attend::Linear<S>(0, 2), attend::value_error);
  REQUIRE_THROWS_WITH(attend::Linear<S>(0, 2),
                      "Linear: in_features is 0 and out_features is 2, expected both positive");
  const attend::Linear<S> lin(3, 2);
  REQUIRE_THROWS_AS(lin.forward(Matrix<S>(Matrix<S>::Zero(2, 4))), attend::shape_error);
  REQUIRE_THROWS_WITH(lin.forward(Matrix<S>(Matrix<S>::Zero(2, 4))),
                      "Linear::forward: x is [2, 4], expected [..., 3] (in_features)");
  REQUIRE_THROWS_WITH(lin.forward(Tensor<S>({2, 5, 4})),
                      "Linear::forward: x is [2, 5, 4], expected [..., 3] (in_features)");
  REQUIRE_THROWS_WITH(
      attend::linear_forward(Matrix<S>(Matrix<S>::Zero(2, 4)), lin.weight),
      "linear_forward: x is [2, 4], expected [N, 3] (in_features of weight [2, 3])");
  REQUIRE_THROWS_WITH(attend::linear_forward(Matrix<S>(Matrix<S>::Zero(2, 3)), lin.weight,
                                             Vector<S>(Vector<S>::Zero(3))),
                      "linear_forward: bias is [3], expected [2] (out_features) or empty");
  Matrix<S> dw;
  REQUIRE_THROWS_WITH(attend::linear_backward(Matrix<S>(Matrix<S>::Zero(2, 3)), lin.weight,
                                              Matrix<S>(Matrix<S>::Zero(2, 3)), dw),
                      "linear_backward: dy is [2, 3], expected [2, 2]");
}

// ========================================================================================
// layer_norm.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("layer_norm.hpp: LayerNorm by hand", "[ops]", float, double) {
  using S = TestType;
  const Matrix<S> x = mat<S>(1, 4, {1, 2, 3, 4});
  // mean 2.5; biased var ((-1.5)^2 + (-0.5)^2 + 0.5^2 + 1.5^2) / 4 = 5 / 4 = 1.25.
  // eps 0: rstd = 1/sqrt(1.25) = 0.894427191; x_hat = [-1.5, -0.5, 0.5, 1.5] * rstd
  //   = [-1.341640786, -0.447213595, 0.447213595, 1.341640786]
  attend::LayerNorm<S> ln(4, 0.0);
  require_close(ln.forward(x),
                mat<S>(1, 4, {-1.3416407865, -0.4472135955, 0.4472135955, 1.3416407865}),
                kHandTol<S>);
  // weight [1, 2, 1, 2], bias [0, 0, 1, 1]: [-1.341640786, -0.894427191, 1.447213595, 3.683281573]
  ln.weight = vec<S>({1, 2, 1, 2});
  ln.bias = vec<S>({0, 0, 1, 1});
  require_close(ln.forward(x),
                mat<S>(1, 4, {-1.3416407865, -0.8944271910, 1.4472135955, 3.6832815730}),
                kHandTol<S>);
  // eps 0.75, no affine: var + eps = 2, rstd = 1/sqrt(2);
  //   [-1.5, -0.5, 0.5, 1.5] / sqrt(2) = [-1.060660172, -0.353553391, 0.353553391, 1.060660172]
  const attend::LayerNorm<S> plain(4, 0.75, false);
  CHECK_FALSE(plain.elementwise_affine());
  require_close(plain.forward(x),
                mat<S>(1, 4, {-1.0606601718, -0.3535533906, 0.3535533906, 1.0606601718}),
                kHandTol<S>);
  // A constant row has x - mean = 0: the output is the bias alone (no NaN with eps > 0).
  attend::LayerNorm<S> c(3);
  c.bias = vec<S>({0.25, -0.5, 1});
  require_close(c.forward(mat<S>(1, 3, {3, 3, 3})), mat<S>(1, 3, {0.25, -0.5, 1}), kHandTol<S>);
}

TEMPLATE_TEST_CASE("layer_norm.hpp: defaults, tensor form and in-place form agree", "[ops]", float,
                   double) {
  using S = TestType;
  const attend::LayerNorm<S> ln(5);
  CHECK(ln.eps() == 1e-5);
  CHECK(ln.normalized_shape() == 5);
  CHECK(ln.weight == Vector<S>::Ones(5));
  CHECK(ln.bias == Vector<S>::Zero(5));
  Rng rng(5);
  Tensor<S> x({2, 3, 5});
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<S>(rng.uniform(-3, 3));
  const Tensor<S> y = ln.forward(x);
  REQUIRE(y.shape() == x.shape());
  require_close(y.as_matrix(), ln.forward(Matrix<S>(x.as_matrix())), kSameTol<S>);
  // Each row of y has mean 0 and biased variance var / (var + eps) (just under 1).
  for (Index r = 0; r < 6; ++r) {
    const auto row = x.as_matrix().row(r).template cast<double>();
    const double var = (row.array() - row.mean()).square().mean();
    const auto out = y.as_matrix().row(r).template cast<double>();
    CHECK(std::abs(out.mean()) < 10 * kSameTol<S>);
    CHECK(std::abs((out.array() - out.mean()).square().mean() - var / (var + 1e-5)) <
          10 * kSameTol<S>);
  }
}

TEST_CASE("layer_norm.hpp: layer_norm_backward matches central differences", "[ops][grad]") {
  Rng rng(21);
  Matrix<double> x = random_matrix(3, 6, rng, 2.0);
  Vector<double> w = random_matrix(6, 1, rng), b = random_matrix(6, 1, rng);
  const Matrix<double> up = random_matrix(3, 6, rng);
  for (const bool affine : {true, false}) {
    const Vector<double> none;
    const auto loss = [&] {
      return dot_loss(attend::layer_norm_forward(x, affine ? w : none, affine ? b : none, 1e-3),
                      up);
    };
    attend::LayerNormCache<double> cache;
    attend::layer_norm_forward(x, affine ? w : none, affine ? b : none, 1e-3, &cache);
    Vector<double> dw, db;
    const Matrix<double> dx = attend::layer_norm_backward(
        cache, affine ? w : none, up, affine ? &dw : nullptr, affine ? &db : nullptr);
    CHECK(grad_error(dx, numeric_grad(x, loss)) < kGradTol);
    if (affine) {
      CHECK(grad_error(dw, numeric_grad(w, loss)) < kGradTol);
      CHECK(grad_error(db, numeric_grad(b, loss)) < kGradTol);
    }
  }
}

TEMPLATE_TEST_CASE("layer_norm.hpp: bad sizes, eps and shapes are rejected", "[ops][error]", float,
                   double) {
  using S = TestType;
  REQUIRE_THROWS_AS(attend::LayerNorm<S>(0), attend::value_error);
  REQUIRE_THROWS_WITH(attend::LayerNorm<S>(0),
                      "LayerNorm: normalized_shape is 0, expected a positive size");
  REQUIRE_THROWS_AS(attend::LayerNorm<S>(4, -1.0), attend::value_error);
  REQUIRE_THROWS_WITH(attend::LayerNorm<S>(4, -1.0),
                      "LayerNorm: eps is -1.000000, expected a finite value >= 0");
  const attend::LayerNorm<S> ln(4);
  REQUIRE_THROWS_AS(ln.forward(Matrix<S>(Matrix<S>::Zero(2, 3))), attend::shape_error);
  REQUIRE_THROWS_WITH(ln.forward(Matrix<S>(Matrix<S>::Zero(2, 3))),
                      "LayerNorm::forward: x is [2, 3], expected [..., 4] (normalized_shape)");
  REQUIRE_THROWS_WITH(ln.forward(Tensor<S>({2, 2, 3})),
                      "LayerNorm::forward: x is [2, 2, 3], expected [..., 4] (normalized_shape)");
  REQUIRE_THROWS_WITH(attend::layer_norm_forward(Matrix<S>(Matrix<S>::Zero(2, 3)),
                                                 Vector<S>(Vector<S>::Ones(4)), Vector<S>()),
                      "layer_norm_forward: weight is [4], expected [3] (the last dimension of x "
                      "[2, 3]) or empty");
  attend::LayerNormCache<S> cache;
  attend::layer_norm_forward(Matrix<S>(Matrix<S>::Ones(2, 3)), Vector<S>(), Vector<S>(), 1e-5,
                             &cache);
  REQUIRE_THROWS_WITH(
      attend::layer_norm_backward(cache, Vector<S>(), Matrix<S>(Matrix<S>::Zero(3, 3))),
      "layer_norm_backward: dy is [3, 3], expected [2, 3] (the cached x_hat)");
}

// ========================================================================================
// activation.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("activation.hpp: relu and gelu (exact and tanh) by hand", "[ops]", float,
                   double) {
  using S = TestType;
  const Matrix<S> x = mat<S>(1, 5, {1, -1, 2, -0.5, 0});
  require_close(attend::relu(x), mat<S>(1, 5, {1, 0, 2, 0, 0}), 0.0);
  // exact: gelu(x) = 0.5 x (1 + erf(x / sqrt 2)):
  //   erf(1/sqrt2) = 0.6826894921 -> gelu(1) = 0.5 * 1.6826894921 = 0.8413447461
  //   gelu(-1) = -0.5 * (1 - 0.6826894921) = -0.1586552539
  //   erf(2/sqrt2) = 0.9544997361 -> gelu(2) = 1.9544997361
  //   erf(-0.5/sqrt2) = -0.3829249225 -> gelu(-0.5) = -0.25 * 0.6170750775 = -0.1542687694
  require_close(attend::gelu(x),
                mat<S>(1, 5, {0.8413447461, -0.1586552539, 1.9544997361, -0.1542687694, 0}),
                kHandTol<S>);
  // tanh: u = sqrt(2/pi) (x + 0.044715 x^3) = 0.7978845608 * (x + 0.044715 x^3):
  //   x = 1: u = 0.7978845608 * 1.044715 = 0.8335619689, tanh = 0.6823839812 -> 0.8411919906
  //   x = -1: -0.5 * (1 - 0.6823839812) = -0.1588080094
  //   x = 2: u = 0.7978845608 * 2.35772 = 1.8811883867, tanh = 0.9545976941 -> 1.9545976941
  //   x = -0.5: u = -0.4034019564, tanh = -0.3828560393 -> -0.25 * 0.6171439607 = -0.1542859902
  require_close(attend::gelu(x, true),
                mat<S>(1, 5, {0.8411919906, -0.1588080094, 1.9545976941, -0.1542859902, 0}),
                kHandTol<S>);
  require_close(attend::activation(x, Activation::gelu_tanh), attend::gelu(x, true), 0.0);
  CHECK(attend::activation_from_string("gelu") == Activation::gelu);
  CHECK(std::string(attend::to_string(Activation::relu)) == "relu");
}

TEST_CASE("activation.hpp: backwards match central differences", "[ops][grad]") {
  Rng rng(31);
  Matrix<double> x = random_matrix(3, 7, rng, 3.0);
  // relu has a kink at 0: keep every input at least 0.01 away (the step is 1e-6).
  x = x.unaryExpr([](double v) { return std::abs(v) < 0.01 ? v + 0.05 : v; });
  const Matrix<double> up = random_matrix(3, 7, rng);
  for (const Activation act : {Activation::relu, Activation::gelu, Activation::gelu_tanh}) {
    INFO(attend::to_string(act));
    const auto loss = [&] { return dot_loss(attend::activation(x, act), up); };
    const Matrix<double> dx = attend::activation_backward(x, up, act);
    CHECK(grad_error(dx, numeric_grad(x, loss)) < kGradTol);
  }
}

TEST_CASE("activation.hpp: unknown names and mismatched gradients are rejected", "[ops][error]") {
  REQUIRE_THROWS_AS(attend::activation_from_string("swish"), attend::value_error);
  REQUIRE_THROWS_WITH(attend::activation_from_string("swish"),
                      "activation_from_string: name is \"swish\", expected \"relu\", \"gelu\" or "
                      "\"gelu_tanh\"");
  const Matrix<double> x = Matrix<double>::Zero(2, 3);
  REQUIRE_THROWS_WITH(attend::relu_backward(x, Matrix<double>(Matrix<double>::Zero(3, 2))),
                      "relu_backward: dy is [3, 2], expected [2, 3]");
  REQUIRE_THROWS_WITH(attend::gelu_backward(x, Matrix<double>(Matrix<double>::Zero(2, 2))),
                      "gelu_backward: dy is [2, 2], expected [2, 3]");
}

// ========================================================================================
// dropout.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("dropout.hpp: identity in evaluation and at p = 0; rng untouched", "[ops]",
                   float, double) {
  using S = TestType;
  Rng data(1);
  Matrix<S> x(4, 5);
  attend::fill_uniform(x, 1.0, data);
  attend::Dropout d(0.5);
  CHECK_FALSE(d.training);  // evaluation by default
  Rng rng(9), fresh(9);
  CHECK(d.forward(x, rng) == x);
  d.training = true;
  CHECK(attend::dropout_forward(x, 0.0, true, rng) == x);
  CHECK(rng.next() == fresh.next());  // neither call drew a number
}

TEMPLATE_TEST_CASE("dropout.hpp: inverted scaling, seeded and reproducible", "[ops][property]",
                   float, double) {
  using S = TestType;
  const double p = 0.3;
  const Matrix<S> x = Matrix<S>::Ones(200, 200);
  attend::Dropout d(p);
  d.training = true;
  Rng r1(42), r2(42), r3(43);
  attend::DropoutCache<S> cache;
  const Matrix<S> y = d.forward(x, r1, &cache);
  CHECK(d.forward(x, r2) == y);  // same seed, same mask
  CHECK(d.forward(x, r3) != y);
  // Every element is 0 or exactly x / (1 - p), as the cached mask says.
  const S kept_value = static_cast<S>(1.0 / (1.0 - p));
  Index kept = 0;
  for (Index i = 0; i < y.rows(); ++i) {
    for (Index j = 0; j < y.cols(); ++j) {
      REQUIRE((y(i, j) == S(0) || y(i, j) == kept_value));
      REQUIRE(cache.keep(i, j) == (y(i, j) != S(0)));
      kept += cache.keep(i, j) ? 1 : 0;
    }
  }
  // 40000 Bernoulli(0.7) draws: the kept fraction has sd sqrt(0.7 * 0.3 / 40000) = 0.00229;
  // 5 sd = 0.0115. The mean output (kept / 0.7) has sd 0.00327; 5 sd = 0.0164.
  const double frac = static_cast<double>(kept) / 40000.0;
  CHECK(std::abs(frac - 0.7) < 0.0115);
  CHECK(std::abs(static_cast<double>(y.template cast<double>().mean()) - 1.0) < 0.0164);
  // The stream advanced by exactly one draw per element.
  Rng skip(42);
  for (int i = 0; i < 40000; ++i) skip.uniform();
  CHECK(r1.next() == skip.next());
  // Backward: the upstream gradient flows through kept elements, scaled the same way.
  const Matrix<S> dx =
      attend::dropout_backward(cache, Matrix<S>(Matrix<S>::Constant(200, 200, S(2))));
  CHECK(dx == Matrix<S>(y * S(2)));
}

TEST_CASE("dropout.hpp: p outside [0, 1) is rejected", "[ops][error]") {
  REQUIRE_THROWS_AS(attend::Dropout(1.0), attend::value_error);
  REQUIRE_THROWS_WITH(attend::Dropout(1.0), "Dropout: p is 1, expected in [0, 1)");
  REQUIRE_THROWS_WITH(attend::Dropout(-0.1), "Dropout: p is -0.1, expected in [0, 1)");
  REQUIRE_THROWS_WITH(attend::Dropout(std::nan("")), "Dropout: p is nan, expected in [0, 1)");
  Rng rng(0);
  const Matrix<double> x = Matrix<double>::Ones(2, 2);
  REQUIRE_THROWS_WITH(attend::dropout_forward(x, 1.5, false, rng),
                      "dropout_forward: p is 1.5, expected in [0, 1)");
  attend::DropoutCache<double> cache;
  attend::dropout_forward(x, 0.5, true, rng, &cache);
  REQUIRE_THROWS_WITH(attend::dropout_backward(cache, Matrix<double>(Matrix<double>::Ones(3, 2))),
                      "dropout_backward: dy is [3, 2], expected [2, 2] (the cached mask)");
}

}  // namespace
