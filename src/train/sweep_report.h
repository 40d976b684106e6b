// A sweep's summary: one row per run with its grid values, status and figures read from the run's
// own outputs (summary.json, written by train() when a run finishes, else the last records of
// metrics.jsonl), written as SWEEP_DIR/summary.md (a Markdown table), summary.csv and
// loss_curves.png (train loss against step, one line per run). No LibTorch here.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mllm {

struct RunReport {
  std::string name;
  std::vector<std::string> values;  // one per grid key
  // pending | running | done | skipped-finished | invalid | failed
  std::string status = "pending";
  std::string note;  // the error of an invalid or failed run, "resumed from step N", ...
  std::optional<int64_t> trainable_params, image_tokens;
  std::optional<double> final_loss, eval_loss, tokens_per_s, wall_seconds;
  std::vector<std::pair<double, double>> loss_curve;  // (step, train loss)
};

// Fills the figures and the loss curve of `report` from `run_dir` (what exists of it). A step
// logged twice (a resumed run re-logs the steps after its last checkpoint) keeps its last value.
void read_run_outputs(const std::filesystem::path& run_dir, RunReport& report);

std::string summary_markdown(const std::vector<std::string>& keys,
                             const std::vector<RunReport>& runs);
std::string summary_csv(const std::vector<std::string>& keys, const std::vector<RunReport>& runs);

// Writes summary.md, summary.csv and loss_curves.png into `sweep_dir`, each atomically.
void write_sweep_summary(const std::filesystem::path& sweep_dir,
                         const std::vector<std::string>& keys, const std::vector<RunReport>& runs);

}  // namespace mllm
