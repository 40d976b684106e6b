// Whole multimodal models as Hugging Face llava-style folders: config.json (transformers'
// LlavaConfig: text_config, vision_config, image_token_index, vision_feature_layer,
// vision_feature_select_strategy, plus "mllm_connector" for our connector settings),
// model.safetensors (or shards with their index) with llava-hf keys, tokenizer.json. A run's
// final/ folder is one; `mllm export` writes one for sharing.
#pragma once

#include <filesystem>

#include "core/config.h"
#include "models/multimodal_model.h"

namespace mllm {

// The model configuration a llava folder's config.json describes, and its image token id.
ModelConfig read_llava_config_json(const std::filesystem::path& folder, int64_t* image_token_id);

// Builds the folder's model and loads every weight (missing, mismatched or unexpected keys are
// errors naming the file).
MultimodalModel load_llava_folder(const std::filesystem::path& folder);

// Whether transformers' LlavaForConditionalGeneration can run this model as it is: its projector
// is LLaVA-1.5's two-layer GELU MLP and the LLM and vision tower are ones it knows.
bool llava_hf_compatible(const ModelConfig& model);

}  // namespace mllm
