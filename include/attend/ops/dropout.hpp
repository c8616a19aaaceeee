// SPDX-License-Identifier: MIT
// Inverted dropout: zero each element with probability p in training, scale the rest by 1/(1-p).
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <sstream>
#include <string>

namespace attend {

/// What dropout_backward needs: which elements were kept, and their scale.
template <typename Scalar>
struct DropoutCache {
  BoolMatrix keep;   // [R, C] true = kept
  Scalar scale = 1;  // 1 / (1 - p) in training, 1 in evaluation
};

namespace detail {

/// Throws value_error unless 0 <= p < 1.
inline void check_dropout_p(double p, const char* who) {
  if (!(p >= 0.0 && p < 1.0)) {
    std::ostringstream text;
    text << who << ": p is " << p << ", expected in [0, 1)";
    throw value_error(text.str());
  }
}

/// dropout_forward, with `who` naming the caller in the messages.
template <typename Derived>
Matrix<typename Derived::Scalar> dropout_forward_checked(
    const Eigen::MatrixBase<Derived>& x, double p, bool training, Rng& rng,
    DropoutCache<typename Derived::Scalar>* cache, const char* who) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::dropout_forward: Scalar must be float or double");
  check_dropout_p(p, who);
  check_finite(x, who, "x");
  Matrix<S> y = x;
  const bool active = training && p > 0.0;
  const S scale = active ? static_cast<S>(1.0 / (1.0 - p)) : S(1);
  if (cache) {
    cache->keep = BoolMatrix::Constant(x.rows(), x.cols(), true);
    cache->scale = scale;
  }
  if (!active) return y;
  for (Index i = 0; i < y.rows(); ++i) {
    for (Index j = 0; j < y.cols(); ++j) {
      const bool keep = rng.uniform() >= p;
      y(i, j) = keep ? y(i, j) * scale : S(0);
      if (cache) cache->keep(i, j) = keep;
    }
  }
  return y;
}

}  // namespace detail

/// Inverted dropout. In training, each element is kept with probability 1 - p and then
/// multiplied by 1 / (1 - p), so the expectation is unchanged; otherwise (and when p = 0)
/// `y = x` and `rng` is not used.
///
/// The keep decisions draw one `rng.uniform()` per element in row-major order (kept when
/// the draw is >= p): the same seed gives the same mask on every platform.
/// \param x [R, C] \param p drop probability in [0, 1) \param training false: identity
/// \param rng the random stream (advanced by R * C draws in training when p > 0)
/// \param cache if not null, receives the keep mask [R, C] and the scale
/// \returns [R, C]
/// \throws value_error when p is outside [0, 1) or x holds NaN or Inf.
/// \note Srivastava et al. 2014; torch.nn.functional.dropout (PyTorch allows p = 1, which
///       zeroes everything; here it is an error, since no gradient can flow).
/// \sa dropout_backward, Dropout
template <typename Derived>
Matrix<typename Derived::Scalar> dropout_forward(
    const Eigen::MatrixBase<Derived>& x, double p, bool training, Rng& rng,
    DropoutCache<typename Derived::Scalar>* cache = nullptr) {
  return detail::dropout_forward_checked(x, p, training, rng, cache, "dropout_forward");
}

/// Gradient of dropout: `dx = dy * scale` where kept, 0 where dropped.
/// \param cache the forward's keep mask [R, C] and scale \param dy [R, C]
/// \returns [R, C] dx (assigned)
/// \throws shape_error when dy is not the mask's shape.
template <typename S, typename DerivedD>
Matrix<S> dropout_backward(const DropoutCache<S>& cache, const Eigen::MatrixBase<DerivedD>& dy) {
  if (dy.rows() != cache.keep.rows() || dy.cols() != cache.keep.cols()) {
    throw shape_error("dropout_backward: dy is " + detail::matrix_shape(dy) + ", expected " +
                      detail::matrix_shape(cache.keep) + " (the cached mask)");
  }
  // forward: y = keep ? x * scale : 0
  return cache.keep.select(dy * cache.scale, Matrix<S>::Zero(dy.rows(), dy.cols()));
}

/// A dropout layer, torch.nn.Dropout(p): active only while `training` is true (PyTorch's
/// module.train()); evaluation mode (the default here, unlike PyTorch) is the identity.
/// The caller owns the random stream, so forward stays const and reproducible.
/// \sa dropout_forward
class Dropout {
 public:
  bool training = false;  ///< true: drop and rescale; false: identity

  /// \throws value_error when p is outside [0, 1).
  explicit Dropout(double p = 0.5) : p_(p) { detail::check_dropout_p(p, "Dropout"); }

  double p() const noexcept { return p_; }

  /// \param x [R, C] \param rng advanced by R * C draws when active \returns [R, C]
  /// \throws value_error when x holds NaN or Inf.
  template <typename Derived>
  Matrix<typename Derived::Scalar> forward(
      const Eigen::MatrixBase<Derived>& x, Rng& rng,
      DropoutCache<typename Derived::Scalar>* cache = nullptr) const {
    return detail::dropout_forward_checked(x, p_, training, rng, cache, "Dropout::forward");
  }

  /// Any shape; elements drawn in row-major order. \param x [...] \returns [...]
  /// \throws value_error when x holds NaN or Inf.
  template <typename Scalar>
  Tensor<Scalar> forward(const Tensor<Scalar>& x, Rng& rng) const {
    detail::check_finite(x, "Dropout::forward", "x");  // the index in x's own shape
    Tensor<Scalar> y(x.shape());
    y.as_matrix() = detail::dropout_forward_checked(x.as_matrix(), p_, training, rng,
                                                    static_cast<DropoutCache<Scalar>*>(nullptr),
                                                    "Dropout::forward");
    return y;
  }

 private:
  double p_;
};

}  // namespace attend
