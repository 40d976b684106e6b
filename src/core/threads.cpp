#include "core/threads.h"

#include <thread>

#include "core/error.h"

namespace mllm {

int configure_threads(int64_t threads) {
  const int n = threads > 0 ? static_cast<int>(threads)
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
  return n;
}

torch::Device select_device(const std::string& device) {
  if (device == "auto")
    return torch::cuda::is_available() ? torch::Device("cuda") : torch::Device("cpu");
  if (device.rfind("cuda", 0) == 0 && !torch::cuda::is_available())
    throw ConfigError("run.device: '" + device +
                      "' requested but this build/machine has no CUDA device");
  return torch::Device(device);
}

}  // namespace mllm
