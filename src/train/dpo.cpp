#include "train/dpo.h"

#include "core/error.h"

namespace mllm {

torch::Tensor response_logps(const torch::Tensor& logits, const torch::Tensor& labels,
                             bool average) {
  auto l = logits.slice(1, 0, -1);
  if (l.scalar_type() != torch::kDouble) l = l.to(torch::kFloat);
  auto targets = labels.slice(1, 1);
  const auto keep = targets != -100;
  targets = targets.masked_fill(keep.logical_not(), 0);
  const auto per_token = l.log_softmax(-1).gather(2, targets.unsqueeze(2)).squeeze(2);
  const auto total = (per_token * keep).sum(-1);
  return average ? total / keep.sum(-1).clamp_min(1) : total;
}

DpoOutput dpo_loss(const torch::Tensor& pc, const torch::Tensor& pr, const torch::Tensor& rc,
                   const torch::Tensor& rr, const DpoOptions& o) {
  namespace F = torch::nn::functional;
  const auto h = (pc - pr) - (rc - rr).detach();
  torch::Tensor losses;
  if (o.loss_type == "sigmoid")
    losses = -F::logsigmoid(o.beta * h) * (1 - o.label_smoothing) -
             F::logsigmoid(-o.beta * h) * o.label_smoothing;
  else if (o.loss_type == "hinge")
    losses = torch::relu(1 - o.beta * h);
  else if (o.loss_type == "ipo")
    losses = (h - 1 / (2 * o.beta)).pow(2);
  else
    throw ConfigError("train.dpo.loss_type: unknown '" + o.loss_type + "' (sigmoid, hinge, ipo)");
  DpoOutput out;
  out.loss = losses.mean();
  torch::NoGradGuard no_grad;
  const auto chosen = o.beta * (pc - rc), rejected = o.beta * (pr - rr);
  auto mean = [](const torch::Tensor& t) { return t.to(torch::kDouble).mean().item<double>(); };
  out.metrics = {{"rewards/chosen", mean(chosen)},
                 {"rewards/rejected", mean(rejected)},
                 {"rewards/accuracies", mean((chosen > rejected).to(torch::kDouble))},
                 {"rewards/margins", mean(chosen - rejected)},
                 {"logps/chosen", mean(pc)},
                 {"logps/rejected", mean(pr)}};
  return out;
}

}  // namespace mllm
