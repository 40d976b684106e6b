#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <opencv2/imgcodecs.hpp>

#include "core/plot.h"
#include "test_util.h"

using namespace mllm;

namespace {

// Pixels within `tol` (per channel) of `color` inside `roi`.
int count_near(const cv::Mat& img, const cv::Scalar& color, const cv::Rect& roi, int tol = 40) {
  int n = 0;
  for (int y = roi.y; y < roi.y + roi.height; ++y)
    for (int x = roi.x; x < roi.x + roi.width; ++x) {
      const auto p = img.at<cv::Vec3b>(y, x);
      if (std::abs(p[0] - color[0]) <= tol && std::abs(p[1] - color[1]) <= tol &&
          std::abs(p[2] - color[2]) <= tol)
        ++n;
    }
  return n;
}

}  // namespace

TEST_CASE("plot: ticks are 1, 2 or 5 times a power of ten apart and cover the range") {
  const auto unit = nice_ticks(0, 1);
  REQUIRE(unit.size() == 6);
  for (size_t i = 0; i < unit.size(); ++i) CHECK(unit[i] == Approx(0.2 * i).margin(1e-12));
  const auto t = nice_ticks(1.23, 3.9);
  REQUIRE(t.size() == 5);
  CHECK(t.front() == Approx(1.5));
  CHECK(t.back() == Approx(3.5));
  CHECK(nice_ticks(0, 100) == std::vector<double>{0, 20, 40, 60, 80, 100});
  CHECK(nice_ticks(-0.3, 0.3).size() >= 3);
  CHECK(nice_ticks(2, 2) == std::vector<double>{2});
  CHECK(nice_ticks(0, std::numeric_limits<double>::infinity()).empty());
}

TEST_CASE("plot: a log axis ticks 1, 2 and 5 times the powers of ten that cover the range") {
  auto approx = [](const std::vector<double>& got, const std::vector<double>& want) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-12));
  };
  approx(log_ticks(0.07, 7.7), {0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10});
  approx(log_ticks(0.1, 5), {0.1, 0.2, 0.5, 1, 2, 5});  // ends on ticks: no step beyond
  approx(log_ticks(3e-5, 40), {1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100});  // > 3 decades
  approx(log_ticks(1, 1), {1, 2});
  CHECK(log_ticks(0, 1).empty());
  CHECK(log_ticks(-1, 1).empty());
}

TEST_CASE("plot: on a log y axis equal ratios are equal heights; y <= 0 is left out") {
  // Three flat series at 10, 1 and 0.1: on a log axis the middle one is halfway between the
  // others (on a linear one it would sit next to 0.1).
  std::vector<PlotSeries> s(3);
  const double level[] = {10, 1, 0.1};
  for (size_t i = 0; i < 3; ++i)
    for (int step = 0; step <= 10; ++step) s[i].points.emplace_back(step, level[i]);
  s[2].points.emplace_back(11, 0.0);   // not drawn on a log axis
  s[2].points.emplace_back(12, -1.0);  // nor this
  PlotOptions o;
  o.log_y = true;
  o.title = "loss";
  const cv::Mat img = draw_line_plot(s, o);
  auto mean_row = [&](size_t i) {
    double sum = 0;
    int n = 0;
    for (int y = 0; y < img.rows; ++y)
      for (int x = 100; x < 800; ++x) {
        const auto p = img.at<cv::Vec3b>(y, x);
        const auto c = series_color(i);
        if (std::abs(p[0] - c[0]) < 30 && std::abs(p[1] - c[1]) < 30 && std::abs(p[2] - c[2]) < 30)
          sum += y, ++n;
      }
    return n ? sum / n : -1.0;
  };
  const double top = mean_row(0), middle = mean_row(1), bottom = mean_row(2);
  REQUIRE(top > 0);
  CHECK(bottom > top + 200);
  CHECK(std::abs(middle - (top + bottom) / 2) < 4);
  // The series at 0.1 stays flat: no line down to the points left out.
  int low = 0;
  for (int y = static_cast<int>(bottom) + 6; y < img.rows; ++y)
    for (int x = 100; x < 800; ++x) {
      const auto p = img.at<cv::Vec3b>(y, x);
      const auto c = series_color(2);
      low += std::abs(p[0] - c[0]) < 30 && std::abs(p[1] - c[1]) < 30 && std::abs(p[2] - c[2]) < 30;
    }
  CHECK(low == 0);
}

TEST_CASE("plot: each series is drawn in its own colour inside the frame, with a legend") {
  std::vector<PlotSeries> s(2);
  s[0].label = "falling";
  s[1].label = "flat";
  for (int step = 0; step <= 20; ++step) {
    s[0].points.emplace_back(step, 4.0 - 0.1 * step);
    s[1].points.emplace_back(step, 3.0);
  }
  s[1].points.emplace_back(21, std::nan(""));  // skipped, not drawn
  PlotOptions o;
  o.title = "train loss";
  const cv::Mat img = draw_line_plot(s, o);
  CHECK(img.cols == 1200);
  CHECK(img.rows == 600);
  CHECK(img.type() == CV_8UC3);
  // The left two thirds hold only the plot (the legend is at the right).
  const cv::Rect plot(0, 0, 800, 600);
  CHECK(count_near(img, series_color(0), plot) > 300);
  CHECK(count_near(img, series_color(1), plot) > 300);
  // The falling series starts high at the left and ends low at the right: its pixels in the left
  // tenth of the frame lie above those in the right tenth.
  auto mean_row = [&](cv::Rect r) {
    double sum = 0;
    int n = 0;
    for (int y = r.y; y < r.y + r.height; ++y)
      for (int x = r.x; x < r.x + r.width; ++x) {
        const auto p = img.at<cv::Vec3b>(y, x);
        if (std::abs(p[0] - series_color(0)[0]) < 30 && std::abs(p[1] - series_color(0)[1]) < 30 &&
            std::abs(p[2] - series_color(0)[2]) < 30)
          sum += y, ++n;
      }
    return n ? sum / n : -1.0;
  };
  const double left = mean_row({80, 0, 80, 600}), right = mean_row({700, 0, 150, 600});
  CHECK(left > 0);
  CHECK(right > left + 100);
  // The legend swatches sit right of the plot.
  CHECK(count_near(img, series_color(0), {1000, 0, 200, 600}, 0) > 50);
}

TEST_CASE("plot: no data still draws the axes; many series make the image taller") {
  const cv::Mat empty = draw_line_plot({}, {});
  CHECK(empty.cols == 1200);
  CHECK(empty.rows == 600);
  CHECK(cv::countNonZero(empty.reshape(1) < 200) > 1000);  // frame, ticks, "no data yet"

  std::vector<PlotSeries> many(40);
  for (size_t i = 0; i < many.size(); ++i) {
    many[i].label = "model.connector.type=mlp2x_gelu,train.lr=" + std::to_string(i) + "e-3";
    many[i].points = {{1, 1.0 + i}, {2, 0.5 + i}};
  }
  const cv::Mat tall = draw_line_plot(many, {});
  CHECK(tall.cols == 1200);
  CHECK(tall.rows > 600);
  CHECK(series_color(10) != series_color(0));
  CHECK(series_color(11) != series_color(10));
}

TEST_CASE("plot: the PNG decodes to the drawn image") {
  test::TempDir dir;
  std::vector<PlotSeries> s = {{"a", {{0, 1}, {10, 0.5}}}};
  PlotOptions o;
  o.width = 640;
  o.height = 400;
  write_line_plot_png(dir / "p.png", s, o);
  const cv::Mat back = cv::imread((dir / "p.png").string(), cv::IMREAD_COLOR);
  REQUIRE(!back.empty());
  CHECK(back.cols == 640);
  CHECK(back.rows == 400);
  CHECK(cv::norm(back, draw_line_plot(s, o), cv::NORM_INF) == 0);
}
