// Which BLAS the process runs on. Debian's OpenBLAS 0.3.21 does not recognise some recent Xeons
// and falls back to its generic "Prescott" kernels (a 1024^3 sgemm 4.4x slower than with the
// AVX-512 "SkylakeX" kernels the CPU supports); OPENBLAS_CORETYPE=SkylakeX fixes it. We detect it
// and say so; we never set the variable ourselves.
#pragma once

#include <set>
#include <string>

namespace mllm {

struct BlasInfo {
  std::string core;       // openblas_get_corename(), e.g. "Haswell"; "" when not OpenBLAS
  std::string cpu_best;   // the OpenBLAS core the CPU's flags allow: SkylakeX, Haswell, or ""
  bool slow = false;      // the core in use is a generic one while the CPU allows cpu_best
  std::string describe() const;  // "OpenBLAS Prescott" / "not OpenBLAS"
};

BlasInfo blas_info();

// The verdict for an OpenBLAS core name and a set of /proc/cpuinfo flags (blas_info's logic).
BlasInfo classify_blas(const std::string& core, const std::set<std::string>& cpu_flags);

// One warning line with the fix when blas_info().slow (and OPENBLAS_CORETYPE is not set).
void warn_if_slow_blas();

}  // namespace mllm
