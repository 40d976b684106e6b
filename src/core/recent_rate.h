// A rate over the recent past: items per second over the last few intervals observed, so an ETA
// follows the run as it is now (a slow first stretch — compilation, a cold page cache, an
// evaluation — no longer inflates it for the rest of the run, as the run's average did).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>

namespace mllm {

class RecentRate {
 public:
  explicit RecentRate(size_t window = 5) : window_(window < 1 ? 1 : window) {}

  // `items` done in `seconds` since the previous observation.
  void observe(double seconds, int64_t items) {
    if (seconds <= 0 || items <= 0) return;
    recent_.emplace_back(seconds, items);
    if (recent_.size() > window_) recent_.pop_front();
  }

  // Items per second over the window; 0 before the first observation.
  double per_second() const {
    double s = 0, n = 0;
    for (const auto& [seconds, items] : recent_) s += seconds, n += static_cast<double>(items);
    return s > 0 ? n / s : 0.0;
  }

  // Seconds for `remaining` items at that rate (0 when unknown).
  double eta(int64_t remaining) const {
    const double r = per_second();
    return r > 0 && remaining > 0 ? static_cast<double>(remaining) / r : 0.0;
  }

 private:
  size_t window_;
  std::deque<std::pair<double, int64_t>> recent_;
};

}  // namespace mllm
