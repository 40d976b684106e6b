// Which parameters a stage trains, from the recipe's `train.trainable` globs over parameter names
// (HF keys). `*` matches any run of characters, dots included; `?` one character. Everything that
// no glob matches is frozen (requires_grad = false).
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config.h"

namespace mllm {

bool glob_match(const std::string& pattern, const std::string& text);

// Applies the globs; returns the names of the trainable parameters. Throws ConfigError naming
// train.trainable[i] when a glob matches no parameter, or when nothing at all is trainable and
// LoRA is off (with train.lora.rank > 0 an empty train.trainable is fine: the adapters that
// apply_lora (train/lora.h) adds afterwards train). AnyRes's image_newline trains whenever a
// multi_modal_projector parameter does.
std::vector<std::string> apply_trainable(torch::nn::Module& module, const Config& config);

}  // namespace mllm
