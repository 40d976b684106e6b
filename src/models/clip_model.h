// CLIP as a contrastive pair of towers, laid out as transformers' CLIPModel so that parameter
// names are the HF checkpoint keys: `vision_model.*` (the ViT of vision/clip_vit.h), `text_model.*`
// (token and learned position embeddings, the same pre-LN encoder layers under a causal mask,
// final_layer_norm, pooled at each row's first EOS), `visual_projection` and `text_projection`
// (no bias) and the learnable temperature `logit_scale` (log 1/0.07 at init).
// Reference: transformers/models/clip/modeling_clip.py (CLIPTextTransformer, CLIPModel.forward,
// clip_loss); Radford et al. 2021, Figure 3.
#pragma once

#include <cmath>

#include <torch/torch.h>

#include "core/config.h"
#include "models/vision/clip_vit.h"

namespace mllm {

class ClipTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipTextEmbeddingsImpl(const ClipTextConfig& c);
  torch::Tensor forward(const torch::Tensor& input_ids);  // (B,T) -> (B,T,C)
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

class ClipTextTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipTextTransformerImpl(const ClipTextConfig& c);
  struct Output {
    torch::Tensor last_hidden_state;  // (B,T,C), after final_layer_norm
    torch::Tensor pooled;             // (B,C): the state at each row's first EOS
  };
  // input_ids (B,T), right-padded; attention_mask (B,T), 1 on real tokens. A row needs an EOS
  // (checked). Key j is visible to query i iff j <= i and j is a real token.
  Output forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
  const ClipTextConfig& config() const { return config_; }

  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};

 private:
  ClipTextConfig config_;
};
TORCH_MODULE(ClipTextTransformer);

// What the contrastive stage adds to a multimodal model (registered there as "clip"): CLIPModel
// less its vision tower — the text tower, both projections and the temperature — so that the
// multimodal model's own vision tower is the image half. Key names under it are CLIPModel's.
class ClipHeadImpl : public torch::nn::Module {
 public:
  ClipHeadImpl(const VisionConfig& vision, const ClipTextConfig& text);
  // visual_projection(post_layernorm(CLS of the last layer)) of `vision_model`, (B,P).
  torch::Tensor image_features(ClipVisionTransformerImpl& vision_model,
                               const torch::Tensor& pixel_values);
  torch::Tensor text_features(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
  // As ClipModelImpl::logits_per_text, with the temperature's scale capped at exp(max_log_scale).
  torch::Tensor logits_per_text(const torch::Tensor& text_features,
                                const torch::Tensor& image_features,
                                double max_log_scale = INFINITY);

  ClipTextTransformer text_model{nullptr};
  torch::nn::Linear visual_projection{nullptr}, text_projection{nullptr};
  torch::Tensor logit_scale;
};
TORCH_MODULE(ClipHead);

class ClipModelImpl : public torch::nn::Module {
 public:
  ClipModelImpl(const VisionConfig& vision, const ClipTextConfig& text);
  // visual_projection(post_layernorm(CLS)), (B,P): unnormalised, as get_image_features.
  torch::Tensor image_features(const torch::Tensor& pixel_values);
  // text_projection(pooled), (B,P): unnormalised, as get_text_features.
  torch::Tensor text_features(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
  // Text i against image j: cosine similarity x exp(logit_scale), (texts, images).
  torch::Tensor logits_per_text(const torch::Tensor& text_features,
                                const torch::Tensor& image_features);

  ClipVisionTransformer vision_model{nullptr};
  ClipTextTransformer text_model{nullptr};
  torch::nn::Linear visual_projection{nullptr}, text_projection{nullptr};
  torch::Tensor logit_scale;
};
TORCH_MODULE(ClipModel);

// CLIP's symmetric InfoNCE loss over a square (N,N) logits_per_text whose diagonal holds the
// matching pairs: the mean of the cross-entropy over texts (rows) and over images (columns).
torch::Tensor clip_loss(const torch::Tensor& logits_per_text);

}  // namespace mllm
