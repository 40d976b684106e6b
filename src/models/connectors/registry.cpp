#include <cmath>

#include "core/error.h"
#include "models/connectors/connector.h"

namespace mllm {

namespace {
const std::map<std::string, ConnectorFactory>& registry() {
  static const std::map<std::string, ConnectorFactory> r = {
      {"gated_xattn", make_gated_xattn_connector}, {"linear", make_linear_connector},
      {"mlp2x_gelu", make_mlp2x_gelu_connector},   {"qformer", make_qformer_connector},
      {"resampler", make_resampler_connector},     {"pool", make_pool_connector},
  };
  return r;
}
}  // namespace

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

std::vector<std::string> connector_names() {
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

std::shared_ptr<Connector> make_connector(const ConnectorSpec& spec) {
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
