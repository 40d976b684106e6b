// A memory plan before launch (`mllm inspect --config X --ranks N --device-memory 40GiB`): per
// rank and per sharding level (train/sharding.h), the bytes of weights, gradients, AdamW state and
// the weights a ZeRO-3 rank gathers for a while, plus an activation estimate at the recipe's batch
// and length with and without gradient checkpointing, and whether the total fits the device.
//
// The parameter counts come from the model itself, built at full width but with one and with two
// decoder layers (and one vision layer): a 7B model's plan needs 3 GB, not 28. What grows with the
// layer count is the difference of the two builds; the architecture is the pretrained folders'
// config.json where they exist on this machine, else the recipe's model section.
//
// Accounting, as this framework keeps training state (fp32 weights; bf16 is autocast):
//   weights      4 B per element held whole (all at levels none..gradients; the frozen ones and
//                the rank's slice of the trainable ones at level parameters)
//   gradients    4 B per trainable element (level none: .grad and the all-reduce buckets, 8 B;
//                optimizer: whole during accumulation; gradients/parameters: the slice)
//   optimizer    8 B per trainable element (AdamW's two moments), / ranks from level optimizer on
//   gathered     level parameters: the root's weights and gradients for the step, two decoder
//                layers whole (one computing, one prefetched) and a layer's gradient bucket
//   activations  an estimate of what autograd keeps for one micro-batch of the LLM (the images'
//                tokens are inside data.max_length): per layer the fp32 residual inputs of the two
//                norms and the bf16 (fp32 without autocast) normed inputs, q/k/v, attention
//                output and the MLP's gate/up/activation/product; attention fused (LibTorch's
//                scaled_dot_product_attention on CUDA 2.x keeps no score matrix); the LM head
//                within train.lm_head_chunk_mb. Checkpointing keeps each layer's input and one
//                layer recomputed. A frozen vision tower runs without a graph.
// Not counted: the CUDA context and allocator fragmentation (keep a few GiB spare), the data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"

namespace mllm {

struct ParameterCounts {
  int64_t total = 0, trainable = 0;
  int64_t llm_layers = 0;
  int64_t layer_trainable = 0;  // in one decoder layer: the unit level parameters gathers
  int64_t root_trainable = 0;   // trainable elements outside the decoder layers
};

// Counts the model `config` describes (pretrained config.json files read where they exist; the
// weights are never loaded), with train.trainable and LoRA applied as the trainer applies them.
// `vocab_size`: the tokenizer's ids, when known (the LLM's vocabulary grows to hold them); 0 = the
// model's own.
ParameterCounts count_parameters(Config config, int64_t vocab_size);

struct LevelMemory {
  std::string level;  // none | optimizer | gradients | parameters
  double weights = 0, gradients = 0, optimizer = 0, gathered = 0;  // bytes per rank
  double state() const { return weights + gradients + optimizer + gathered; }
};

struct MemoryPlan {
  int64_t ranks = 1;
  ParameterCounts counts;
  int64_t batch = 0, length = 0;  // one micro-batch
  double activations = 0, activations_checkpointed = 0;
  bool checkpointing = false;  // the recipe's train.gradient_checkpointing
  std::vector<LevelMemory> levels;
  // State plus the activations the recipe's checkpointing setting implies.
  double total(const LevelMemory& level) const {
    return level.state() + (checkpointing ? activations_checkpointed : activations);
  }
};

MemoryPlan plan_memory(const Config& config, const ParameterCounts& counts, int64_t ranks);

// "40GiB", "40 GB", "80G", "40960MiB" -> bytes (GB and G are read as GiB, as GPU sizes are
// quoted). Throws ConfigError naming the option.
double parse_memory_size(const std::string& text, const std::string& option);

// The plan as a table, one row per level, with "fits" against device_memory (0: not judged).
std::string format_plan(const MemoryPlan& plan, double device_memory);

}  // namespace mllm
