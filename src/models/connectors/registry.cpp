#include "core/error.h"
#include "models/connectors/connector.h"

namespace mllm {

namespace {
const std::map<std::string, ConnectorFactory>& registry() {
  static const std::map<std::string, ConnectorFactory> r = {
      {"linear", make_linear_connector},
      {"mlp2x_gelu", make_mlp2x_gelu_connector},
      {"gated_xattn", make_gated_xattn_connector},
  };
  return r;
}
}  // namespace

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
