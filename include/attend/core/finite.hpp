// SPDX-License-Identifier: MIT
// The NaN/Inf check that entry points run on their floating-point inputs at the door.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>

namespace attend::detail {

/// Throws value_error "<who>: <arg> has a non-finite value (<v>) at [i, j]" when `x`
/// holds NaN, +inf or -inf; `[i, j]` is the first such entry in row-major order.
/// \param x any Eigen matrix or block; a Tensor is checked through `as_matrix()`.
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

}  // namespace attend::detail
