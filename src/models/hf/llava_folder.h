// Whole multimodal models as Hugging Face llava-style folders: config.json (transformers'
// LlavaConfig: text_config, vision_config, image_token_index, vision_feature_layer,
// vision_feature_select_strategy, plus "mllm_connector" for our connector settings),
// model.safetensors (or shards with their index) with llava-hf keys, tokenizer.json. A run's
// final/ folder is one; `mllm export` writes one for sharing.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/safetensors.h"
#include "models/clip_model.h"
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

// The llava folder `path` names (model_folder, models/hf/config_json.h), which must hold
// config.json. Otherwise a ConfigError naming `what` (the option, "--checkpoint"); with
// `need_tokenizer` the folder must hold tokenizer.json too. mllm generate, eval and export resolve
// their model argument through this.
std::filesystem::path resolve_llava_folder(const std::string& path, const std::string& what,
                                           bool need_tokenizer);

// What a llava folder holds besides config.json and the weights.
struct LlavaFolderExtras {
  std::filesystem::path tokenizer;     // copied as tokenizer.json (empty: none)
  nlohmann::json tokenizer_config;     // tokenizer_config.json (null: none)
  nlohmann::json preprocessor_config;  // preprocessor_config.json (null: none)
};

// Writes `model` as a llava folder at `dir` — model.safetensors with llava-hf keys, config.json
// (LlavaForConditionalGeneration when transformers can run the model, else our mllm_llava
// layout), and the extras — in a temporary folder beside it, fsync'd and renamed over `dir` (an
// existing `dir` is replaced). A run's final/ and `mllm export` both write through this.
void write_llava_folder(const std::filesystem::path& dir, MultimodalModelImpl& model,
                        const LlavaFolderExtras& extras);

// The same for any HF folder: `tensors` as model.safetensors, `config` as config.json, the extras.
void write_hf_folder(const std::filesystem::path& dir, const NamedTensors& tensors,
                     const nlohmann::json& config, const LlavaFolderExtras& extras);

// A CLIPModel folder (clip_config_json) of `model`'s vision tower and the contrastive stage's
// `head`: what stage 1 loads as model.vision.pretrained.
void write_clip_folder(const std::filesystem::path& dir, MultimodalModelImpl& model,
                       ClipHeadImpl& head, const LlavaFolderExtras& extras);

}  // namespace mllm
