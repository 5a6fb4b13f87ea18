#include "bench/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/check.h"

namespace kimi::bench {
namespace {

constexpr int kWidth = 720;
constexpr int kLeft = 170;  // label column of bar panels / y axis of line panels
constexpr int kRight = 90;  // value labels
const char* const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"};

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

}  // namespace

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '&':
        o += "&amp;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

std::string short_number(double v) {
  if (!std::isfinite(v)) return "n/a";
  double a = std::fabs(v);
  if (a >= 100) return fmt("%.0f", v);
  if (a >= 10) return fmt("%.1f", v);
  if (a >= 1) return fmt("%.2f", v);
  return fmt("%.3g", v);
}

void SvgPlot::add_bars(const std::string& title, const std::string& unit,
                       const std::vector<std::pair<std::string, double>>& bars) {
  const int bar_h = 18, gap = 6, top = 28;
  double vmax = 0;
  for (auto& b : bars) vmax = std::max(vmax, b.second);
  if (vmax <= 0) vmax = 1;
  const int span = kWidth - kLeft - kRight;
  std::string s = "<text x=\"10\" y=\"18\" class=\"h\">" + xml_escape(title) + " (" +
                  xml_escape(unit) + ")</text>\n";
  int y = top;
  for (size_t i = 0; i < bars.size(); ++i) {
    int w = int(std::lround(std::max(0.0, bars[i].second) / vmax * span));
    s += "<text x=\"" + std::to_string(kLeft - 8) + "\" y=\"" + std::to_string(y + 13) +
         "\" text-anchor=\"end\">" + xml_escape(bars[i].first) + "</text>\n";
    s += "<rect x=\"" + std::to_string(kLeft) + "\" y=\"" + std::to_string(y) + "\" width=\"" +
         std::to_string(w) + "\" height=\"" + std::to_string(bar_h) + "\" fill=\"" +
         kColors[i % 6] + "\"/>\n";
    s += "<text x=\"" + std::to_string(kLeft + w + 6) + "\" y=\"" + std::to_string(y + 13) + "\">" +
         short_number(bars[i].second) + "</text>\n";
    y += bar_h + gap;
  }
  panels_.push_back({s, y + 10});
}

void SvgPlot::add_lines(const std::string& title, const std::string& x_label,
                        const std::string& unit, const std::vector<double>& x,
                        const std::vector<Series>& series) {
  KIMI_CHECK(!x.empty(), "a line panel needs x values");
  const int top = 30, plot_h = 180, legend_h = 18 * int(series.size());
  const int x0 = 70, x1 = kWidth - 30;
  double ymax = 0;
  for (auto& se : series)
    for (double v : se.y) ymax = std::max(ymax, v);
  if (ymax <= 0) ymax = 1;
  ymax *= 1.1;
  // Points are spaced evenly (sweeps are usually 1, 2, 4, 8, ...), labelled with their x.
  auto px = [&](size_t i) {
    return x.size() == 1 ? (x0 + x1) / 2.0 : x0 + (x1 - x0) * double(i) / double(x.size() - 1);
  };
  auto py = [&](double v) { return top + plot_h - plot_h * v / ymax; };
  std::string s = "<text x=\"10\" y=\"18\" class=\"h\">" + xml_escape(title) + " (" +
                  xml_escape(unit) + ")</text>\n";
  s += "<line x1=\"" + std::to_string(x0) + "\" y1=\"" + std::to_string(top + plot_h) + "\" x2=\"" +
       std::to_string(x1) + "\" y2=\"" + std::to_string(top + plot_h) + "\" stroke=\"#444\"/>\n";
  s += "<line x1=\"" + std::to_string(x0) + "\" y1=\"" + std::to_string(top) + "\" x2=\"" +
       std::to_string(x0) + "\" y2=\"" + std::to_string(top + plot_h) + "\" stroke=\"#444\"/>\n";
  for (int k = 0; k <= 4; ++k) {
    double v = ymax * k / 4;
    s += "<text x=\"" + std::to_string(x0 - 6) + "\" y=\"" + fmt("%.1f", py(v) + 4) +
         "\" text-anchor=\"end\" class=\"s\">" + short_number(v) + "</text>\n";
    s += "<line x1=\"" + std::to_string(x0) + "\" y1=\"" + fmt("%.1f", py(v)) + "\" x2=\"" +
         std::to_string(x1) + "\" y2=\"" + fmt("%.1f", py(v)) + "\" stroke=\"#ddd\"/>\n";
  }
  for (size_t i = 0; i < x.size(); ++i)
    s += "<text x=\"" + fmt("%.1f", px(i)) + "\" y=\"" + std::to_string(top + plot_h + 16) +
         "\" text-anchor=\"middle\" class=\"s\">" + short_number(x[i]) + "</text>\n";
  s += "<text x=\"" + std::to_string((x0 + x1) / 2) + "\" y=\"" +
       std::to_string(top + plot_h + 34) + "\" text-anchor=\"middle\">" + xml_escape(x_label) +
       "</text>\n";
  for (size_t k = 0; k < series.size(); ++k) {
    const char* col = kColors[k % 6];
    std::string pts;
    for (size_t i = 0; i < x.size() && i < series[k].y.size(); ++i) {
      pts += fmt("%.1f", px(i)) + "," + fmt("%.1f", py(series[k].y[i])) + " ";
      s += "<circle cx=\"" + fmt("%.1f", px(i)) + "\" cy=\"" + fmt("%.1f", py(series[k].y[i])) +
           "\" r=\"3\" fill=\"" + col + "\"/>\n";
    }
    s += "<polyline fill=\"none\" stroke=\"" + std::string(col) +
         "\" stroke-width=\"2\" points=\"" + pts + "\"/>\n";
    int ly = top + plot_h + 50 + 18 * int(k);
    s += "<rect x=\"" + std::to_string(x0) + "\" y=\"" + std::to_string(ly - 10) +
         "\" width=\"12\" height=\"12\" fill=\"" + col + "\"/>\n";
    s += "<text x=\"" + std::to_string(x0 + 18) + "\" y=\"" + std::to_string(ly) + "\">" +
         xml_escape(series[k].name) + "</text>\n";
  }
  panels_.push_back({s, top + plot_h + 50 + legend_h});
}

std::string SvgPlot::render() const {
  int height = 40;
  for (auto& p : panels_) height += p.height + 10;
  std::string s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(kWidth) +
                  "\" height=\"" + std::to_string(height) +
                  "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<style>.h{font-weight:bold;font-size:13px}.s{font-size:11px;fill:#444}</style>\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">" + xml_escape(title_) +
       "</text>\n";
  int y = 40;
  for (auto& p : panels_) {
    s += "<g transform=\"translate(0," + std::to_string(y) + ")\">\n" + p.svg + "</g>\n";
    y += p.height + 10;
  }
  return s + "</svg>\n";
}

void SvgPlot::save(const std::string& path) const {
  std::ofstream f(path);
  if (!f) fail("cannot write the plot to ", path);
  f << render();
  if (!f) fail("writing the plot to ", path, " failed");
}

}  // namespace kimi::bench
