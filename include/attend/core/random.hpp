// SPDX-License-Identifier: MIT
// Seeded, platform-independent random initialisation (PyTorch-style init schemes).
#pragma once

#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <random>

namespace attend {

/// A seeded generator whose streams are the same on every platform: it uses only
/// std::mt19937_64's raw output (the standard distributions are implementation-defined).
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) : engine_(seed) {}

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Standard normal (Box-Muller; the spare value is discarded for simplicity).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  /// A raw 64-bit value.
  std::uint64_t next() { return engine_(); }

 private:
  std::mt19937_64 engine_;
};

/// Fills `m` with U(-bound, bound).
template <typename Derived>
void fill_uniform(Eigen::MatrixBase<Derived>& m, double bound, Rng& rng) {
  using S = typename Derived::Scalar;
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = static_cast<S>(rng.uniform(-bound, bound));
}

/// Fills `m` with N(0, 1).
template <typename Derived>
void fill_normal(Eigen::MatrixBase<Derived>& m, Rng& rng) {
  using S = typename Derived::Scalar;
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = static_cast<S>(rng.normal());
}

/// Xavier/Glorot uniform for a weight `[fan_out, fan_in]`: bound sqrt(6 / (fan_in + fan_out)),
/// as torch.nn.init.xavier_uniform_.
template <typename Derived>
void xavier_uniform(Eigen::MatrixBase<Derived>& w, Rng& rng) {
  const double bound = std::sqrt(6.0 / static_cast<double>(w.rows() + w.cols()));
  fill_uniform(w, bound, rng);
}

}  // namespace attend
