// Preemption through the `mllm` executable: SIGTERM stops a run cleanly (checkpoint, exit 0), a
// SIGKILL at a random step loses at most the steps since the last checkpoint, and either way
// `--resume auto` finishes with exactly the weights and losses of an uninterrupted run.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/signals.h"
#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_text;
using mllm::test::step_losses;
using mllm::test::TempDir;
using mllm::test::wait_for_step;

namespace {

namespace fs = std::filesystem;

// `mllm <args>` in the background, output to `log`.
pid_t spawn(const std::string& args, const fs::path& log) {
  return mllm::test::spawn_shell(mllm::test::slowed(std::string(MLLM_BIN) + " " + args), log);
}

struct Fixture {
  TempDir dir{"mllm-preempt"};
  fs::path data = dir / "shapes";
  Fixture() {
    REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                                 " --seed 3 --train 64 --val 8 --image-size 32")
                .code == 0);
  }
  // A small stage-0 run of 60 steps writing to `out`.
  std::string args(const fs::path& out, int64_t save_every) const {
    return mllm::test::tiny_stage0_args(data, out) +
           " --set train.batch_size=8 --set train.max_steps=60 --set train.log_every=1" +
           " --set train.eval_batches=1 --set train.keep_last=2 --set train.save_every=" +
           std::to_string(save_every);
  }
};

void check_same_run(const fs::path& resumed, const fs::path& reference) {
  CHECK(read_text(resumed / "final/model.safetensors") ==
        read_text(reference / "final/model.safetensors"));
  const auto a = step_losses(resumed / "metrics.jsonl"),
             b = step_losses(reference / "metrics.jsonl");
  REQUIRE(a.size() == 60);
  CHECK(a == b);
}

}  // namespace

TEST_CASE("preemption: SIGTERM finishes the step, checkpoints, exits 0; resume is bit-identical") {
  Fixture f;
  const auto ref = f.dir / "reference";
  const auto full = mllm::test::run_mllm(f.args(ref, 0));
  INFO(full.output);
  REQUIRE(full.code == 0);

  const auto out = f.dir / "term";
  const pid_t pid = spawn(f.args(out, 0), f.dir / "term.log");
  REQUIRE(wait_for_step(pid, out / "metrics.jsonl", 5));
  REQUIRE(kill(pid, SIGTERM) == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  const std::string log = read_text(f.dir / "term.log");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(log, Catch::Contains("SIGTERM: stopped at step"));
  CHECK_FALSE(fs::exists(out / "final"));
  // save_every is 0, so the one checkpoint is the one the signal asked for, at the last step.
  const int64_t stopped = step_losses(out / "metrics.jsonl").rbegin()->first;
  CHECK(stopped < 60);
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(stopped));
  CHECK(fs::is_directory(out / "checkpoints" / name));

  const auto resumed = mllm::test::run_mllm(f.args(out, 0) + " --resume auto");
  INFO(resumed.output);
  REQUIRE(resumed.code == 0);
  CHECK_THAT(resumed.output, Catch::Contains("resumed from"));
  check_same_run(out, ref);
}

TEST_CASE("preemption: SIGKILL at a random step; --resume auto gives the uninterrupted run") {
  Fixture f;
  const auto ref = f.dir / "reference";
  REQUIRE(mllm::test::run_mllm(f.args(ref, 1)).code == 0);

  std::mt19937 rng(std::random_device{}());
  const int64_t k = std::uniform_int_distribution<int64_t>(3, 50)(rng);
  INFO("killed at step >= " << k);
  const auto out = f.dir / "killed";
  const pid_t pid = spawn(f.args(out, 1), f.dir / "kill.log");
  REQUIRE(wait_for_step(pid, out / "metrics.jsonl", k));
  REQUIRE(kill(pid, SIGKILL) == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  CHECK_FALSE(fs::exists(out / "final"));

  const auto resumed = mllm::test::run_mllm(f.args(out, 1) + " --resume auto");
  INFO(resumed.output);
  REQUIRE(resumed.code == 0);
  CHECK_THAT(resumed.output, Catch::Contains("resumed from"));
  check_same_run(out, ref);
}

TEST_CASE("signals: the first SIGTERM/SIGINT only asks to stop; a second SIGINT aborts at once") {
  {
    mllm::StopSignals stop;
    CHECK_FALSE(stop.requested());
    raise(SIGTERM);
    CHECK(stop.requested());
    CHECK(std::string(stop.name()) == "SIGTERM");
  }
  const pid_t pid = fork();
  if (pid == 0) {
    mllm::StopSignals stop;
    raise(SIGINT);
    if (!stop.requested()) _exit(3);
    raise(SIGINT);  // must not return
    _exit(4);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGINT);
}
