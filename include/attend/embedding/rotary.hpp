// SPDX-License-Identifier: MIT
// Rotary position embedding (RoPE): rotate feature pairs of queries and keys by position.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>

namespace attend {

/// Which features form a rotated pair.
enum class RotaryLayout {
  /// RoFormer's: features (2i, 2i + 1). The default.
  interleaved,
  /// GPT-NeoX's and Hugging Face LLaMA's: features (i, i + d/2).
  half,
};

namespace detail {

/// Rotates the pairs of every row of `x` in place: row r sits at position
/// `first_position + r` and pair i turns by `sign * position * base^(-2i / d)`.
template <typename S>
void rotate_pairs(MatrixRef<S> x, Index first_position, RotaryLayout layout, double base,
                  double sign) {
  const Index d = x.cols(), half = d / 2;
  for (Index r = 0; r < x.rows(); ++r) {
    // Summed in double: first_position + r may not fit an Index (exact below 2^53).
    const double p = static_cast<double>(first_position) + static_cast<double>(r);
    for (Index i = 0; i < half; ++i) {
      // Angles in double: p * theta reaches thousands of radians for long sequences.
      const double angle =
          sign * p * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      const S c = static_cast<S>(std::cos(angle)), s = static_cast<S>(std::sin(angle));
      const Index a = layout == RotaryLayout::interleaved ? 2 * i : i;
      const Index b = layout == RotaryLayout::interleaved ? 2 * i + 1 : i + half;
      const S xa = x(r, a), xb = x(r, b);
      x(r, a) = xa * c - xb * s;
      x(r, b) = xa * s + xb * c;
    }
  }
}

inline void check_rotary(Index d, Index first_position, double base, const std::string& who,
                         const std::string& shape) {
  if (d % 2 != 0 || d == 0) {
    throw shape_error(who + ": x is " + shape + ", expected an even, nonzero number of features");
  }
  if (first_position < 0) {
    throw value_error(who + ": first_position is " + std::to_string(first_position) +
                      ", expected >= 0");
  }
  if (!(base > 1.0) || !std::isfinite(base)) {
    throw value_error(who + ": base is " + std::to_string(base) + ", expected a finite value > 1");
  }
}

}  // namespace detail

/// Rotary position embedding of one head: each feature pair (a, b) of row r, at position
/// p = first_position + r, becomes `(a cos(p t_i) - b sin(p t_i), a sin(p t_i) + b cos(p t_i))`
/// with `t_i = base^(-2i/d)`. Applied to queries and keys, it makes `q_m . k_n` depend on
/// the positions only through m - n.
/// \param x [L, d] queries or keys of one head (d even)
/// \param first_position position of row 0 (the cache length when decoding)
/// \param layout interleaved pairs (2i, 2i+1), or half (i, i + d/2)
/// \param base 10000 in the paper
/// \returns [L, d]
/// \throws shape_error when d is odd or 0; value_error on a negative first_position, base <= 1,
///   or NaN/Inf in x.
/// \note Su et al. 2021 (RoFormer), section 3.4.2.
/// \sa rotary_backward
template <typename Derived>
Matrix<typename Derived::Scalar> apply_rotary(const Eigen::MatrixBase<Derived>& x,
                                              Index first_position = 0,
                                              RotaryLayout layout = RotaryLayout::interleaved,
                                              double base = 10000.0) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::apply_rotary: Scalar must be float or double");
  detail::check_rotary(x.cols(), first_position, base, "apply_rotary", detail::matrix_shape(x));
  detail::check_finite(x, "apply_rotary", "x");
  Matrix<S> y = x;
  detail::rotate_pairs<S>(y, first_position, layout, base, 1.0);
  return y;
}

/// Gradient of apply_rotary: a rotation's transpose is the opposite rotation, `dx = R^T dy`.
/// \param dy [L, d] \returns [L, d] dx \throws as apply_rotary.
template <typename Derived>
Matrix<typename Derived::Scalar> rotary_backward(const Eigen::MatrixBase<Derived>& dy,
                                                 Index first_position = 0,
                                                 RotaryLayout layout = RotaryLayout::interleaved,
                                                 double base = 10000.0) {
  using S = typename Derived::Scalar;
  detail::check_rotary(dy.cols(), first_position, base, "rotary_backward",
                       detail::matrix_shape(dy));
  Matrix<S> dx = dy;
  detail::rotate_pairs<S>(dx, first_position, layout, base, -1.0);
  return dx;
}

}  // namespace attend
