// The `mllm` subcommands. Each `add_*` registers its options on the app and returns the function
// to run when that subcommand is chosen. No LibTorch here.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace mllm::cli {

using Action = std::function<int()>;

Action add_train_command(CLI::App& app);
Action add_data_command(CLI::App& app);

}  // namespace mllm::cli
