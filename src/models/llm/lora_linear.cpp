#include "models/llm/lora_linear.h"

#include <cmath>

#include "core/error.h"

namespace mllm {

namespace F = torch::nn::functional;

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, bool has_bias) {
  // torch.nn.Linear's reset_parameters, in the same order so a seeded model draws the same values.
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (has_bias) {
    bias = register_parameter("bias", torch::empty({out_features}));
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  auto y = F::linear(x, weight, bias);
  if (!has_adapter()) return y;
  const auto a =
      dropout > 0 && is_training() ? F::dropout(x, F::DropoutFuncOptions().p(dropout)) : x;
  return y + lora_B(lora_A(a)) * scaling;
}

void LoraLinearImpl::add_adapter(int64_t rank, double alpha, double dropout_p) {
  if (has_adapter()) throw Error("[LoraLinear::add_adapter] the layer already has an adapter");
  if (rank < 1) throw Error("[LoraLinear::add_adapter] rank must be >= 1");
  const auto options = weight.options();
  auto lin = [&](int64_t in, int64_t out) {
    torch::nn::Linear l(torch::nn::LinearOptions(in, out).bias(false));  // Kaiming-uniform, a=√5
    l->to(options.device(), options.dtype().toScalarType());
    return l;
  };
  lora_A = register_module("lora_A", lin(weight.size(1), rank));
  lora_B = register_module("lora_B", lin(rank, weight.size(0)));
  torch::NoGradGuard no_grad;
  lora_B->weight.zero_();
  scaling = alpha / static_cast<double>(rank);
  dropout = dropout_p;
}

void LoraLinearImpl::merge_adapter() {
  if (!has_adapter()) return;
  {
    torch::NoGradGuard no_grad;
    // delta (O,I) = B (O,r) @ A (r,I), in fp32 whatever the weights' dtype.
    const auto delta =
        torch::matmul(lora_B->weight.to(torch::kFloat), lora_A->weight.to(torch::kFloat)) * scaling;
    weight.copy_((weight.to(torch::kFloat) + delta).to(weight.scalar_type()));
  }
  unregister_module("lora_A");
  unregister_module("lora_B");
  lora_A = nullptr;
  lora_B = nullptr;
  scaling = dropout = 0.0;
}

}  // namespace mllm
