// Which model.connector keys each design reads, besides `type` (torch-free: the recipe checks a
// config against it before any model is built).
#pragma once

#include <string>
#include <vector>

#include "core/config.h"

namespace mllm {

// The model.connector keys but `type` whose values in c differ from the defaults, in
// ConnectorConfig's order.
std::vector<std::string> connector_keys_changed(const ConnectorConfig& c);

// The keys the connector c.type reads; for visual_expert, its projector's keys too. Empty for an
// unknown type (the registry reports that).
std::vector<std::string> connector_keys(const ConnectorConfig& c);

}  // namespace mllm
