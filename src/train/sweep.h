// `mllm sweep`: a grid of config overrides over one base recipe, expanded into runs (the cartesian
// product, first grid key slowest), each trained by a child `mllm train` process in its own
// directory under the sweep's directory. A crash in one run cannot take the sweep down; runs are
// attempted in order, N at a time. Rerunning the same sweep continues it: finished runs (final/)
// are skipped, interrupted ones resumed from their newest checkpoint. Invalid combinations (the
// config fails validation, or the child exits with code 2) are reported and skipped. After every
// run the summary is rewritten (sweep_report.h). No LibTorch here.
//
// Multi-stage sweeps: instead of one base recipe, a list of stage recipes (`stages:` in a sweep
// file, `--stages a.yaml,b.yaml`), e.g. alignment pretraining then instruction tuning. Each run of
// the grid trains the stages in order, one child each, in SWEEP/<run>/<stage>/ where <stage> is
// the recipe's file stem (two stages with the same stem are an error). The grid's and set's
// overrides go to every stage, so each must be valid for every stage's recipe; stage k > 0 also
// gets train.init_from=<stage k-1's directory>/final, which wins over the recipe's own init_from
// (and over a grid or set value of it, which therefore reaches the first stage only). Every stage
// is validated before the run's first stage starts (one that is wrong for stage 2 costs no stage-1
// training), with train.init_from left out where the previous stage has no final/ yet. Resuming
// works per stage: a stage with final/ is skipped, an interrupted one resumed; a stage that fails
// or is invalid ends its run with that status and the stages after it are not attempted.
//
// What it is not: a search (no early stopping or adaptive picks) or a multi-machine scheduler.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace mllm {

struct GridAxis {
  std::string key;                  // a config key path, e.g. "model.connector.type"
  std::vector<std::string> values;  // each parsed as YAML, as --set does
};

struct SweepSpec {
  std::filesystem::path base;                 // the base recipe; empty in a multi-stage sweep
  std::vector<std::filesystem::path> stages;  // a multi-stage sweep's recipes, in training order
  std::vector<GridAxis> grid;                 // in order: the first axis varies slowest
  std::vector<std::string> set;   // "key=value" for every run, applied before the grid's
  std::filesystem::path out;      // empty: the base (first stage's) output dir + "-sweep"
  int64_t parallel = 1;           // runs at a time
  std::string source = "--grid";  // where the grid came from, for error messages
};

// One run of the sweep: its grid overrides (key, value), in grid order, and its directory name.
struct SweepRun {
  std::vector<std::pair<std::string, std::string>> overrides;
  std::string name;
};

// "model.connector.type=linear,mlp2x_gelu" -> {key, {linear, mlp2x_gelu}}. Values are split at
// commas outside brackets, braces and quotes ("train.betas=[0.9,0.99],[0.9,0.999]" has two).
// Throws ConfigError naming the argument if it is malformed (no '=', empty key or value).
GridAxis parse_grid_arg(const std::string& arg);

// Reads a sweep file:
//   base: stage1.yaml            # relative to the sweep file
//   # or, instead of base, stages run one after the other (also relative to the sweep file):
//   # stages: [stage1_pretrain.yaml, stage2_instruct.yaml]
//   grid: {model.connector.type: [linear, mlp2x_gelu], train.lr: [1e-3, 3e-3]}
//   set: {train.max_steps: 200}  # optional; nested maps are flattened to key paths
//   out: runs/connectors         # optional; relative to the working directory
//   parallel: 2                  # optional
// Throws ConfigError naming the file (and line) for a missing file, bad YAML, an unknown key, both
// or neither of base and stages, or two stages with the same directory name.
SweepSpec load_sweep_file(const std::filesystem::path& file);

// The directory name of each stage of a multi-stage sweep: its recipe's file stem, made a safe file
// name (sanitize_file_name). Throws ConfigError naming `source` for an empty list or two stages
// with the same name.
std::vector<std::string> stage_labels(const std::vector<std::filesystem::path>& stages,
                                      const std::string& source);

// Checks the grid: every key a config key path (with a did-you-mean), no key twice, no empty value
// list, nothing the sweep sets itself (run.output_dir). Throws ConfigError naming the key.
void check_grid(const std::vector<GridAxis>& grid, const std::string& source);

// The cartesian product of the grid in a stable order (first axis slowest, values as given).
std::vector<SweepRun> expand_grid(const std::vector<GridAxis>& grid);

// "model.connector.type=linear,train.lr=1e-3": the overrides joined, made a safe file name.
std::string run_name(const std::vector<std::pair<std::string, std::string>>& overrides);

// Keeps [A-Za-z0-9._,=+-], replaces anything else with '_'; never empty, "." or "..", nor
// starting with '-' or '.'; over 120 bytes it is cut and a hash of the whole name appended.
std::string sanitize_file_name(const std::string& name);

// Runs the sweep with `mllm_binary` for the child `train` processes. Returns the exit code: 0 when
// every run finished (now or earlier), 1 when any run was invalid or failed. Throws ConfigError
// for a bad sweep: a bad grid, --parallel < 1, colliding run names or stage names, both base and
// stages, or a base (or any stage's) config + set that no run's overrides make valid (a typo in
// --set is one error, not every run's).
int run_sweep(const SweepSpec& spec, const std::filesystem::path& mllm_binary);

}  // namespace mllm
