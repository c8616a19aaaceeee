// SPDX-License-Identifier: MIT
// Gradient checking: finite differences in double against an analytic backward.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

namespace attend {

/// How gradcheck estimates and compares derivatives.
struct GradCheckOptions {
  /// Finite-difference step h. With central differences the truncation error is
  /// O(h^2 f''') and the cancellation error O(eps_double |f| / h): 1e-6 balances them
  /// (about 1e-10 relative for O(1) functions).
  double step = 1e-6;
  /// Use the 4-evaluation stencil `(-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / 12h`
  /// (truncation O(h^4)) instead of `(f(x+h) - f(x-h)) / 2h`; for functions with large
  /// third derivatives (ggml test-backend-ops `grad_precise`).
  bool four_point = false;
  /// When > 0, an element whose one-sided slopes `(f(x+h) - f(x)) / h` and
  /// `(f(x) - f(x-h)) / h` differ by more than `kink_tolerance * max(1, |slopes|)` sits on
  /// a kink (ReLU at 0, a max that switches): it is skipped, i.e. left out of the error.
  double kink_tolerance = 0.0;
};

/// The outcome of comparing an analytic gradient with a numerical one.
struct GradCheckResult {
  double error = 0.0;         ///< ||analytic - numeric|| / ||analytic + numeric|| (0 if both 0)
  double max_abs_diff = 0.0;  ///< max |analytic - numeric| over checked elements
  Index worst_row = -1;       ///< where max_abs_diff occurs (-1 when every element was skipped)
  Index worst_col = -1;
  double worst_analytic = 0.0;  ///< the two values at the worst element
  double worst_numeric = 0.0;
  Index skipped = 0;       ///< elements left out as kinks
  Matrix<double> numeric;  ///< [rows, cols] the numerical gradient (NaN where skipped)

  /// "error 3.1e-11, max |a - n| 2e-10 at [1, 2] (analytic 0.5, numeric 0.5000000002),
  /// 0 skipped": for test messages.
  std::string describe() const {
    std::ostringstream out;
    out.precision(10);
    out << "error " << error << ", max |a - n| " << max_abs_diff << " at [" << worst_row << ", "
        << worst_col << "] (analytic " << worst_analytic << ", numeric " << worst_numeric << "), "
        << skipped << " skipped";
    return out.str();
  }
};

namespace detail {

/// Shape and scalar checks shared by the public entry points.
template <typename X>
void check_gradcheck_input(const X& x, const GradCheckOptions& options, const char* who) {
  static_assert(std::is_same_v<typename X::Scalar, double>,
                "attend gradient checks perturb double matrices: float differences lose "
                "too many digits to check anything");
  (void)x;
  if (!(options.step > 0.0) || !std::isfinite(options.step)) {
    throw value_error(std::string(who) + ": options.step is " + std::to_string(options.step) +
                      ", expected a finite value > 0");
  }
  if (!(options.kink_tolerance >= 0.0)) {
    throw value_error(std::string(who) + ": options.kink_tolerance is " +
                      std::to_string(options.kink_tolerance) + ", expected >= 0");
  }
}

/// Estimates dF/dx for every element of `x` (perturbed in place and restored bit for bit);
/// `skip(i, j)` is set where a kink was detected.
template <typename X, typename F>
Matrix<double> finite_differences(X& x, F& f, const GradCheckOptions& options, BoolMatrix& skip) {
  const double h = options.step;
  const bool kinks = options.kink_tolerance > 0.0;
  const double f0 = kinks ? static_cast<double>(f()) : 0.0;
  Matrix<double> g(x.rows(), x.cols());  // [rows, cols]
  skip = BoolMatrix::Constant(x.rows(), x.cols(), false);
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      const double keep = x(i, j);
      const auto at = [&](double offset) {
        x(i, j) = keep + offset;
        const double value = static_cast<double>(f());
        x(i, j) = keep;
        return value;
      };
      const double up = at(h), down = at(-h);
      if (options.four_point) {
        const double up2 = at(2 * h), down2 = at(-2 * h);
        g(i, j) = (-up2 + 8 * up - 8 * down + down2) / (12 * h);
      } else {
        g(i, j) = (up - down) / (2 * h);
      }
      if (kinks) {
        const double right = (up - f0) / h, left = (f0 - down) / h;
        const double size = std::max({1.0, std::abs(right), std::abs(left)});
        if (std::abs(right - left) > options.kink_tolerance * size) {
          skip(i, j) = true;
          g(i, j) = std::numeric_limits<double>::quiet_NaN();
        }
      }
    }
  }
  return g;
}

}  // namespace detail

/// `||a - b|| / ||a + b||` (Frobenius norms), the scale-free error of mlpack's
/// CheckGradient; 0 when both are zero.
/// \param a [R, C] \param b [R, C]
/// \throws shape_error when the shapes differ.
template <typename DA, typename DB>
double relative_error(const Eigen::MatrixBase<DA>& a, const Eigen::MatrixBase<DB>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    throw shape_error("relative_error: b is " + detail::matrix_shape(b) + ", expected " +
                      detail::matrix_shape(a));
  }
  const Matrix<double> ad = a.template cast<double>(), bd = b.template cast<double>();
  const double denom = (ad + bd).norm();
  return denom == 0.0 ? 0.0 : (ad - bd).norm() / denom;
}

/// Numerical gradient of a scalar function with respect to every element of `x`:
/// `g[i, j] = (f(x + h e_ij) - f(x - h e_ij)) / 2h`, or the 4-point stencil.
///
/// `f` is a callable without arguments that reads `x` (a closure over the inputs of the
/// function under test) and returns its scalar value; `x` is changed one element at a time
/// and restored exactly before the function returns.
/// \param x [R, C] a double matrix, vector, or writable map/block of one
/// \param f `double()`, the function of x
/// \param options step, stencil, kink skipping (skipped elements are NaN)
/// \returns [R, C] the estimate of df/dx
/// \throws value_error on a non-positive step or a negative kink tolerance.
/// \note Central differences in double, as mlpack's ann_test_tools.hpp CheckGradient.
/// \sa gradcheck
template <typename X, typename F>
Matrix<double> numerical_gradient(X&& x, F&& f, const GradCheckOptions& options = {}) {
  detail::check_gradcheck_input(x, options, "numerical_gradient");
  BoolMatrix skip;
  return detail::finite_differences(x, f, options, skip);
}

/// Compares an analytic gradient of `f` with respect to `x` against finite differences.
///
/// Typical use: compute the analytic gradient with the backward under test (for example
/// the loss `sum(y * upstream)` gives `dy = upstream`), then
/// `REQUIRE(gradcheck(x, dx, [&] { return loss(); }).error < kGradTol)`.
/// \param x [R, C] the double input perturbed by the check (restored afterwards)
/// \param analytic [R, C] the gradient from the backward (any scalar type; cast to double)
/// \param f `double()`, the scalar function of x
/// \param options step, stencil and kink skipping; skipped elements leave the error
/// \returns error ||a - n|| / ||a + n||, the worst element and the numerical gradient
/// \throws shape_error when analytic is not x's shape; value_error on bad options.
/// \sa numerical_gradient, relative_error
template <typename X, typename DA, typename F>
GradCheckResult gradcheck(X&& x, const Eigen::MatrixBase<DA>& analytic, F&& f,
                          const GradCheckOptions& options = {}) {
  detail::check_gradcheck_input(x, options, "gradcheck");
  if (analytic.rows() != x.rows() || analytic.cols() != x.cols()) {
    throw shape_error("gradcheck: analytic is " + detail::matrix_shape(analytic) + ", expected " +
                      detail::matrix_shape(x) + " (the shape of x)");
  }
  GradCheckResult r;
  BoolMatrix skip;
  r.numeric = detail::finite_differences(x, f, options, skip);
  Matrix<double> a = analytic.template cast<double>();  // [R, C]
  Matrix<double> n = r.numeric;                         // [R, C], skipped entries zeroed
  for (Index i = 0; i < a.rows(); ++i) {
    for (Index j = 0; j < a.cols(); ++j) {
      if (skip(i, j)) {
        a(i, j) = n(i, j) = 0.0;
        ++r.skipped;
        continue;
      }
      const double diff = std::abs(a(i, j) - n(i, j));
      // NaN compares false: treat it as the worst possible difference.
      if (std::isnan(diff) || diff > r.max_abs_diff || r.worst_row < 0) {
        r.max_abs_diff = std::isnan(diff) ? std::numeric_limits<double>::infinity() : diff;
        r.worst_row = i;
        r.worst_col = j;
        r.worst_analytic = a(i, j);
        r.worst_numeric = n(i, j);
      }
    }
  }
  r.error = relative_error(a, n);
  if (std::isnan(r.error)) r.error = std::numeric_limits<double>::infinity();
  return r;
}

}  // namespace attend
