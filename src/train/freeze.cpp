#include "train/freeze.h"

#include <spdlog/spdlog.h>

#include "core/error.h"

namespace mllm {

bool glob_match(const std::string& p, const std::string& s) {
  // Iterative wildcard matching with backtracking to the last '*'.
  size_t i = 0, j = 0, star = std::string::npos, mark = 0;
  while (j < s.size()) {
    if (i < p.size() && (p[i] == '?' || p[i] == s[j])) {
      ++i, ++j;
    } else if (i < p.size() && p[i] == '*') {
      star = i++, mark = j;
    } else if (star != std::string::npos) {
      i = star + 1, j = ++mark;
    } else {
      return false;
    }
  }
  while (i < p.size() && p[i] == '*') ++i;
  return i == p.size();
}

std::vector<std::string> apply_trainable(torch::nn::Module& module, const Config& config) {
  const auto& globs = config.train.trainable;
  std::vector<bool> used(globs.size(), false);
  std::vector<std::string> trainable;
  for (auto& item : module.named_parameters(true)) {
    bool on = false;
    for (size_t g = 0; g < globs.size(); ++g)
      if (glob_match(globs[g], item.key())) on = true, used[g] = true;
    item.value().set_requires_grad(on);
    if (on) trainable.push_back(item.key());
  }
  // AnyRes's image_newline is the connector's end-of-row token: it trains when the connector does
  // (unless a glob names it), as LLaVA-NeXT trains it with the projector.
  bool connector_trains = false;
  for (const auto& name : trainable)
    if (name.rfind("multi_modal_projector.", 0) == 0) connector_trains = true;
  for (auto& item : module.named_parameters(true)) {
    if (item.key() != "image_newline" || item.value().requires_grad() || !connector_trains)
      continue;
    item.value().set_requires_grad(true);
    trainable.push_back(item.key());
    spdlog::info("image_newline (AnyRes) trains with the connector");
  }
  for (size_t g = 0; g < globs.size(); ++g) {
    if (used[g]) continue;
    // Suggest the top-level parts, the usual thing to glob on.
    throw ConfigError(
        config.where("train.trainable") + "[" + std::to_string(g) + "]: '" + globs[g] +
        "' matches no parameter (top-level parts: vision_tower.*, multi_modal_projector.*, "
        "language_model.*; `mllm` parameter names are HF keys)");
  }
  // With LoRA on, the adapters that apply_lora adds next are trainable: an empty list is fine.
  if (trainable.empty() && config.train.lora.rank == 0)
    throw ConfigError(config.where("train.trainable") +
                      ": no parameter is trainable (list globs such as "
                      "multi_modal_projector.*)");
  return trainable;
}

}  // namespace mllm
