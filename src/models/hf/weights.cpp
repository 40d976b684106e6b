#include "models/hf/weights.h"

#include "core/error.h"

namespace mllm {

NamedTensors named_parameters(const torch::nn::Module& module, bool trainable_only) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(true))
    if (!trainable_only || item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  return out;
}

int64_t load_parameters(torch::nn::Module& module, const SafetensorsFile& file,
                        const std::string& prefix, bool only_trainable) {
  std::vector<std::string> missing, mismatched;
  int64_t loaded = 0;
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(true)) {
    auto& p = item.value();
    if (only_trainable && !p.requires_grad()) continue;
    const std::string key = prefix + item.key();
    if (!file.contains(key)) {
      missing.push_back(key);
      continue;
    }
    auto t = file.get(key);
    if (t.sizes() != p.sizes()) {
      std::ostringstream ss;
      ss << key << " has shape " << t.sizes() << " in the file but " << p.sizes()
         << " in the model";
      mismatched.push_back(ss.str());
      continue;
    }
    p.copy_(t.to(p.dtype()));
    ++loaded;
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 5) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  if (!mismatched.empty())
    throw Error(file.path().string() + ": shape mismatch: " + list(mismatched));
  if (!missing.empty()) throw Error(file.path().string() + ": missing tensors: " + list(missing));
  return loaded;
}

}  // namespace mllm
