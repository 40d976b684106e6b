#include "train/optim.h"

#include <cmath>

namespace mllm {

namespace {
// Matrices decay; token embeddings (matrices too) only with train.weight_decay_embeddings.
bool decays(const std::string& name, const torch::Tensor& p, const TrainConfig& t) {
  const bool embedding = name.find("embed_tokens") != std::string::npos;
  return p.dim() >= 2 && (t.weight_decay_embeddings || !embedding);
}
}  // namespace

double weight_decay_of(const std::string& name, const torch::Tensor& p, const TrainConfig& t) {
  return decays(name, p, t) ? t.weight_decay : 0.0;
}

std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& module,
                                                    const TrainConfig& t) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& item : module.named_parameters(true)) {
    const auto& p = item.value();
    if (p.requires_grad()) (decays(item.key(), p, t) ? decay : no_decay).push_back(p);
  }
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(t.lr)
                                                            .betas({t.betas[0], t.betas[1]})
                                                            .eps(t.adam_eps)
                                                            .weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(t.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(t.lr));
}

int64_t warmup_steps(const TrainConfig& t, int64_t total) {
  return static_cast<int64_t>(std::ceil(t.warmup_ratio * static_cast<double>(total)));
}

double lr_at(const TrainConfig& t, int64_t step, int64_t total) {
  const int64_t warmup = warmup_steps(t, total);
  if (step < warmup)
    return t.lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  if (t.schedule == "constant") return t.lr;
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup) /
                        static_cast<double>(std::max<int64_t>(1, total - warmup)));
  const double decay =
      t.schedule == "cosine" ? 0.5 * (1.0 + std::cos(M_PI * progress)) : 1.0 - progress;
  return t.lr * (t.min_lr_ratio + (1.0 - t.min_lr_ratio) * decay);
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& g : optimizer.param_groups()) g.options().set_lr(lr);
}

}  // namespace mllm
