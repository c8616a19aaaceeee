// SPDX-License-Identifier: MIT
// Fixed-width printing for the examples, so their output is the same with every compiler.
#pragma once

#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

namespace examples {

/// `value` with `decimals` digits after the point, right-aligned in `width` characters.
/// Values that round to zero print as zero, never "-0.0000", whose sign would hang on
/// the last bit of a rounding difference.
inline std::string fixed(double value, int decimals = 4, int width = 0) {
  if (std::abs(value) < 0.5 * std::pow(10.0, -decimals)) value = 0.0;
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%*.*f", width, decimals, value);
  return buffer;
}

/// A section heading: a blank line, the title, and a rule under it.
inline void heading(const std::string& title) {
  std::printf("\n%s\n%s\n", title.c_str(), std::string(title.size(), '-').c_str());
}

/// Prints `title [R, C]`, then the matrix, one row per line. Optional labels name the
/// rows (e.g. tokens) and the columns; unlabelled rows are indented only.
template <typename Derived>
void print_matrix(const std::string& title, const Eigen::MatrixBase<Derived>& m,
                  const std::vector<std::string>& row_labels = {},
                  const std::vector<std::string>& col_labels = {}, int decimals = 4) {
  std::printf("%s  [%ld, %ld]\n", title.c_str(), static_cast<long>(m.rows()),
              static_cast<long>(m.cols()));
  std::size_t label_width = 0;
  for (const std::string& label : row_labels) label_width = std::max(label_width, label.size());
  const int width = decimals + 6;  // room for a sign, two integer digits, the point, a gap
  if (!col_labels.empty()) {
    std::printf("  %*s", static_cast<int>(label_width), "");
    for (const std::string& label : col_labels) std::printf("%*s", width, label.c_str());
    std::printf("\n");
  }
  for (attend::Index r = 0; r < m.rows(); ++r) {
    const auto ru = static_cast<std::size_t>(r);
    std::printf("  %-*s", static_cast<int>(label_width),
                ru < row_labels.size() ? row_labels[ru].c_str() : "");
    for (attend::Index c = 0; c < m.cols(); ++c) {
      std::printf("%s", fixed(static_cast<double>(m(r, c)), decimals, width).c_str());
    }
    std::printf("\n");
  }
}

/// Prints a list of strings as `title: [a, b, c]`.
inline void print_list(const std::string& title, const std::vector<std::string>& items) {
  std::string joined;
  for (const std::string& item : items) joined += (joined.empty() ? "" : ", ") + item;
  std::printf("%s: [%s]\n", title.c_str(), joined.c_str());
}

}  // namespace examples
