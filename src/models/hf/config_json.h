// HF `config.json` for the models we write and read. A run's final/ folder is a llava-style HF
// folder: its config.json follows transformers' LlavaConfig (text_config, vision_config,
// image_token_index, vision_feature_layer, vision_feature_select_strategy), plus an
// "mllm_connector" entry for connectors HF has no name for.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/anyres.h"
#include "core/config.h"

namespace mllm {

nlohmann::json llava_config_json(const ModelConfig& model, int64_t image_token_id);

// transformers' CLIPVisionConfig of `vision` (a llava config's vision_config).
nlohmann::json vision_config_json(const VisionConfig& vision);

// transformers' CLIPConfig (CLIPModel) of two towers: text_config, vision_config (each with
// projection_dim), projection_dim and logit_scale_init_value. CLIPVisionModel.from_pretrained
// takes the vision half of such a folder, as it does of openai/clip-vit-large-patch14-336.
nlohmann::json clip_config_json(const VisionConfig& vision, const ClipTextConfig& text);

// Reads a folder's config.json (a llava folder's text_config, or a bare llama/qwen2 config) into
// the architecture fields of `llm`. Throws Error naming the file and field.
void read_llm_config_json(const std::filesystem::path& folder, LlmConfig& llm);

// Reads a CLIP folder's config.json (CLIPVisionConfig, or the vision_config of a CLIPModel or llava
// folder) into the architecture fields of `vision`; absent fields take CLIPVisionConfig's
// defaults. Throws Error naming the file and field.
void read_vision_config_json(const std::filesystem::path& folder, VisionConfig& vision);

// Reads a CLIP folder's text tower (the text_config of a CLIPModel config.json, or a
// CLIPTextModel's) and the top-level projection_dim into `text`; absent fields take
// CLIPTextConfig's defaults. Throws Error naming the file and field.
void read_clip_text_config_json(const std::filesystem::path& folder, ClipTextConfig& text);

// preprocessor_config.json: how the model's images were prepared, in the keys of transformers'
// CLIPImageProcessor (size.shortest_edge, crop_size, image_mean, image_std, resample 3 = bicubic)
// plus "mllm_aspect" (pad | crop | resize). Written next to config.json in final/ and exports;
// the side is image.side(vision_image_size). With AnyRes `pinpoints`, LlavaNextImageProcessor's
// (image_grid_pinpoints, do_pad).
nlohmann::json preprocessor_config_json(const ImageConfig& image, int64_t vision_image_size,
                                        const std::vector<Resolution>& pinpoints = {});

// Reads a folder's preprocessor_config.json into `image` (its side into image.size) when there is
// one (returns false, leaving it, when not). Without "mllm_aspect" the aspect is CLIP's crop.
// Throws Error naming the file for a malformed one.
bool read_preprocessor_config_json(const std::filesystem::path& folder, ImageConfig& image);

// The conversation template recorded in a folder's tokenizer_config.json ("mllm_template"), else
// hf when the folder has a chat template of its own (a Hugging Face folder), else chatml for a
// Qwen2 LLM and vicuna_v1 otherwise (LLaVA-1.5's). Throws Error naming the file for a malformed
// one.
std::string model_template(const std::filesystem::path& folder, const ModelConfig& model);
// The system prompt recorded there ("mllm_system": the run's data.system); unset when absent.
std::optional<std::string> model_system(const std::filesystem::path& folder);

// The folder a model path names — the one resolver behind train.init_from, mllm generate, eval and
// export: `path` itself when it holds config.json or model.safetensors (a llava folder, a run's
// final/, one of its checkpoints/step-N), else its final/ when there is one (a run directory),
// else `path` unchanged (the caller says what is missing).
std::filesystem::path model_folder(const std::filesystem::path& path);

}  // namespace mllm
