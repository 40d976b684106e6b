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

namespace {
thread_local bool fuse_without_grad = false;
}  // namespace

FuseWithoutGradScope::FuseWithoutGradScope() : prev_(fuse_without_grad) {
  fuse_without_grad = true;
}
FuseWithoutGradScope::~FuseWithoutGradScope() {
  fuse_without_grad = prev_;
}

std::vector<torch::Tensor> fused_linear(const torch::Tensor& x,
                                        const std::vector<torch::Tensor>& weights,
                                        const std::vector<torch::Tensor>& biases,
                                        torch::Tensor* joint) {
  bool grad = false, any_bias = false;
  for (const auto& w : weights) grad = grad || w.requires_grad();
  for (const auto& b : biases) any_bias = any_bias || b.defined();
  std::vector<torch::Tensor> out;
  if (!grad || !(torch::GradMode::is_enabled() || fuse_without_grad) || weights.size() < 2) {
    for (size_t i = 0; i < weights.size(); ++i) out.push_back(F::linear(x, weights[i], biases[i]));
    return out;
  }
  torch::Tensor bias;
  if (any_bias) {
    std::vector<torch::Tensor> parts;
    for (size_t i = 0; i < weights.size(); ++i)
      parts.push_back(biases[i].defined()
                          ? biases[i]
                          : torch::zeros({weights[i].size(0)}, weights[i].options()));
    bias = torch::cat(parts);
  }
  const auto y = F::linear(x, torch::cat(weights), bias);
  if (joint) *joint = y;
  int64_t at = 0;
  for (const auto& w : weights) {
    out.push_back(y.narrow(-1, at, w.size(0)));
    at += w.size(0);
  }
  return out;
}

std::vector<torch::Tensor> fused_linear(const torch::Tensor& x,
                                        const std::vector<LoraLinearImpl*>& layers,
                                        torch::Tensor* joint) {
  std::vector<torch::Tensor> weights, biases;
  for (const auto* l : layers) weights.push_back(l->weight), biases.push_back(l->bias);
  auto out = fused_linear(x, weights, biases, joint);
  for (size_t i = 0; i < layers.size(); ++i) {
    auto* l = layers[i];
    if (!l->has_adapter()) continue;
    if (joint) *joint = torch::Tensor();  // the outputs are no longer slices of one tensor
    const auto a = l->dropout > 0 && l->is_training()
                       ? F::dropout(x, F::DropoutFuncOptions().p(l->dropout))
                       : x;
    out[i] = out[i] + l->lora_B(l->lora_A(a)) * l->scaling;
  }
  return out;
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
