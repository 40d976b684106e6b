// The progress line of long non-training work: done/total, percent, rate and ETA.
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "core/progress.h"

using mllm::Progress;

TEST_CASE("progress: the line says done of total, the rate and what is left at that rate") {
  Progress p("data.train: tokenizing", 1000, "records");
  CHECK(p.line(250, 50.0) == "data.train: tokenizing: 250/1000 records (25%), 50.0/s, ETA 15s");
  CHECK(p.line(0, 0.0) == "data.train: tokenizing: 0/1000 records (0%)");
  CHECK(p.line(1000, 80.0) == "data.train: tokenizing: 1000/1000 records (100%), 80.0/s");
  Progress unknown("sweep", 0, "runs");
  CHECK(unknown.line(3, 0.5) == "sweep: 3 runs, 0.5/s");
  // Quick work shows nothing and finishing twice is harmless.
  p.update(10);
  p.finish();
  p.finish();
}

TEST_CASE("progress: work reported in chunks is rated over the time it took, not the last tick") {
  // A sweep learns its runs' steps 25 at a time, when their logs say so: 25 steps that took at
  // least 0.9 s (three idle samples, then the chunk) are at most 25 / 0.9 per second.
  Progress p("sweep", 1000, "steps", 1e9);
  p.update(0);
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    p.update(0);
  }
  p.update(25);
  CHECK(p.rate() > 0);
  CHECK(p.rate() <= 25 / 0.85);
}
