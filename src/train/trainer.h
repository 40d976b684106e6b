// The one training loop every stage runs, as a recipe class in the manner of torchtune's: a stage
// is a recipe (YAML) naming which parameters train (train.trainable), the registered Stage
// (train.stage: objective, data kind, reference model; train/stage.h), the data and template.
//
//   Trainer t(config, options);
//   t.setup();                          // job, resume decision, model (+ reference), LoRA,
//                                       // optimizer, data, checkpoint restored, run directory
//   while (!t.done()) t.step(t.next_micro_batches());   // with logging, evaluation, checkpoints
//   t.finish();                         // summary.json, final/
//
// `run()` is that loop with preemption (SIGTERM/SIGINT), --stop-after and periodic evaluation and
// checkpoints; `train()` is `Trainer(config, options).run()`. Benchmarks and tests drive the same
// `step()`. Data parallel runs are the same code over a Collectives object (train/distributed.h)
// that, for one process, does nothing.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"

namespace mllm {

struct Batch;
class MultimodalModelImpl;

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

// One optimizer step's figures, over the step's global batch (all ranks).
struct StepResult {
  int64_t step = 0;  // the number of completed steps after this one
  double loss = 0, grad_norm = 0, lr = 0;
  int64_t weight = 0;  // what the loss is a mean over (supervised tokens, or pairs)
  int64_t tokens = 0;  // input positions that are not padding
  // Input positions the batches held (rows x length), and would have held unpacked: the padding
  // fraction is 1 - tokens / positions (data.packing lowers it).
  int64_t positions = 0, unpacked_positions = 0;
  std::map<std::string, double> metrics;  // the objective's further figures, means over weight
  std::vector<int64_t> source_items;      // a mixture's: the items each source gave this step
  bool skipped = false;                   // not finite: no update (train.max_bad_steps)
  // Wall time of the phases on this process (for benchmarks): forward, backward with the
  // gradient reduction, and the optimizer (zeroing, clipping, the update).
  double forward_s = 0, backward_s = 0, optimizer_s = 0;
};

class Trainer {
 public:
  Trainer(Config config, TrainOptions options = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Everything before the first step. Until the inputs are known to be sound and a checkpoint (if
  // any) is restored, nothing in the run directory changes.
  void setup();
  bool done() const;  // every step of the run is complete
  // The next step's grad_accum micro-batches of this rank, on the device.
  std::vector<Batch> next_micro_batches();
  // Forward, backward (gradients summed across ranks), clipping, the update and the schedule;
  // a step whose loss or gradient norm is not finite makes no update and is counted.
  StepResult step(const std::vector<Batch>& micro_batches);
  // The held-out loss (and the recipe's eval tasks), logged and written to metrics.jsonl.
  void evaluate(const char* when);
  // A checkpoint of the current step (written by rank 0).
  void save();
  // summary.json and final/ when the run is complete; the summary either way.
  TrainSummary finish();
  // setup(), the loop (preemption, --stop-after, logging, evaluation, checkpoints), finish().
  TrainSummary run();

  MultimodalModelImpl& model();
  const Config& config() const;
  int64_t total_steps() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A finished run also leaves <output_dir>/summary.json (before final/): steps, trainable_params,
// total_params, image_tokens, final_loss, final_eval_loss, tokens_per_s (this process),
// wall_seconds (accumulated across resumes, up to the last checkpoint of each interrupted part).
TrainSummary train(Config config, const TrainOptions& options = {});

}  // namespace mllm
