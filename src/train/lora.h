// LoRA as a training policy (train.lora): which of the LLM's linear layers carry low-rank
// adapters, what trains then, and folding the adapters back into the weights for export. The
// layer itself is models/llm/lora_linear.h. Followed: PEFT's LoraModel (peft/tuners/lora/model.py,
// v0.13: target matching, mark_only_lora_as_trainable, merge_and_unload) and LLaVA's
// --lora_enable (find_all_linear_names: every linear layer of the LLM but lm_head).
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config.h"

namespace mllm {

// Adds a rank train.lora.rank adapter (alpha, dropout from train.lora) to every linear layer of
// the LLM whose module name (an HF key without `.weight`, e.g.
// `language_model.model.layers.0.self_attn.q_proj`) matches one of train.lora.targets (globs as
// train.trainable's; `*` crosses dots). lm_head is adapted only by a glob that spells `lm_head`.
// The adapters' parameters (`<layer>.lora_A.weight`, `<layer>.lora_B.weight`) are trainable; the
// adapted layers' own weight and bias are frozen, whatever train.trainable said; everything else
// keeps the requires_grad it had. So call it after apply_trainable (which would freeze the
// adapters) and before building the optimizer. Rank 0: does nothing. Returns the adapted layers'
// names. Throws ConfigError naming train.lora.targets[i] when a glob matches no linear layer.
std::vector<std::string> apply_lora(torch::nn::Module& model, const Config& config);

// W += (alpha / r) * B A in every adapted layer, then removes the adapters: named_parameters()
// lists no lora_* key afterwards and the model is a plain one (what final/ and export hold).
// Returns how many layers were merged.
int64_t merge_lora(torch::nn::Module& model);

}  // namespace mllm
