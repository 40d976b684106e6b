// A sweep's summary: one row per run with its grid values, status and figures read from the run's
// own outputs (summary.json, written by train() when a run finishes, else the last records of
// metrics.jsonl, read as `mllm report` reads it: eval/run_report.h), written as
// SWEEP_DIR/summary.md (a Markdown table), summary.csv and loss_curves.png (train loss against
// step, one line per run). The recipes' eval tasks add a column per task score: the last
// "eval/<task>/<score>" a run logged (the trainer evaluates them at the end of a run), as
// "<task> <score>" ("qa accuracy"; summary.csv: "qa/accuracy").
//
// A multi-stage sweep (sweep.h) has a row per run too, with a group of columns per stage:
// "<stage> eval loss", its task scores "<stage> <task> <score>" and "<stage> tokens/s"
// (summary.csv: "<stage>/eval_loss", "<stage>/<task>/<score>", "<stage>/tokens_per_s"); the run's
// trainable parameters and visual tokens are the first stage's, "<last stage> train loss" the
// last stage's final train loss, and wall the stages' sum. loss_curves.png then has one panel per
// stage, each run the same colour in every panel. No LibTorch here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mllm {

// What one `mllm train` run directory says of its run.
struct RunFigures {
  std::optional<int64_t> trainable_params, image_tokens, steps;
  std::optional<double> final_loss, eval_loss, tokens_per_s, wall_seconds;
  std::vector<std::pair<double, double>> loss_curve;  // (step, train loss)
  // The last value of each eval task score: ("<task>/<score>", value), sorted by name.
  std::vector<std::pair<std::string, double>> scores;
};

// One stage of a multi-stage run: its directory name (the recipe's file stem) and figures.
struct StageReport : RunFigures {
  std::string label;
  std::string status = "pending";  // as RunReport's
};

// One run. In a multi-stage sweep `stages` holds every stage (the same labels, in order, in every
// run's report) and the run's own figures are combined from them (combine_stages).
struct RunReport : RunFigures {
  std::string name;
  std::vector<std::string> values;  // one per grid key
  // pending | running | done | skipped-finished | invalid | failed
  std::string status = "pending";
  std::string note;  // the error of an invalid or failed run, "resumed from step N", ...
  std::vector<StageReport> stages;
};

// Fills the figures, the loss curve and the task scores of `figures` from `run_dir` (what exists
// of it). A step logged twice (a resumed run re-logs the steps after its last checkpoint) keeps
// its last value.
void read_run_outputs(const std::filesystem::path& run_dir, RunFigures& figures);

// A multi-stage run's own figures from its stages: trainable parameters and visual tokens of the
// first, final train and eval loss and task scores of the last, wall seconds summed over those
// that report them (none: unknown). Leaves a report without stages as it is.
void combine_stages(RunReport& report);

std::string summary_markdown(const std::vector<std::string>& keys,
                             const std::vector<RunReport>& runs);
std::string summary_csv(const std::vector<std::string>& keys, const std::vector<RunReport>& runs);

// Writes summary.md, summary.csv and loss_curves.png into `sweep_dir`, each atomically.
void write_sweep_summary(const std::filesystem::path& sweep_dir,
                         const std::vector<std::string>& keys, const std::vector<RunReport>& runs);

}  // namespace mllm
