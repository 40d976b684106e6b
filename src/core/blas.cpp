#include "core/blas.h"

#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace mllm {

namespace {

std::set<std::string> cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> out;
    for (std::string w; words >> w;) out.insert(w);
    return out;
  }
  return {};
}

}  // namespace

std::string BlasInfo::describe() const {
  return core.empty() ? std::string("not OpenBLAS") : "OpenBLAS " + core;
}

BlasInfo classify_blas(const std::string& core, const std::set<std::string>& flags) {
  BlasInfo info;
  info.core = core;
  auto has = [&](const char* f) { return flags.count(f) > 0; };
  if (has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq"))
    info.cpu_best = "SkylakeX";
  else if (has("avx2") && has("fma"))
    info.cpu_best = "Haswell";
  // OpenBLAS's x86-64 cores without AVX2 kernels: its fall-backs on CPUs it does not recognise.
  static const std::set<std::string> generic = {"Prescott",  "Core2",  "Penryn", "Dunnington",
                                                "Nehalem",   "Atom",   "Katmai", "Coppermine",
                                                "Northwood", "Banias", "Unknown"};
  info.slow = !info.core.empty() && !info.cpu_best.empty() &&
              (generic.count(info.core) > 0 ||
               (info.cpu_best == "SkylakeX" && info.core == "Sandybridge"));
  return info;
}

BlasInfo blas_info() {
  // LibTorch reaches OpenBLAS through libblas.so.3; look the symbol up in what is loaded.
  std::string core;
  using CoreName = char* (*)();
  if (auto f = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename")))
    if (const char* name = f()) core = name;
  return classify_blas(core, cpu_flags());
}

void warn_if_slow_blas() {
  const BlasInfo b = blas_info();
  if (!b.slow || std::getenv("OPENBLAS_CORETYPE")) return;
  spdlog::warn(
      "BLAS: OpenBLAS runs its generic {} kernels on this CPU, which supports the {} ones "
      "(matrix products several times slower); export OPENBLAS_CORETYPE={} before running mllm",
      b.core, b.cpu_best, b.cpu_best);
}

}  // namespace mllm
