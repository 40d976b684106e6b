#include "core/progress.h"

#include <unistd.h>

#include <spdlog/fmt/fmt.h>

#include "core/logging.h"

namespace mllm {

namespace {

double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

Progress::Progress(std::string what, int64_t total, std::string unit, double plain_every)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      plain_every_(plain_every),
      tty_(::isatty(::fileno(stderr)) == 1),
      start_(Clock::now()),
      last_sample_(start_),
      last_print_(start_) {}

Progress::~Progress() {
  finish();
}

std::string Progress::line(int64_t done, double per_second) const {
  std::string s = what_ + ": " + std::to_string(done);
  if (total_ > 0)
    s += fmt::format("/{} {} ({:.0f}%)", total_, unit_,
                     100.0 * static_cast<double>(done) / static_cast<double>(total_));
  else
    s += " " + unit_;
  if (per_second > 0) {
    s += fmt::format(", {:.1f}/s", per_second);
    if (total_ > done)
      s += ", ETA " + format_duration(static_cast<double>(total_ - done) / per_second);
  }
  return s;
}

void Progress::update(int64_t done) {
  if (finished_) return;
  const auto now = Clock::now();
  // Sample the rate a few times a second at most, so a fast loop costs nothing.
  const double since_sample = seconds(now - last_sample_);
  if (since_sample < 0.25 && done < total_) return;
  if (done > last_done_) {
    // An interval without progress joins the next one that has some: work reported in chunks (a
    // sweep reads its runs' steps from their logs, every log_every steps) would otherwise count
    // only the quarter second in which a chunk arrived, and the rate be that many times too high.
    rate_.observe(since_sample, done - last_done_);
    last_done_ = done;
    last_sample_ = now;
  }
  const double since_print = seconds(now - last_print_);
  if (tty_ ? since_print < 0.5 : since_print < plain_every_) return;
  last_print_ = now;
  last_printed_ = done;
  const std::string s = line(done, rate_.per_second());
  if (tty_) {
    // Redraw in place; spaces cover what a longer previous line left.
    const size_t pad = width_ > s.size() ? width_ - s.size() : 0;
    std::fprintf(stderr, "\r%s%s", s.c_str(), std::string(pad, ' ').c_str());
    width_ = s.size();
  } else {
    std::fprintf(stderr, "%s\n", s.c_str());
  }
  std::fflush(stderr);
  shown_ = true;
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  // Only work that lasted long enough to show progress gets a closing line.
  if (!shown_) return;
  const double elapsed = seconds(Clock::now() - start_);
  const int64_t done = total_ > 0 ? total_ : last_done_;
  const std::string s = line(done, elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0) +
                        " in " + format_duration(elapsed);
  if (tty_) {
    const size_t pad = width_ > s.size() ? width_ - s.size() : 0;
    std::fprintf(stderr, "\r%s%s\n", s.c_str(), std::string(pad, ' ').c_str());
  } else {
    std::fprintf(stderr, "%s\n", s.c_str());
  }
  std::fflush(stderr);
}

}  // namespace mllm
