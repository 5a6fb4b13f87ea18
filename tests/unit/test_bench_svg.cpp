// kimi-bench's hand-written SVG: escaping, number labels, and that panels land in the document
// with their titles and one polyline per series.
#include <gtest/gtest.h>

#include "bench/online_plot.h"
#include "bench/svg_plot.h"

namespace kimi::bench {
namespace {

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(BenchSvg, EscapesAndNumbers) {
  EXPECT_EQ(xml_escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
  EXPECT_EQ(short_number(16), "16");
  EXPECT_EQ(short_number(1234.6), "1235");
  EXPECT_EQ(short_number(12.345), "12.3");
  EXPECT_EQ(short_number(1.5), "1.50");
  EXPECT_EQ(short_number(0.01234), "0.0123");
}

TEST(BenchSvg, PanelsSeriesAndSweepPlot) {
  SvgPlot plot("t <1>");
  plot.add_bars("TTFT", "ms", {{"mean", 3}, {"p99", 9}});
  plot.add_lines("thr", "x", "tok/s", {1, 2, 4}, {{"a", {1, 2, 3}}, {"b", {3, 2, 1}}});
  std::string svg = plot.render();
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_NE(svg.find("t &lt;1&gt;"), std::string::npos);
  EXPECT_EQ(count(svg, "<g "), 2u);
  EXPECT_EQ(count(svg, "</g>"), 2u);
  EXPECT_EQ(count(svg, "<polyline"), 2u);
  EXPECT_EQ(count(svg, "<rect x=\"170\""), 2u);  // two bars in the bar panel

  // A three-point concurrency sweep: throughput and latency panels against concurrency.
  std::vector<SweepPoint> runs(3);
  for (int i = 0; i < 3; ++i) {
    runs[i].max_concurrency = 1 << i;
    runs[i].metrics.output_throughput = 100.0 * (i + 1);
    runs[i].metrics.ttft_ms.percentiles = {{90, 1.0}, {99, 2.0}};
    runs[i].metrics.tpot_ms.percentiles = {{90, 1.0}, {99, 2.0}};
  }
  MetricOptions mo;
  SvgPlot sweep("s");
  add_online_plot(sweep, runs, mo);
  std::string s = sweep.render();
  EXPECT_NE(s.find("Token throughput vs max concurrency"), std::string::npos);
  EXPECT_NE(s.find("p99 TPOT"), std::string::npos);
  EXPECT_EQ(count(s, "<g "), 4u);
}

}  // namespace
}  // namespace kimi::bench
