#include "train/lora.h"

#include "core/error.h"
#include "models/llm/lora_linear.h"
#include "train/freeze.h"

namespace mllm {

namespace {

bool is_lm_head(const std::string& name) {
  const std::string tail = "lm_head";
  return name.size() >= tail.size() &&
         name.compare(name.size() - tail.size(), tail.size(), tail) == 0 &&
         (name.size() == tail.size() || name[name.size() - tail.size() - 1] == '.');
}

}  // namespace

std::vector<std::string> apply_lora(torch::nn::Module& model, const Config& config) {
  const auto& lora = config.train.lora;
  if (lora.rank <= 0) return {};
  const auto& globs = lora.targets;
  std::vector<bool> used(globs.size(), false);
  std::vector<std::string> adapted;
  for (const auto& item : model.named_modules()) {
    auto* layer = item.value()->as<LoraLinearImpl>();
    if (!layer) continue;
    const std::string& name = item.key();
    // The output projection only when asked for by name (PEFT's all-linear and LLaVA leave it).
    const bool head = is_lm_head(name);
    bool on = false;
    for (size_t g = 0; g < globs.size(); ++g) {
      if (head && globs[g].find("lm_head") == std::string::npos) continue;
      if (glob_match(globs[g], name)) on = true, used[g] = true;
    }
    if (!on) continue;
    layer->add_adapter(lora.rank, lora.alpha, lora.dropout);
    layer->weight.set_requires_grad(false);
    if (layer->bias.defined()) layer->bias.set_requires_grad(false);
    adapted.push_back(name);
  }
  for (size_t g = 0; g < globs.size(); ++g) {
    if (used[g]) continue;
    throw ConfigError(config.where("train.lora.targets") + "[" + std::to_string(g) + "]: '" +
                      globs[g] +
                      "' matches no linear layer of the LLM (targets are module names such as "
                      "language_model.model.layers.0.self_attn.q_proj, without .weight; "
                      "lm_head only by a glob that spells it)");
  }
  return adapted;
}

int64_t merge_lora(torch::nn::Module& model) {
  int64_t merged = 0;
  for (const auto& item : model.modules()) {
    auto* layer = item->as<LoraLinearImpl>();
    if (!layer || !layer->has_adapter()) continue;
    layer->merge_adapter();
    ++merged;
  }
  return merged;
}

}  // namespace mllm
