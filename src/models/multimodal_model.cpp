#include "models/multimodal_model.h"

#include <cmath>
#include <map>

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

torch::Tensor pool_image_tokens(const torch::Tensor& tokens, const torch::Tensor& pool) {
  const auto N = tokens.size(0), Q = tokens.size(1), C = tokens.size(2);
  if (!pool.defined() || N == 0) return tokens.reshape({-1, C});
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(Q))));
  const auto factors = pool.to(torch::kCPU).contiguous();
  const auto* f = factors.data_ptr<int64_t>();
  if (factors.numel() != N)
    throw Error("[MultimodalModel] image_pool has " + std::to_string(factors.numel()) +
                " entries for " + std::to_string(N) + " images");
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < N; ++i) {
    if (f[i] <= 1) {
      parts.push_back(tokens[i]);
      continue;
    }
    if (side * side != Q)
      throw Error(
          "[MultimodalModel] pooling a video frame needs a square grid of tokens; the "
          "connector gives " +
          std::to_string(Q));
    const auto grid = tokens[i].reshape({side, side, C}).permute({2, 0, 1}).unsqueeze(0);
    const auto pooled = torch::avg_pool2d(grid, {f[i], f[i]}, {f[i], f[i]}, {0, 0},
                                          /*ceil_mode=*/true, /*count_include_pad=*/false);
    parts.push_back(pooled.squeeze(0).permute({1, 2, 0}).reshape({-1, C}));
  }
  return torch::cat(parts, 0);
}

MultimodalModelImpl::MultimodalModelImpl(const ModelConfig& config, int64_t image_token_id)
    : config_(config), image_token_id_(image_token_id) {
  vision_tower = register_module("vision_tower", ClipVisionModel(config.vision));
  connector = register_module(
      "multi_modal_projector",
      make_connector({config.vision.hidden, config.llm.hidden, vision_tower->num_feature_tokens(),
                      config.connector, config.llm}));
  language_model = register_module("language_model", LlamaForCausalLM(config.llm));
  connector->adopt_llm_weights(*language_model);
  pinpoints_ = mllm::anyres_pinpoints(config.vision.anyres, config.vision.image_size);
  if (!pinpoints_.empty()) {
    if (connector->feature_level())
      throw ConfigError("model.vision.anyres: the " + config.connector.type +
                        " connector brings images in inside the LLM; AnyRes needs a token-level "
                        "connector");
    if (const auto problem = anyres_side_problem(connector->output_tokens()); !problem.empty())
      throw ConfigError("model.vision.anyres: " + problem + " (connector " + config.connector.type +
                        ")");
    // transformers' LlavaNextModel: randn(hidden) / sqrt(hidden).
    const auto C = config.llm.hidden;
    image_newline =
        register_parameter("image_newline", torch::randn({C}) / std::sqrt(static_cast<double>(C)));
  }
}

ImageTokens MultimodalModelImpl::image_token_counts() const {
  return ImageTokens(image_tokens(), pinpoints_, config_.vision.image_size);
}

torch::Tensor MultimodalModelImpl::image_tokens_of(const torch::Tensor& tokens,
                                                   const ImageLayout& layout) {
  if (!layout.sizes.defined()) return pool_image_tokens(tokens, layout.pool);
  if (pinpoints_.empty())
    throw Error(
        "[MultimodalModel] the batch has AnyRes image sizes but model.vision.anyres is off");
  const auto sizes = layout.sizes.to(torch::kCPU).contiguous();
  const auto sz = sizes.accessor<int64_t, 2>();
  const int64_t N = sizes.size(0), C = tokens.size(2);
  const int64_t side = ImageTokens(image_tokens()).side();
  const int64_t tile = config_.vision.image_size;
  const auto pools = layout.pool.defined() ? layout.pool.to(torch::kCPU).contiguous() : layout.pool;
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t h = sz[i][0], w = sz[i][1];
    if (h <= 0) {  // one plain crop (a video frame)
      const auto one = tokens.slice(0, at, at + 1);
      parts.push_back(pool_image_tokens(one, pools.defined() ? pools.slice(0, i, i + 1) : pools));
      at += 1;
      continue;
    }
    const auto [rows, cols] = anyres_grid_shape({h, w}, pinpoints_, tile);
    if (at + 1 + rows * cols > tokens.size(0))
      throw Error("[MultimodalModel] image " + std::to_string(i) + " (" + std::to_string(w) + "x" +
                  std::to_string(h) + ") needs " + std::to_string(1 + rows * cols) +
                  " crops; the batch has " + std::to_string(tokens.size(0) - at) + " left");
    const auto base = tokens[at];  // (Q,C)
    // (rows*cols,Q,C) -> (C, rows*side, cols*side): tile (r,c)'s patch (y,x) at (r*side+y,
    // c*side+x).
    auto grid = tokens.slice(0, at + 1, at + 1 + rows * cols)
                    .reshape({rows, cols, side, side, C})
                    .permute({4, 0, 2, 1, 3})
                    .reshape({C, rows * side, cols * side});
    const auto [uh, uw] = anyres_unpadded({h, w}, {rows * side, cols * side});
    const int64_t top = (rows * side - uh) / 2, left = (cols * side - uw) / 2;
    grid = grid.slice(1, top, top + uh).slice(2, left, left + uw);
    const auto newline = image_newline.to(grid.dtype()).view({C, 1, 1}).expand({C, uh, 1});
    const auto rows_with_newline = torch::cat({grid, newline}, 2);  // (C, uh, uw+1)
    parts.push_back(base);
    parts.push_back(rows_with_newline.reshape({C, -1}).t());
    at += 1 + rows * cols;
  }
  if (at != tokens.size(0))
    throw Error("[MultimodalModel] the batch has " + std::to_string(tokens.size(0)) +
                " image crops; its " + std::to_string(N) + " images take " + std::to_string(at));
  return parts.empty() ? tokens.reshape({-1, C}) : torch::cat(parts, 0);
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
                                         const torch::Tensor& pixel_values,
                                         const ImageLayout& layout) {
  // A feature-level connector's image enters inside the LLM: nothing to splice, no features needed.
  if (connector->feature_level()) return language_model->embed(input_ids);
  return prepare(input_ids, pixel_values, {}, layout).first;
}

torch::Tensor token_images(const torch::Tensor& is_image, const torch::Tensor& attention_mask,
                           int64_t images) {
  const auto B = is_image.size(0), T = is_image.size(1);
  const auto placeholders = is_image.to(torch::kCPU).contiguous();
  const auto samples = attention_mask.defined()
                           ? attention_mask.to(torch::kCPU, torch::kLong).contiguous()
                           : torch::ones({B, T}, torch::kLong);
  auto out = torch::full({B, T}, -1, torch::kLong);
  auto o = out.accessor<int64_t, 2>();
  const auto p = placeholders.accessor<bool, 2>();
  const auto s = samples.accessor<int64_t, 2>();
  int64_t next = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::map<int64_t, int64_t> image_of;  // sample number -> image index
    for (int64_t t = 0; t < T; ++t) {
      if (!p[b][t]) continue;
      if (!image_of.emplace(s[b][t], next++).second)
        throw Error(
            "[MultimodalModel] a feature-level connector takes at most one image per sample; "
            "batch row " +
            std::to_string(b) + " has a sample with more than one <image>");
    }
    for (int64_t t = 0; t < T; ++t) {
      const auto it = image_of.find(s[b][t]);
      if (s[b][t] == 0)
        o[b][t] = -2;  // padding
      else if (it != image_of.end())
        o[b][t] = it->second;
    }
  }
  if (next != images)
    throw Error(
        "[MultimodalModel] a feature-level connector needs one <image> placeholder per "
        "image; the batch has " +
        std::to_string(next) + " placeholders for " + std::to_string(images) + " images");
  return out;
}

std::pair<torch::Tensor, std::shared_ptr<DecoderExtension>> MultimodalModelImpl::prepare(
    const torch::Tensor& input_ids, const torch::Tensor& pixel_values,
    const torch::Tensor& attention_mask, const ImageLayout& layout) {
  auto text = language_model->embed(input_ids);  // (B,T,C)
  const auto is_image = input_ids == image_token_id_;
  const auto features = image_features(pixel_values, text.options());
  if (!connector->feature_level()) {
    auto tokens = connector->forward(features);  // (N,Q,C)
    auto embeds = splice_image_tokens(text, is_image, image_tokens_of(tokens, layout));
    return {embeds, connector->decoder_extension({features, {}, is_image})};
  }
  // Feature-level: one placeholder per image marks its sample; the connector brings the image in
  // inside the LLM, to its sample's tokens.
  const auto seen = token_images(is_image, attention_mask, features.size(0));
  // On the CPU: the extension reads it there (no round trip through the device).
  return {text, connector->decoder_extension({features, seen, is_image})};
}

torch::Tensor MultimodalModelImpl::forward(const torch::Tensor& input_ids,
                                           const torch::Tensor& pixel_values,
                                           const torch::Tensor& attention_mask,
                                           const torch::Tensor& position_ids,
                                           const ImageLayout& layout, const torch::Tensor& wanted) {
  const auto [embeds, extension] = prepare(input_ids, pixel_values, attention_mask, layout);
  return language_model->forward(embeds, attention_mask, position_ids, nullptr, extension.get(),
                                 nullptr, wanted);
}

}  // namespace mllm
