#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "models/connectors/connector.h"
#include "models/connectors/keys.h"

namespace mllm {

namespace {
const std::map<std::string, ConnectorFactory>& registry() {
  static const std::map<std::string, ConnectorFactory> r = {
      {"gated_xattn", make_gated_xattn_connector},
      {"linear", make_linear_connector},
      {"mlp2x_gelu", make_mlp2x_gelu_connector},
      {"qformer", make_qformer_connector},
      {"resampler", make_resampler_connector},
      {"pool", make_pool_connector},
      {"visual_expert", make_visual_expert_connector},
      {"adapter_prompt", make_adapter_prompt_connector},
  };
  return r;
}
}  // namespace

ImageSlots image_slots(const torch::Tensor& token_image) {
  const auto B = token_image.size(0), T = token_image.size(1);
  const auto ti = token_image.to(torch::kCPU, torch::kLong).contiguous();
  const auto image = ti.accessor<int64_t, 2>();
  ImageSlots out;
  out.row_images.resize(static_cast<size_t>(B));
  out.slot = torch::full({B, T}, -1, torch::kLong);
  auto slot = out.slot.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    auto& seen = out.row_images[static_cast<size_t>(b)];
    int64_t first = -3;
    for (int64_t t = 0; t < T; ++t) {
      if (image[b][t] == -2) continue;  // padding
      if (first == -3) first = image[b][t];
      out.uniform = out.uniform && image[b][t] == first;
      if (image[b][t] < 0) continue;
      auto it = std::find(seen.begin(), seen.end(), image[b][t]);
      if (it == seen.end()) it = seen.insert(seen.end(), image[b][t]);
      slot[b][t] = it - seen.begin();
    }
    out.most = std::max(out.most, static_cast<int64_t>(seen.size()));
  }
  return out;
}

int64_t square_side(int64_t n) {
  if (n < 0) return -1;
  auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  while (side * side > n) --side;
  while ((side + 1) * (side + 1) <= n) ++side;
  return side * side == n ? side : -1;
}

int64_t patch_grid_side(const ConnectorSpec& spec) {
  const int64_t side = square_side(spec.input_tokens);
  if (side < 1)
    throw ConfigError("model.connector.type: '" + spec.config.type +
                      "' works on the square grid of patch features, but the vision tower gives " +
                      std::to_string(spec.input_tokens) +
                      " tokens per image, not a square (model.vision.select: cls_patch adds the "
                      "class token; use patch)");
  return side;
}

std::vector<std::string> connector_keys_changed(const ConnectorConfig& c) {
  const ConnectorConfig d;
  const std::pair<const char*, bool> changed[] = {
      {"num_queries", c.num_queries != d.num_queries},
      {"layers", c.layers != d.layers},
      {"heads", c.heads != d.heads},
      {"hidden", c.hidden != d.hidden},
      {"pool_factor", c.pool_factor != d.pool_factor},
      {"xattn_every", c.xattn_every != d.xattn_every},
      {"value_positions", c.value_positions != d.value_positions},
      {"window", c.window != d.window},
      {"expert_every", c.expert_every != d.expert_every},
      {"projector", c.projector != d.projector},
      {"prompt_length", c.prompt_length != d.prompt_length},
      {"prompt_layers", c.prompt_layers != d.prompt_layers}};
  std::vector<std::string> keys;
  for (const auto& [key, differs] : changed)
    if (differs) keys.push_back(key);
  return keys;
}

std::vector<std::string> connector_keys(const ConnectorConfig& c) {
  // What each design's factory reads from its ConnectorConfig (the files next to this one).
  static const std::map<std::string, std::vector<std::string>> read = {
      {"linear", {}},
      {"mlp2x_gelu", {}},
      {"qformer", {"num_queries", "layers", "heads", "hidden"}},
      {"resampler", {"num_queries", "heads", "hidden", "value_positions", "window"}},
      {"pool", {"pool_factor"}},
      {"gated_xattn", {"xattn_every"}},
      {"adapter_prompt", {"prompt_length", "prompt_layers"}},
      {"visual_expert", {"expert_every", "projector"}},
  };
  const auto it = read.find(c.type);
  if (it == read.end()) return {};
  std::vector<std::string> keys = it->second;
  if (c.type == "visual_expert")
    if (const auto p = read.find(c.projector); p != read.end())
      keys.insert(keys.end(), p->second.begin(), p->second.end());
  return keys;
}

std::vector<std::string> connector_names() {
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

std::shared_ptr<Connector> make_connector(const ConnectorSpec& given) {
  ConnectorSpec spec = given;
  spec.llm.hidden = spec.llm_hidden;
  auto it = registry().find(spec.config.type);
  if (it == registry().end()) {
    std::string known;
    for (const auto& n : connector_names()) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("model.connector.type: unknown connector '" + spec.config.type +
                      "' (known: " + known + ")");
  }
  return it->second(spec);
}

}  // namespace mllm
