// `mllm sweep --config base.yaml --grid key=v1,v2 [--grid ...] [--set key=value ...] [--out DIR]
//             [--parallel N]`
// `mllm sweep --sweep sweep.yaml [--grid ...] [--set ...] [--out DIR] [--parallel N]`
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "train/sweep.h"

namespace mllm::cli {

Action add_sweep_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "sweep",
      "Train a grid of config overrides over one recipe, one run directory each (resumable), and "
      "summarise them: summary.md, summary.csv, loss_curves.png");
  struct Args {
    std::string config, sweep_file, out;
    std::vector<std::string> grid, overrides;
    int64_t parallel = 0;
  };
  auto args = std::make_shared<Args>();
  auto* config = cmd->add_option("--config,-c", args->config, "Base YAML recipe");
  auto* file = cmd->add_option("--sweep", args->sweep_file,
                               "Sweep YAML: base (relative to it), grid, set, out, parallel");
  config->excludes(file);
  cmd->add_option("--grid", args->grid,
                  "key.path=value1,value2,... (repeatable; the runs are the cartesian product)")
      ->allow_extra_args(false);
  cmd->add_option("--set", args->overrides,
                  "Override a config value in every run: --set train.max_steps=200 (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--out", args->out,
                  "Sweep directory (default: the base config's run.output_dir + \"-sweep\")");
  auto* parallel = cmd->add_option("--parallel", args->parallel, "Runs at a time (default 1)");
  return [args, parallel]() {
    SweepSpec spec;
    if (!args->sweep_file.empty()) {
      spec = load_sweep_file(args->sweep_file);
    } else if (!args->config.empty()) {
      spec.base = args->config;
    } else {
      throw ConfigError("sweep: give --config base.yaml with --grid key=v1,v2, or --sweep FILE");
    }
    for (const auto& g : args->grid) spec.grid.push_back(parse_grid_arg(g));
    spec.set.insert(spec.set.end(), args->overrides.begin(), args->overrides.end());
    if (!args->out.empty()) spec.out = args->out;
    if (parallel->count() > 0) spec.parallel = args->parallel;
    if (args->sweep_file.empty()) spec.source = "--grid";
    // Children run this same executable.
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (ec) throw Error("sweep: cannot find the mllm executable (/proc/self/exe): " + ec.message());
    return run_sweep(spec, self);
  };
}

}  // namespace mllm::cli
