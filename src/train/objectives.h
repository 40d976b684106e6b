// Training objectives: what loss a stage optimises on a batch. The trainer sums `loss_sum` over the
// micro-batches of a step and divides by the summed `weight` (supervised tokens), so gradient
// accumulation gives exactly the loss of the one big batch.
#pragma once

#include <memory>
#include <string>

#include <torch/torch.h>

#include "core/config.h"
#include "data/collator.h"
#include "models/multimodal_model.h"

namespace mllm {

struct ObjectiveOutput {
  torch::Tensor loss_sum;  // scalar, summed over `weight` units
  int64_t weight = 0;      // e.g. supervised tokens
};

class Objective {
 public:
  virtual ~Objective() = default;
  virtual ObjectiveOutput forward(MultimodalModelImpl& model, const Batch& batch) = 0;
  // The units `loss_sum` will be summed over for this batch, known before the forward pass, so a
  // step can normalise each micro-batch's backward by the whole step's total.
  virtual int64_t weight(const Batch& batch) const = 0;
};

// Next-token cross-entropy on the supervised tokens: position t predicts labels[t+1]. Only the
// hidden states of supervised positions go through the LM head (B*T*V logits are never
// materialised). MoE LLMs add router_aux_loss_coef x their load-balancing loss.
ObjectiveOutput lm_loss(MultimodalModelImpl& model, const Batch& batch);

std::unique_ptr<Objective> make_objective(const TrainConfig& train);

}  // namespace mllm
