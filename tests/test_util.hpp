// SPDX-License-Identifier: MIT
// Helpers shared by the unit tests: the gradient-check tolerance, seeded random matrices and
// tensors, element-wise comparison that reports the first mismatch, and small builders.
#pragma once

#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/train/gradcheck.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>

/// Test-only helpers; a test file imports what it uses with `using attend_test::name;`
/// inside its anonymous namespace.
namespace attend_test {

// ---- constants -------------------------------------------------------------------------

/// Infinity of the scalar type `S` (mask biases, expected outputs of fully masked rows).
template <typename S>
inline constexpr S inf = std::numeric_limits<S>::infinity();

/// Bound on the relative error ||analytic - numeric|| / ||analytic + numeric|| of a gradient
/// check. Central differences in double with h = 1e-6 on O(1) functions: truncation
/// O(h^2) ~ 1e-12 and cancellation eps / h ~ 2e-10 relative, so a correct backward shows
/// errors near 1e-9 at worst; 1e-7 leaves headroom, and a wrong term gives 1e-3 and more.
inline constexpr double kGradTol = 1e-7;

// ---- comparison ------------------------------------------------------------------------

/// Requires `got` and `want` of one shape with every |got - want| <= atol + rtol * |want|
/// (or got == want, so equal infinities pass; NaN fails). On failure the message gives the
/// largest error (infinity for a NaN) and the first mismatching index with both values.
/// \param got the computed values (any scalar type; compared in double)
/// \param want the expected values, same shape
/// \param atol absolute tolerance
/// \param rtol tolerance relative to |want| (0: absolute only)
template <typename A, typename B>
void require_close(const Eigen::MatrixBase<A>& got, const Eigen::MatrixBase<B>& want, double atol,
                   double rtol = 0.0) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  double max_err = 0.0;
  attend::Index bad_i = -1, bad_j = -1;
  for (attend::Index i = 0; i < got.rows(); ++i) {
    for (attend::Index j = 0; j < got.cols(); ++j) {
      const double g = static_cast<double>(got(i, j));
      const double w = static_cast<double>(want(i, j));
      const double err = g == w ? 0.0 : std::abs(g - w);
      max_err = std::max(max_err, std::isnan(err) ? inf<double> : err);
      const bool ok = g == w || err <= atol + rtol * std::abs(w);  // NaN fails
      if (!ok && bad_i < 0) {
        bad_i = i;
        bad_j = j;
      }
    }
  }
  std::ostringstream msg;
  msg.precision(17);
  msg << "max |got - want| = " << max_err << " (atol " << atol << ", rtol " << rtol << ")";
  if (bad_i >= 0) {
    msg << "; first mismatch at [" << bad_i << ", " << bad_j << "]: got " << got(bad_i, bad_j)
        << ", want " << want(bad_i, bad_j);
  }
  INFO(msg.str());
  REQUIRE(bad_i < 0);
}

/// Requires the same shape, then compares element-wise as above on the
/// [prod(leading), last] matrices.
template <typename A, typename B>
void require_close(const attend::Tensor<A>& got, const attend::Tensor<B>& want, double atol,
                   double rtol = 0.0) {
  REQUIRE(got.shape() == want.shape());
  require_close(got.as_matrix(), want.as_matrix(), atol, rtol);
}

/// Runs attend::gradcheck and requires its relative error below kGradTol; the message names
/// the checked quantity and the worst element.
/// \param what the name printed on failure (a parameter or input name)
/// \param x the double values perturbed by the check (restored afterwards)
/// \param analytic the backward's gradient, x's shape
/// \param f `double()`, the loss as a function of x
/// \param options step and stencil of the central differences
template <typename X, typename DA, typename F>
void require_gradient(const std::string& what, X&& x, const Eigen::MatrixBase<DA>& analytic, F&& f,
                      const attend::GradCheckOptions& options = {}) {
  const attend::GradCheckResult r = attend::gradcheck(x, analytic, f, options);
  INFO(what << ": " << r.describe());
  REQUIRE(r.error < kGradTol);
}

// ---- losses ----------------------------------------------------------------------------

/// sum(y * upstream) in double: the scalar loss whose gradient a backward computes from
/// `upstream`.
template <typename A, typename B>
double dot_loss(const Eigen::MatrixBase<A>& y, const Eigen::MatrixBase<B>& upstream) {
  return (y.template cast<double>().array() * upstream.template cast<double>().array()).sum();
}

/// sum(y * upstream) in double over all elements of two tensors of one size.
template <typename S>
double dot_loss(const attend::Tensor<S>& y, const attend::Tensor<S>& upstream) {
  return (y.flat().template cast<double>().array() *
          upstream.flat().template cast<double>().array())
      .sum();
}

/// sum(a * b) in double; 0 when `b` is empty (an optional upstream that was not given).
template <typename A, typename B>
double dot(const A& a, const B& b) {
  if (b.size() == 0) return 0.0;
  return (a.template cast<double>().array() * b.template cast<double>().array()).sum();
}

// ---- random values ---------------------------------------------------------------------
// Each helper draws from `rng` in row-major element order, one rng.uniform per element, so
// a seeded test sees the same numbers whichever helper built them.

/// [rows, cols] uniform in [-bound, bound), drawn in double and rounded to S.
template <typename S = double>
attend::Matrix<S> random_matrix(attend::Index rows, attend::Index cols, attend::Rng& rng,
                                double bound = 1.0) {
  attend::Matrix<S> m(rows, cols);
  attend::fill_uniform(m, bound, rng);
  return m;
}

/// A tensor of `shape`, uniform in [-bound, bound), drawn in double and rounded to S.
template <typename S>
attend::Tensor<S> random_tensor(const attend::Shape& shape, attend::Rng& rng, double bound = 1.0) {
  attend::Tensor<S> t(shape);
  for (attend::Index i = 0; i < t.size(); ++i) {
    t.data()[i] = static_cast<S>(rng.uniform(-bound, bound));
  }
  return t;
}

/// Sets in_proj_bias and out_proj_bias of a MultiheadAttention uniform in [-0.5, 0.5), in
/// that order (PyTorch initialises them to zero, which would hide the bias paths); nothing
/// is drawn when options.bias is false.
template <typename S, template <typename> class Attention>
void randomize_biases(Attention<S>& m, attend::Rng& rng) {
  if (!m.options.bias) return;
  for (attend::Index i = 0; i < m.in_proj_bias.size(); ++i)
    m.in_proj_bias[i] = static_cast<S>(rng.uniform(-0.5, 0.5));
  for (attend::Index i = 0; i < m.out_proj_bias.size(); ++i)
    m.out_proj_bias[i] = static_cast<S>(rng.uniform(-0.5, 0.5));
}

/// An integer uniform in [lo, hi] (one rng.next; modulo bias is negligible for test sizes).
inline attend::Index random_index(attend::Rng& rng, attend::Index lo, attend::Index hi) {
  return lo + static_cast<attend::Index>(rng.next() % static_cast<std::uint64_t>(hi - lo + 1));
}

// ---- builders --------------------------------------------------------------------------

/// A [rows, cols] matrix from `values` in row-major order (exactly rows * cols of them).
template <typename S>
attend::Matrix<S> mat(attend::Index rows, attend::Index cols,
                      std::initializer_list<double> values) {
  attend::Matrix<S> m(rows, cols);
  auto it = values.begin();
  for (attend::Index i = 0; i < rows; ++i)
    for (attend::Index j = 0; j < cols; ++j) m(i, j) = static_cast<S>(*it++);
  return m;
}

/// A column vector of `values`.
template <typename S>
attend::Vector<S> vec(std::initializer_list<double> values) {
  attend::Vector<S> v(static_cast<attend::Index>(values.size()));
  attend::Index i = 0;
  for (const double x : values) v(i++) = static_cast<S>(x);
  return v;
}

}  // namespace attend_test
