// SPDX-License-Identifier: MIT
// Element-wise activations ReLU and GELU (exact and tanh approximation), with backward.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>

namespace attend {

/// The activation of a transformer feed-forward block (`activation` of
/// torch.nn.TransformerEncoderLayer: "relu" or "gelu"; "gelu_tanh" is
/// `nn.GELU(approximate="tanh")`).
enum class Activation { relu, gelu, gelu_tanh };

/// The name PyTorch-style configs use: "relu", "gelu", "gelu_tanh".
inline const char* to_string(Activation a) noexcept {
  switch (a) {
    case Activation::relu:
      return "relu";
    case Activation::gelu:
      return "gelu";
    case Activation::gelu_tanh:
      return "gelu_tanh";
  }
  return "?";
}

/// Parses "relu", "gelu" or "gelu_tanh".
/// \throws value_error naming the accepted values otherwise.
inline Activation activation_from_string(const std::string& name) {
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_tanh") return Activation::gelu_tanh;
  throw value_error("activation_from_string: name is \"" + name +
                    "\", expected \"relu\", \"gelu\" or \"gelu_tanh\"");
}

namespace detail {

/// sqrt(2 / pi), the slope of the tanh approximation of GELU.
inline constexpr double kGeluTanhScale = 0.7978845608028654;
/// The cubic coefficient of the tanh approximation (Hendrycks & Gimpel 2016).
inline constexpr double kGeluTanhCubic = 0.044715;
/// 1 / sqrt(2): GELU's erf argument is x / sqrt(2).
inline constexpr double kInvSqrt2 = 0.7071067811865476;
/// 1 / sqrt(2 pi): the standard normal density at 0.
inline constexpr double kInvSqrt2Pi = 0.3989422804014327;

template <typename S>
S gelu_exact(S x) {
  return S(0.5) * x * (S(1) + std::erf(x * S(kInvSqrt2)));
}

template <typename S>
S gelu_tanh(S x) {
  const S u = S(kGeluTanhScale) * (x + S(kGeluTanhCubic) * x * x * x);
  return S(0.5) * x * (S(1) + std::tanh(u));
}

/// d gelu / dx = Phi(x) + x phi(x).
template <typename S>
S gelu_exact_derivative(S x) {
  const S cdf = S(0.5) * (S(1) + std::erf(x * S(kInvSqrt2)));
  const S pdf = S(kInvSqrt2Pi) * std::exp(S(-0.5) * x * x);
  return cdf + x * pdf;
}

/// d/dx of 0.5 x (1 + tanh(u)), u = k (x + c x^3):
/// 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2), t = tanh(u).
template <typename S>
S gelu_tanh_derivative(S x) {
  const S k = S(kGeluTanhScale), c = S(kGeluTanhCubic);
  const S t = std::tanh(k * (x + c * x * x * x));
  return S(0.5) * (S(1) + t) + S(0.5) * x * (S(1) - t * t) * k * (S(1) + S(3) * c * x * x);
}

/// Applies `act` in place, element by element; no allocation (the transformer's hot path).
template <typename S>
void activation_inplace(MatrixRef<S> x, Activation act) {
  switch (act) {
    case Activation::relu:
      x.array() = x.array().max(S(0));
      return;
    case Activation::gelu:
      x = x.unaryExpr([](S v) { return gelu_exact(v); });
      return;
    case Activation::gelu_tanh:
      x = x.unaryExpr([](S v) { return gelu_tanh(v); });
      return;
  }
}

}  // namespace detail

/// ReLU: `y = max(x, 0)`.
/// \param x [R, C] \returns [R, C]
/// \throws value_error when x holds NaN or Inf.
/// \note torch.nn.functional.relu.
/// \sa relu_backward, gelu
template <typename Derived>
Matrix<typename Derived::Scalar> relu(const Eigen::MatrixBase<Derived>& x) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::relu: Scalar must be float or double");
  detail::check_finite(x, "relu", "x");
  return x.array().max(S(0)).matrix();
}

/// Gradient of ReLU: `dx = dy` where `x > 0`, else 0 (PyTorch's choice at x = 0 is 0).
/// \param x [R, C] the forward input \param dy [R, C] upstream gradient
/// \returns [R, C] dx (assigned)
/// \throws shape_error when dy and x differ in shape.
template <typename DerivedX, typename DerivedD>
Matrix<typename DerivedX::Scalar> relu_backward(const Eigen::MatrixBase<DerivedX>& x,
                                                const Eigen::MatrixBase<DerivedD>& dy) {
  using S = typename DerivedX::Scalar;
  if (dy.rows() != x.rows() || dy.cols() != x.cols()) {
    throw shape_error("relu_backward: dy is " + detail::matrix_shape(dy) + ", expected " +
                      detail::matrix_shape(x));
  }
  return (x.array() > S(0)).select(dy.array(), S(0)).matrix();
}

/// GELU: exact `y = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`, or with `approximate_tanh`
/// `y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
/// \param x [R, C] \param approximate_tanh false: erf (PyTorch's default "none"); true: "tanh"
/// \returns [R, C]
/// \throws value_error when x holds NaN or Inf.
/// \note Hendrycks & Gimpel 2016; torch.nn.functional.gelu(x, approximate="none"|"tanh").
/// \sa gelu_backward, relu
template <typename Derived>
Matrix<typename Derived::Scalar> gelu(const Eigen::MatrixBase<Derived>& x,
                                      bool approximate_tanh = false) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::gelu: Scalar must be float or double");
  detail::check_finite(x, "gelu", "x");
  Matrix<S> y = x;
  detail::activation_inplace<S>(y, approximate_tanh ? Activation::gelu_tanh : Activation::gelu);
  return y;
}

/// Gradient of GELU: exact `dx = dy (Phi(x) + x phi(x))`; tanh form as its derivative
/// `0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)`, t = tanh(u).
/// \param x [R, C] the forward input \param dy [R, C] upstream gradient
/// \returns [R, C] dx (assigned)
/// \throws shape_error when dy and x differ in shape.
template <typename DerivedX, typename DerivedD>
Matrix<typename DerivedX::Scalar> gelu_backward(const Eigen::MatrixBase<DerivedX>& x,
                                                const Eigen::MatrixBase<DerivedD>& dy,
                                                bool approximate_tanh = false) {
  using S = typename DerivedX::Scalar;
  if (dy.rows() != x.rows() || dy.cols() != x.cols()) {
    throw shape_error("gelu_backward: dy is " + detail::matrix_shape(dy) + ", expected " +
                      detail::matrix_shape(x));
  }
  const Matrix<S> d =
      approximate_tanh ? x.unaryExpr([](S v) { return detail::gelu_tanh_derivative(v); }).eval()
                       : x.unaryExpr([](S v) { return detail::gelu_exact_derivative(v); }).eval();
  return (d.array() * dy.array()).matrix();
}

/// `act(x)` for a transformer activation. \param x [R, C] \returns [R, C]
/// \throws value_error when x holds NaN or Inf.
/// \sa relu, gelu
template <typename Derived>
Matrix<typename Derived::Scalar> activation(const Eigen::MatrixBase<Derived>& x, Activation act) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::activation: Scalar must be float or double");
  detail::check_finite(x, "activation", "x");
  Matrix<S> y = x;
  detail::activation_inplace<S>(y, act);
  return y;
}

/// Gradient of `activation(x, act)`. \param x [R, C] forward input \param dy [R, C]
/// \returns [R, C] dx (assigned) \throws shape_error when shapes differ.
template <typename DerivedX, typename DerivedD>
Matrix<typename DerivedX::Scalar> activation_backward(const Eigen::MatrixBase<DerivedX>& x,
                                                      const Eigen::MatrixBase<DerivedD>& dy,
                                                      Activation act) {
  if (act == Activation::relu) return relu_backward(x, dy);
  return gelu_backward(x, dy, act == Activation::gelu_tanh);
}

}  // namespace attend
