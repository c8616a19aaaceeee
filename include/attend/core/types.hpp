// SPDX-License-Identifier: MIT
// Core Eigen aliases: row-major matrices (one token per row), vectors and maps.
#pragma once

#include <Eigen/Core>

#include <type_traits>

namespace attend {

/// Index type used everywhere for sizes and positions (Eigen's signed index).
using Index = Eigen::Index;

/// A dynamic row-major matrix: a sequence `[L, d]`, one token per row.
template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A dynamic column vector (Eigen rejects row-major column vectors at compile time).
template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// A dynamic row vector: one token's features.
template <typename Scalar>
using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

/// A row-major bool matrix, used for allow/deny masks.
using BoolMatrix = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A view of row-major storage owned elsewhere (a `Tensor` slice, a buffer).
template <typename Scalar>
using MatrixMap = Eigen::Map<Matrix<Scalar>>;

/// A read-only view of row-major storage owned elsewhere.
template <typename Scalar>
using ConstMatrixMap = Eigen::Map<const Matrix<Scalar>>;

/// Read-only matrix argument that binds row-major matrices, maps and column blocks
/// (heads) without copying.
template <typename Scalar>
using MatrixCRef = Eigen::Ref<const Matrix<Scalar>>;

/// Writable matrix argument (row-major storage, inner stride 1).
template <typename Scalar>
using MatrixRef = Eigen::Ref<Matrix<Scalar>>;

/// True for the scalar types the numeric code is instantiated with.
template <typename Scalar>
inline constexpr bool is_supported_scalar_v =
    std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

}  // namespace attend
