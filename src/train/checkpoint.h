// Resumable checkpoints. Each one is a directory written whole to a temporary name, fsync'd, then
// renamed, so a crash at any instant leaves only complete checkpoints:
//   checkpoints/step-000500/model.safetensors   trainable parameters (HF keys)
//   checkpoints/step-000500/optimizer.pt        AdamW moments and step counts (torch::save)
//   checkpoints/step-000500/trainer_state.json  step, epoch, position in the epoch, lr, metrics
//   checkpoints/latest                          name of the newest complete checkpoint
// The format carries a magic string and a version; `keep_last` prunes the oldest.
#pragma once

#include <filesystem>
#include <optional>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace mllm {

struct TrainerState {
  int64_t step = 0;      // completed optimizer updates
  int64_t epoch = 0;     // current epoch
  int64_t position = 0;  // samples of this epoch already consumed
  int64_t total_steps = 0;
  double lr = 0.0;
  nlohmann::json extra = nlohmann::json::object();  // last metrics, etc.

  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& j, const std::filesystem::path& file);
};

std::string checkpoint_name(int64_t step);

// Writes checkpoints/<step-N>; updates `latest`; removes the oldest beyond keep_last (0 = keep
// all).
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints_dir,
                                      torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                      const TrainerState& state, int64_t keep_last);

// The newest complete checkpoint under checkpoints_dir (by `latest`, else by scanning), if any.
std::optional<std::filesystem::path> find_latest_checkpoint(
    const std::filesystem::path& checkpoints_dir);

// Restores the trainable parameters, the optimizer state and returns the trainer state. Throws
// Error naming the checkpoint and the file that is missing or malformed.
TrainerState load_checkpoint(const std::filesystem::path& dir, torch::nn::Module& model,
                             torch::optim::Optimizer& optimizer);

}  // namespace mllm
