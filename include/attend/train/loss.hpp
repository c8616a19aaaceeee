// SPDX-License-Identifier: MIT
// Training losses with backward: cross-entropy over logits (ignore_index, label smoothing)
// and mean squared error, as torch.nn.functional defines them.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/softmax.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace attend {

/// How per-element losses combine into one number (torch's `reduction`; "none" is not
/// offered: the forward returns a scalar).
enum class Reduction { mean, sum };

/// Options of cross_entropy_forward, named as torch.nn.functional.cross_entropy's.
struct CrossEntropyOptions {
  /// Targets equal to this are skipped: no loss, no gradient, not counted by the mean.
  std::int64_t ignore_index = -100;
  /// epsilon in [0, 1]: the target distribution is (1 - epsilon) one-hot + epsilon / C.
  double label_smoothing = 0.0;
  /// mean: divided by the number of targets that are not ignore_index; sum: not divided.
  Reduction reduction = Reduction::mean;
};

/// What cross_entropy_backward needs from the forward.
template <typename Scalar>
struct CrossEntropyCache {
  Matrix<Scalar> probs;               // [N, C] softmax of the logits
  std::vector<std::int64_t> targets;  // [N]
  std::int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double scale = 0.0;  // d loss / d (summed loss): 1 / count (mean), 1 (sum), 0 (nothing counted)
};

namespace detail {

inline std::string format_double(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

}  // namespace detail

/// Cross-entropy of logits against class indices, with label smoothing:
/// `loss_i = (1 - eps) (-log p[i, y_i]) + (eps / C) sum_c (-log p[i, c])`,
/// `p = softmax(logits[i])`, summed over the rows whose target is not ignore_index and,
/// for Reduction::mean, divided by their number.
/// \param logits [N, C] unnormalised scores; -inf is allowed (a masked class)
/// \param targets [N] class indices in [0, C), or options.ignore_index
/// \param options ignore_index (-100), label_smoothing (0), reduction (mean)
/// \param cache if not null, filled for cross_entropy_backward
/// \returns the loss. When every target is ignored the loss is 0 (PyTorch's mean gives NaN,
///   0 / 0; a batch of padding should not poison training).
/// \throws shape_error when targets has not N entries; index_error on a target outside
///   [0, C) that is not ignore_index; value_error on NaN/+inf logits or a label_smoothing
///   outside [0, 1].
/// \note torch.nn.functional.cross_entropy(logits, targets, ignore_index=..., reduction=...,
///   label_smoothing=...) without class weights; the smoothing term of ignored rows is
///   dropped, as PyTorch does. A -inf logit with label_smoothing > 0 gives +inf, as there.
/// \sa cross_entropy_backward, log_softmax
template <typename Derived>
typename Derived::Scalar cross_entropy_forward(
    const Eigen::MatrixBase<Derived>& logits, const std::vector<std::int64_t>& targets,
    const CrossEntropyOptions& options = {},
    CrossEntropyCache<typename Derived::Scalar>* cache = nullptr) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::cross_entropy_forward: Scalar must be float or double");
  const Index N = logits.rows(), C = logits.cols();
  if (static_cast<Index>(targets.size()) != N) {
    throw shape_error("cross_entropy_forward: targets is [" + std::to_string(targets.size()) +
                      "], expected [" + std::to_string(N) + "] (the rows of logits " +
                      detail::matrix_shape(logits) + ")");
  }
  const double eps = options.label_smoothing;
  if (!(eps >= 0.0 && eps <= 1.0)) {
    throw value_error("cross_entropy_forward: label_smoothing is " + detail::format_double(eps) +
                      ", expected in [0, 1]");
  }
  for (Index i = 0; i < N; ++i) {
    const std::int64_t t = targets[static_cast<std::size_t>(i)];
    if (t != options.ignore_index && (t < 0 || t >= C)) {
      throw index_error("cross_entropy_forward: target " + std::to_string(t) + " at position " +
                        std::to_string(i) + " is out of range [0, " + std::to_string(C) +
                        ") and is not ignore_index (" + std::to_string(options.ignore_index) + ")");
    }
  }
  detail::check_logits(logits, "cross_entropy_forward", "logits");
  const Matrix<S> logp = log_softmax(logits);  // [N, C]
  double nll = 0.0, smooth = 0.0;              // sums in double: N C terms of either sign
  Index count = 0;
  for (Index i = 0; i < N; ++i) {
    const std::int64_t t = targets[static_cast<std::size_t>(i)];
    if (t == options.ignore_index) continue;
    ++count;
    nll -= static_cast<double>(logp(i, static_cast<Index>(t)));
    if (eps > 0.0) smooth -= logp.row(i).template cast<double>().sum();
  }
  double total = (1.0 - eps) * nll;
  if (eps > 0.0) total += eps / static_cast<double>(C) * smooth;
  double scale = 1.0;
  if (options.reduction == Reduction::mean) scale = count == 0 ? 0.0 : 1.0 / double(count);
  if (cache) {
    cache->probs = logp.array().exp();  // exp(-inf) = 0 for masked classes
    cache->targets = targets;
    cache->ignore_index = options.ignore_index;
    cache->label_smoothing = eps;
    cache->scale = count == 0 ? 0.0 : scale;
  }
  return count == 0 ? S(0) : static_cast<S>(total * scale);
}

/// Gradient of cross_entropy_forward with respect to the logits:
/// `dx[i, c] = d_loss * scale * (p[i, c] - (1 - eps) [c == y_i] - eps / C)` for counted
/// rows, 0 for rows whose target is ignore_index; scale = 1 / count for the mean, else 1.
/// \param cache from the forward \param d_loss upstream gradient of the scalar loss
/// \returns [N, C] dx (assigned)
/// \throws value_error when cache.targets has not N entries; index_error on a target outside
///   [0, C) that is not ignore_index (a cache not filled by cross_entropy_forward).
template <typename Scalar>
Matrix<Scalar> cross_entropy_backward(const CrossEntropyCache<Scalar>& cache, double d_loss = 1.0) {
  const Index N = cache.probs.rows(), C = cache.probs.cols();
  if (static_cast<Index>(cache.targets.size()) != N) {
    throw value_error("cross_entropy_backward: cache.targets has " +
                      std::to_string(cache.targets.size()) + " entries, expected " +
                      std::to_string(N) + " (the rows of cache.probs)");
  }
  for (Index i = 0; i < N; ++i) {
    const std::int64_t t = cache.targets[static_cast<std::size_t>(i)];
    if (t != cache.ignore_index && (t < 0 || t >= C)) {
      throw index_error("cross_entropy_backward: cache.targets[" + std::to_string(i) + "] is " +
                        std::to_string(t) + ", expected in [0, " + std::to_string(C) +
                        ") or ignore_index");
    }
  }
  const double eps = cache.label_smoothing;
  const Scalar coef = static_cast<Scalar>(d_loss * cache.scale);
  const Scalar uniform = static_cast<Scalar>(C == 0 ? 0.0 : eps / static_cast<double>(C));
  const Scalar on_target = static_cast<Scalar>(1.0 - eps);
  Matrix<Scalar> dx(N, C);  // [N, C]
  for (Index i = 0; i < N; ++i) {
    const std::int64_t t = cache.targets[static_cast<std::size_t>(i)];
    if (t == cache.ignore_index) {
      dx.row(i).setZero();
      continue;
    }
    // forward: loss_i = -(1 - eps) logp[t] - (eps / C) sum_c logp[c], logp = log_softmax(x)
    dx.row(i) = cache.probs.row(i).array() - uniform;
    dx(i, static_cast<Index>(t)) -= on_target;
    dx.row(i) *= coef;
  }
  return dx;
}

/// Mean squared error: `sum_ij (input - target)^2`, divided by the number of elements for
/// Reduction::mean (0 for an empty input, where PyTorch gives NaN).
/// \param input [R, C] \param target [R, C] \param reduction mean (default) or sum
/// \returns the loss
/// \throws shape_error when the shapes differ.
/// \note torch.nn.functional.mse_loss.
/// \sa mse_loss_backward
template <typename DI, typename DT>
typename DI::Scalar mse_loss_forward(const Eigen::MatrixBase<DI>& input,
                                     const Eigen::MatrixBase<DT>& target,
                                     Reduction reduction = Reduction::mean) {
  using S = typename DI::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::mse_loss_forward: Scalar must be float or double");
  if (target.rows() != input.rows() || target.cols() != input.cols()) {
    throw shape_error("mse_loss_forward: target is " + detail::matrix_shape(target) +
                      ", expected " + detail::matrix_shape(input) + " (the shape of input)");
  }
  if (input.size() == 0) return S(0);
  const double total = (input - target).template cast<double>().squaredNorm();
  return static_cast<S>(reduction == Reduction::mean ? total / double(input.size()) : total);
}

/// Gradient of mse_loss_forward with respect to input: `dx = d_loss * 2 (input - target) / n`
/// (n = number of elements for the mean, 1 for the sum). The target's gradient is `-dx`.
/// \param input [R, C] \param target [R, C] \param d_loss upstream gradient of the loss
/// \returns [R, C] dx (assigned)
/// \throws shape_error when the shapes differ.
template <typename DI, typename DT>
Matrix<typename DI::Scalar> mse_loss_backward(const Eigen::MatrixBase<DI>& input,
                                              const Eigen::MatrixBase<DT>& target,
                                              double d_loss = 1.0,
                                              Reduction reduction = Reduction::mean) {
  using S = typename DI::Scalar;
  if (target.rows() != input.rows() || target.cols() != input.cols()) {
    throw shape_error("mse_loss_backward: target is " + detail::matrix_shape(target) +
                      ", expected " + detail::matrix_shape(input) + " (the shape of input)");
  }
  const double n = reduction == Reduction::mean && input.size() != 0 ? double(input.size()) : 1.0;
  // forward: loss = sum (input - target)^2 / n
  Matrix<S> dx = (input - target) * static_cast<S>(2.0 * d_loss / n);
  return dx;
}

}  // namespace attend
