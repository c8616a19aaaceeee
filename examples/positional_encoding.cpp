// SPDX-License-Identifier: MIT
// The sinusoidal positional encoding as a heatmap, and how similar two positions' codes
// are as the distance between them grows.
//
// docs/lecture-notes.md, "Positional encodings": tokenization turns a sentence into a set and
// loses the order; the transformer adds a small position-dependent vector to each word
// embedding, PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i), w_i = 1 / 10000^(2i / d)
// (Vaswani et al. 2017, section 3.5). Each column pair is a wave; wavelengths grow
// geometrically from 2 pi (left) to 10000 * 2 pi (right), as in Kazemnejad's figure 2.
//
// Usage: positional_encoding [output.png]   (default positional_encoding.png)
#include "attend/attend.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>

#include "common/heatmap.hpp"
#include "common/label.hpp"
#include "common/png.hpp"
#include "common/print.hpp"

int main(int argc, char** argv) {
  using attend::Index;
  using examples::fixed;
  const std::string path = argc > 1 ? argv[1] : "positional_encoding.png";
  constexpr Index positions = 64, d_model = 128;
  constexpr int cell = 4;  // pixels per table entry

  // 1. The heatmap: one row of pixels per position, one column per dimension.
  const attend::Matrix<double> pe =
      attend::sinusoidal_positional_encoding<double>(positions, d_model);  // [64, 128]
  examples::png::Image image(1, 1);
  try {
    image = examples::positional_encoding_figure(pe, cell);
    examples::png::write(path, image);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::printf("Wrote the %ld x %ld encoding to %s (%d x %d pixels).\n",
              static_cast<long>(positions), static_cast<long>(d_model), path.c_str(),
              image.width, image.height);
  std::printf(
      "Rows: positions 0 (top) to %ld; columns: dimensions 0 (left) to %ld.\n"
      "Colour: blue -1, white 0, red +1 (bar below). Left columns change quickly with\n"
      "the position, right ones barely: sin -> 0 (white), cos -> 1 (red).\n\n",
      static_cast<long>(positions - 1), static_cast<long>(d_model - 1));

  // 2. Similarity by distance. Each (sin, cos) pair has length 1, so |PE[p]|^2 = d / 2 and
  // PE[p] . PE[p+k] / (d / 2) is the cosine similarity. By cos(a - b) = cos a cos b +
  // sin a sin b it equals the mean over i of cos(k w_i): it depends on the distance k only,
  // which is what lets attention read relative positions. Two starting points show it.
  const attend::Matrix<double> long_pe =
      attend::sinusoidal_positional_encoding<double>(256, d_model);  // [256, 128]
  const auto similarity = [&](Index p, Index k) {
    return long_pe.row(p).dot(long_pe.row(p + k)) / (static_cast<double>(d_model) / 2.0);
  };
  std::printf("PE[p] . PE[p+k] / (d/2) for d = %ld:\n", static_cast<long>(d_model));
  std::printf("     k     p = 0    p = 100\n");
  for (const Index k : {0, 1, 2, 4, 8, 16, 32, 64, 128}) {
    const double s0 = similarity(0, k), s100 = similarity(100, k);
    const int bar = static_cast<int>(std::lround(40.0 * s0));
    std::printf("  %4ld  %8s  %8s  %s\n", static_cast<long>(k), fixed(s0).c_str(),
                fixed(s100).c_str(),
                std::string(static_cast<std::size_t>(std::max(bar, 0)), '#').c_str());
  }
  std::printf(
      "\nNearby positions have similar codes; the similarity falls with the distance and\n"
      "is the same from every starting position p.\n");
  return 0;
}
