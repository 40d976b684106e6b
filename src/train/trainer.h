// The one training loop every stage runs. A stage is a recipe: which parameters train
// (train.trainable), which objective (train.stage), which data and template. The loop: sample a
// step's micro-batches, forward through the objective, backward with the step's normalisation,
// clip, AdamW, schedule; log metrics, evaluate, checkpoint atomically, and resume exactly.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"

namespace mllm {

struct TrainOptions {
  // "none": a fresh run (refused if the output directory already holds checkpoints or final/);
  // "auto": continue from the newest complete checkpoint if there is one; else a checkpoint path.
  std::string resume = "none";
  // Stop after this many steps of this process (0 = run to the end) — a stand-in for preemption,
  // used by tests and by `mllm train --stop-after`.
  int64_t stop_after = 0;
  // Resume even if the training data is not the data the checkpoint was written over (its path,
  // record count or size differ); the change is logged.
  bool allow_data_change = false;
};

struct TrainSummary {
  int64_t steps = 0;                               // completed optimizer updates, in all
  std::vector<std::pair<int64_t, double>> losses;  // (step, train loss) for the steps run here
  std::optional<double> first_eval_loss, last_eval_loss;
  std::filesystem::path output_dir;
  std::filesystem::path final_dir;  // empty if the run stopped early
  double train_seconds = 0;         // wall time of this process's training loop
  double data_wait_fraction = 0;    // of which the trainer waited for batches
  int64_t skipped_steps = 0;        // steps skipped for a non-finite loss or gradient
  // "SIGTERM" / "SIGINT" when a signal stopped the run (after finishing and checkpointing the
  // step in flight; `mllm train` then exits 0 so a scheduler requeues it).
  std::string stopped_by;
};

// A finished run also leaves <output_dir>/summary.json (before final/): steps, trainable_params,
// total_params, image_tokens, final_loss, final_eval_loss, tokens_per_s (this process),
// wall_seconds (accumulated across resumes, up to the last checkpoint of each interrupted part).
TrainSummary train(Config config, const TrainOptions& options = {});

}  // namespace mllm
