// mllm — train, evaluate and inspect multimodal LLMs from YAML recipes.
// Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
#include <spdlog/spdlog.h>

#include <iostream>
#include <map>
#include <new>
#include <sstream>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/logging.h"

namespace {

// The message, on one line. Inputs are converted into the project's errors where they are read;
// should a library's exception still get here, LibTorch's C++ backtrace ("Exception raised from
// ...", "frame #0: ...") is cut: the user needs the reason, not the frames.
std::string one_line(const std::string& what) {
  std::string out, line;
  std::istringstream in(what);
  while (std::getline(in, line)) {
    if (line.rfind("Exception raised from", 0) == 0 || line.rfind("frame #", 0) == 0) continue;
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
    if (line.empty()) continue;
    out += (out.empty() ? "" : " ") + line;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mllm: a C++ training framework for multimodal LLMs (alignment pretraining, "
      "instruction tuning, preference alignment)"};
  app.set_version_flag("--version", std::string("mllm ") + MLLM_VERSION);
  app.require_subcommand(1);
  std::map<CLI::App*, mllm::cli::Action> actions;
  auto add = [&](mllm::cli::Action (*f)(CLI::App&)) {
    const size_t before = app.get_subcommands({}).size();
    auto action = f(app);
    actions[app.get_subcommands({})[before]] = action;
  };
  add(mllm::cli::add_train_command);
  add(mllm::cli::add_data_command);
  add(mllm::cli::add_tokenize_command);
  add(mllm::cli::add_sweep_command);
  add(mllm::cli::add_inspect_command);
  add(mllm::cli::add_export_command);
  add(mllm::cli::add_generate_command);
  add(mllm::cli::add_eval_command);
  add(mllm::cli::add_score_command);
  add(mllm::cli::add_report_command);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  mllm::setup_console_logging();
  try {
    for (auto& [sub, action] : actions)
      if (sub->parsed()) return action();
  } catch (const mllm::ConfigError& e) {
    spdlog::error("{}", one_line(e.what()));
    return 2;
  } catch (const std::bad_alloc&) {
    spdlog::error(
        "out of memory: a size in the recipe, or an input, needs more than this machine has");
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", one_line(e.what()));
    return 1;
  }
  return 0;
}
