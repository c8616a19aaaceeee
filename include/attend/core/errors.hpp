// SPDX-License-Identifier: MIT
// Typed exceptions thrown at the library's door, and helpers to format shapes.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace attend {

/// Base of every exception the library throws; `what()` holds the whole story.
class error : public std::runtime_error {
 public:
  explicit error(const std::string& message) : std::runtime_error(message) {}
};

/// An argument has the wrong shape (rank or extent).
class shape_error : public error {
 public:
  explicit shape_error(const std::string& message) : error(message) {}
};

/// An index (token id, position, tensor name) is out of range or unknown.
class index_error : public error {
 public:
  explicit index_error(const std::string& message) : error(message) {}
};

/// An argument has a value that is not allowed (NaN, Inf, non-positive size, bad option).
class value_error : public error {
 public:
  explicit value_error(const std::string& message) : error(message) {}
};

/// A file or serialized buffer is malformed (truncated, bad header, inconsistent sizes).
class format_error : public error {
 public:
  explicit format_error(const std::string& message) : error(message) {}
};

namespace detail {

/// "[7, 12]" for a shape given as any range of integers.
template <typename Range>
std::string shape_string(const Range& dims) {
  std::ostringstream out;
  out << '[';
  bool first = true;
  for (const auto d : dims) {
    if (!first) out << ", ";
    out << static_cast<long long>(d);
    first = false;
  }
  out << ']';
  return out.str();
}

inline std::string shape_string(std::initializer_list<long long> dims) {
  return shape_string(std::vector<long long>(dims));
}

/// "[7, 12]" for a matrix-like object with rows() and cols().
template <typename M>
std::string matrix_shape(const M& m) {
  return shape_string({static_cast<long long>(m.rows()), static_cast<long long>(m.cols())});
}

}  // namespace detail
}  // namespace attend
