// What every fuzz target shares: the rule for what counts as a finding, a scratch folder for the
// files the readers open by path, and the tally printed at exit.
//
// A reader may reject its input only with mllm::Error (ConfigError is one): that is its documented
// failure, an expected outcome. Anything else that escapes — another exception type, a crash, a
// sanitizer report, a broken invariant the target checks (fuzz::check) — is a finding: libFuzzer
// stops and writes the input. MLLM_FUZZ_VERBOSE=1 prints every rejection, to check that the seeds
// are read.
#pragma once

#include <cxxabi.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <new>
#include <string>
#include <typeinfo>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mllm::fuzz {

struct State {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  uint64_t inputs = 0;                  // reads (a target may read an input more than once)
  uint64_t accepted = 0, rejected = 0;  // read fine / mllm::Error
  bool verbose = false;  // MLLM_FUZZ_VERBOSE=1: print each rejection (for checking seeds)
  std::filesystem::path scratch;
};

inline State& state() {
  static State s;
  return s;
}

inline double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - state().start).count();
}

// A broken invariant: print it and abort, which libFuzzer reports as a crash with this input.
inline void check(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

// Writes `size` bytes to `name` in the scratch folder and returns its path.
inline std::filesystem::path write_scratch(const std::string& name, const uint8_t* data,
                                           size_t size) {
  const std::filesystem::path p = state().scratch / name;
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  check(static_cast<bool>(out), "cannot write " + p.string());
  return p;
}
inline std::filesystem::path write_scratch(const std::string& name, const std::string& text) {
  return write_scratch(name, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

inline void report() {
  const State& s = state();
  std::fprintf(
      stderr, "fuzz: %llu reads in %.1f s: %llu accepted, %llu rejected with mllm::Error\n",
      static_cast<unsigned long long>(s.inputs), seconds(),
      static_cast<unsigned long long>(s.accepted), static_cast<unsigned long long>(s.rejected));
  std::error_code ec;
  std::filesystem::remove_all(s.scratch, ec);
}

// An exception no reader should let out: name its type and message before aborting (the stack
// printed is still the throw's: terminate runs before unwinding).
[[noreturn]] inline void on_terminate() {
  std::string what = "(not a std::exception)";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
    }
  }
  const std::type_info* type = abi::__cxa_current_exception_type();
  int status = 0;
  char* name = type ? abi::__cxa_demangle(type->name(), nullptr, nullptr, &status) : nullptr;
  std::fprintf(stderr, "fuzz: uncaught exception %s: %s\n",
               name ? name : (type ? type->name() : "?"), what.c_str());
  std::free(name);
  std::abort();
}

// Once per process, from LLVMFuzzerInitialize: the scratch folder, quiet logs, the exit tally.
inline void init(const char* target) {
  State& s = state();
  const char* verbose = std::getenv("MLLM_FUZZ_VERBOSE");
  s.verbose = verbose && std::string(verbose) == "1";
  std::string tmpl =
      (std::filesystem::temp_directory_path() / (std::string("mllm-") + target + "-XXXXXX"))
          .string();
  check(::mkdtemp(tmpl.data()) != nullptr, "cannot create a scratch folder");
  s.scratch = tmpl;
  spdlog::set_level(spdlog::level::off);  // readers warn about inputs they accept
  std::set_terminate(on_terminate);
  std::atexit(report);
}

// Runs one reader over one input, sorting what comes out of it (see the file comment).
template <class F>
void read(F&& reader) {
  State& s = state();
  ++s.inputs;
  try {
    reader();
    ++s.accepted;
  } catch (const Error& e) {
    ++s.rejected;
    if (s.verbose) std::fprintf(stderr, "fuzz: rejected: %s\n", e.what());
  }
}

}  // namespace mllm::fuzz
