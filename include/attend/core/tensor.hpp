// SPDX-License-Identifier: MIT
// An owning, row-major (outermost-first) N-d tensor with Eigen Map views of its matrices.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// Shape of a tensor, outermost dimension first: `[B, H, L, d]`.
using Shape = std::vector<Index>;

namespace detail {

/// Product of the extents, throwing `value_error` on a negative extent or on overflow.
inline Index checked_numel(const Shape& shape, const char* who) {
  Index n = 1;
  for (const Index d : shape) {
    if (d < 0) {
      throw value_error(std::string(who) + ": negative extent in shape " + shape_string(shape));
    }
    if (d != 0 && n > std::numeric_limits<Index>::max() / d) {
      throw value_error(std::string(who) + ": shape " + shape_string(shape) +
                        " has too many elements");
    }
    n *= d;
  }
  return n;
}

}  // namespace detail

/// An owning dense tensor stored row-major (the last dimension is contiguous).
///
/// A batch of sequences is `[B, L, d]`; `t[b]` (or `t.matrix(b)`) is an `Eigen::Map`
/// of sequence `b` as a row-major `[L, d]` matrix; `t.matrix(b, h)` views `[B, H, L, d]`.
/// Works for any trivially copyable element type (float, double, int64_t, bool).
template <typename T>
class Tensor {
 public:
  using value_type = T;

  /// An empty tensor of rank 0 holding no elements.
  Tensor() = default;

  /// A tensor of the given shape, every element set to `fill`.
  /// \throws value_error when an extent is negative.
  explicit Tensor(Shape shape, T fill = T(0))
      : shape_(std::move(shape)),
        data_(FlatStorage::Constant(detail::checked_numel(shape_, "Tensor"), fill)) {}

  /// A tensor of the given shape holding `values` (row-major).
  /// \throws shape_error when the number of values differs from the shape's product.
  Tensor(Shape shape, const std::vector<T>& values) : shape_(std::move(shape)) {
    const Index n = detail::checked_numel(shape_, "Tensor");
    if (n != static_cast<Index>(values.size())) {
      throw shape_error("Tensor: shape " + detail::shape_string(shape_) + " needs " +
                        std::to_string(n) + " values, got " + std::to_string(values.size()));
    }
    data_.resize(n);
    std::copy(values.begin(), values.end(), data_.data());
  }

  /// A rank-2 tensor `[rows, cols]` copied from a matrix expression.
  template <typename Derived>
  static Tensor from_matrix(const Eigen::MatrixBase<Derived>& m) {
    Tensor t({m.rows(), m.cols()});
    t.as_matrix() = m.template cast<T>();
    return t;
  }

  const Shape& shape() const noexcept { return shape_; }
  Index rank() const noexcept { return static_cast<Index>(shape_.size()); }
  Index size() const noexcept { return data_.size(); }
  bool empty() const noexcept { return data_.size() == 0; }

  /// Extent of dimension `i`; negative `i` counts from the end, as in PyTorch.
  /// \throws index_error when `i` is out of range.
  Index dim(Index i) const {
    const Index r = rank();
    const Index j = i < 0 ? i + r : i;
    if (j < 0 || j >= r) {
      throw index_error("Tensor::dim: dimension " + std::to_string(i) + " out of range for rank " +
                        std::to_string(r));
    }
    return shape_[static_cast<std::size_t>(j)];
  }

  T* data() noexcept { return data_.data(); }
  const T* data() const noexcept { return data_.data(); }
  /// All elements as one flat column vector (row-major order).
  Eigen::Matrix<T, Eigen::Dynamic, 1>& flat() noexcept { return data_; }
  const Eigen::Matrix<T, Eigen::Dynamic, 1>& flat() const noexcept { return data_; }

  /// Element at a full multi-index (bounds are checked with eigen_assert only).
  template <typename... Ix>
  T& operator()(Ix... ix) {
    return data_[offset({static_cast<Index>(ix)...})];
  }
  template <typename... Ix>
  const T& operator()(Ix... ix) const {
    return data_[offset({static_cast<Index>(ix)...})];
  }

  /// The whole tensor as a row-major `[prod(leading dims), last dim]` matrix.
  Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> as_matrix() {
    return {data(), outer_rows(), last_dim()};
  }
  Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> as_matrix()
      const {
    return {data(), outer_rows(), last_dim()};
  }

  /// The `[L, d]` matrix at leading indices `lead...` (rank = sizeof...(lead) + 2).
  template <typename... Ix>
  Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> matrix(Ix... lead) {
    const Index start = matrix_offset({static_cast<Index>(lead)...});
    return {data() + start, shape_[shape_.size() - 2], shape_.back()};
  }
  template <typename... Ix>
  Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> matrix(
      Ix... lead) const {
    const Index start = matrix_offset({static_cast<Index>(lead)...});
    return {data() + start, shape_[shape_.size() - 2], shape_.back()};
  }

  /// Sequence `b` of a `[B, L, d]` batch, as a `[L, d]` map.
  auto operator[](Index b) { return matrix(b); }
  auto operator[](Index b) const { return matrix(b); }

  /// The same values under another shape with the same number of elements.
  /// \throws shape_error when the element counts differ.
  Tensor reshaped(Shape new_shape) const {
    const Index n = detail::checked_numel(new_shape, "Tensor::reshaped");
    if (n != size()) {
      throw shape_error("Tensor::reshaped: cannot view " + detail::shape_string(shape_) + " as " +
                        detail::shape_string(new_shape));
    }
    Tensor t;
    t.shape_ = std::move(new_shape);
    t.data_ = data_;
    return t;
  }

  /// A copy with every element converted to `U`.
  template <typename U>
  Tensor<U> cast() const {
    Tensor<U> out(shape_);
    out.flat() = data_.template cast<U>();
    return out;
  }

  /// Sets every element to `v`.
  void fill(T v) { data_.setConstant(v); }

 private:
  Index last_dim() const { return shape_.empty() ? 1 : shape_.back(); }
  Index outer_rows() const {
    const Index last = last_dim();
    return last == 0 ? 0 : size() / last;
  }

  Index offset(std::initializer_list<Index> ix) const {
    eigen_assert(static_cast<Index>(ix.size()) == rank());
    Index off = 0;
    std::size_t k = 0;
    for (const Index i : ix) {
      eigen_assert(i >= 0 && i < shape_[k]);
      off = off * shape_[k] + i;
      ++k;
    }
    return off;
  }

  Index matrix_offset(std::initializer_list<Index> lead) const {
    eigen_assert(static_cast<Index>(lead.size()) + 2 == rank());
    Index off = 0;
    std::size_t k = 0;
    for (const Index i : lead) {
      eigen_assert(i >= 0 && i < shape_[k]);
      off = off * shape_[k] + i;
      ++k;
    }
    return off * shape_[shape_.size() - 2] * shape_.back();
  }

  using FlatStorage = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  Shape shape_;
  FlatStorage data_;
};

}  // namespace attend
