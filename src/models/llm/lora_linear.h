// The LLM's linear layer: torch.nn.Linear's parameters (`weight` (O,I), `bias` (O) when present),
// initialisation and forward, so HF keys and parity are unchanged, plus an optional low-rank
// adapter (LoRA, Hu et al. 2021, https://arxiv.org/abs/2106.09685) in the layout PEFT saves:
// submodules `lora_A` (I->r) and `lora_B` (r->O), both without bias. It is not the policy of which
// layers get adapters or what trains (train/lora.h), only the layer.
//
// With an adapter: y = x W^T + b + (alpha / r) * B(A(dropout(x))), A Kaiming-uniform (a = sqrt(5))
// and B zero as PEFT's LoraLayer.reset_lora_parameters, so a fresh adapter changes nothing.
// Followed: peft/tuners/lora/layer.py (Linear.forward, get_delta_weight, merge), v0.13.
#pragma once

#include <torch/torch.h>

namespace mllm {

class LoraLinearImpl : public torch::nn::Module {
 public:
  LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias);

  // x (...,I) -> (...,O).
  torch::Tensor forward(const torch::Tensor& x);

  // Adds an adapter of rank r >= 1 on the device and dtype of `weight`. Throws if one is there.
  void add_adapter(int64_t rank, double alpha, double dropout);
  bool has_adapter() const { return !lora_A.is_empty(); }
  // W += (alpha / r) * B A, then removes the adapter (its parameters leave named_parameters()).
  // A no-op without an adapter.
  void merge_adapter();

  torch::Tensor weight, bias;  // bias undefined when the layer has none
  torch::nn::Linear lora_A{nullptr}, lora_B{nullptr};
  double scaling = 0.0;  // alpha / r
  double dropout = 0.0;  // on the adapter's input, in training mode only
};
TORCH_MODULE(LoraLinear);

}  // namespace mllm
