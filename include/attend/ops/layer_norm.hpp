// SPDX-License-Identifier: MIT
// Layer normalisation over the last dimension (torch.nn.LayerNorm), with backward.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/state_dict.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>
#include <utility>

namespace attend {

/// What layer_norm_backward needs from the forward pass (llm.c caches mean and rstd).
template <typename Scalar>
struct LayerNormCache {
  Matrix<Scalar> x_hat;  // [R, N] (x - mean) * rstd, before the affine map
  Vector<Scalar> rstd;   // [R] 1 / sqrt(var + eps)
};

namespace detail {

/// Normalises each row of `x` into `out` (which may alias `x`): no checks, no allocation.
/// \param x [R, N] \param weight, bias [N] or empty \param out [R, N]
/// \param cache if not null, receives x_hat and rstd (must be sized [R, N] and [R])
template <typename S>
void layer_norm_rows(const MatrixCRef<S>& x, const Vector<S>& weight, const Vector<S>& bias, S eps,
                     MatrixRef<S> out, LayerNormCache<S>* cache = nullptr) {
  const Index N = x.cols();
  const S inv_n = S(1) / static_cast<S>(N);
  for (Index i = 0; i < x.rows(); ++i) {
    const S mean = x.row(i).sum() * inv_n;
    // The biased variance (divide by N), as PyTorch; two passes for accuracy.
    const S var = (x.row(i).array() - mean).square().sum() * inv_n;
    const S rstd = S(1) / std::sqrt(var + eps);
    // Coefficient-wise, each output reads only its own input: safe when out aliases x.
    out.row(i) = (x.row(i).array() - mean) * rstd;
    if (cache) {
      cache->x_hat.row(i) = out.row(i);
      cache->rstd(i) = rstd;
    }
    if (weight.size() != 0) out.row(i).array() *= weight.transpose().array();
    if (bias.size() != 0) out.row(i) += bias.transpose();
  }
}

inline void check_layer_norm_eps(double eps, const char* who) {
  if (!(eps >= 0.0) || !std::isfinite(eps)) {
    throw value_error(std::string(who) + ": eps is " + std::to_string(eps) +
                      ", expected a finite value >= 0");
  }
}

/// layer_norm_forward, with `who` naming the caller in the messages.
template <typename Derived>
Matrix<typename Derived::Scalar> layer_norm_forward_checked(
    const Eigen::MatrixBase<Derived>& x, const Vector<typename Derived::Scalar>& weight,
    const Vector<typename Derived::Scalar>& bias, double eps,
    LayerNormCache<typename Derived::Scalar>* cache, const char* who) {
  using S = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<S>,
                "attend::layer_norm_forward: Scalar must be float or double");
  const Index N = x.cols();
  for (const auto& p :
       {std::make_pair("weight", weight.size()), std::make_pair("bias", bias.size())}) {
    if (p.second != 0 && p.second != N) {
      throw shape_error(std::string(who) + ": " + p.first + " is [" + std::to_string(p.second) +
                        "], expected [" + std::to_string(N) + "] (the last dimension of x " +
                        matrix_shape(x) + ") or empty");
    }
  }
  check_layer_norm_eps(eps, who);
  check_finite(x, who, "x");
  Matrix<S> y = x;
  if (cache) {
    cache->x_hat.resize(x.rows(), N);
    cache->rstd.resize(x.rows());
  }
  layer_norm_rows<S>(y, weight, bias, static_cast<S>(eps), y, cache);
  return y;
}

}  // namespace detail

/// Layer normalisation of each row: `y = (x - mean) / sqrt(var + eps) * weight + bias`,
/// with the mean and the biased variance (divide by N) over the row's N features.
/// \param x [R, N] \param weight [N] or empty (no scale) \param bias [N] or empty (no shift)
/// \param eps added to the variance, >= 0
/// \param cache if not null, filled with x_hat [R, N] and rstd [R] for the backward
/// \returns [R, N]
/// \throws shape_error when weight or bias is neither [N] nor empty; value_error on a
///   negative or non-finite eps, or when x holds NaN or Inf.
/// \note Ba, Kiros & Hinton 2016; torch.nn.functional.layer_norm (normalized_shape = [N]).
/// \sa layer_norm_backward, LayerNorm
template <typename Derived>
Matrix<typename Derived::Scalar> layer_norm_forward(
    const Eigen::MatrixBase<Derived>& x, const Vector<typename Derived::Scalar>& weight,
    const Vector<typename Derived::Scalar>& bias, double eps = 1e-5,
    LayerNormCache<typename Derived::Scalar>* cache = nullptr) {
  return detail::layer_norm_forward_checked(x, weight, bias, eps, cache, "layer_norm_forward");
}

/// Gradient of layer_norm_forward. With `g = dy * weight` (or dy without weight):
/// `dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))` per row;
/// `d_weight += sum over rows of dy * x_hat`; `d_bias += sum over rows of dy`.
/// \param cache the forward's x_hat [R, N] and rstd [R] \param weight [N] or empty
/// \param dy [R, N] upstream gradient
/// \param d_weight [N] (+=, empty: zeroed first), nullptr without weight
/// \param d_bias [N] (+=, empty: zeroed first), nullptr without bias
/// \returns [R, N] dx (assigned)
/// \throws shape_error when shapes disagree.
template <typename S, typename DerivedD>
Matrix<S> layer_norm_backward(const LayerNormCache<S>& cache, const Vector<S>& weight,
                              const Eigen::MatrixBase<DerivedD>& dy, Vector<S>* d_weight = nullptr,
                              Vector<S>* d_bias = nullptr) {
  const Index R = cache.x_hat.rows(), N = cache.x_hat.cols();
  if (dy.rows() != R || dy.cols() != N || cache.rstd.size() != R) {
    throw shape_error("layer_norm_backward: dy is " + detail::matrix_shape(dy) + ", expected " +
                      detail::matrix_shape(cache.x_hat) + " (the cached x_hat)");
  }
  if (weight.size() != 0 && weight.size() != N) {
    throw shape_error("layer_norm_backward: weight is [" + std::to_string(weight.size()) +
                      "], expected [" + std::to_string(N) + "] or empty");
  }
  for (Vector<S>* g : {d_weight, d_bias}) {
    if (g && g->size() == 0) *g = Vector<S>::Zero(N);
    if (g && g->size() != N) {
      throw shape_error(std::string("layer_norm_backward: ") +
                        (g == d_weight ? "d_weight" : "d_bias") + " is [" +
                        std::to_string(g->size()) + "], expected [" + std::to_string(N) + "]");
    }
  }
  // No rows: nothing to add (and column sums of an empty map offset a null pointer).
  if (R == 0) return Matrix<S>(0, N);
  // forward: y = x_hat * weight + bias
  if (d_weight)
    *d_weight += (dy.array() * cache.x_hat.array()).colwise().sum().matrix().transpose();
  if (d_bias) *d_bias += dy.colwise().sum().transpose();
  Matrix<S> g = dy;  // [R, N] dL/dx_hat
  if (weight.size() != 0) g.array().rowwise() *= weight.transpose().array();
  // forward: x_hat = (x - mean) * rstd, mean and var over the row
  Matrix<S> dx(R, N);
  const S inv_n = S(1) / static_cast<S>(N);
  for (Index i = 0; i < R; ++i) {
    const S mean_g = g.row(i).sum() * inv_n;
    const S mean_gx = g.row(i).dot(cache.x_hat.row(i)) * inv_n;
    dx.row(i) =
        cache.rstd(i) * (g.row(i).array() - mean_g - cache.x_hat.row(i).array() * mean_gx).matrix();
  }
  return dx;
}

/// Layer normalisation over the last dimension, torch.nn.LayerNorm(normalized_shape, eps,
/// elementwise_affine).
///
/// Parameters keep PyTorch's names: `weight` [N] (initialised to ones) and `bias` [N]
/// (zeros), both empty when elementwise_affine is false.
/// \note torch.nn.LayerNorm with an integer normalized_shape; a multi-dimensional
///       normalized_shape is the same computation on the flattened trailing dimensions.
/// \sa layer_norm_forward, layer_norm_backward
template <typename Scalar>
class LayerNorm {
  static_assert(is_supported_scalar_v<Scalar>, "attend::LayerNorm: Scalar must be float or double");

 public:
  Vector<Scalar> weight;  // [N] or empty
  Vector<Scalar> bias;    // [N] or empty

  /// \throws value_error when normalized_shape is not positive or eps is negative or not finite.
  explicit LayerNorm(Index normalized_shape, double eps = 1e-5, bool elementwise_affine = true)
      : n_(normalized_shape), eps_(eps) {
    if (normalized_shape <= 0) {
      throw value_error("LayerNorm: normalized_shape is " + std::to_string(normalized_shape) +
                        ", expected a positive size");
    }
    detail::check_layer_norm_eps(eps, "LayerNorm");
    if (elementwise_affine) {
      weight = Vector<Scalar>::Ones(n_);
      bias = Vector<Scalar>::Zero(n_);
    }
  }

  Index normalized_shape() const noexcept { return n_; }
  double eps() const noexcept { return eps_; }
  bool elementwise_affine() const noexcept { return weight.size() != 0; }

  /// Loads `prefix + "weight"` and `prefix + "bias"` ([N] each) when elementwise_affine.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    if (!elementwise_affine()) return;
    Vector<Scalar> w = load_vector<Scalar>(st, prefix + "weight", n_);
    Vector<Scalar> b = load_vector<Scalar>(st, prefix + "bias", n_);
    weight = std::move(w);
    bias = std::move(b);
  }

  /// \param x [R, N] \param cache optional, for layer_norm_backward \returns [R, N]
  /// \throws shape_error when x is not [R, normalized_shape]; value_error when x holds
  ///   NaN or Inf.
  Matrix<Scalar> forward(const MatrixCRef<Scalar>& x,
                         LayerNormCache<Scalar>* cache = nullptr) const {
    check_width(x.cols(), detail::matrix_shape(x));
    return detail::layer_norm_forward_checked(x, weight, bias, eps_, cache, "LayerNorm::forward");
  }

  /// \param x [..., N] \returns [..., N]
  /// \throws shape_error when the last dimension of x is not normalized_shape; value_error
  ///   when x holds NaN or Inf.
  Tensor<Scalar> forward(const Tensor<Scalar>& x) const {
    check_width(x.rank() == 0 ? -1 : x.dim(-1), detail::shape_string(x.shape()));
    detail::check_finite(x, "LayerNorm::forward", "x");
    Tensor<Scalar> y = x;
    forward_inplace(y.as_matrix());
    return y;
  }

  /// Normalises the rows of `x` in place; no allocation (the transformer's hot path).
  /// \param x [R, N], rows of width normalized_shape (checked only by eigen_assert)
  void forward_inplace(MatrixRef<Scalar> x) const {
    eigen_assert(x.cols() == n_);
    detail::layer_norm_rows<Scalar>(x, weight, bias, static_cast<Scalar>(eps_), x);
  }

 private:
  void check_width(Index cols, const std::string& shape) const {
    if (cols != n_) {
      throw shape_error("LayerNorm::forward: x is " + shape + ", expected [..., " +
                        std::to_string(n_) + "] (normalized_shape)");
    }
  }

  Index n_;
  double eps_;
};

}  // namespace attend
