// Line plots drawn with OpenCV: a few series of (x, y) points on shared axes with tick labels, a
// title and a legend, for figures a person opens (a sweep's loss curves). Deliberately small:
// linear axes, one line style, no LibTorch; not a plotting library.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

namespace mllm {

struct PlotSeries {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite values are skipped
};

struct PlotOptions {
  int width = 1200;  // the image grows taller (never wider) when the legend needs the room
  int height = 600;
  std::string title;
  std::string x_label;
  std::string y_label;
  // A logarithmic y axis (ticks at 1, 2 and 5 times powers of ten, or at the powers alone over
  // more than three decades), for curves that fall by orders of magnitude (losses). Points with
  // y <= 0 are left out.
  bool log_y = false;
};

// "Nice" tick positions (1, 2 or 5 times a power of ten apart) covering [lo, hi], about `target`
// of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

// The ticks of a logarithmic axis over [lo, hi] (0 < lo <= hi): the values 1, 2 and 5 times a
// power of ten from the largest at or below lo to the smallest at or above hi, or the powers of
// ten alone when that spans more than three decades.
std::vector<double> log_ticks(double lo, double hi);

// The colour (BGR) of the i-th series: the ten "tab10" colours, then golden-angle hues.
cv::Scalar series_color(size_t i);

// Draws the series on a white canvas of options.width x (at least) options.height, 8-bit BGR.
cv::Mat draw_line_plot(const std::vector<PlotSeries>& series, const PlotOptions& options);

// `image` as PNG bytes; throws Error naming `what` if encoding fails.
std::string encode_png(const cv::Mat& image, const std::string& what);
// encode_png, written atomically to `file`.
void write_png(const std::filesystem::path& file, const cv::Mat& image);

// draw_line_plot, encoded as PNG and written atomically. Throws Error if encoding fails.
void write_line_plot_png(const std::filesystem::path& file, const std::vector<PlotSeries>& series,
                         const PlotOptions& options);

}  // namespace mllm
