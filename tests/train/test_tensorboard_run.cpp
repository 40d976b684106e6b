// run.tensorboard: a training run's event files hold every number of its metrics.jsonl at the
// same steps, as the independent reader (tests/reference/tfevents_reader.py) decodes them.
#include <catch2/catch.hpp>

#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fixtures.h"
#include "train/metrics_sink.h"
#include "train/trainer.h"

using namespace mllm;
using mllm::test::TempDir;

TEST_CASE("tensorboard: metric records flatten to tags; step is the event's, not a scalar") {
  const auto s = metric_scalars(nlohmann::json::parse(
      R"({"step": 3, "loss": 1.5, "skipped_step": true, "source_items": {"a.json": 4},
          "note": "x", "eval/qa/accuracy": 0.5})"));
  std::map<std::string, double> m(s.begin(), s.end());
  CHECK(m.size() == 3);
  CHECK(m.at("loss") == 1.5);
  CHECK(m.at("source_items/a.json") == 4);
  CHECK(m.at("eval/qa/accuracy") == 0.5);
}

TEST_CASE("tensorboard: a run's events carry metrics.jsonl's numbers at the same steps") {
  TempDir data("mllm-tb-run");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  c.train.max_steps = 4;
  c.train.eval_every = 2;
  train(c);
  const std::string cmd = "/usr/bin/python3 " + std::string(MLLM_SOURCE_DIR) +
                          "/tests/reference/tfevents_reader.py " +
                          (data / "run/tensorboard").string();
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  REQUIRE(pclose(p) == 0);
  const auto events = nlohmann::json::parse(out)["events"];
  // (step, tag) -> value from the events.
  std::map<std::pair<int64_t, std::string>, double> seen;
  for (const auto& e : events)
    for (const auto& [tag, v] : e["scalars"].items())
      seen[{e["step"].get<int64_t>(), tag}] = v.get<double>();
  std::istringstream lines(test::read_text(data / "run/metrics.jsonl"));
  int64_t numbers = 0;
  bool eval_loss = false;
  for (std::string line; std::getline(lines, line);) {
    const auto rec = nlohmann::json::parse(line);
    const int64_t step = rec.value("step", int64_t{0});
    for (const auto& [tag, v] : metric_scalars(rec)) {
      INFO("step " << step << " " << tag);
      const auto it = seen.find({step, tag});
      REQUIRE(it != seen.end());
      CHECK(it->second == Approx(static_cast<float>(v)).epsilon(1e-6));
      ++numbers;
      eval_loss |= tag == "eval_loss";
    }
  }
  CHECK(numbers >= 4 * 3);  // loss, lr, grad_norm at least, every step
  CHECK(eval_loss);
  CHECK(events[0]["file_version"] == "brain.Event:2");
}
