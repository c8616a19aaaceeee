// SPDX-License-Identifier: MIT
// Tests of train/ (gradient check, named parameters, losses, optimizers, checkpoints) and of
// the backwards they exercise: scaled dot-product attention, embedding, the ops/ backwards.
#include "attend/attention/mask.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/activation.hpp"
#include "attend/ops/dropout.hpp"
#include "attend/ops/softmax.hpp"
#include "attend/train/gradcheck.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using attend::GradCheckOptions;
using attend::Index;
using attend::Matrix;
using attend::Rng;
using attend::Tensor;
using attend::Vector;

// ---- tolerances ------------------------------------------------------------------------

/// Central differences in double with h = 1e-6: truncation O(h^2) ~ 1e-12 and cancellation
/// eps / h ~ 2e-10 relative, so the relative error of a correct backward stays near 1e-10
/// for smooth O(1) functions; 1e-7 leaves three orders of headroom and still catches any
/// wrong term (a wrong term gives errors of 1e-3 and more).
constexpr double kGradTol = 1e-7;

/// Hand values are written with 10 decimals (rounding <= 5e-11); float results carry a few
/// ulps of values up to ~10 (ulp 9.5e-7).
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 4e-6 : 1e-10;

// ---- helpers ---------------------------------------------------------------------------

template <typename A, typename B>
void require_close(const Eigen::MatrixBase<A>& got, const Eigen::MatrixBase<B>& want, double atol) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  double max_err = 0.0;
  Index bad_i = -1, bad_j = -1;
  for (Index i = 0; i < got.rows(); ++i) {
    for (Index j = 0; j < got.cols(); ++j) {
      const double g = static_cast<double>(got(i, j)), w = static_cast<double>(want(i, j));
      const double err = std::abs(g - w);
      max_err = std::max(max_err, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
      if (!(g == w || err <= atol) && bad_i < 0) {
        bad_i = i;
        bad_j = j;
      }
    }
  }
  std::ostringstream msg;
  msg.precision(17);
  msg << "max |got - want| = " << max_err << " (atol " << atol << ")";
  if (bad_i >= 0) {
    msg << "; first mismatch at [" << bad_i << ", " << bad_j << "]: got " << got(bad_i, bad_j)
        << ", want " << want(bad_i, bad_j);
  }
  INFO(msg.str());
  REQUIRE(bad_i < 0);
}

template <typename S>
Matrix<S> mat(Index rows, Index cols, std::initializer_list<double> values) {
  Matrix<S> m(rows, cols);
  auto it = values.begin();
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = static_cast<S>(*it++);
  return m;
}

template <typename S>
Vector<S> vec(std::initializer_list<double> values) {
  Vector<S> v(static_cast<Index>(values.size()));
  Index i = 0;
  for (const double x : values) v(i++) = static_cast<S>(x);
  return v;
}

Matrix<double> random_matrix(Index rows, Index cols, Rng& rng, double bound = 1.0) {
  Matrix<double> m(rows, cols);
  attend::fill_uniform(m, bound, rng);
  return m;
}

/// sum(y * upstream): the scalar loss whose gradient a backward computes from `upstream`.
template <typename A, typename B>
double dot_loss(const Eigen::MatrixBase<A>& y, const Eigen::MatrixBase<B>& upstream) {
  return (y.template cast<double>().array() * upstream.template cast<double>().array()).sum();
}

/// Runs gradcheck and requires its error below kGradTol, printing the worst element.
template <typename X, typename DA, typename F>
void require_gradient(X&& x, const Eigen::MatrixBase<DA>& analytic, F&& f,
                      const GradCheckOptions& options = {}) {
  const attend::GradCheckResult r = attend::gradcheck(x, analytic, f, options);
  INFO(r.describe());
  REQUIRE(r.error < kGradTol);
}

}  // namespace

// ========================================================================================
// gradcheck.hpp
// ========================================================================================

TEST_CASE("gradcheck.hpp: numerical gradient of sum(x^3) is 3 x^2", "[train][grad]") {
  Matrix<double> x = mat<double>(2, 2, {1, -2, 0.5, 3});
  const auto f = [&] { return x.array().cube().sum(); };
  // d/dx sum(x^3) = 3 x^2: [3, 12; 0.75, 27]. Central differences err by h^2 f''' / 6 =
  // h^2 (6) / 6 = 1e-12 here, plus cancellation ~ 1e-16 * 30 / 1e-6 = 3e-9 (f ~ 30).
  constexpr double kCentralTol = 1e-8;
  const Matrix<double> g = attend::numerical_gradient(x, f);
  require_close(g, mat<double>(2, 2, {3, 12, 0.75, 27}), kCentralTol);
  // x is restored bit for bit.
  REQUIRE(x == mat<double>(2, 2, {1, -2, 0.5, 3}));
}

TEST_CASE("gradcheck.hpp: the 4-point stencil is exact for quartics where 2-point is not",
          "[train][grad]") {
  Matrix<double> x = mat<double>(1, 1, {1.0});
  const auto f = [&] { return std::pow(x(0, 0), 4); };  // f' = 4 x^3 = 4 at x = 1
  GradCheckOptions wide;
  wide.step = 1e-2;
  // 2-point: (f(1+h) - f(1-h)) / 2h = 4 + 4 h^2 = 4.0004 at h = 1e-2 (the f''' h^2 / 6 term).
  const double two = attend::numerical_gradient(x, f, wide)(0, 0);
  REQUIRE(std::abs(two - 4.0004) < 1e-10);
  // 4-point: the error term is h^4 f^(5) / 30 = 0 for a quartic, so only rounding remains
  // (~ eps * f / h = 1e-16 * 1 / 1e-2).
  wide.four_point = true;
  const double four = attend::numerical_gradient(x, f, wide)(0, 0);
  REQUIRE(std::abs(four - 4.0) < 1e-12);
}

TEST_CASE("gradcheck.hpp: relative error, worst element and a wrong gradient",
          "[train][grad]") {
  // ||a - b|| / ||a + b|| with a = [1, 2], b = [1, 4]: ||[0, -2]|| / ||[2, 6]|| = 2 / sqrt(40).
  REQUIRE(attend::relative_error(vec<double>({1, 2}), vec<double>({1, 4})) ==
          Approx(2.0 / std::sqrt(40.0)).epsilon(1e-14));
  REQUIRE(attend::relative_error(vec<double>({0, 0}), vec<double>({0, 0})) == 0.0);

  Matrix<double> x = mat<double>(1, 3, {1, 2, 3});
  const auto f = [&] { return x.squaredNorm(); };  // gradient 2x = [2, 4, 6]
  const attend::GradCheckResult good = attend::gradcheck(x, mat<double>(1, 3, {2, 4, 6}), f);
  REQUIRE(good.error < kGradTol);
  const attend::GradCheckResult bad = attend::gradcheck(x, mat<double>(1, 3, {2, 5, 6}), f);
  // ||[0, 1, 0]|| / ||[4, 9, 12]|| = 1 / sqrt(241) = 0.0644 (up to the 1e-10 estimate error).
  REQUIRE(bad.error == Approx(1.0 / std::sqrt(241.0)).epsilon(1e-6));
  REQUIRE(bad.worst_row == 0);
  REQUIRE(bad.worst_col == 1);
  REQUIRE(bad.max_abs_diff == Approx(1.0).epsilon(1e-6));
  REQUIRE(bad.describe().find("at [0, 1]") != std::string::npos);
}

TEST_CASE("gradcheck.hpp: kinks are detected and skipped", "[train][grad]") {
  Matrix<double> x = mat<double>(1, 3, {-1.0, 0.0, 2.0});
  const auto f = [&] { return x.array().max(0.0).sum(); };  // relu: kink at 0
  const Matrix<double> analytic = attend::relu_backward(x, Matrix<double>::Ones(1, 3));
  // At x = 0 the central difference is (h - 0) / 2h = 0.5 but relu_backward says 0.
  REQUIRE(attend::gradcheck(x, analytic, f).error > 0.1);
  GradCheckOptions options;
  // One-sided slopes 1 and 0 differ by 1 at the kink, by ~h f'' = 0 elsewhere.
  options.kink_tolerance = 1e-3;
  const attend::GradCheckResult r = attend::gradcheck(x, analytic, f, options);
  REQUIRE(r.skipped == 1);
  REQUIRE(std::isnan(r.numeric(0, 1)));
  REQUIRE(r.error < kGradTol);
}

TEST_CASE("gradcheck.hpp: works through maps and blocks", "[train][grad]") {
  Vector<double> storage = vec<double>({0.5, -1.5, 2.0, 1.0});
  const auto f = [&] { return storage.array().sin().sum(); };  // gradient cos(x)
  const Vector<double> want = storage.array().cos();
  // An rvalue map over part of the storage: only those elements are perturbed.
  const Matrix<double> g = attend::numerical_gradient(Eigen::Map<Vector<double>>(storage.data(), 2), f);
  require_close(g, want.head(2), 1e-9);
  require_gradient(storage.segment(2, 2), want.tail(2), f);
}

TEST_CASE("gradcheck.hpp: bad shapes and options are rejected", "[train][grad][error]") {
  Matrix<double> x = Matrix<double>::Zero(2, 3);
  const auto f = [&] { return x.sum(); };
  REQUIRE_THROWS_AS(attend::gradcheck(x, Matrix<double>::Zero(3, 2), f), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::gradcheck(x, Matrix<double>::Zero(3, 2), f),
                      "gradcheck: analytic is [3, 2], expected [2, 3] (the shape of x)");
  GradCheckOptions bad;
  bad.step = 0.0;
  REQUIRE_THROWS_AS(attend::numerical_gradient(x, f, bad), attend::value_error);
  REQUIRE_THROWS_WITH(attend::numerical_gradient(x, f, bad),
                      "numerical_gradient: options.step is 0.000000, expected a finite value > 0");
  bad.step = 1e-6;
  bad.kink_tolerance = -1.0;
  REQUIRE_THROWS_WITH(attend::gradcheck(x, Matrix<double>::Zero(2, 3), f, bad),
                      "gradcheck: options.kink_tolerance is -1.000000, expected >= 0");
  REQUIRE_THROWS_AS(attend::relative_error(vec<double>({1}), vec<double>({1, 2})),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::relative_error(vec<double>({1}), vec<double>({1, 2})),
                      "relative_error: b is [2, 1], expected [1, 1]");
}

// ---- the existing ops/ backwards not yet checked elsewhere -----------------------------

TEST_CASE("gradcheck.hpp: dropout_backward with a fixed mask matches differences",
          "[train][grad]") {
  Rng rng(7);
  Matrix<double> x = random_matrix(4, 5, rng);
  const Matrix<double> up = random_matrix(4, 5, rng);
  attend::DropoutCache<double> cache;
  Rng mask_rng(11);
  (void)attend::dropout_forward(x, 0.4, true, mask_rng, &cache);
  // The loss replays the same mask: a fresh generator with the same seed draws it again.
  const auto loss = [&] {
    Rng replay(11);
    return dot_loss(attend::dropout_forward(x, 0.4, true, replay), up);
  };
  require_gradient(x, attend::dropout_backward(cache, up), loss);
}

TEST_CASE("gradcheck.hpp: masked log_softmax and softmax backwards match differences",
          "[train][grad]") {
  Rng rng(3);
  Matrix<double> x = random_matrix(3, 4, rng, 2.0);
  const Matrix<double> up = random_matrix(3, 4, rng);
  attend::BoolMatrix blocked = attend::BoolMatrix::Constant(3, 4, false);
  blocked(0, 1) = blocked(2, 0) = blocked(2, 3) = true;
  const auto y = [&] { return attend::softmax(x, blocked); };
  require_gradient(x, attend::softmax_backward(y(), up), [&] { return dot_loss(y(), up); });
  // log_softmax with -inf logits: masked inputs are constants, their gradient is 0.
  Matrix<double> xm = x;
  xm(1, 2) = -std::numeric_limits<double>::infinity();
  const Matrix<double> ly = attend::log_softmax(xm);
  const Matrix<double> dx = attend::log_softmax_backward(ly, up);
  REQUIRE(dx(1, 2) == 0.0);
  const auto lloss = [&] {
    const Matrix<double> l = attend::log_softmax(xm);
    double s = 0;  // sum over the finite entries (masked ones are -inf * up)
    for (Index i = 0; i < l.rows(); ++i)
      for (Index j = 0; j < l.cols(); ++j)
        if (std::isfinite(l(i, j))) s += l(i, j) * up(i, j);
    return s;
  };
  // Perturb only the finite entries: row 0 and row 2 here.
  require_gradient(xm.row(0), dx.row(0), lloss);
  require_gradient(xm.row(2), dx.row(2), lloss);
}
