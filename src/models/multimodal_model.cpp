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
  connector =
      register_module("multi_modal_projector",
                      make_connector({config.vision.hidden, config.llm.hidden,
                                      vision_tower->num_feature_tokens(), config.connector}));
  language_model = register_module("language_model", LlamaForCausalLM(config.llm));
}

bool MultimodalModelImpl::vision_trainable() const {
  for (const auto& p : vision_tower->parameters())
    if (p.requires_grad()) return true;
  return false;
}

torch::Tensor MultimodalModelImpl::embed(const torch::Tensor& input_ids,
                                         const torch::Tensor& pixel_values) {
  auto text = language_model->embed(input_ids);  // (B,T,C)
  const auto is_image = input_ids == image_token_id_;
  torch::Tensor features;
  const auto& vc = config_.vision;
  if (pixel_values.defined() && pixel_values.size(0) > 0) {
    if (vision_trainable()) {
      features = vision_tower->features(pixel_values);
    } else {
      torch::NoGradGuard no_grad;
      features = vision_tower->features(pixel_values);
    }
  } else {
    // No image in the batch: the connector still runs (on zero images) so that every trainable
    // parameter takes part in every step.
    features = torch::zeros({0, vision_tower->num_feature_tokens(), vc.hidden}, text.options());
  }
  auto tokens = connector->forward(features);  // (N,Q,C)
  return splice_image_tokens(text, is_image, tokens.reshape({-1, tokens.size(-1)}));
}

torch::Tensor MultimodalModelImpl::forward(const torch::Tensor& input_ids,
                                           const torch::Tensor& pixel_values,
                                           const torch::Tensor& attention_mask) {
  return language_model->forward(embed(input_ids, pixel_values), attention_mask);
}

}  // namespace mllm
