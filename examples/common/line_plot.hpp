// SPDX-License-Identifier: MIT
// Line plots written as SVG text: a few series over a shared x axis, with axes and a legend.
#pragma once

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace examples {

/// One line of a plot: `y[i]` at `x[i]`, drawn in `colour` (an SVG colour) with markers.
struct Series {
  std::string name;
  std::vector<double> x, y;
  std::string colour;
};

/// What a panel shows; the y range is fixed by the caller so that panels compare.
struct Panel {
  std::string title;
  std::string x_label, y_label;
  double y_min = 0.0, y_max = 1.0;
  std::vector<Series> series;
};

namespace detail {

inline std::string num(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f", v);
  return buffer;
}

inline std::string tick(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

}  // namespace detail

/// Writes `panels` side by side into one SVG file at `path` (each 420 x 320 pixels); the x
/// range of a panel spans all its series' x values. Colours come from the series; each
/// panel's legend sits in one row below its x-axis title, off the data.
/// \throws std::runtime_error when the file cannot be written.
inline void write_line_plots(const std::string& path, const std::vector<Panel>& panels) {
  constexpr double W = 420, H = 320, left = 55, right = 15, top = 30, bottom = 65;
  constexpr double plot_w = W - left - right, plot_h = H - top - bottom;
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                    detail::num(W * static_cast<double>(panels.size())) + "\" height=\"" +
                    detail::num(H) + "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (std::size_t p = 0; p < panels.size(); ++p) {
    const Panel& panel = panels[p];
    double x_min = 0, x_max = 1;
    bool first = true;
    for (const Series& s : panel.series) {
      for (double x : s.x) {
        x_min = first ? x : std::min(x_min, x);
        x_max = first ? x : std::max(x_max, x);
        first = false;
      }
    }
    if (x_max <= x_min) x_max = x_min + 1;
    const double ox = W * static_cast<double>(p) + left;
    const auto px = [&](double x) { return ox + (x - x_min) / (x_max - x_min) * plot_w; };
    const auto py = [&](double y) {
      const double t =
          (std::clamp(y, panel.y_min, panel.y_max) - panel.y_min) / (panel.y_max - panel.y_min);
      return top + (1.0 - t) * plot_h;
    };
    svg += "<text x=\"" + detail::num(ox + plot_w / 2) + "\" y=\"18\" text-anchor=\"middle\" " +
           "font-size=\"13\">" + panel.title + "</text>\n";
    // Grid lines and y ticks at fifths of the range, x ticks at the first series' points.
    for (int i = 0; i <= 5; ++i) {
      const double y = panel.y_min + (panel.y_max - panel.y_min) * i / 5.0;
      svg += "<line x1=\"" + detail::num(ox) + "\" x2=\"" + detail::num(ox + plot_w) + "\" y1=\"" +
             detail::num(py(y)) + "\" y2=\"" + detail::num(py(y)) + "\" stroke=\"#ddd\"/>\n";
      svg += "<text x=\"" + detail::num(ox - 5) + "\" y=\"" + detail::num(py(y) + 4) +
             "\" text-anchor=\"end\">" + detail::tick(y) + "</text>\n";
    }
    if (!panel.series.empty()) {
      for (double x : panel.series.front().x) {
        svg += "<text x=\"" + detail::num(px(x)) + "\" y=\"" + detail::num(top + plot_h + 15) +
               "\" text-anchor=\"middle\">" + detail::tick(x) + "</text>\n";
      }
    }
    svg += "<rect x=\"" + detail::num(ox) + "\" y=\"" + detail::num(top) + "\" width=\"" +
           detail::num(plot_w) + "\" height=\"" + detail::num(plot_h) +
           "\" fill=\"none\" stroke=\"#444\"/>\n";
    svg += "<text x=\"" + detail::num(ox + plot_w / 2) + "\" y=\"" + detail::num(top + plot_h + 32) +
           "\" text-anchor=\"middle\">" + panel.x_label + "</text>\n";
    svg += "<text transform=\"translate(" + detail::num(ox - 40) + "," +
           detail::num(top + plot_h / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
           panel.y_label + "</text>\n";
    for (std::size_t k = 0; k < panel.series.size(); ++k) {
      const Series& s = panel.series[k];
      std::string points;
      for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        points += detail::num(px(s.x[i])) + "," + detail::num(py(s.y[i])) + " ";
        svg += "<circle cx=\"" + detail::num(px(s.x[i])) + "\" cy=\"" + detail::num(py(s.y[i])) +
               "\" r=\"2.5\" fill=\"" + s.colour + "\"/>\n";
      }
      svg += "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"" + s.colour + "\" points=\"" +
             points + "\"/>\n";
      // Legend: one row below the x-axis title, entries side by side (advancing by the
      // name's width at ~6.2 px per character of the 11 px font), off the data.
      double lx = W * static_cast<double>(p) + 12;
      for (std::size_t j = 0; j < k; ++j) {
        lx += 34 + 6.2 * static_cast<double>(panel.series[j].name.size());
      }
      const double ly = H - 10;
      svg += "<line x1=\"" + detail::num(lx) + "\" x2=\"" + detail::num(lx + 16) + "\" y1=\"" +
             detail::num(ly - 4) + "\" y2=\"" + detail::num(ly - 4) + "\" stroke-width=\"2\" stroke=\"" +
             s.colour + "\"/>\n";
      svg += "<text x=\"" + detail::num(lx + 20) + "\" y=\"" + detail::num(ly) + "\">" + s.name +
             "</text>\n";
    }
  }
  svg += "</svg>\n";
  std::ofstream out(path, std::ios::binary);
  out << svg;
  if (!out) throw std::runtime_error("write_line_plots: cannot write " + path);
}

}  // namespace examples
