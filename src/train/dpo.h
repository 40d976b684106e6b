// Direct preference optimisation (Rafailov et al. 2023) as TRL defines its losses. With
// h = (log π(c) − log π(r)) − (log π_ref(c) − log π_ref(r)):
//   sigmoid: −(1−ε)·logσ(βh) − ε·logσ(−βh)   (ε = label_smoothing; the DPO paper's loss at ε = 0)
//   hinge:   max(0, 1 − βh)                   (SLiC)
//   ipo:     (h − 1/(2β))²                    (with log-probs averaged per response token)
// averaged over the pairs. Metrics as TRL logs them: rewards/chosen = β(log π(c) − log π_ref(c)),
// rewards/rejected likewise, rewards/accuracies (chosen > rejected), rewards/margins,
// logps/chosen, logps/rejected (batch means).
// Reference: trl/trainer/dpo_trainer.py (DPOTrainer.dpo_loss, concatenated_forward); the test
// vectors come from tests/reference/dpo_reference.py.
#pragma once

#include <map>
#include <string>

#include <torch/torch.h>

namespace mllm {

struct DpoOptions {
  std::string loss_type = "sigmoid";  // sigmoid | hinge | ipo
  double beta = 0.1;
  double label_smoothing = 0.0;  // sigmoid only
};

// Log-probability of each row's response: logits (B,T,V), labels (B,T) with -100 outside the
// response; position t predicts labels[t+1]. Summed over the response tokens, or averaged per
// token when `average` (what ipo uses). Computed in fp32 or wider. Returns (B).
torch::Tensor response_logps(const torch::Tensor& logits, const torch::Tensor& labels,
                             bool average);

struct DpoOutput {
  torch::Tensor loss;                     // scalar, differentiable in the policy log-probs
  std::map<std::string, double> metrics;  // rewards/*, logps/*
};

// All inputs (P) per pair; the reference ones carry no gradient.
DpoOutput dpo_loss(const torch::Tensor& policy_chosen, const torch::Tensor& policy_rejected,
                   const torch::Tensor& ref_chosen, const torch::Tensor& ref_rejected,
                   const DpoOptions& options);

}  // namespace mllm
