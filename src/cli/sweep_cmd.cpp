// `mllm sweep --config base.yaml --grid key=v1,v2 [--grid ...] [--set key=value ...] [--out DIR]
//             [--parallel N]`
// `mllm sweep --stages stage1.yaml,stage2.yaml --grid key=v1,v2 [...]`: each run trains the stages
//             in order, stage k > 0 from stage k-1's final/ (train/sweep.h)
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
      "Train a grid of config overrides over one recipe (or stage recipes in sequence), one run "
      "directory each (resumable), and summarise them: summary.md, summary.csv, loss_curves.png");
  struct Args {
    std::string config, sweep_file, out;
    std::vector<std::string> grid, overrides, stages;
    int64_t parallel = 0;
  };
  auto args = std::make_shared<Args>();
  auto* config = cmd->add_option("--config,-c", args->config, "Base YAML recipe");
  auto* file =
      cmd->add_option("--sweep", args->sweep_file,
                      "Sweep YAML: base or stages (relative to it), grid, set, out, parallel");
  auto* stages = cmd->add_option("--stages", args->stages,
                                 "Stage recipes trained one after the other in every run, each "
                                 "from the previous one's final/: a.yaml,b.yaml (instead of "
                                 "--config)")
                     ->delimiter(',')
                     ->allow_extra_args(false);
  config->excludes(file);
  stages->excludes(config);
  stages->excludes(file);
  cmd->add_option("--grid", args->grid,
                  "key.path=value1,value2,... (repeatable; the runs are the cartesian product)")
      ->allow_extra_args(false);
  cmd->add_option("--set", args->overrides,
                  "Override a config value in every run (and stage): --set train.max_steps=200 "
                  "(repeatable)")
      ->allow_extra_args(false);
  cmd->add_option(
      "--out", args->out,
      "Sweep directory (default: the base (or first stage's) run.output_dir + \"-sweep\")");
  auto* parallel = cmd->add_option("--parallel", args->parallel, "Runs at a time (default 1)");
  return [args, parallel]() {
    SweepSpec spec;
    if (!args->sweep_file.empty()) {
      spec = load_sweep_file(args->sweep_file);
    } else if (!args->config.empty()) {
      spec.base = args->config;
    } else if (!args->stages.empty()) {
      for (const auto& s : args->stages) spec.stages.push_back(s);
      stage_labels(spec.stages, "--stages");  // two stages with one name: named as --stages
    } else {
      throw ConfigError(
          "sweep: give --config base.yaml (or --stages a.yaml,b.yaml) with --grid key=v1,v2, or "
          "--sweep FILE");
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
