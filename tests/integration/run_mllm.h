// Runs the `mllm` executable under test (MLLM_BIN) with its output captured, for the CLI tests;
// and what the tests of whole runs share: background runs, their logged losses.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace mllm::test {

struct Result {
  int code;            // exit status (-1 if killed by a signal)
  std::string output;  // stdout and stderr together
};

// A shell command line, stdout and stderr together.
inline Result run_shell(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

inline Result run_mllm(const std::string& args) {
  return run_shell(std::string(MLLM_BIN) + " " + args);
}

// The first line of `output` that is not a log line ("[01:20:45] warning ..." or spdlog's
// "[2026-12-06 01:19:55.504] [info] ..."): what `mllm generate` streams to stdout, wherever a
// warning logged before it (the BLAS core's, on CPUs whose OpenBLAS kernels are generic) lands.
inline std::string first_reply_line(const std::string& output) {
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line))
    if (!(line.size() > 1 && line[0] == '[' && std::isdigit(static_cast<unsigned char>(line[1]))))
      return line;
  return "";
}

// `train` arguments for a small ShapesWorld stage-0 run on the dataset at `data` (made with
// --image-size 32) writing to `out`, one thread; the caller appends the train.* settings.
inline std::string tiny_stage0_args(const std::filesystem::path& data,
                                    const std::filesystem::path& out) {
  const std::string d = data.string();
  return "train --config " + std::string(MLLM_SOURCE_DIR) + "/configs/shapes/stage0_text.yaml" +
         " --set run.output_dir=" + out.string() + " --set run.threads=1" +
         " --set model.tokenizer=" + d + "/tokenizer.json --set data.train.path=" + d +
         "/captions_train.json --set data.train.image_root=" + d + "/images" +
         " --set data.eval.path=" + d + "/captions_val.json --set data.eval.image_root=" + d +
         "/images --set model.vision.image_size=32 --set model.vision.hidden=32" +
         " --set model.vision.layers=1 --set model.vision.intermediate=64";
}

// Runs that a test interrupts sleep this long after each step (MLLM_TEST_STEP_DELAY_MS), so the
// signal lands mid-run however fast the machine is; it changes no number the run computes.
inline std::string slowed(const std::string& cmd) {
  return "env MLLM_TEST_STEP_DELAY_MS=20 " + cmd;
}

// `sh -c "exec <cmd>"` in the background, output to `log`; returns its pid.
inline pid_t spawn_shell(const std::string& cmd, const std::filesystem::path& log) {
  const std::string line = "exec " + cmd + " > " + log.string() + " 2>&1";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  REQUIRE(pid > 0);
  return pid;
}

// step -> loss of a run's metrics.jsonl, the last record of each step (a resumed run logs again
// from its checkpoint).
inline std::map<int64_t, double> step_losses(const std::filesystem::path& metrics) {
  std::map<int64_t, double> out;
  if (!std::filesystem::exists(metrics)) return out;
  std::istringstream in(read_text(metrics));
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line.back() != '}') continue;  // a line being written
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss") && !j.contains("skipped_step")) out[j["step"]] = j["loss"];
  }
  return out;
}

// Waits until the run `pid` has logged step >= k to `metrics`; false if it ended first (or after
// ten minutes: a deadline in time, not in polls, so a slow machine does not fail it).
inline bool wait_for_step(pid_t pid, const std::filesystem::path& metrics, int64_t k) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  while (std::chrono::steady_clock::now() < deadline) {
    const auto l = step_losses(metrics);
    if (!l.empty() && l.rbegin()->first >= k) return true;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace mllm::test
