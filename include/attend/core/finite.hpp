// SPDX-License-Identifier: MIT
// The NaN/Inf check that entry points run on their floating-point inputs at the door.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>

namespace attend::detail {

/// Throws value_error "<who>: <arg> has a non-finite value (<v>) at [i, j]" when `x`
/// holds NaN, +inf or -inf; `[i, j]` is the first such entry in row-major order.
/// \param x any Eigen matrix or block; pass a Tensor itself (overload below), not its
///   `as_matrix()`, so the index is the caller's.
template <typename Derived>
void check_finite(const Eigen::MatrixBase<Derived>& x, const std::string& who,
                  const std::string& arg) {
  // One vectorised pass: v - v is 0 for finite v and NaN for NaN or +-inf, so the sum is
  // finite exactly when every entry is (Eigen's allFinite() is a scalar loop, ~10% of the
  // fused kernel's time at L = 1024). The culprit is located only on failure.
  if (std::isfinite(static_cast<double>((x.array() - x.array()).sum()))) return;
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      if (!std::isfinite(x(i, j))) {
        throw value_error(who + ": " + arg + " has a non-finite value (" +
                          std::to_string(static_cast<double>(x(i, j))) + ") at [" +
                          std::to_string(i) + ", " + std::to_string(j) + "]");
      }
    }
  }
}

/// As above for a tensor: the index is the full multi-index of the first non-finite
/// entry in the tensor's own shape, e.g. "at [1, 2, 3]" for a `[2, 13, 8]` input (never
/// a row of the flattened `[prod(leading), last]` view), "at [0, 4, 1]" when the batch
/// extent is 1.
template <typename T>
void check_finite(const Tensor<T>& x, const std::string& who, const std::string& arg) {
  const Eigen::Matrix<T, Eigen::Dynamic, 1>& flat = x.flat();
  if (std::isfinite(static_cast<double>((flat.array() - flat.array()).sum()))) return;
  const Shape& shape = x.shape();
  for (Index i = 0; i < flat.size(); ++i) {
    if (std::isfinite(flat(i))) continue;
    Shape at(shape.size());  // the row-major multi-index of flat index i
    Index rest = i;
    for (std::size_t k = at.size(); k-- > 0;) {
      at[k] = rest % shape[k];
      rest /= shape[k];
    }
    throw value_error(who + ": " + arg + " has a non-finite value (" +
                      std::to_string(static_cast<double>(flat(i))) + ") at " +
                      shape_string(at));
  }
}

}  // namespace attend::detail
