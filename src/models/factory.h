// Builds the MultimodalModel a config describes: architecture from the config (or, for a pretrained
// LLM, from its config.json), weights from run.seed or the pretrained folders.
#pragma once

#include "core/config.h"
#include "data/tokenizer/tokenizer.h"
#include "models/multimodal_model.h"

namespace mllm {

// May update config.model.llm's architecture fields from a pretrained folder's config.json.
MultimodalModel build_model(Config& config, const Tokenizer& tokenizer);

}  // namespace mllm
