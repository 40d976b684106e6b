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
};

// "Nice" tick positions (1, 2 or 5 times a power of ten apart) covering [lo, hi], about `target`
// of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

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
