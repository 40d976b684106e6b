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

// Linear layers that read the same input (q/k/v; gate/up), run as one GEMM over their weights
// stacked: x (...,I) -> each layer's output (...,O_i), the values of calling them one by one.
// Fewer, larger kernels; the parameters stay each layer's own under its HF name, so checkpoints,
// exports, freezing and LoRA targets are unchanged. The stacked weight is a concatenation made
// for the call (its gradient splits back into the layers'), so it is used only while a gradient
// is being recorded for one of the weights, where the backward's saving pays for the copy; in
// generation, evaluation or a frozen LLM each layer runs alone and no weight is copied. A
// layer's LoRA adapter adds its update to its own output.
// With `joint`, it is set to the whole output (...,sum O_i) when the layers ran as one GEMM and
// none has an adapter (the outputs are then its slices, side by side), else left undefined.
std::vector<torch::Tensor> fused_linear(const torch::Tensor& x,
                                        const std::vector<LoraLinearImpl*>& layers,
                                        torch::Tensor* joint = nullptr);

// While one is alive on this thread, fused_linear fuses trainable weights without grad mode too:
// gradient checkpointing's first forward, which must compute exactly what its recomputation (with
// gradients) will.
class FuseWithoutGradScope {
 public:
  FuseWithoutGradScope();
  ~FuseWithoutGradScope();
  FuseWithoutGradScope(const FuseWithoutGradScope&) = delete;
  FuseWithoutGradScope& operator=(const FuseWithoutGradScope&) = delete;

 private:
  bool prev_;
};

// The same for plain weights and biases (each bias defined or not; a missing one counts as zero
// when others are present): the vision tower's q/k/v.
std::vector<torch::Tensor> fused_linear(const torch::Tensor& x,
                                        const std::vector<torch::Tensor>& weights,
                                        const std::vector<torch::Tensor>& biases,
                                        torch::Tensor* joint = nullptr);

}  // namespace mllm
