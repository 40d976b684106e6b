// Resumable checkpoints. Each one is a directory written whole to a temporary name, fsync'd, then
// renamed, so a crash at any instant leaves only complete checkpoints:
//   checkpoints/step-000500/model.safetensors   trainable parameters (HF keys)
//   checkpoints/step-000500/optimizer.pt        AdamW moments and step counts (torch::save)
//   checkpoints/step-000500/trainer_state.json  step, epoch, position in the epoch, lr, the
//                                               schedule, metrics
//   checkpoints/step-000500/rng_state.pt        the CPU generator's state, then each CUDA device's
//   checkpoints/step-000500/manifest.json       size and XXH3-64 of each file above, written last
// (a sharded run writes shard-R-of-W.safetensors per rank and sharding.json instead of
// model.safetensors and optimizer.pt: train/sharding.h)
//   checkpoints/latest                          name of the newest complete checkpoint
// The format carries a magic string and a version; `keep_last` prunes the oldest.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace mllm {

struct TrainerState {
  int64_t step = 0;      // completed optimizer updates
  int64_t epoch = 0;     // current epoch
  int64_t position = 0;  // samples of this epoch already consumed
  int64_t total_steps = 0;
  double lr = 0.0;
  nlohmann::json scheduler = nlohmann::json::object();  // schedule, warmup_steps, base lr, ...
  nlohmann::json extra = nlohmann::json::object();      // last metrics, etc.

  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& j, const std::filesystem::path& file);
};

std::string checkpoint_name(int64_t step);

// Writes checkpoints/<step-N>; updates `latest`; removes the oldest beyond keep_last (0 = keep
// all).
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints_dir,
                                      torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                      const TrainerState& state, int64_t keep_last);

// The parts of save_checkpoint, for a checkpoint several ranks write together (sharded training,
// train/sharding.h): rank 0 calls begin_checkpoint (an empty temporary directory, the same name on
// every rank); every rank writes its files there and records their sizes and checksums with
// write_manifest_part; then rank 0 calls commit_checkpoint, which writes trainer_state.json,
// rng_state.pt and manifest.json (every file of the directory) and renames it into place.
std::filesystem::path begin_checkpoint(const std::filesystem::path& checkpoints_dir, int64_t step);
void write_manifest_part(const std::filesystem::path& tmp, int64_t rank,
                         const std::vector<std::string>& files);
std::filesystem::path commit_checkpoint(const std::filesystem::path& checkpoints_dir,
                                        const std::filesystem::path& tmp, const TrainerState& state,
                                        int64_t keep_last);
// A checkpoint written by a sharded run: its weights and optimizer state are in shard files
// described by sharding.json instead of model.safetensors and optimizer.pt.
bool is_sharded_checkpoint(const std::filesystem::path& dir);

// What is wrong with a checkpoint directory: a file missing, a size or checksum that differs from
// its manifest; "" when it is sound (a checkpoint from before manifests only needs its files).
std::string checkpoint_problem(const std::filesystem::path& dir);

// The checkpoint directories under checkpoints_dir, newest (highest step) first.
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& checkpoints_dir);

// The newest sound checkpoint under checkpoints_dir, if any. Newer ones that are damaged are
// passed over (never deleted) and, when `skipped` is given, reported there with the reason.
struct SkippedCheckpoint {
  std::filesystem::path dir;
  std::string why;
};
std::optional<std::filesystem::path> find_latest_checkpoint(
    const std::filesystem::path& checkpoints_dir,
    std::vector<SkippedCheckpoint>* skipped = nullptr);

// The trainer state of a sound checkpoint, with the RNG states restored (the part of loading that
// sharded and unsharded checkpoints share).
TrainerState read_checkpoint_state(const std::filesystem::path& dir);

// Restores the trainable parameters, the optimizer state and the RNG states, and returns the
// trainer state (a sharded checkpoint is a ConfigError: it needs train.sharding). Throws Error
// naming the checkpoint and the file that is missing or malformed.
TrainerState load_checkpoint(const std::filesystem::path& dir, torch::nn::Module& model,
                             torch::optim::Optimizer& optimizer);

// The weights a run starts from (train.init_from): `from` is a folder holding model.safetensors
// (a run's final/, one of its checkpoints) or a run directory (its final/ is used). Every tensor
// in it replaces the parameter of the same name (dtype converted); the model's other parameters
// are left as they are. A tensor that names no parameter, or whose shape differs, is an Error
// naming the file and the key (the recipes' model sections disagree). Returns the file read and
// the number of tensors loaded per top-level part ("multi_modal_projector" -> 4, ...).
std::pair<std::filesystem::path, std::map<std::string, int64_t>> load_init_weights(
    torch::nn::Module& model, const std::filesystem::path& from);

// The global RNG states (CPU, and every CUDA device when there is one), for checkpoints.
std::vector<torch::Tensor> rng_states();
void set_rng_states(const std::vector<torch::Tensor>& states);

}  // namespace mllm
