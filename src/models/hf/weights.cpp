#include "models/hf/weights.h"

#include <spdlog/spdlog.h>

#include <set>

#include "core/error.h"

namespace mllm {

NamedTensors named_parameters(const torch::nn::Module& module, bool trainable_only) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(true))
    if (!trainable_only || item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  return out;
}

namespace {

std::string list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > 8) s += ", ... (" + std::to_string(v.size()) + " in all)";
  return s + "]";
}

bool ignored_buffer(const std::string& key) {
  auto ends_with = [&](const std::string& suffix) {
    return key.size() >= suffix.size() &&
           key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".position_ids") || ends_with("rotary_emb.inv_freq");
}

}  // namespace

LoadReport load_parameters(torch::nn::Module& module, const SafetensorsCheckpoint& file,
                           const std::string& prefix, bool only_trainable,
                           const std::string& what) {
  // Reference for the wording: transformers' modeling_utils._load_pretrained_model warnings.
  std::vector<std::string> missing, mismatched;
  std::set<std::string> taken;
  LoadReport report;
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(true)) {
    auto& p = item.value();
    if (only_trainable && !p.requires_grad()) continue;
    const std::string key = prefix + item.key();
    if (!file.contains(key)) {
      missing.push_back(key);
      continue;
    }
    taken.insert(key);
    auto t = file.get(key);
    if (t.sizes() != p.sizes()) {
      std::ostringstream ss;
      ss << key << ": shape " << t.sizes() << " in the checkpoint, " << p.sizes()
         << " in the model";
      mismatched.push_back(ss.str());
      continue;
    }
    p.copy_(t.to(p.dtype()));
    ++report.loaded;
  }
  const std::string at = file.path().string();
  if (!mismatched.empty())
    throw Error(at + ": size mismatch for " + list(mismatched) +
                " (is the architecture in config.json / model.* the checkpoint's?)");
  if (!missing.empty())
    throw Error(at + ": some weights of " + what +
                " were not initialized from the model checkpoint: " + list(missing) +
                (prefix.empty() ? "" : " (looked under the prefix '" + prefix + "')"));
  if (!only_trainable) {
    for (const auto& name : file.names())
      if (name.compare(0, prefix.size(), prefix) == 0 && !taken.count(name) &&
          !ignored_buffer(name))
        report.unexpected.push_back(name);
    if (!report.unexpected.empty())
      spdlog::warn(
          "some weights of the model checkpoint at {} were not used when initializing {}: {}", at,
          what, list(report.unexpected));
  }
  return report;
}

}  // namespace mllm
