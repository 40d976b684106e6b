// Sharded data parallel on c10d, the three stages of DeepSpeed's ZeRO (Rajbhandari et al. 2020,
// "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"), chosen by
// train.sharding:
//
//   none        every rank holds all weights, gradients and AdamW state (DDP; train/distributed.h)
//   optimizer   ZeRO-1: AdamW's moments are sharded; each rank updates its slice of the weights,
//               and the updated slices are all-gathered
//   gradients   ZeRO-2: also the gradients: reduce-scattered bucket by bucket during backward, so a
//               rank keeps only its slice's (summed over micro-batches in fp32)
//   parameters  ZeRO-3: also the trainable weights: at rest a rank holds only its slice; each
//               decoder layer's weights are all-gathered just before its forward (the next
//               layer's gather is started meanwhile), released after it, gathered again when
//               backward reaches the layer and released once its gradients are reduced. The
//               other trainable weights (embeddings, LM head, final norm, connector, a trainable
//               vision tower) form the root, gathered at the start of a step and released at its
//               end, as FSDP's root unit: every rank runs the same collectives whatever its batch
//               holds (a rank with a text-only batch skips the vision tower and the connector, and
//               so must not have collectives inside them). Frozen weights (a frozen vision tower,
//               LoRA's base weights, DPO's reference) stay replicated.
//
// Layout. The trainable parameters are laid out, in registration order, in flat fp32 buckets
// (levels optimizer and gradients: about run.distributed.bucket_mb each, in the order backward
// produces gradients; level parameters: one bucket per decoder layer, then the root's). A bucket of
// n elements is padded to a multiple of the world size W; rank r owns the contiguous slice
// [r*n/W, (r+1)*n/W) and holds, for it, the fp32 weights (the master copy: under autocast bf16 the
// weights are fp32 already), the gradient and the two AdamW moments. The update is
// torch::optim::AdamW's, element for element, on the slices.
//
// Checkpoints: each rank writes its slices (shard-R-of-W.safetensors), rank 0 the layout
// (sharding.json: every bucket's parameters, their shapes and offsets). A checkpoint loads on any
// number of ranks and at any sharding level: each rank reads, for the slices it owns under the new
// layout, the pieces of the old shards that hold them.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/llm/layer_shards.h"
#include "train/distributed.h"

namespace mllm {

enum class ShardLevel { none = 0, optimizer = 1, gradients = 2, parameters = 3 };

// "none" | "optimizer" | "gradients" | "parameters" (train.sharding).
ShardLevel parse_shard_level(const std::string& name);
const char* shard_level_name(ShardLevel level);
// "ZeRO-1" ... ("" for none).
const char* zero_stage_name(ShardLevel level);

struct ShardedParam {
  std::string name;  // as in the model's named_parameters (checkpoint keys)
  torch::Tensor param;
  double weight_decay = 0;  // AdamW's decoupled decay for this parameter
  int64_t layer = -1;       // the decoder layer it belongs to (level parameters), -1: the root
};

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

// The bytes of training state one rank holds between steps, counted from its tensors.
struct ShardBytes {
  int64_t weights = 0;    // trainable weights held whole (0 at level parameters)
  int64_t master = 0;     // this rank's fp32 weight slices not aliasing the whole weights
  int64_t gradients = 0;  // gradient storage kept across steps (whole at level optimizer)
  int64_t optimizer = 0;  // AdamW moments
};

class ShardedTraining final : public LayerShards {
 public:
  // Takes over `params` (trainable, in the model's registration order; already equal on every
  // rank): at levels optimizer/gradients they become views of the flat buckets, at level
  // parameters they are released (empty) until gathered.
  ShardedTraining(Collectives& group, ShardLevel level, std::vector<ShardedParam> params,
                  AdamWSettings adam, double bucket_mb);
  ~ShardedTraining() override;
  ShardedTraining(const ShardedTraining&) = delete;
  ShardedTraining& operator=(const ShardedTraining&) = delete;

  ShardLevel level() const { return level_; }
  size_t buckets() const;

  // A step: zero_grad(); for each micro-batch begin_micro_batch(last), forward, backward,
  // end_micro_batch(); clip_grad_norm(); then step(lr), or zero_grad() to skip it.
  void zero_grad();
  void begin_micro_batch(bool last);
  void end_micro_batch();
  // The global L2 norm of the step's gradients (over every rank's slices); when above max_norm
  // they are scaled by max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
  double clip_grad_norm(double max_norm);
  // AdamW on this rank's slices; at levels optimizer/gradients every rank then holds the whole
  // updated weights.
  void step(double lr);

  // Whole weights on every rank until release_all() (evaluation, generation, final/): a collective
  // every rank calls; the layer hooks do nothing meanwhile. Nothing to do below level parameters.
  void gather_all();
  void release_all();

  // Checkpoints. save: this rank's shard in `dir`, and (rank 0) sharding.json; every rank calls
  // it; returns the names of the files it wrote. load: the state of a checkpoint written at any
  // world size or level (an Error names the file and what differs).
  std::vector<std::string> save(const std::filesystem::path& dir) const;
  void load(const std::filesystem::path& dir);

  ShardBytes bytes() const;
  // What AdamW's moments take unsharded (2 x 4 bytes per trainable element).
  int64_t unsharded_optimizer_bytes() const;

  // LayerShards (level parameters).
  void before_layer(int64_t index) override;
  at::Tensor after_layer(int64_t index, at::Tensor output) override;

 private:
  struct Bucket;
  struct Hook;
  Bucket& bucket(size_t i);
  void on_grad(size_t param);
  void launch_ready();
  void finish_reduce(size_t bucket);  // waits for its reduce-scatter, adds it to the slice
  void gather(size_t b, bool wait);   // level parameters: start (and finish) a bucket's gather
  void finish_gather(size_t b);
  void release(size_t b);
  void attach_views(size_t b);

  Collectives& group_;
  ShardLevel level_;
  std::vector<ShardedParam> params_;
  AdamWSettings adam_;
  std::vector<Bucket> buckets_;                // in the order backward completes them
  std::vector<size_t> bucket_of_, offset_of_;  // per parameter
  std::vector<std::vector<int64_t>> shapes_;   // per parameter (released ones are empty)
  std::vector<int64_t> layer_bucket_;          // decoder layer -> bucket, -1 if none
  std::vector<size_t> root_buckets_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  std::vector<bool> arrived_;
  // Gradient reductions started and finished this backward; at most kInFlight apart.
  static constexpr size_t kInFlight = 2;
  size_t next_launch_ = 0, next_finish_ = 0;
  bool collecting_ = false;  // this backward's gradients go to the buckets
  bool last_micro_ = true;
  bool all_gathered_ = false;
  int64_t adam_step_ = 0;
};

}  // namespace mllm
