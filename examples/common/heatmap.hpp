// SPDX-License-Identifier: MIT
// Heatmap images of matrices in a blue-white-red diverging colour map, with a colour bar.
#pragma once

#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "png.hpp"  // sibling header, found relative to this file

namespace examples {

/// Blue for -1, white for 0, red for +1, linear in between; values outside [-1, 1] are
/// clamped. The end colours are ColorBrewer's RdBu ends, readable by most colour-blind
/// viewers (blue and red differ in lightness as well as hue).
inline std::array<std::uint8_t, 3> diverging_colour(double value) {
  constexpr std::array<double, 3> blue{33, 102, 172};
  constexpr std::array<double, 3> white{247, 247, 247};
  constexpr std::array<double, 3> red{178, 24, 43};
  const double t = std::clamp(value, -1.0, 1.0);
  const std::array<double, 3>& end = t < 0 ? blue : red;
  std::array<std::uint8_t, 3> rgb{};
  for (std::size_t c = 0; c < 3; ++c) {
    rgb[c] = static_cast<std::uint8_t>(std::lround(white[c] + std::abs(t) * (end[c] - white[c])));
  }
  return rgb;
}

/// Draws `m` [R, C] as a grid of `cell` x `cell` squares, row r at the top of row r of
/// squares, column c at column c; `m(r, c) / limit` picks the colour. Below it, after a
/// grey gap, a colour bar runs from -limit (left) to +limit (right).
/// \returns an image of C * cell x (R * cell + 20) pixels.
template <typename Derived>
png::Image heatmap(const Eigen::MatrixBase<Derived>& m, int cell, double limit = 1.0) {
  constexpr int gap = 6, bar = 14;
  const int width = static_cast<int>(m.cols()) * cell;
  const int map_height = static_cast<int>(m.rows()) * cell;
  png::Image image(width, map_height + gap + bar);
  for (int y = 0; y < map_height; ++y) {
    for (int x = 0; x < width; ++x) {
      image.set(x, y, diverging_colour(static_cast<double>(m(y / cell, x / cell)) / limit));
    }
  }
  for (int y = map_height; y < map_height + gap; ++y) {
    for (int x = 0; x < width; ++x) image.set(x, y, {160, 160, 160});
  }
  for (int x = 0; x < width; ++x) {
    const auto colour = diverging_colour(-1.0 + 2.0 * (x + 0.5) / width);
    for (int y = map_height + gap; y < image.height; ++y) image.set(x, y, colour);
  }
  return image;
}

}  // namespace examples
