// A progress line for long work that is not training (data check's tokenization, eval's
// generation, saving a large safetensors file for a checkpoint or an export, a sweep's runs):
// done/total, rate and an ETA from the recent rate (core/recent_rate.h). On a
// terminal it redraws one line in place (carriage return and spaces, no escape codes, so NO_COLOR
// terminals and logs read it too) at most every half second; otherwise (a pipe, a file, CI) a
// plain line every `plain_every` seconds. Goes to stderr, so stdout stays the command's output.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/recent_rate.h"

namespace mllm {

class Progress {
 public:
  // `what`: "data.train: tokenizing"; `unit`: "records". `total` 0: unknown (no ETA, no %).
  Progress(std::string what, int64_t total, std::string unit, double plain_every = 10.0);
  ~Progress();  // finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // `done` items so far (not an increment).
  void update(int64_t done);
  // A total learnt on the way (a sweep learns its runs' step counts as they start).
  void set_total(int64_t total) { total_ = total; }
  // The final line (on a terminal: the line completed with a newline); idempotent.
  void finish();

  // The line as shown, and the rate it shows (exposed for tests).
  std::string line(int64_t done, double per_second) const;
  double rate() const { return rate_.per_second(); }

 private:
  using Clock = std::chrono::steady_clock;
  std::string what_, unit_;
  int64_t total_;
  double plain_every_;
  bool tty_;
  bool finished_ = false;
  bool shown_ = false;  // something has been printed
  int64_t last_done_ = 0, last_printed_ = 0;
  Clock::time_point start_, last_sample_, last_print_;
  RecentRate rate_{8};
  size_t width_ = 0;  // of the last line drawn on the terminal
};

}  // namespace mllm
