// Builds the MultimodalModel a config describes: architecture from the config (or, for a pretrained
// LLM, from its config.json), weights from run.seed or the pretrained folders.
#pragma once

#include "core/config.h"
#include "core/vocabulary.h"
#include "models/multimodal_model.h"

namespace mllm {

// Parameter counts a model config implies, estimated before anything is allocated (within a few
// percent for the LLM and the vision tower; the connector's is a rough upper-side figure).
struct ParameterEstimate {
  int64_t llm = 0, vision = 0, connector = 0;
};
ParameterEstimate estimate_parameters(const ModelConfig& model);

// Refuses (ConfigError naming the key) a model whose fp32 parameters would not fit in this
// machine's memory. May update config.model.llm's architecture fields from a pretrained folder's
// config.json.
MultimodalModel build_model(Config& config, const Vocabulary& vocabulary);

}  // namespace mllm
