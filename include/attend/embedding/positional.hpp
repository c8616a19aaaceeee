// SPDX-License-Identifier: MIT
// Sinusoidal positional encoding of "Attention Is All You Need", in two column layouts.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>

namespace attend {

/// Column layout of the sinusoidal encoding.
enum class PositionalLayout {
  /// The paper's: sin in even columns, cos in odd ones: `PE[p, 2i] = sin(p w_i)`,
  /// `PE[p, 2i+1] = cos(p w_i)`. The default.
  interleaved,
  /// All sines, then all cosines: `[sin(p w_0) .. sin(p w_{ceil(d/2)-1}) | cos(p w_0) ..]`,
  /// as tensor2tensor, OpenNMT and CTranslate2 lay it out.
  concatenated,
};

/// The sinusoidal positional encoding table, computed in double then rounded once.
///
/// With `w_i = 1 / base^(2i / d_model)`: interleaved `PE[p, 2i] = sin(p w_i)`,
/// `PE[p, 2i+1] = cos(p w_i)` (odd d_model: the last column is a sine); concatenated puts
/// `sin(p w_i)` for i < ceil(d/2) first, then `cos(p w_i)` for i < floor(d/2).
/// Row r holds position `p = first_position + r`.
/// \param max_len rows \param d_model columns \param first_position 0 (the paper) or 1 (some
/// peers count from 1) or any offset \param base 10000 in the paper
/// \returns [max_len, d_model]
/// \throws value_error when max_len < 0, d_model <= 0, or base <= 0.
/// \note Vaswani et al. 2017, section 3.5.
template <typename Scalar>
Matrix<Scalar> sinusoidal_positional_encoding(
    Index max_len, Index d_model, PositionalLayout layout = PositionalLayout::interleaved,
    Index first_position = 0, double base = 10000.0) {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::sinusoidal_positional_encoding: Scalar must be float or double");
  if (max_len < 0 || d_model <= 0) {
    throw value_error("sinusoidal_positional_encoding: max_len is " + std::to_string(max_len) +
                      " and d_model is " + std::to_string(d_model) +
                      ", expected max_len >= 0 and d_model > 0");
  }
  if (!(base > 0.0) || !std::isfinite(base)) {
    throw value_error("sinusoidal_positional_encoding: base is " + std::to_string(base) +
                      ", expected a positive finite value");
  }
  const Index n_sin = (d_model + 1) / 2;  // ceil(d/2) sine columns
  const Index n_cos = d_model / 2;        // floor(d/2) cosine columns
  Matrix<Scalar> pe(max_len, d_model);
  for (Index r = 0; r < max_len; ++r) {
    // Summed in double: first_position + r may not fit an Index (exact below 2^53).
    const double p = static_cast<double>(first_position) + static_cast<double>(r);
    for (Index i = 0; i < n_sin; ++i) {
      const double angle =
          p / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(d_model));
      const Index sin_col = layout == PositionalLayout::interleaved ? 2 * i : i;
      pe(r, sin_col) = static_cast<Scalar>(std::sin(angle));
      if (i < n_cos) {
        const Index cos_col = layout == PositionalLayout::interleaved ? 2 * i + 1 : n_sin + i;
        pe(r, cos_col) = static_cast<Scalar>(std::cos(angle));
      }
    }
  }
  return pe;
}

/// A precomputed sinusoidal table that adds positions to a sequence of embeddings.
template <typename Scalar>
class SinusoidalPositionalEncoding {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::SinusoidalPositionalEncoding: Scalar must be float or double");

 public:
  /// \throws value_error as sinusoidal_positional_encoding.
  SinusoidalPositionalEncoding(Index max_len, Index d_model,
                               PositionalLayout layout = PositionalLayout::interleaved,
                               Index first_position = 0)
      : table_(sinusoidal_positional_encoding<Scalar>(max_len, d_model, layout, first_position)) {}

  /// The table. \returns [max_len, d_model]
  const Matrix<Scalar>& table() const noexcept { return table_; }
  Index max_len() const noexcept { return table_.rows(); }
  Index d_model() const noexcept { return table_.cols(); }

  /// `x + PE[offset : offset + L]`. \param x [L, d_model] embeddings \param offset first row
  /// (the number of tokens already decoded, for incremental decoding) \returns [L, d_model]
  /// \throws shape_error when x's width is not d_model; index_error when offset + L > max_len;
  ///   value_error when x holds NaN or Inf.
  template <typename Derived>
  Matrix<Scalar> forward(const Eigen::MatrixBase<Derived>& x, Index offset = 0) const {
    if (x.cols() != d_model()) {
      throw shape_error("SinusoidalPositionalEncoding::forward: x is " + detail::matrix_shape(x) +
                        ", expected [L, " + std::to_string(d_model()) + "]");
    }
    if (offset < 0 || offset > max_len() - x.rows()) {  // no overflow of offset + L
      // offset + L overflows only when offset >= 0: printed as an unsigned sum then.
      const std::string end = offset < 0
                                  ? std::to_string(offset + x.rows())
                                  : std::to_string(static_cast<unsigned long long>(offset) +
                                                   static_cast<unsigned long long>(x.rows()));
      throw index_error("SinusoidalPositionalEncoding::forward: positions [" +
                        std::to_string(offset) + ", " + end + ") exceed max_len " +
                        std::to_string(max_len()));
    }
    detail::check_finite(x, "SinusoidalPositionalEncoding::forward", "x");
    return x + table_.middleRows(offset, x.rows());
  }

 private:
  Matrix<Scalar> table_;  // [max_len, d_model]
};

}  // namespace attend
