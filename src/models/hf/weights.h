// Moving weights between modules and safetensors files by name. Module parameter names are already
// HF keys (the module tree mirrors transformers' layout), so a prefix is all that differs between a
// whole llava checkpoint (`language_model.model.layers...`) and a bare LlamaForCausalLM one
// (`model.layers...`).
#pragma once

#include <string>

#include <torch/torch.h>

#include "core/safetensors.h"

namespace mllm {

// Parameters in registration order; only those with requires_grad when `trainable_only`.
NamedTensors named_parameters(const torch::nn::Module& module, bool trainable_only = false);

// Copies `prefix + name` from the file into each parameter of `module`. Every parameter must be
// present with the same shape (dtype is converted). Throws Error naming the file and the first
// missing or mismatched keys. `only_trainable` restricts the check to trainable parameters (what a
// checkpoint holds). Returns the number of tensors loaded.
int64_t load_parameters(torch::nn::Module& module, const SafetensorsFile& file,
                        const std::string& prefix, bool only_trainable = false);

}  // namespace mllm
