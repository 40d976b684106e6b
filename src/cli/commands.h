// The `mllm` subcommands. Each `add_*` registers its options on the app and returns the function
// to run when that subcommand is chosen. No LibTorch here.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace mllm::cli {

using Action = std::function<int()>;

Action add_train_command(CLI::App& app);
Action add_data_command(CLI::App& app);
Action add_tokenize_command(CLI::App& app);
Action add_sweep_command(CLI::App& app);
Action add_inspect_command(CLI::App& app);   // model_cmds.cpp (LibTorch)
Action add_export_command(CLI::App& app);    // model_cmds.cpp (LibTorch)
Action add_generate_command(CLI::App& app);  // generate_cmd.cpp (LibTorch)
Action add_eval_command(CLI::App& app);      // eval_cmd.cpp (LibTorch)
Action add_score_command(CLI::App& app);
Action add_report_command(CLI::App& app);  // run_report.h

// `mllm data check` (data_check.cpp, which needs LibTorch for the image decoder).
int run_data_check(const std::string& config_path, const std::vector<std::string>& overrides);

}  // namespace mllm::cli
