// The ETA's rate follows the recent past: after a slow stretch it recovers within its window.
#include <catch2/catch.hpp>

#include "core/recent_rate.h"

using mllm::RecentRate;

TEST_CASE("recent rate: the window's items over its seconds; a slow start is forgotten") {
  RecentRate r(3);
  CHECK(r.per_second() == 0);
  CHECK(r.eta(100) == 0);
  r.observe(60.0, 10);  // a slow first stretch: 6 s a step
  CHECK(r.eta(100) == Approx(600));
  for (int i = 0; i < 3; ++i) r.observe(5.0, 10);  // then 0.5 s a step
  CHECK(r.per_second() == Approx(2.0));
  CHECK(r.eta(100) == Approx(50));  // the run's average would say (60 + 15) / 40 * 100 = 187.5
  r.observe(0, 10);                 // nothing measured: ignored
  r.observe(5.0, 0);
  CHECK(r.per_second() == Approx(2.0));
  CHECK(r.eta(0) == 0);
}
