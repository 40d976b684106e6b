// What every fuzz target shares: the rule for what counts as a finding, a scratch folder for the
// files the readers open by path, and the tally printed at exit.
//
// A reader may reject its input only with mllm::Error (ConfigError is one): that is its documented
// failure, an expected outcome. Anything else that escapes — another exception type, a crash, a
// sanitizer report, a broken invariant the target checks (fuzz::check) — is a finding: libFuzzer
// stops and writes the input. The classes listed in read() under "known" are being fixed on main;
// they are tallied (how many inputs, and when the first one came) instead of stopping the run,
// unless MLLM_FUZZ_STRICT=1 is set, which lets them through as findings. MLLM_FUZZ_VERBOSE=1 prints
// every rejection, to check that the seeds are read.
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

struct Tally {
  uint64_t count = 0;
  uint64_t first_input = 0;  // 1-based index of the first read with this outcome
  double first_seconds = 0;  // since the process started
};

struct State {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  uint64_t inputs = 0;                  // reads (a target may read an input more than once)
  uint64_t accepted = 0, rejected = 0;  // read fine / mllm::Error
  uint64_t known_total = 0;             // inputs that ended in a known class
  std::map<std::string, Tally> known;
  bool strict = false;
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
  for (const auto& [name, t] : s.known)
    std::fprintf(stderr,
                 "fuzz: known (being fixed on main): %s: %llu reads, first at read %llu "
                 "(%.2f s)\n",
                 name.c_str(), static_cast<unsigned long long>(t.count),
                 static_cast<unsigned long long>(t.first_input), t.first_seconds);
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
  const char* strict = std::getenv("MLLM_FUZZ_STRICT");
  s.strict = strict && std::string(strict) == "1";
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

// A known class (see the file comment): tallied, or under MLLM_FUZZ_STRICT=1 a finding (the
// exception being handled rethrown, or an abort when there is none).
inline void known(const std::string& name) {
  State& s = state();
  if (s.strict) {
    if (std::current_exception()) throw;
    std::fprintf(stderr, "fuzz: known class (strict): %s\n", name.c_str());
    std::abort();
  }
  ++s.known_total;
  Tally& t = s.known[name];
  if (t.count++ == 0) {
    t.first_input = s.inputs;
    t.first_seconds = seconds();
  }
}

// Runs one reader over one input, sorting what comes out of it (see the file comment).
template <class F>
void read(F&& reader) {
  State& s = state();
  ++s.inputs;
  const uint64_t known_before = s.known_total;
  try {
    reader();
    if (s.known_total == known_before) ++s.accepted;
  } catch (const Error& e) {
    ++s.rejected;
    if (s.verbose) std::fprintf(stderr, "fuzz: rejected: %s\n", e.what());
  }
  // known, being fixed on main: third-party exceptions escaping the readers, and huge sizes
  // reaching the allocator (a std::bad_alloc once scripts/fuzz caps ASan's allocation size).
  catch (const nlohmann::json::exception&) {
    known("nlohmann::json::exception");
  } catch (const std::bad_alloc&) {
    known("std::bad_alloc");
  }
}

}  // namespace mllm::fuzz
