// CLIP's vision transformer, laid out exactly as transformers' CLIPVisionModel so that its
// parameter names are the HF checkpoint keys (`vision_model.encoder.layers.N.self_attn.q_proj...`).
// Conv patch embedding without bias, a class token, learned absolute positions, pre-LN encoder
// layers with quick_gelu MLPs. Returns the hidden states of every layer; the multimodal model picks
// `feature_layer` and drops the class token for `select: patch`, as LLaVA does.
// Reference: transformers/models/clip/modeling_clip.py (CLIPVisionTransformer).
#pragma once

#include <torch/torch.h>

#include "core/config.h"

namespace mllm {

class ClipVisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipVisionEmbeddingsImpl(const VisionConfig& c);
  // pixel_values is (B,3,H,W); returns (B,1+P,C): class token then patches, plus positions.
  torch::Tensor forward(const torch::Tensor& pixel_values);

  torch::Tensor class_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::nn::Embedding position_embedding{nullptr};
};
TORCH_MODULE(ClipVisionEmbeddings);

class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(int64_t hidden, int64_t heads);
  // (B,T,C) -> (B,T,C): bidirectional (the vision tower), or with `causal` and an additive
  // padding mask broadcastable to (B,1,T,T) (the text tower, clip_model.h).
  torch::Tensor forward(const torch::Tensor& x, const c10::optional<torch::Tensor>& mask = {},
                        bool causal = false);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
  int64_t heads;
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(int64_t hidden, int64_t intermediate);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ClipMlp);

class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderLayerImpl(const VisionConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const c10::optional<torch::Tensor>& mask = {},
                        bool causal = false);
  ClipAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr};
  ClipMlp mlp{nullptr};
  torch::nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderImpl(const VisionConfig& c);
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(ClipEncoder);

class ClipVisionTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipVisionTransformerImpl(const VisionConfig& c);
  // Returns L+1 tensors of (B,1+P,C): index 0 is the (pre-layernormed) embeddings, i is layer i's
  // output — the same indexing as HF's `output_hidden_states`. Stops after `up_to_layer` layers
  // when given (>= 0), since later layers are not needed for features.
  std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values, int64_t up_to_layer = -1);
  ClipVisionEmbeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr};  // sic: HF's spelling, kept for key compatibility
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};  // in HF checkpoints; unused for LLaVA features
};
TORCH_MODULE(ClipVisionTransformer);

// The vision tower: `vision_model` plus LLaVA's feature selection.
class ClipVisionModelImpl : public torch::nn::Module {
 public:
  explicit ClipVisionModelImpl(const VisionConfig& c);
  // pixel_values (B,3,H,W) -> features (B,P,C) (or (B,1+P,C) for select: cls_patch).
  torch::Tensor features(const torch::Tensor& pixel_values);
  // Tokens per image that `features` returns.
  int64_t num_feature_tokens() const;
  const VisionConfig& config() const { return config_; }

  ClipVisionTransformer vision_model{nullptr};

 private:
  VisionConfig config_;
};
TORCH_MODULE(ClipVisionModel);

}  // namespace mllm
