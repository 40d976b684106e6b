// Moving weights between modules and safetensors files by name. Module parameter names are already
// HF keys (the module tree mirrors transformers' layout), so a prefix is all that differs between a
// whole llava checkpoint (`language_model.model.layers...`) and a bare LlamaForCausalLM one
// (`model.layers...`).
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/safetensors.h"

namespace mllm {

// Parameters in registration order; only those with requires_grad when `trainable_only`.
NamedTensors named_parameters(const torch::nn::Module& module, bool trainable_only = false);

struct LoadReport {
  int64_t loaded = 0;
  std::vector<std::string> unexpected;  // keys under the prefix that no parameter takes
};

// Copies `prefix + name` from the checkpoint into each parameter of `module` (dtype converted).
// Every parameter must be present with the same shape: a missing key or a shape mismatch throws an
// Error naming the file and the keys, worded as transformers reports them. Keys under `prefix`
// that no parameter takes are returned (and logged, as transformers does) — except buffers
// transformers itself ignores (`*.position_ids`, `*.rotary_emb.inv_freq`). `what` names the
// module in messages (e.g. "LlamaForCausalLM"). `only_trainable` restricts loading to trainable
// parameters (what a training checkpoint holds) and skips the unexpected-key report.
LoadReport load_parameters(torch::nn::Module& module, const SafetensorsCheckpoint& file,
                           const std::string& prefix, bool only_trainable = false,
                           const std::string& what = "the model");

}  // namespace mllm
