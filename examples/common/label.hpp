// SPDX-License-Identifier: MIT
// Text labels for the example images: a built-in 5x7 ASCII bitmap font, horizontal and
// vertical text, and a heatmap with labelled rows and columns.
#pragma once

#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "heatmap.hpp"  // sibling headers, found relative to this file
#include "png.hpp"

namespace examples {

namespace detail {

/// Glyphs of the printable ASCII characters 0x20 (space) to 0x7E (tilde), drawn for these
/// examples: 5 pixels wide, 7 high above the baseline plus one descender row (g, j, p, q,
/// y, comma, semicolon). Row r of a glyph (top first) is one byte whose bit 4 is the
/// leftmost pixel and bit 0 the rightmost: 0x0E = .###.
inline constexpr std::uint8_t font[95][8] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00},  // '!'
    {0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00},  // '"'
    {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A, 0x00},  // '#'
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04, 0x00},  // '$'
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00},  // '%'
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D, 0x00},  // '&'
    {0x04, 0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00},  // "'"
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00},  // '('
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00},  // ')'
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00, 0x00},  // '*'
    {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00, 0x00},  // '+'
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08},  // ','
    {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00},  // '-'
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C, 0x00},  // '.'
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0x00},  // '/'
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E, 0x00},  // '0'
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // '1'
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F, 0x00},  // '2'
    {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E, 0x00},  // '3'
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02, 0x00},  // '4'
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E, 0x00},  // '5'
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E, 0x00},  // '6'
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00},  // '7'
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E, 0x00},  // '8'
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C, 0x00},  // '9'
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00, 0x00},  // ':'
    {0x00, 0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},  // ';'
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00},  // '<'
    {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00, 0x00},  // '='
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00},  // '>'
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00},  // '?'
    {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E, 0x00},  // '@'
    {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00},  // 'A'
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E, 0x00},  // 'B'
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E, 0x00},  // 'C'
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C, 0x00},  // 'D'
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F, 0x00},  // 'E'
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10, 0x00},  // 'F'
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F, 0x00},  // 'G'
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00},  // 'H'
    {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // 'I'
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C, 0x00},  // 'J'
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00},  // 'K'
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F, 0x00},  // 'L'
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00},  // 'M'
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00},  // 'N'
    {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00},  // 'O'
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10, 0x00},  // 'P'
    {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D, 0x00},  // 'Q'
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11, 0x00},  // 'R'
    {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E, 0x00},  // 'S'
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00},  // 'T'
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00},  // 'U'
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00},  // 'V'
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A, 0x00},  // 'W'
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11, 0x00},  // 'X'
    {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04, 0x00},  // 'Y'
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F, 0x00},  // 'Z'
    {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E, 0x00},  // '['
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00, 0x00},  // '\\'
    {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E, 0x00},  // ']'
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00},  // '^'
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F, 0x00},  // '_'
    {0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // '`'
    {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F, 0x00},  // 'a'
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E, 0x00},  // 'b'
    {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E, 0x00},  // 'c'
    {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F, 0x00},  // 'd'
    {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E, 0x00},  // 'e'
    {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08, 0x00},  // 'f'
    {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // 'g'
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00},  // 'h'
    {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E, 0x00},  // 'i'
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0C},  // 'j'
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00},  // 'k'
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // 'l'
    {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11, 0x00},  // 'm'
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00},  // 'n'
    {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E, 0x00},  // 'o'
    {0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10},  // 'p'
    {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x01},  // 'q'
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00},  // 'r'
    {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E, 0x00},  // 's'
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06, 0x00},  // 't'
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D, 0x00},  // 'u'
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00},  // 'v'
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A, 0x00},  // 'w'
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00},  // 'x'
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // 'y'
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F, 0x00},  // 'z'
    {0x03, 0x04, 0x04, 0x08, 0x04, 0x04, 0x03, 0x00},  // '{'
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00},  // '|'
    {0x18, 0x04, 0x04, 0x02, 0x04, 0x04, 0x18, 0x00},  // '}'
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00},  // '~'
};

/// The glyph of `c`; characters outside printable ASCII (including UTF-8 bytes) are '?'.
inline const std::uint8_t* glyph(char c) {
  const auto u = static_cast<unsigned char>(c);
  return font[(u >= 0x20 && u <= 0x7E ? u : '?') - 0x20];
}

}  // namespace detail

/// Glyph cell size (descender row included) and advance (glyph plus one pixel of space),
/// in font pixels.
constexpr int glyph_width = 5, glyph_height = 8, glyph_advance = 6;

/// Length in image pixels of `text` drawn at `scale` (each font pixel a scale x scale square).
inline int text_width(const std::string& text, int scale) {
  return text.empty() ? 0 : (static_cast<int>(text.size()) * glyph_advance - 1) * scale;
}

/// Draws `text` with its box's top-left corner at (x, y); pixels outside the image are
/// skipped. Horizontal text is text_width() wide and 8 * scale high. `vertical` turns it 90
/// degrees counter-clockwise (reading bottom to top, as y-axis titles): the box is then
/// 8 * scale wide and text_width() high, and the first character is at its bottom.
inline void draw_text(png::Image& image, int x, int y, const std::string& text, int scale,
                      std::array<std::uint8_t, 3> colour, bool vertical = false) {
  const int length = text_width(text, scale);
  for (std::size_t k = 0; k < text.size(); ++k) {
    const std::uint8_t* rows = detail::glyph(text[k]);
    for (int gy = 0; gy < glyph_height; ++gy) {
      for (int gx = 0; gx < glyph_width; ++gx) {
        if (!(rows[gy] & (0x10 >> gx))) continue;
        // Position along the text (u) and across it (v), in image pixels.
        const int u = (static_cast<int>(k) * glyph_advance + gx) * scale, v = gy * scale;
        for (int dy = 0; dy < scale; ++dy) {
          for (int dx = 0; dx < scale; ++dx) {
            const int px = vertical ? x + v + dy : x + u + dx;
            const int py = vertical ? y + length - 1 - (u + dx) : y + v + dy;
            if (px >= 0 && py >= 0 && px < image.width && py < image.height) {
              image.set(px, py, colour);
            }
          }
        }
      }
    }
  }
}

/// Layout of labelled_heatmap.
struct LabelledHeatmapOptions {
  int cell = 32;          ///< pixels per matrix entry
  int scale = 2;          ///< font pixels per glyph pixel
  double limit = 1.0;     ///< value drawn in full red (0 is white, negatives blue)
  double bar_from = 0.0;  ///< the colour bar's left end: 0, or -limit for signed values
  std::string title;      ///< above everything
  std::string row_title;  ///< written vertically left of the row labels
  std::string col_title;  ///< written above the column labels
  std::string bar_title;  ///< under the colour bar's tick labels (what the colour means)
  std::vector<bool> row_marks;  ///< rows whose label is drawn red with a red bar beside it
};

/// `m` [R, C] as a heatmap (colours of diverging_colour(m(r, c) / limit), white at 0) with
/// a title, `row_labels` left of the rows, `col_labels` above the columns (written
/// vertically, as in the alignment figures of Bahdanau et al. 2015; empty labels leave
/// gaps, so long axes can be labelled every k-th entry), axis titles, and a colour bar
/// from `bar_from` to `limit` below, with ticks and values at both ends and the middle.
template <typename Derived>
png::Image labelled_heatmap(const Eigen::MatrixBase<Derived>& m,
                            const std::vector<std::string>& row_labels,
                            const std::vector<std::string>& col_labels,
                            const LabelledHeatmapOptions& o = {}) {
  constexpr std::array<std::uint8_t, 3> black{0, 0, 0}, grey{150, 150, 150}, red{200, 0, 0};
  const int margin = 10, gap = 8, text_h = glyph_height * o.scale, bar = 12, tick = 4;
  const int mark_w = o.row_marks.empty() ? 0 : 6 + gap;
  int row_w = 0, col_h = 0;
  for (const std::string& s : row_labels) row_w = std::max(row_w, text_width(s, o.scale));
  for (const std::string& s : col_labels) col_h = std::max(col_h, text_width(s, o.scale));
  const int R = static_cast<int>(m.rows()), C = static_cast<int>(m.cols());
  const int title_h = o.title.empty() ? 0 : text_h + 2 * gap;
  const int left = margin + (o.row_title.empty() ? 0 : text_h + gap) + row_w + gap;
  const int top = margin + title_h + (o.col_title.empty() ? 0 : text_h + gap) + col_h + gap;
  const int grid_w = C * o.cell, grid_h = R * o.cell;
  const int bar_y = top + grid_h + gap + text_h / 2;
  const int bar_bottom = bar_y + bar + tick + 2 + text_h + (o.bar_title.empty() ? 0 : gap + text_h);
  const int width = std::max({left + grid_w + mark_w, left + text_width(o.col_title, o.scale),
                              margin + text_width(o.title, o.scale), left + text_width(o.bar_title, o.scale)}) +
                    margin;
  const int title_length = text_width(o.row_title, o.scale);
  const int title_y = std::max(margin + title_h, top + (grid_h - title_length) / 2);
  const int height = std::max(bar_bottom, title_y + title_length) + margin;
  png::Image image(width, height);
  std::fill(image.rgb.begin(), image.rgb.end(), std::uint8_t{255});
  const auto frame = [&](int x0, int y0, int w, int h) {
    for (int x = -1; x <= w; ++x) {
      image.set(x0 + x, y0 - 1, grey);
      image.set(x0 + x, y0 + h, grey);
    }
    for (int y = -1; y <= h; ++y) {
      image.set(x0 - 1, y0 + y, grey);
      image.set(x0 + w, y0 + y, grey);
    }
  };

  if (!o.title.empty()) draw_text(image, margin, margin, o.title, o.scale, black);
  for (int y = 0; y < grid_h; ++y) {
    for (int x = 0; x < grid_w; ++x) {
      const double value = static_cast<double>(m(y / o.cell, x / o.cell)) / o.limit;
      image.set(left + x, top + y, diverging_colour(value));
    }
  }
  frame(left, top, grid_w, grid_h);
  for (int r = 0; r < R && r < static_cast<int>(row_labels.size()); ++r) {
    const std::string& s = row_labels[static_cast<std::size_t>(r)];
    const bool marked = static_cast<std::size_t>(r) < o.row_marks.size() &&
                        o.row_marks[static_cast<std::size_t>(r)];
    const int y = top + r * o.cell + (o.cell - text_h) / 2;
    draw_text(image, left - gap - text_width(s, o.scale), y, s, o.scale, marked ? red : black);
    if (marked) {  // a red bar right of the row
      for (int yy = top + r * o.cell + 2; yy < top + (r + 1) * o.cell - 2; ++yy) {
        for (int x = 0; x < 6; ++x) image.set(left + grid_w + gap / 2 + x, yy, red);
      }
    }
  }
  for (int c = 0; c < C && c < static_cast<int>(col_labels.size()); ++c) {
    const std::string& s = col_labels[static_cast<std::size_t>(c)];
    draw_text(image, left + c * o.cell + (o.cell - text_h) / 2, top - gap - text_width(s, o.scale),
              s, o.scale, black, /*vertical=*/true);
  }
  if (!o.col_title.empty()) draw_text(image, left, margin + title_h, o.col_title, o.scale, black);
  if (!o.row_title.empty()) {
    draw_text(image, margin, title_y, o.row_title, o.scale, black, /*vertical=*/true);
  }
  // Colour bar: bar_from on the left to limit (red) on the right, ticks and values below.
  const double span = o.limit - o.bar_from;
  for (int x = 0; x < grid_w; ++x) {
    const auto colour = diverging_colour((o.bar_from + span * (x + 0.5) / grid_w) / o.limit);
    for (int y = bar_y; y < bar_y + bar; ++y) image.set(left + x, y, colour);
  }
  frame(left, bar_y, grid_w, bar);
  for (int k = 0; k <= 2; ++k) {
    const int x = std::min(left + k * grid_w / 2, left + grid_w - 1);
    for (int y = bar_y + bar; y < bar_y + bar + tick; ++y) image.set(x, y, black);
    char value[32];
    std::snprintf(value, sizeof value, "%g", o.bar_from + span * k / 2.0);
    const int w = text_width(value, o.scale);
    const int tx = k == 0 ? left : (k == 1 ? x - w / 2 : left + grid_w - w);
    draw_text(image, tx, bar_y + bar + tick + 2, value, o.scale, black);
  }
  if (!o.bar_title.empty()) {
    draw_text(image, left, bar_y + bar + tick + 2 + text_h + gap, o.bar_title, o.scale, black);
  }
  return image;
}

/// The sinusoidal table `pe` [positions, d_model] as a titled figure: positions down,
/// dimensions across (labelled every 8 and every 16), values -1 (blue) to +1 (red).
template <typename Derived>
png::Image positional_encoding_figure(const Eigen::MatrixBase<Derived>& pe, int cell) {
  std::vector<std::string> rows(static_cast<std::size_t>(pe.rows()));
  std::vector<std::string> cols(static_cast<std::size_t>(pe.cols()));
  for (std::size_t r = 0; r < rows.size(); r += 8) rows[r] = std::to_string(r);
  for (std::size_t c = 0; c < cols.size(); c += 16) cols[c] = std::to_string(c);
  LabelledHeatmapOptions o;
  o.cell = cell;
  o.scale = 1;
  o.bar_from = -1.0;
  o.title = "Sinusoidal positional encoding PE[p, i], d_model = " + std::to_string(pe.cols());
  o.row_title = "position p";
  o.col_title = "dimension i";
  o.bar_title = "PE value (sin on even i, cos on odd i)";
  return labelled_heatmap(pe, rows, cols, o);
}

}  // namespace examples
