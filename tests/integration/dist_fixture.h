// What the tests of runs over several ranks share (tests/integration/test_distributed.cpp,
// test_sharding.cpp): ports, ranks started one by one, a small ShapesWorld dataset and stage-0
// arguments, weights compared file to file.
#pragma once

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <string>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "core/safetensors.h"
#include "run_mllm.h"
#include "test_util.h"

namespace mllm::test::dist {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// A port for this test's rendezvous, different for every call and every test process.
inline int fresh_port() {
  static std::mt19937 rng(static_cast<unsigned>(::getpid()) ^
                          static_cast<unsigned>(Clock::now().time_since_epoch().count()));
  static int next = std::uniform_int_distribution<int>(20000, 40000)(rng);
  return next += 7;
}

// One rank of `ranks`, in the background, as a launcher would start it; output to `log`.
inline pid_t spawn_rank(int rank, int ranks, int port, const std::string& args,
                        const fs::path& log) {
  return mllm::test::spawn_shell(
      "env MLLM_TEST_STEP_DELAY_MS=20 RANK=" + std::to_string(rank) +
          " LOCAL_RANK=" + std::to_string(rank) + " WORLD_SIZE=" + std::to_string(ranks) +
          " LOCAL_WORLD_SIZE=" + std::to_string(ranks) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
          std::to_string(port) + " " + MLLM_BIN + " " + args,
      log);
}

// Largest |a - b| over the tensors of two safetensors files with the same names and shapes.
inline double max_weight_diff(const fs::path& a, const fs::path& b) {
  const auto ta = mllm::load_safetensors(a);
  std::map<std::string, torch::Tensor> tb;
  for (const auto& [name, t] : mllm::load_safetensors(b)) tb[name] = t;
  REQUIRE(ta.size() == tb.size());
  REQUIRE(!ta.empty());
  double worst = 0;
  for (const auto& [name, t] : ta) {
    REQUIRE(tb.count(name));
    const torch::Tensor& u = tb[name];
    REQUIRE(u.sizes() == t.sizes());
    const double d = (t.to(torch::kFloat64) - u.to(torch::kFloat64)).abs().max().item<double>();
    worst = std::max(worst, d);
  }
  return worst;
}

struct Fixture {
  TempDir dir{"mllm-dist"};
  fs::path data = dir / "shapes";
  Fixture() {
    REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                                 " --seed 5 --train 96 --val 16 --image-size 32")
                .code == 0);
  }
  // A small stage-0 run of `steps` steps, `batch` samples per rank and 2 micro-batches per step.
  std::string args(const fs::path& out, int64_t batch, int64_t steps = 12,
                   double timeout = 60) const {
    return mllm::test::tiny_stage0_args(data, out) +
           " --set train.batch_size=" + std::to_string(batch) + " --set train.grad_accum=2" +
           " --set train.max_steps=" + std::to_string(steps) +
           " --set train.log_every=1 --set train.eval_batches=0 --set train.save_every=3" +
           " --set train.keep_last=0 --set run.distributed.timeout=" + std::to_string(timeout) +
           // Small buckets, so that gradients travel in several, overlapping backward.
           " --set run.distributed.bucket_mb=0.5";
  }
  mllm::test::Result launch(int ranks, const std::string& args) const {
    return run_shell(std::string(MLLM_SOURCE_DIR) + "/scripts/launch --nproc-per-node " +
                     std::to_string(ranks) + " --master-port " + std::to_string(fresh_port()) +
                     " -- " + MLLM_BIN + " " + args);
  }
};

inline void check_losses_close(const fs::path& a, const fs::path& b, size_t steps) {
  const auto la = step_losses(a / "metrics.jsonl"), lb = step_losses(b / "metrics.jsonl");
  REQUIRE(la.size() == steps);
  REQUIRE(lb.size() == steps);
  for (const auto& [step, loss] : la) CHECK(lb.at(step) == Approx(loss).epsilon(1e-5));
}

}  // namespace mllm::test::dist
