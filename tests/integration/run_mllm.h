// Runs the `mllm` executable under test (MLLM_BIN) with its output captured, for the CLI tests.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

#include <catch2/catch.hpp>

namespace mllm::test {

struct Result {
  int code;            // exit status (-1 if killed by a signal)
  std::string output;  // stdout and stderr together
};

inline Result run_mllm(const std::string& args) {
  const std::string cmd = std::string(MLLM_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace mllm::test
