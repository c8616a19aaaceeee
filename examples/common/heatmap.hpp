// SPDX-License-Identifier: MIT
// The blue-white-red diverging colour map of the examples' heatmaps (drawn by label.hpp's
// labelled_heatmap, with titles, axes and a colour bar).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

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

}  // namespace examples
