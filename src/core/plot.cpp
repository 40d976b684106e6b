#include "core/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace mllm {

namespace {

constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kSmall = 0.45;  // tick labels, legend
constexpr double kTitle = 0.6;
const cv::Scalar kInk(40, 40, 40);
const cv::Scalar kGrid(228, 228, 228);

double nice_step(double range, int target) {
  const double raw = range / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

// Decimals that show a tick step exactly (0.2 -> 1, 0.05 -> 2, 10 -> 0).
int decimals_for(double step) {
  return std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
}

std::string format_tick(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

cv::Size text_size(const std::string& s, double scale, int thickness = 1) {
  int baseline = 0;
  return cv::getTextSize(s, kFont, scale, thickness, &baseline);
}

void put(cv::Mat& img, const std::string& s, cv::Point at, double scale,
         const cv::Scalar& color = kInk, int thickness = 1) {
  cv::putText(img, s, at, kFont, scale, color, thickness, cv::LINE_AA);
}

// Shortens `s` in the middle ("model.conn..lr=3e-3") until it fits `max_px`: run names differ at
// both ends.
std::string fit(const std::string& s, int max_px) {
  if (text_size(s, kSmall).width <= max_px) return s;
  for (size_t keep = s.size(); keep > 2; --keep) {
    const size_t head = keep / 2, tail = keep - head;
    const std::string t = s.substr(0, head) + ".." + s.substr(s.size() - tail);
    if (text_size(t, kSmall).width <= max_px) return t;
  }
  return "..";
}

// An axis in drawing coordinates (log10 of the value on a logarithmic axis): the frame's ends and
// the ticks, with their labels.
struct Axis {
  double lo, hi;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

// The data range widened to whole tick steps, so the outermost ticks sit on the frame.
Axis make_axis(double lo, double hi) {
  if (!(hi > lo)) {
    const double pad = std::abs(lo) > 0 ? std::abs(lo) * 0.1 : 1.0;
    lo -= pad, hi += pad;
  }
  const double step = nice_step(hi - lo, 6);
  Axis a;
  a.lo = std::floor(lo / step + 1e-9) * step;
  a.hi = std::ceil(hi / step - 1e-9) * step;
  a.ticks = nice_ticks(a.lo, a.hi);
  const int decimals = a.ticks.size() > 1 ? decimals_for(a.ticks[1] - a.ticks[0]) : 0;
  for (double t : a.ticks) a.labels.push_back(format_tick(t, decimals));
  return a;
}

// A logarithmic axis over the values [lo, hi] (both > 0), from its first tick to its last.
Axis make_log_axis(double lo, double hi) {
  const auto ticks = log_ticks(lo, hi);
  if (ticks.empty()) return make_axis(0, 1);  // not reached: the caller's points are all > 0
  Axis a;
  for (double t : ticks) {
    a.ticks.push_back(std::log10(t));
    // As many decimals as the tick's leading digit needs: 0.05, 0.2, 1, 20.
    a.labels.push_back(
        format_tick(t, std::max(0, -static_cast<int>(std::floor(std::log10(t) + 1e-9)))));
  }
  a.lo = a.ticks.front(), a.hi = a.ticks.back();
  return a;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (!(hi > lo)) return {lo};
  const double step = nice_step(hi - lo, target);
  std::vector<double> out;
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k += 1) {
    const double v = k * step;
    out.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return out;
}

std::vector<double> log_ticks(double lo, double hi) {
  if (!(lo > 0) || !std::isfinite(lo) || !std::isfinite(hi)) return {};
  hi = std::max(lo, hi);
  const auto candidates = [](int e0, int e1, bool all) {
    std::vector<double> v;
    for (int e = e0; e <= e1; ++e)
      for (double m : {1.0, 2.0, 5.0})
        if (all || m == 1.0) v.push_back(m * std::pow(10.0, e));
    return v;
  };
  const int e0 = static_cast<int>(std::floor(std::log10(lo) + 1e-9)) - 1;
  const int e1 = static_cast<int>(std::ceil(std::log10(hi) - 1e-9)) + 1;
  const bool all = std::log10(hi) - std::log10(lo) <= 3.0;
  const auto c = candidates(e0, e1, all);
  // The largest candidate at or below lo, through the smallest at or above hi.
  size_t first = 0, last = c.size() - 1;
  for (size_t i = 0; i < c.size(); ++i)
    if (c[i] <= lo * (1 + 1e-9)) first = i;
  for (size_t i = c.size(); i-- > 0;)
    if (c[i] >= hi * (1 - 1e-9)) last = i;
  if (last == first) last = std::min(c.size() - 1, first + 1);  // a single value: one step up
  return std::vector<double>(c.begin() + static_cast<std::ptrdiff_t>(first),
                             c.begin() + static_cast<std::ptrdiff_t>(last) + 1);
}

cv::Scalar series_color(size_t i) {
  // matplotlib's tab10, as BGR.
  static const cv::Scalar tab10[] = {
      {180, 119, 31}, {14, 127, 255},  {44, 160, 44},   {40, 39, 214},  {189, 103, 148},
      {75, 86, 140},  {194, 119, 227}, {127, 127, 127}, {34, 189, 188}, {207, 190, 23}};
  if (i < 10) return tab10[i];
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(static_cast<double>((i * 137) % 180), 200, 200));
  cv::Mat bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  const auto p = bgr.at<cv::Vec3b>(0, 0);
  return {static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2])};
}

cv::Mat draw_line_plot(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  // A point is drawn where x and y are finite (and y > 0 on a log axis).
  const bool log_y = options.log_y;
  const auto drawn = [log_y](const std::pair<double, double>& p) {
    return std::isfinite(p.first) && std::isfinite(p.second) && (!log_y || p.second > 0);
  };
  // Data range over every drawn point.
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (const auto& p : s.points) {
      if (!drawn(p)) continue;
      x0 = std::min(x0, p.first), x1 = std::max(x1, p.first);
      y0 = std::min(y0, p.second), y1 = std::max(y1, p.second);
    }
  const bool empty = !std::isfinite(x0);
  const Axis ax = empty ? make_axis(0, 1) : make_axis(x0, x1);
  const Axis ay = empty ? (log_y ? make_log_axis(0.1, 1) : make_axis(0, 1))
                        : (log_y ? make_log_axis(y0, y1) : make_axis(y0, y1));

  // Layout: title and y label above the frame, tick labels left of and below it, legend right.
  int y_label_w = 0;
  for (const auto& l : ay.labels) y_label_w = std::max(y_label_w, text_size(l, kSmall).width);
  const int left = std::max(60, y_label_w + 20);
  const int top = 50, bottom_margin = 55, row = 20;
  int legend_w = 0;
  for (const auto& s : series) legend_w = std::max(legend_w, text_size(s.label, kSmall).width);
  legend_w = series.empty() ? 0 : std::min(legend_w + 45, options.width * 2 / 5);
  const int legend_h = static_cast<int>(series.size()) * row + 16;
  const int height = std::max(options.height, top + legend_h + bottom_margin);
  const int width = options.width;
  const int right = width - legend_w - 25;
  const int bottom = height - bottom_margin;

  cv::Mat img(height, width, CV_8UC3, cv::Scalar(255, 255, 255));
  auto px = [&](double x) {
    return left + static_cast<int>(std::lround((x - ax.lo) / (ax.hi - ax.lo) * (right - left)));
  };
  // py takes the axis coordinate (log10 of the value on a log axis), pv the value.
  auto py = [&](double y) {
    return bottom - static_cast<int>(std::lround((y - ay.lo) / (ay.hi - ay.lo) * (bottom - top)));
  };
  auto pv = [&](double v) { return py(log_y ? std::log10(v) : v); };

  // Grid and ticks.
  for (size_t i = 0; i < ax.ticks.size(); ++i) {
    const int x = px(ax.ticks[i]);
    cv::line(img, {x, top}, {x, bottom}, kGrid, 1);
    cv::line(img, {x, bottom}, {x, bottom + 5}, kInk, 1);
    const std::string& s = ax.labels[i];
    put(img, s, {x - text_size(s, kSmall).width / 2, bottom + 20}, kSmall);
  }
  for (size_t i = 0; i < ay.ticks.size(); ++i) {
    const int y = py(ay.ticks[i]);
    cv::line(img, {left, y}, {right, y}, kGrid, 1);
    cv::line(img, {left - 5, y}, {left, y}, kInk, 1);
    const std::string& s = ay.labels[i];
    const cv::Size sz = text_size(s, kSmall);
    put(img, s, {left - 9 - sz.width, y + sz.height / 2}, kSmall);
  }
  cv::rectangle(img, {left, top}, {right, bottom}, kInk, 1);
  if (!options.title.empty()) {
    const cv::Size sz = text_size(options.title, kTitle, 2);
    put(img, options.title, {(left + right - sz.width) / 2, 24}, kTitle, kInk, 2);
  }
  if (!options.y_label.empty()) put(img, options.y_label, {left, top - 8}, kSmall);
  if (!options.x_label.empty()) {
    const cv::Size sz = text_size(options.x_label, kSmall);
    put(img, options.x_label, {(left + right - sz.width) / 2, bottom + 42}, kSmall);
  }
  if (empty) {
    const std::string s = "no data yet";
    const cv::Size sz = text_size(s, kTitle);
    put(img, s, {(left + right - sz.width) / 2, (top + bottom) / 2}, kTitle);
  }

  // Lines, then dots where the points are few enough to tell apart.
  for (size_t i = 0; i < series.size(); ++i) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& p : series[i].points)
      if (drawn(p)) pts.push_back(p);
    std::stable_sort(pts.begin(), pts.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    const cv::Scalar color = series_color(i);
    for (size_t k = 1; k < pts.size(); ++k)
      cv::line(img, {px(pts[k - 1].first), pv(pts[k - 1].second)},
               {px(pts[k].first), pv(pts[k].second)}, color, 2, cv::LINE_AA);
    if (pts.size() <= 50)
      for (const auto& p : pts)
        cv::circle(img, {px(p.first), pv(p.second)}, 3, color, cv::FILLED, cv::LINE_AA);
  }

  // Legend: a swatch and the (possibly shortened) label per series.
  const int lx = right + 15;
  for (size_t i = 0; i < series.size(); ++i) {
    const int y = top + 8 + static_cast<int>(i) * row;
    cv::rectangle(img, {lx, y}, {lx + 18, y + 10}, series_color(i), cv::FILLED);
    put(img, fit(series[i].label, legend_w - 30), {lx + 25, y + 10}, kSmall);
  }
  return img;
}

std::string encode_png(const cv::Mat& image, const std::string& what) {
  std::vector<uchar> png;
  if (!cv::imencode(".png", image, png)) throw Error(what + ": cannot encode the plot as PNG");
  return std::string(png.begin(), png.end());
}

void write_png(const std::filesystem::path& file, const cv::Mat& image) {
  write_file_atomic(file, encode_png(image, file.string()));
}

void write_line_plot_png(const std::filesystem::path& file, const std::vector<PlotSeries>& series,
                         const PlotOptions& options) {
  write_png(file, draw_line_plot(series, options));
}

}  // namespace mllm
