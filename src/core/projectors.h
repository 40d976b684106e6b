// The token-level connectors visual_expert can put under its experts (model.connector.projector),
// named once for the recipe's check and a model folder's.
#pragma once

#include <string>
#include <vector>

namespace mllm {

inline const std::vector<std::string>& projector_names() {
  static const std::vector<std::string> names = {"linear", "mlp2x_gelu", "qformer", "resampler",
                                                 "pool"};
  return names;
}

}  // namespace mllm
