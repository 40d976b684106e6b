// Intra-op threads and device selection from run.threads / run.device.
#pragma once

#include <string>

#include <torch/torch.h>

namespace mllm {

// 0 = all cores. Returns the number set.
int configure_threads(int64_t threads);

// auto -> cuda when available, else cpu. Throws ConfigError for cuda on a CPU-only build.
torch::Device select_device(const std::string& device);

}  // namespace mllm
