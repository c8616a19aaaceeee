// SPDX-License-Identifier: MIT
// Row-wise softmax and log-softmax, stable for logits of any magnitude, with backward.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <string>

namespace attend {

namespace detail {

/// Throws value_error if `x` holds NaN or +inf (-inf is a masked logit and allowed).
template <typename Derived>
void check_logits(const Eigen::MatrixBase<Derived>& x, const char* who, const char* arg) {
  using S = typename Derived::Scalar;
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      const S v = x(i, j);
      if (std::isnan(v) || v == std::numeric_limits<S>::infinity()) {
        throw value_error(std::string(who) + ": " + arg + " has " + (std::isnan(v) ? "NaN" : "+inf") +
                          " at [" + std::to_string(i) + ", " + std::to_string(j) + "]");
      }
    }
  }
}

/// In-place softmax of each row; -inf entries become exactly 0 and a row of only -inf
/// becomes all zeros. Inputs are trusted (no NaN, no +inf).
template <typename S>
void softmax_rows_inplace(MatrixRef<S> x) {
  if (x.cols() == 0) return;  // rows with no entries: nothing to normalise
  for (Index i = 0; i < x.rows(); ++i) {
    auto row = x.row(i);
    const S m = row.maxCoeff();
    if (m == -std::numeric_limits<S>::infinity()) {  // fully masked row: zeros, not NaN
      row.setZero();
      continue;
    }
    // Subtracting the row max keeps exp() in (0, 1]: stable for logits of any magnitude.
    // Eigen's vectorised exp clamps its argument (exp(-inf) gives ~3e-39 in float), so
    // masked (-inf) entries are set to exactly zero explicitly.
    constexpr S neg_inf = -std::numeric_limits<S>::infinity();
    row = (row.array() == neg_inf).select(S(0), (row.array() - m).exp());
    row /= row.sum();
  }
}

}  // namespace detail

/// Row-wise softmax: `y[i, j] = exp(x[i, j] - max_j x[i]) / sum_j exp(x[i, j] - max_j x[i])`.
/// \param x [R, C] logits; -inf marks a masked entry.
/// \returns [R, C] probabilities; masked entries are exactly 0; a fully masked row is all 0.
/// \throws value_error when `x` holds NaN or +inf.
/// \note Follows torch.softmax(x, dim=-1), except that a fully masked row gives zeros
///       where PyTorch gives NaN.
/// \sa log_softmax, softmax_backward
template <typename Derived>
Matrix<typename Derived::Scalar> softmax(const Eigen::MatrixBase<Derived>& x) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::softmax: Scalar must be float or double");
  detail::check_logits(x, "softmax", "x");
  Matrix<S> y = x;
  detail::softmax_rows_inplace<S>(y);
  return y;
}

/// Row-wise softmax with a mask: entries where `blocked` is true are excluded.
/// \param x [R, C] logits.
/// \param blocked [R, C], true = masked out (not attended).
/// \returns [R, C]; blocked entries 0; a fully blocked row is all 0.
/// \throws shape_error when `blocked` is not [R, C]; value_error on NaN or +inf in `x`.
template <typename Derived>
Matrix<typename Derived::Scalar> softmax(const Eigen::MatrixBase<Derived>& x,
                                         const BoolMatrix& blocked) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::softmax: Scalar must be float or double");
  if (blocked.rows() != x.rows() || blocked.cols() != x.cols()) {
    throw shape_error("softmax: blocked is " + detail::matrix_shape(blocked) + ", expected " +
                      detail::matrix_shape(x));
  }
  detail::check_logits(x, "softmax", "x");
  Matrix<S> y = blocked.select(Matrix<S>::Constant(x.rows(), x.cols(),
                                                   -std::numeric_limits<S>::infinity()),
                               x);
  detail::softmax_rows_inplace<S>(y);
  return y;
}

/// Row-wise log-softmax: `y[i, j] = x[i, j] - max - log(sum_j exp(x[i, j] - max))`.
/// \param x [R, C] logits; -inf marks a masked entry.
/// \returns [R, C] log-probabilities; masked entries are -inf (log 0), and so is every
///          entry of a fully masked row (never NaN).
/// \throws value_error when `x` holds NaN or +inf.
/// \sa softmax, log_softmax_backward
template <typename Derived>
Matrix<typename Derived::Scalar> log_softmax(const Eigen::MatrixBase<Derived>& x) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::log_softmax: Scalar must be float or double");
  detail::check_logits(x, "log_softmax", "x");
  Matrix<S> y(x.rows(), x.cols());
  if (x.cols() == 0) return y;  // rows with no entries
  for (Index i = 0; i < x.rows(); ++i) {
    const S m = x.row(i).maxCoeff();
    if (m == -std::numeric_limits<S>::infinity()) {
      y.row(i).setConstant(-std::numeric_limits<S>::infinity());
      continue;
    }
    constexpr S neg_inf = -std::numeric_limits<S>::infinity();
    const S lse = m + std::log((x.row(i).array() == neg_inf)
                                   .select(S(0), (x.row(i).array() - m).exp())
                                   .sum());  // masked entries add exactly 0 (see above)
    y.row(i) = x.row(i).array() - lse;
  }
  return y;
}

/// Gradient of softmax: `dx = y * (dy - sum_j(dy * y))` row-wise.
/// \param y [R, C] the forward output; \param dy [R, C] upstream gradient.
/// \returns [R, C] dx (assigned). A fully masked row (all zeros) gets zero gradient.
/// \throws shape_error when shapes differ; value_error when dy holds NaN or Inf.
template <typename DerivedY, typename DerivedD>
Matrix<typename DerivedY::Scalar> softmax_backward(const Eigen::MatrixBase<DerivedY>& y,
                                                   const Eigen::MatrixBase<DerivedD>& dy) {
  using S = typename DerivedY::Scalar;
  if (dy.rows() != y.rows() || dy.cols() != y.cols()) {
    throw shape_error("softmax_backward: dy is " + detail::matrix_shape(dy) + ", expected " +
                      detail::matrix_shape(y));
  }
  detail::check_finite(dy, "softmax_backward", "dy");
  const Vector<S> dot = (y.array() * dy.array()).rowwise().sum();  // [R]
  Matrix<S> dx = y.array() * (dy.array().colwise() - dot.array());
  return dx;
}

/// Gradient of log-softmax: `dx = dy - softmax(x) * sum_j dy` row-wise, from the output y.
/// \param y [R, C] the forward output (log-probabilities); \param dy [R, C] upstream.
/// \returns [R, C] dx; masked (-inf) entries get zero gradient.
/// \throws shape_error when shapes differ.
template <typename DerivedY, typename DerivedD>
Matrix<typename DerivedY::Scalar> log_softmax_backward(const Eigen::MatrixBase<DerivedY>& y,
                                                       const Eigen::MatrixBase<DerivedD>& dy) {
  using S = typename DerivedY::Scalar;
  if (dy.rows() != y.rows() || dy.cols() != y.cols()) {
    throw shape_error("log_softmax_backward: dy is " + detail::matrix_shape(dy) + ", expected " +
                      detail::matrix_shape(y));
  }
  const Matrix<S> p = y.array().exp();  // exp(-inf) = 0 for masked entries
  const Vector<S> total = dy.rowwise().sum();  // [R]
  Matrix<S> dx = dy - (p.array().colwise() * total.array()).matrix();
  // Masked entries do not depend on x: their gradient is zero.
  for (Index i = 0; i < y.rows(); ++i) {
    for (Index j = 0; j < y.cols(); ++j) {
      if (y(i, j) == -std::numeric_limits<S>::infinity()) dx(i, j) = S(0);
    }
  }
  return dx;
}

}  // namespace attend
