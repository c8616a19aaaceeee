// SPDX-License-Identifier: MIT
// Parameter lookup by PyTorch state-dict names, with shape and finiteness checks.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"

#include <Eigen/Core>

#include <cmath>
#include <string>

namespace attend {

namespace detail {

/// Checks that parameter `name` exists with a floating-point dtype and shape `want`.
inline void require_parameter(const SafeTensors& st, const std::string& name, const Shape& want,
                              const char* who) {
  if (!st.contains(name)) {
    throw index_error(std::string(who) + ": no parameter named '" + name + "' in " + st.source());
  }
  const DType dt = st.dtype(name);
  if (dt == DType::I64 || dt == DType::BOOL) {
    throw value_error(std::string(who) + ": '" + name + "' in " + st.source() + " is " +
                      to_string(dt) + ", expected F16, BF16, F32 or F64");
  }
  if (st.shape(name) != want) {
    throw shape_error(std::string(who) + ": '" + name + "' in " + st.source() + " is " +
                      shape_string(st.shape(name)) + ", expected " + shape_string(want));
  }
}

/// Throws value_error at the first NaN or Inf of a parameter, naming its position.
/// `source` names the file (SafeTensors::source()).
template <typename Scalar>
void require_finite(const Tensor<Scalar>& t, const std::string& name, const char* who,
                    const std::string& source) {
  for (Index i = 0; i < t.size(); ++i) {
    const Scalar v = t.data()[i];
    if (std::isfinite(v)) continue;
    Shape at(t.shape().size());  // the row-major multi-index of flat index i
    Index rest = i;
    for (std::size_t k = at.size(); k-- > 0;) {
      at[k] = rest % t.shape()[k];
      rest /= t.shape()[k];
    }
    const std::string text = std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
    throw value_error(std::string(who) + ": '" + name + "' in " + source + " holds " + text +
                      " at " + shape_string(at) + ", expected finite values");
  }
}

}  // namespace detail

/// Parameter `name` (a PyTorch state-dict name such as "out_proj.weight") as a
/// `[rows, cols]` row-major matrix, converted from F16, BF16, F32 or F64.
/// PyTorch's layout is kept: `Linear.weight` is `[out, in]`, no transposition.
/// \param st the parsed file.
/// \param name the state-dict name.
/// \param rows, cols the expected shape; the stored shape must be exactly `[rows, cols]`.
/// \returns [rows, cols]
/// \throws index_error when there is no tensor `name`.
/// \throws value_error when its dtype is I64/BOOL, or it holds NaN or Inf.
/// \throws shape_error when its shape is not `[rows, cols]`.
template <typename Scalar>
Matrix<Scalar> load_matrix(const SafeTensors& st, const std::string& name, Index rows, Index cols) {
  static_assert(is_supported_scalar_v<Scalar>, "load_matrix: Scalar must be float or double");
  detail::require_parameter(st, name, Shape{rows, cols}, "load_matrix");
  const Tensor<Scalar> t = st.get<Scalar>(name);
  detail::require_finite(t, name, "load_matrix", st.source());
  return Eigen::Map<const Matrix<Scalar>>(t.data(), rows, cols);  // [rows, cols]
}

/// Parameter `name` as a length-`n` vector (stored shape exactly `[n]`), e.g. a bias.
/// \returns [n]
/// \throws index_error when there is no tensor `name`.
/// \throws value_error when its dtype is I64/BOOL, or it holds NaN or Inf.
/// \throws shape_error when its shape is not `[n]`.
/// \sa load_matrix
template <typename Scalar>
Vector<Scalar> load_vector(const SafeTensors& st, const std::string& name, Index n) {
  static_assert(is_supported_scalar_v<Scalar>, "load_vector: Scalar must be float or double");
  detail::require_parameter(st, name, Shape{n}, "load_vector");
  const Tensor<Scalar> t = st.get<Scalar>(name);
  detail::require_finite(t, name, "load_vector", st.source());
  return Eigen::Map<const Vector<Scalar>>(t.data(), n);  // [n]
}

}  // namespace attend
