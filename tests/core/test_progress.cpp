// The progress line of long non-training work: done/total, percent, rate and ETA.
#include <catch2/catch.hpp>

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
