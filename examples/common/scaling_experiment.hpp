// SPDX-License-Identifier: MIT
// The experiment behind the 1/sqrt(d_k) factor: score variance and softmax sharpness for
// random queries and keys, with and without scaling (used by why_sqrt_dk and the tour).
#pragma once

#include "attend/core/random.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/softmax.hpp"

#include <Eigen/Core>

#include <cmath>

namespace examples {

/// Softmax statistics over many queries: the mean entropy of a row and its mean largest
/// weight.
struct SoftmaxStats {
  double entropy = 0;     ///< mean of -sum_j p_j log p_j, in nats; log(S) for uniform weights
  double max_weight = 0;  ///< mean of max_j p_j; 1/S for uniform, 1 for one-hot weights
};

/// Results of `measure_scaling` for one d_k.
struct ScalingStats {
  double var_raw = 0;     ///< variance of q . k; d_k in theory
  double var_scaled = 0;  ///< variance of q . k / sqrt(d_k); 1 in theory
  SoftmaxStats raw;       ///< softmax(q K^T)
  SoftmaxStats scaled;    ///< softmax(q K^T / sqrt(d_k)), what attention uses
};

/// Entropy and largest weight of each row of `softmax(scores)`, averaged over the rows.
/// \param scores [T, S]
inline SoftmaxStats softmax_stats(const attend::Matrix<double>& scores) {
  const attend::Matrix<double> p = attend::softmax(scores);  // [T, S]
  SoftmaxStats s;
  for (attend::Index t = 0; t < p.rows(); ++t) {
    for (attend::Index j = 0; j < p.cols(); ++j) {
      if (p(t, j) > 0) s.entropy -= p(t, j) * std::log(p(t, j));  // 0 log 0 = 0
    }
    s.max_weight += p.row(t).maxCoeff();
  }
  s.entropy /= static_cast<double>(p.rows());
  s.max_weight /= static_cast<double>(p.rows());
  return s;
}

/// The unbiased sample variance of all entries of `x`.
inline double variance(const attend::Matrix<double>& x) {
  const double n = static_cast<double>(x.size());
  const double mean = x.sum() / n;
  return (x.array() - mean).square().sum() / (n - 1);
}

/// Draws `trials` queries, each with its own `S` keys, all entries N(0, 1) from `rng`.
/// Each q . k is a sum of d_k products of independent unit-variance factors, so its
/// variance is d_k; dividing by sqrt(d_k) brings it back to 1 whatever d_k is.
inline ScalingStats measure_scaling(attend::Index d_k, attend::Index S, attend::Index trials,
                                    attend::Rng& rng) {
  attend::Matrix<double> scores(trials, S);  // [T, S] raw scores q_t . k_j
  attend::Vector<double> q(d_k), k(d_k);
  for (attend::Index t = 0; t < trials; ++t) {
    for (attend::Index c = 0; c < d_k; ++c) q(c) = rng.normal();
    for (attend::Index j = 0; j < S; ++j) {
      for (attend::Index c = 0; c < d_k; ++c) k(c) = rng.normal();
      double dot = 0.0;  // a plain loop: the same summation order with every compiler
      for (attend::Index c = 0; c < d_k; ++c) dot += q(c) * k(c);
      scores(t, j) = dot;
    }
  }
  const attend::Matrix<double> scaled = scores / std::sqrt(static_cast<double>(d_k));  // [T, S]
  ScalingStats out;
  out.var_raw = variance(scores);
  out.var_scaled = variance(scaled);
  out.raw = softmax_stats(scores);
  out.scaled = softmax_stats(scaled);
  return out;
}

}  // namespace examples
