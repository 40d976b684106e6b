#include "models/vision/clip_vit.h"

#include "core/torch_compat.h"
#include "models/llm/lora_linear.h"

namespace mllm {

namespace F = torch::nn::functional;

ClipVisionEmbeddingsImpl::ClipVisionEmbeddingsImpl(const VisionConfig& c) {
  const int64_t patches = (c.image_size / c.patch_size) * (c.image_size / c.patch_size);
  class_embedding = register_parameter("class_embedding", torch::randn({c.hidden}) * 0.02);
  patch_embedding = register_module(
      "patch_embedding",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(3, c.hidden, c.patch_size).stride(c.patch_size).bias(false)));
  position_embedding =
      register_module("position_embedding", torch::nn::Embedding(patches + 1, c.hidden));
  torch::NoGradGuard no_grad;
  position_embedding->weight.normal_(0, c.position_init_std);
}

torch::Tensor ClipVisionEmbeddingsImpl::forward(const torch::Tensor& pixel_values) {
  const auto B = pixel_values.size(0);
  // (B,C,H/p,W/p) -> (B,P,C)
  auto patches = patch_embedding(pixel_values.to(patch_embedding->weight.dtype()));
  patches = patches.flatten(2).transpose(1, 2);
  auto cls = class_embedding.view({1, 1, -1}).expand({B, 1, class_embedding.size(0)});
  auto x = torch::cat({cls.to(patches.dtype()), patches}, 1);
  return x + position_embedding->weight.unsqueeze(0);
}

ClipAttentionImpl::ClipAttentionImpl(int64_t hidden, int64_t heads_) : heads(heads_) {
  q_proj = register_module("q_proj", torch::nn::Linear(hidden, hidden));
  k_proj = register_module("k_proj", torch::nn::Linear(hidden, hidden));
  v_proj = register_module("v_proj", torch::nn::Linear(hidden, hidden));
  out_proj = register_module("out_proj", torch::nn::Linear(hidden, hidden));
}

torch::Tensor ClipAttentionImpl::forward(const torch::Tensor& x,
                                         const c10::optional<torch::Tensor>& mask, bool causal) {
  const auto B = x.size(0), T = x.size(1), C = x.size(2);
  auto split = [&](const torch::Tensor& t) {
    return t.reshape({B, T, heads, C / heads}).transpose(1, 2);
  };
  const auto qkv = fused_linear(x, {q_proj->weight, k_proj->weight, v_proj->weight},
                                {q_proj->bias, k_proj->bias, v_proj->bias});
  auto y = attention(split(qkv[0]), split(qkv[1]), split(qkv[2]), mask, causal);
  return out_proj(y.transpose(1, 2).reshape({B, T, C}));
}

ClipMlpImpl::ClipMlpImpl(int64_t hidden, int64_t intermediate) {
  fc1 = register_module("fc1", torch::nn::Linear(hidden, intermediate));
  fc2 = register_module("fc2", torch::nn::Linear(intermediate, hidden));
}

torch::Tensor ClipMlpImpl::forward(const torch::Tensor& x) {
  auto h = fc1(x);
  h = h * torch::sigmoid(1.702 * h);  // quick_gelu, CLIP's activation
  return fc2(h);
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const VisionConfig& c) {
  auto ln = [&] {
    return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps));
  };
  self_attn = register_module("self_attn", ClipAttention(c.hidden, c.heads));
  layer_norm1 = register_module("layer_norm1", ln());
  mlp = register_module("mlp", ClipMlp(c.hidden, c.intermediate));
  layer_norm2 = register_module("layer_norm2", ln());
}

torch::Tensor ClipEncoderLayerImpl::forward(const torch::Tensor& x,
                                            const c10::optional<torch::Tensor>& mask, bool causal) {
  auto h = x + self_attn(layer_norm1(x), mask, causal);
  return h + mlp(layer_norm2(h));
}

ClipEncoderImpl::ClipEncoderImpl(const VisionConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) layers->push_back(ClipEncoderLayer(c));
}

ClipVisionTransformerImpl::ClipVisionTransformerImpl(const VisionConfig& c) {
  auto ln = [&] {
    return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps));
  };
  embeddings = register_module("embeddings", ClipVisionEmbeddings(c));
  pre_layrnorm = register_module("pre_layrnorm", ln());
  encoder = register_module("encoder", ClipEncoder(c));
  post_layernorm = register_module("post_layernorm", ln());
}

std::vector<torch::Tensor> ClipVisionTransformerImpl::forward(const torch::Tensor& pixel_values,
                                                              int64_t up_to_layer) {
  std::vector<torch::Tensor> hidden{pre_layrnorm(embeddings(pixel_values))};
  const int64_t n = static_cast<int64_t>(encoder->layers->size());
  const int64_t last = up_to_layer < 0 ? n : std::min(up_to_layer, n);
  for (int64_t i = 0; i < last; ++i)
    hidden.push_back(encoder->layers[i]->as<ClipEncoderLayer>()->forward(hidden.back()));
  return hidden;
}

ClipVisionModelImpl::ClipVisionModelImpl(const VisionConfig& c) : config_(c) {
  vision_model = register_module("vision_model", ClipVisionTransformer(c));
}

int64_t ClipVisionModelImpl::num_feature_tokens() const {
  const int64_t side = config_.image_size / config_.patch_size;
  return side * side + (config_.select == "cls_patch" ? 1 : 0);
}

torch::Tensor ClipVisionModelImpl::features(const torch::Tensor& pixel_values) {
  // feature_layer indexes hidden_states (L+1 entries); negative counts from the end.
  const int64_t layer = config_.feature_layer >= 0 ? config_.feature_layer
                                                   : config_.layers + 1 + config_.feature_layer;
  auto hidden = vision_model(pixel_values, layer);
  auto f = hidden[static_cast<size_t>(layer)];
  return config_.select == "patch" ? f.slice(1, 1) : f;
}

}  // namespace mllm
