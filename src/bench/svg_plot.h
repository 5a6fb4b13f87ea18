// Hand-written SVG charts (no plotting dependency): horizontal bar panels and line panels,
// stacked vertically in one file.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kimi::bench {

struct Series {
  std::string name;
  std::vector<double> y;  // one per x
};

class SvgPlot {
 public:
  explicit SvgPlot(std::string title) : title_(std::move(title)) {}
  // Bars with value labels, scaled to this panel's largest value.
  void add_bars(const std::string& title, const std::string& unit,
                const std::vector<std::pair<std::string, double>>& bars);
  // Lines over shared x values (x axis labelled with the x values themselves).
  void add_lines(const std::string& title, const std::string& x_label, const std::string& unit,
                 const std::vector<double>& x, const std::vector<Series>& series);
  std::string render() const;
  void save(const std::string& path) const;  // throws kimi::Error when it cannot write

 private:
  struct Panel {
    std::string svg;  // body, drawn at y = 0 .. height
    int height;
  };
  std::string title_;
  std::vector<Panel> panels_;
};

std::string xml_escape(const std::string& s);
// Compact number for labels: 3 significant digits, no exponent below 1e7.
std::string short_number(double v);

}  // namespace kimi::bench
