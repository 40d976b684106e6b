#include "models/clip_model.h"

#include <cmath>

#include "core/error.h"

namespace mllm {

namespace {

// The encoder layers of a text tower are CLIP's vision encoder layers with the text sizes.
VisionConfig encoder_sizes(const ClipTextConfig& c) {
  VisionConfig v;
  v.hidden = c.hidden;
  v.layers = c.layers;
  v.heads = c.heads;
  v.intermediate = c.intermediate;
  v.layer_norm_eps = c.layer_norm_eps;
  return v;
}

// The pre-#24773 checkpoints (openai/clip-*) record eos_token_id 2 while their tokenizer's EOS is
// the largest id, 49407; transformers pools at the argmax id when every row's largest id is that.
constexpr int64_t kLegacyEos = 49407;

}  // namespace

ClipTextEmbeddingsImpl::ClipTextEmbeddingsImpl(const ClipTextConfig& c) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(c.vocab, c.hidden));
  position_embedding =
      register_module("position_embedding", torch::nn::Embedding(c.max_position, c.hidden));
  torch::NoGradGuard no_grad;
  token_embedding->weight.normal_(0, 0.02);
  position_embedding->weight.normal_(0, 0.01);
}

torch::Tensor ClipTextEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  const int64_t T = input_ids.size(1);
  return token_embedding(input_ids) + position_embedding->weight.slice(0, 0, T).unsqueeze(0);
}

ClipTextTransformerImpl::ClipTextTransformerImpl(const ClipTextConfig& c) : config_(c) {
  const VisionConfig sizes = encoder_sizes(c);
  embeddings = register_module("embeddings", ClipTextEmbeddings(c));
  encoder = register_module("encoder", ClipEncoder(sizes));
  final_layer_norm = register_module(
      "final_layer_norm",
      torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps)));
}

ClipTextTransformerImpl::Output ClipTextTransformerImpl::forward(
    const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  if (T > config_.max_position)
    throw Error("clip text: " + std::to_string(T) + " tokens, over max_position_embeddings " +
                std::to_string(config_.max_position));
  auto h = embeddings(input_ids);
  // Padding keys are masked out additively; causality is the attention's own flag.
  const auto pad = (attention_mask == 0).view({B, 1, 1, T});
  const auto mask = torch::zeros({B, 1, 1, T}, h.options()).masked_fill(pad, -1e9);
  for (const auto& layer : *encoder->layers)
    h = layer->as<ClipEncoderLayer>()->forward(h, mask, true);
  h = final_layer_norm(h);
  torch::Tensor at;
  if ((input_ids.amax(1) == kLegacyEos).all().item<bool>()) {
    at = input_ids.argmax(1);
  } else {
    const auto is_eos = (input_ids == config_.eos_token_id);
    if (!is_eos.any(1).all().item<bool>())
      throw Error("clip text: a row has no EOS token (id " + std::to_string(config_.eos_token_id) +
                  ")");
    at = is_eos.to(torch::kInt).argmax(1);  // the first EOS of each row
  }
  return {h, h.index({torch::arange(B, at.options()), at})};
}

namespace {

// CLIPModel's non-tower parts, registered on `m` under their HF names.
void register_clip_parts(torch::nn::Module& m, const VisionConfig& vision,
                         const ClipTextConfig& text, ClipTextTransformer& text_model,
                         torch::nn::Linear& visual_projection, torch::nn::Linear& text_projection,
                         torch::Tensor& logit_scale) {
  text_model = m.register_module("text_model", ClipTextTransformer(text));
  visual_projection = m.register_module(
      "visual_projection",
      torch::nn::Linear(torch::nn::LinearOptions(vision.hidden, text.projection_dim).bias(false)));
  text_projection = m.register_module(
      "text_projection",
      torch::nn::Linear(torch::nn::LinearOptions(text.hidden, text.projection_dim).bias(false)));
  // 0-dim, as CLIP checkpoints store it; CLIPConfig's logit_scale_init_value = log(1 / 0.07).
  logit_scale = m.register_parameter("logit_scale", torch::tensor(std::log(1.0 / 0.07)));
}

torch::Tensor project_image(ClipVisionTransformerImpl& vision_model, torch::nn::Linear& projection,
                            const torch::Tensor& pixel_values) {
  const auto hidden = vision_model.forward(pixel_values);
  return projection(vision_model.post_layernorm(hidden.back().select(1, 0)));
}

torch::Tensor scaled_cosine(const torch::Tensor& text_features, const torch::Tensor& image_features,
                            const torch::Tensor& log_scale) {
  const auto t = text_features / text_features.norm(2, -1, true);
  const auto i = image_features / image_features.norm(2, -1, true);
  return t.matmul(i.t()) * log_scale.exp();
}

}  // namespace

ClipHeadImpl::ClipHeadImpl(const VisionConfig& vision, const ClipTextConfig& text) {
  register_clip_parts(*this, vision, text, text_model, visual_projection, text_projection,
                      logit_scale);
}

torch::Tensor ClipHeadImpl::image_features(ClipVisionTransformerImpl& vision_model,
                                           const torch::Tensor& pixel_values) {
  return project_image(vision_model, visual_projection, pixel_values);
}

torch::Tensor ClipHeadImpl::text_features(const torch::Tensor& input_ids,
                                          const torch::Tensor& attention_mask) {
  return text_projection(text_model(input_ids, attention_mask).pooled);
}

torch::Tensor ClipHeadImpl::logits_per_text(const torch::Tensor& text_features,
                                            const torch::Tensor& image_features,
                                            double max_log_scale) {
  // open_clip clamps the learned scale to 100 (log 4.6052); the clamp stops its gradient there.
  const auto scale =
      std::isfinite(max_log_scale) ? logit_scale.clamp_max(max_log_scale) : logit_scale;
  return scaled_cosine(text_features, image_features, scale);
}

ClipModelImpl::ClipModelImpl(const VisionConfig& vision, const ClipTextConfig& text) {
  vision_model = register_module("vision_model", ClipVisionTransformer(vision));
  register_clip_parts(*this, vision, text, text_model, visual_projection, text_projection,
                      logit_scale);
}

torch::Tensor ClipModelImpl::image_features(const torch::Tensor& pixel_values) {
  return project_image(*vision_model, visual_projection, pixel_values);
}

torch::Tensor ClipModelImpl::text_features(const torch::Tensor& input_ids,
                                           const torch::Tensor& attention_mask) {
  return text_projection(text_model(input_ids, attention_mask).pooled);
}

torch::Tensor ClipModelImpl::logits_per_text(const torch::Tensor& text_features,
                                             const torch::Tensor& image_features) {
  return scaled_cosine(text_features, image_features, logit_scale);
}

torch::Tensor clip_loss(const torch::Tensor& logits_per_text) {
  const int64_t N = logits_per_text.size(0);
  if (logits_per_text.dim() != 2 || logits_per_text.size(1) != N)
    throw Error("clip_loss: logits must be square (N texts x N images)");
  const auto target = torch::arange(N, logits_per_text.options().dtype(torch::kLong));
  namespace F = torch::nn::functional;
  return (F::cross_entropy(logits_per_text, target) +
          F::cross_entropy(logits_per_text.t(), target)) /
         2.0;
}

}  // namespace mllm
