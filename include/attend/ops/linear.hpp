// SPDX-License-Identifier: MIT
// Affine layer y = x W^T + b in PyTorch's layout (weight [out, in]), with backward.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/state_dict.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

namespace attend {

namespace detail {

/// `out = x W^T + b` without checks or allocation (b may be empty).
/// \param x [N, in] \param weight [out, in] \param bias [out] or empty \param out [N, out]
template <typename S>
void linear_into(const MatrixCRef<S>& x, const Matrix<S>& weight, const Vector<S>& bias,
                 MatrixRef<S> out) {
  out.noalias() = x * weight.transpose();
  if (bias.size() != 0) out.rowwise() += bias.transpose();
}

template <typename DX, typename DW>
void check_linear_args(const Eigen::MatrixBase<DX>& x, const Eigen::MatrixBase<DW>& weight,
                       Index bias_size, const char* who) {
  if (x.cols() != weight.cols()) {
    throw shape_error(std::string(who) + ": x is " + matrix_shape(x) + ", expected [N, " +
                      std::to_string(weight.cols()) + "] (in_features of weight " +
                      matrix_shape(weight) + ")");
  }
  if (bias_size != 0 && bias_size != weight.rows()) {
    throw shape_error(std::string(who) + ": bias is [" + std::to_string(bias_size) +
                      "], expected [" + std::to_string(weight.rows()) +
                      "] (out_features) or empty");
  }
}

}  // namespace detail

/// Affine map `y = x W^T + b`.
/// \param x [N, in] \param weight [out, in] \param bias [out], or empty for no bias
/// \returns [N, out]
/// \throws shape_error when x's width or the bias length does not match weight;
///   value_error when x holds NaN or Inf.
/// \note torch.nn.functional.linear; llm.c matmul_forward (weight (OC, C)).
/// \sa linear_backward, Linear
template <typename DX, typename DW>
Matrix<typename DX::Scalar> linear_forward(
    const Eigen::MatrixBase<DX>& x, const Eigen::MatrixBase<DW>& weight,
    const Vector<typename DX::Scalar>& bias = Vector<typename DX::Scalar>()) {
  using S = typename DX::Scalar;
  static_assert(is_supported_scalar_v<S>, "attend::linear_forward: Scalar must be float or double");
  detail::check_linear_args(x, weight, bias.size(), "linear_forward");
  detail::check_finite(x, "linear_forward", "x");
  Matrix<S> y(x.rows(), weight.rows());  // [N, out]
  y.noalias() = x * weight.transpose();
  if (bias.size() != 0) y.rowwise() += bias.transpose();
  return y;
}

/// Gradient of `y = x W^T + b`: `dx = dy W`, `dW += dy^T x`, `db += sum over rows of dy`.
/// \param x [N, in] the forward input (the cache) \param weight [out, in]
/// \param dy [N, out] upstream gradient
/// \param d_weight [out, in], accumulated (+=); an empty matrix is first set to zeros
/// \param d_bias [out], accumulated (+=), empty is first zeroed; nullptr when there is no bias
/// \returns [N, in] dx (assigned)
/// \throws shape_error when shapes disagree.
template <typename DX, typename DW, typename DD>
Matrix<typename DX::Scalar> linear_backward(const Eigen::MatrixBase<DX>& x,
                                            const Eigen::MatrixBase<DW>& weight,
                                            const Eigen::MatrixBase<DD>& dy,
                                            Matrix<typename DX::Scalar>& d_weight,
                                            Vector<typename DX::Scalar>* d_bias = nullptr) {
  using S = typename DX::Scalar;
  detail::check_linear_args(x, weight, 0, "linear_backward");
  if (dy.rows() != x.rows() || dy.cols() != weight.rows()) {
    throw shape_error("linear_backward: dy is " + detail::matrix_shape(dy) + ", expected " +
                      detail::shape_string({x.rows(), weight.rows()}));
  }
  if (d_weight.size() == 0) d_weight = Matrix<S>::Zero(weight.rows(), weight.cols());
  if (d_weight.rows() != weight.rows() || d_weight.cols() != weight.cols()) {
    throw shape_error("linear_backward: d_weight is " + detail::matrix_shape(d_weight) +
                      ", expected " + detail::matrix_shape(weight));
  }
  if (d_bias) {
    if (d_bias->size() == 0) *d_bias = Vector<S>::Zero(weight.rows());
    if (d_bias->size() != weight.rows()) {
      throw shape_error("linear_backward: d_bias is [" + std::to_string(d_bias->size()) +
                        "], expected [" + std::to_string(weight.rows()) + "]");
    }
  }
  // No rows: nothing to add (and products of empty maps offset a null pointer).
  if (x.rows() == 0) return Matrix<S>(0, weight.cols());
  // forward: y = x W^T + b
  d_weight.noalias() += dy.transpose() * x;               // [out, in]
  if (d_bias) *d_bias += dy.colwise().sum().transpose();  // [out]
  Matrix<S> dx(x.rows(), weight.cols());                  // [N, in]
  dx.noalias() = dy * weight;
  return dx;
}

/// A fully connected layer, torch.nn.Linear: `y = x W^T + b`.
///
/// Parameters keep PyTorch's names and layouts: `weight` [out_features, in_features],
/// `bias` [out_features] (empty when bias is false), so a state dict maps without
/// transposition.
/// \note torch.nn.Linear; initialisation as its reset_parameters: kaiming_uniform with
///       a = sqrt(5), i.e. weight and bias U(-1/sqrt(in), 1/sqrt(in)).
/// \sa linear_forward, linear_backward
template <typename Scalar>
class Linear {
  static_assert(is_supported_scalar_v<Scalar>, "attend::Linear: Scalar must be float or double");

 public:
  Matrix<Scalar> weight;  // [out, in]
  Vector<Scalar> bias;    // [out] or empty

  /// Parameters U(-1/sqrt(in), 1/sqrt(in)) from `seed`, as PyTorch initialises them.
  /// \throws value_error when in_features or out_features is not positive.
  Linear(Index in_features, Index out_features, bool with_bias = true, std::uint64_t seed = 0) {
    Rng rng(seed);
    init(in_features, out_features, with_bias, rng);
  }
  /// As above, drawing from a shared generator (a model initialises all layers from one).
  Linear(Index in_features, Index out_features, bool with_bias, Rng& rng) {
    init(in_features, out_features, with_bias, rng);
  }

  Index in_features() const noexcept { return weight.cols(); }
  Index out_features() const noexcept { return weight.rows(); }
  bool has_bias() const noexcept { return bias.size() != 0; }

  /// Loads `prefix + "weight"` [out, in] and, when the layer has a bias, `prefix + "bias"`.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    Matrix<Scalar> w = load_matrix<Scalar>(st, prefix + "weight", out_features(), in_features());
    Vector<Scalar> b;
    if (has_bias()) b = load_vector<Scalar>(st, prefix + "bias", out_features());
    weight = std::move(w);
    bias = std::move(b);
  }

  /// \param x [N, in] \returns [N, out]
  /// \throws shape_error when x is not [N, in_features]; value_error when x holds NaN or Inf.
  Matrix<Scalar> forward(const MatrixCRef<Scalar>& x) const {
    check_input(x.cols(), detail::matrix_shape(x));
    detail::check_finite(x, "Linear::forward", "x");
    Matrix<Scalar> y(x.rows(), out_features());
    detail::linear_into<Scalar>(x, weight, bias, y);
    return y;
  }

  /// Any leading shape, as PyTorch. \param x [..., in] \returns [..., out]
  /// \throws shape_error when x's last dimension is not in_features (or x has rank 0);
  ///   value_error when x holds NaN or Inf.
  Tensor<Scalar> forward(const Tensor<Scalar>& x) const {
    check_input(x.rank() == 0 ? -1 : x.dim(-1), detail::shape_string(x.shape()));
    detail::check_finite(x, "Linear::forward", "x");
    Shape s = x.shape();
    s.back() = out_features();
    Tensor<Scalar> y(s);
    detail::linear_into<Scalar>(x.as_matrix(), weight, bias, y.as_matrix());
    return y;
  }

  /// Gradient of forward: `dx = dy W`; accumulates `d_weight += dy^T x`, `d_bias += colsum(dy)`.
  /// \param x [N, in] the forward input \param dy [N, out]
  /// \param d_weight [out, in] (+=, empty: zeroed first) \param d_bias [out] (+=), ignored
  ///        without a bias \returns [N, in] dx
  Matrix<Scalar> backward(const MatrixCRef<Scalar>& x, const MatrixCRef<Scalar>& dy,
                          Matrix<Scalar>& d_weight, Vector<Scalar>& d_bias) const {
    return linear_backward(x, weight, dy, d_weight, has_bias() ? &d_bias : nullptr);
  }

 private:
  void init(Index in, Index out, bool with_bias, Rng& rng) {
    if (in <= 0 || out <= 0) {
      throw value_error("Linear: in_features is " + std::to_string(in) + " and out_features is " +
                        std::to_string(out) + ", expected both positive");
    }
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    weight.resize(out, in);
    fill_uniform(weight, bound, rng);
    bias.resize(with_bias ? out : 0);
    fill_uniform(bias, bound, rng);
  }

  void check_input(Index cols, const std::string& shape) const {
    if (cols != in_features()) {
      throw shape_error("Linear::forward: x is " + shape + ", expected [..., " +
                        std::to_string(in_features()) + "] (in_features)");
    }
  }
};

}  // namespace attend
