#include "models/multimodal_model.h"

#include "core/error.h"

namespace mllm {

torch::Tensor splice_image_tokens(const torch::Tensor& text_embeds, const torch::Tensor& is_image,
                                  const torch::Tensor& image_tokens) {
  const int64_t slots = is_image.sum().item<int64_t>();
  if (slots != image_tokens.size(0))
    throw Error("[splice_image_tokens] the batch has " + std::to_string(slots) +
                " image placeholder tokens but the connector produced " +
                std::to_string(image_tokens.size(0)) + " image tokens");
  // With no image the connector's (empty) output still joins the graph, so every trainable
  // parameter receives a (zero) gradient each step, as data-parallel gradient sync expects.
  if (slots == 0)
    return image_tokens.requires_grad() ? text_embeds + image_tokens.sum() * 0.0 : text_embeds;
  return text_embeds.masked_scatter(is_image.unsqueeze(-1), image_tokens.to(text_embeds.dtype()));
}

MultimodalModelImpl::MultimodalModelImpl(const ModelConfig& config, int64_t image_token_id)
    : config_(config), image_token_id_(image_token_id) {
  vision_tower = register_module("vision_tower", ClipVisionModel(config.vision));
  connector = register_module(
      "multi_modal_projector",
      make_connector({config.vision.hidden, config.llm.hidden, vision_tower->num_feature_tokens(),
                      config.connector, config.llm.layers, config.llm.heads}));
  language_model = register_module("language_model", LlamaForCausalLM(config.llm));
}

bool MultimodalModelImpl::vision_trainable() const {
  for (const auto& p : vision_tower->parameters())
    if (p.requires_grad()) return true;
  return false;
}

torch::Tensor MultimodalModelImpl::image_features(const torch::Tensor& pixel_values,
                                                  const torch::TensorOptions& options) {
  if (pixel_values.defined() && pixel_values.size(0) > 0) {
    if (vision_trainable()) return vision_tower->features(pixel_values);
    torch::NoGradGuard no_grad;
    return vision_tower->features(pixel_values);
  }
  // No image in the batch: the connector still runs (on zero images) so that every trainable
  // parameter takes part in every step.
  return torch::zeros({0, vision_tower->num_feature_tokens(), config_.vision.hidden}, options);
}

torch::Tensor MultimodalModelImpl::embed(const torch::Tensor& input_ids,
                                         const torch::Tensor& pixel_values) {
  auto text = language_model->embed(input_ids);  // (B,T,C)
  if (connector->feature_level()) return text;   // images enter inside the LLM (forward)
  const auto is_image = input_ids == image_token_id_;
  auto tokens = connector->forward(image_features(pixel_values, text.options()));  // (N,Q,C)
  return splice_image_tokens(text, is_image, tokens.reshape({-1, tokens.size(-1)}));
}

std::pair<torch::Tensor, LayerHook> MultimodalModelImpl::prepare(
    const torch::Tensor& input_ids, const torch::Tensor& pixel_values) {
  if (!connector->feature_level()) return {embed(input_ids, pixel_values), LayerHook()};
  // Feature-level: one placeholder per image marks its row; the connector's hook adds the
  // image inside the LLM.
  auto text = language_model->embed(input_ids);
  const auto per_row = (input_ids == image_token_id_).sum(1);  // (B)
  const auto features = image_features(pixel_values, text.options());
  if (per_row.max().item<int64_t>() > 1 || per_row.sum().item<int64_t>() != features.size(0))
    throw Error(
        "[MultimodalModel] a feature-level connector needs one <image> placeholder per "
        "image and at most one image per sample; the batch has " +
        std::to_string(per_row.sum().item<int64_t>()) + " placeholders for " +
        std::to_string(features.size(0)) + " images");
  const auto rows = per_row.nonzero().view({-1});
  return {text, connector->layer_hook(features, rows, input_ids.size(0))};
}

torch::Tensor MultimodalModelImpl::forward(const torch::Tensor& input_ids,
                                           const torch::Tensor& pixel_values,
                                           const torch::Tensor& attention_mask) {
  const auto [embeds, hook] = prepare(input_ids, pixel_values);
  return language_model->forward(embeds, attention_mask, {}, nullptr, hook ? &hook : nullptr);
}

}  // namespace mllm
