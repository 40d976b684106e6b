// Training objectives: what loss a stage optimises on a batch. The trainer sums `loss_sum` over the
// micro-batches of a step and divides by the summed `weight` (supervised tokens), so gradient
// accumulation gives exactly the loss of the one big batch.
#pragma once

#include <map>
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
  // Further figures to log, each summed over `weight` units like the loss (the trainer divides).
  std::map<std::string, double> metric_sums;
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
// hidden states of supervised positions go through the LM head, in chunks of bounded size
// (train.lm_head_chunk_mb): B*T*V logits are never materialised; and the LLM's last layer runs at
// those positions alone (predicting_positions). MoE LLMs add
// router_aux_loss_coef x their load-balancing loss.
ObjectiveOutput lm_loss(MultimodalModelImpl& model, const Batch& batch);

// Log-probability of each row's supervised tokens under the model (the response of a preference
// row), (B) in fp32: summed, or averaged per token when `average`. Like lm_loss, only supervised
// positions reach the LM head. Equal to response_logps(model.logits(hidden), labels) (train/dpo.h).
torch::Tensor sequence_logps(MultimodalModelImpl& model, const Batch& batch, bool average);
// The same from the model's hidden states (B,T,C) of the batch, already computed.
torch::Tensor response_logps_from_hidden(MultimodalModelImpl& model, const torch::Tensor& hidden,
                                         const torch::Tensor& labels, bool average);

// The positions (B,T) whose hidden states lm_loss and response_logps read: t where labels[t+1]
// is supervised. Passed to the model's forward as `wanted`, so the LLM's last layer runs there.
torch::Tensor predicting_positions(const torch::Tensor& labels);

// The objective of pretrain and instruct: lm_loss, weighted by supervised tokens.
std::unique_ptr<Objective> make_lm_objective();

}  // namespace mllm
