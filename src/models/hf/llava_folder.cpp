#include "models/hf/llava_folder.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/projectors.h"
#include "core/strings.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"

namespace mllm {

ModelConfig read_llava_config_json(const std::filesystem::path& folder, int64_t* image_token_id) {
  const auto path = folder / "config.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": malformed JSON: " + e.what());
  }
  if (!j.contains("text_config") || !j.contains("vision_config"))
    throw Error(path.string() +
                ": not a llava folder (config.json has no text_config / vision_config)");
  ModelConfig m;
  read_llm_config_json(folder, m.llm);
  read_vision_config_json(folder, m.vision);
  try {
    m.vision.feature_layer = j.value("vision_feature_layer", int64_t{-2});
    m.vision.select = j.value("vision_feature_select_strategy", std::string("default")) == "full"
                          ? "cls_patch"
                          : "patch";
    if (image_token_id) *image_token_id = j.at("image_token_index").get<int64_t>();
    // LlavaNextForConditionalGeneration: AnyRes with its pinpoints ([height, width] pairs).
    if (j.contains("image_grid_pinpoints")) {
      m.vision.anyres.grid_pinpoints =
          j["image_grid_pinpoints"].get<std::vector<std::vector<int64_t>>>();
      if (const auto p = check_architecture(m.vision))
        throw Error("image_grid_pinpoints: " + p.field + " " + p.message);
    }
    m.connector.type = "mlp2x_gelu";  // what transformers' llava projector is
    if (j.contains("mllm_connector")) {
      const auto& c = j["mllm_connector"];
      m.connector.type = c.value("type", m.connector.type);
      m.connector.num_queries = c.value("num_queries", m.connector.num_queries);
      m.connector.layers = c.value("layers", m.connector.layers);
      m.connector.heads = c.value("heads", m.connector.heads);
      m.connector.hidden = c.value("hidden", m.connector.hidden);
      m.connector.pool_factor = c.value("pool_factor", m.connector.pool_factor);
      m.connector.xattn_every = c.value("xattn_every", m.connector.xattn_every);
      m.connector.value_positions = c.value("value_positions", m.connector.value_positions);
      m.connector.window = c.value("window", m.connector.window);
      m.connector.expert_every = c.value("expert_every", m.connector.expert_every);
      m.connector.prompt_length = c.value("prompt_length", m.connector.prompt_length);
      m.connector.prompt_layers = c.value("prompt_layers", m.connector.prompt_layers);
      m.connector.projector = c.value("projector", m.connector.projector);
      const auto& projectors = projector_names();
      if (std::find(projectors.begin(), projectors.end(), m.connector.projector) ==
          projectors.end())
        throw Error(path.string() + ": mllm_connector.projector '" + m.connector.projector +
                    "' is not a token-level connector (" + join(projectors, ", ") + ")");
      // The recipe's bounds (core/config.cpp): a hand-edited file must not divide by zero nor
      // ask the allocator for more than the machine has.
      if (const auto p = check_architecture(m.connector))
        throw Error(path.string() + ": mllm_connector." + p.field + ": " + p.message);
      // Prompts are keys next to the sequence's: more of them than its positions is a broken
      // file (and an allocation the machine may not survive), not a design.
      if (m.connector.prompt_length > m.llm.max_position)
        throw Error(path.string() + ": mllm_connector.prompt_length " +
                    std::to_string(m.connector.prompt_length) + " exceeds text_config's " +
                    std::to_string(m.llm.max_position) + " positions");
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": " + e.what());
  }
  return m;
}

MultimodalModel load_llava_folder(const std::filesystem::path& folder) {
  int64_t image_token_id = -1;
  const ModelConfig m = read_llava_config_json(folder, &image_token_id);
  MultimodalModel model(m, image_token_id);
  const SafetensorsCheckpoint weights(folder);
  const auto report = load_parameters(*model, weights, "", false, "the llava model");
  if (!report.unexpected.empty())
    throw Error(weights.path().string() + ": " + std::to_string(report.unexpected.size()) +
                " tensors do not belong to the model its config.json describes (first: " +
                report.unexpected.front() + ")");
  return model;
}

bool llava_hf_compatible(const ModelConfig& m) {
  return m.connector.type == "mlp2x_gelu" && m.llm.experts == 0 &&
         (m.llm.type == "llama" || m.llm.type == "qwen2");
}

std::filesystem::path resolve_llava_folder(const std::string& path, const std::string& what,
                                           bool need_tokenizer) {
  namespace fs = std::filesystem;
  const fs::path folder = model_folder(path);
  if (!fs::is_regular_file(folder / "config.json"))
    throw ConfigError(what + ": " + path +
                      " is neither a llava folder (config.json, model.safetensors, "
                      "tokenizer.json) nor a run directory with final/");
  if (need_tokenizer && !fs::is_regular_file(folder / "tokenizer.json"))
    throw ConfigError(what + ": " + folder.string() + " has no tokenizer.json");
  return folder;
}

void write_llava_folder(const std::filesystem::path& dir, MultimodalModelImpl& model,
                        const LlavaFolderExtras& extras) {
  namespace fs = std::filesystem;
  auto config = llava_config_json(model.config(), model.image_token_id());
  if (!llava_hf_compatible(model.config())) {
    // transformers cannot build this model; keep the llava layout under our own name.
    config["architectures"] = {"MllmLlavaForConditionalGeneration"};
    config["model_type"] = "mllm_llava";
  }
  write_hf_folder(dir, named_parameters(model), config, extras);
}

void write_hf_folder(const std::filesystem::path& dir, const NamedTensors& tensors,
                     const nlohmann::json& config, const LlavaFolderExtras& extras) {
  namespace fs = std::filesystem;
  const fs::path tmp = dir.parent_path() / ("." + dir.filename().string() + ".tmp");
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_safetensors(tmp / "model.safetensors", tensors, {{"format", "pt"}});
  write_file_atomic(tmp / "config.json", config.dump(2) + "\n");
  if (!extras.tokenizer.empty())
    write_file_atomic(tmp / "tokenizer.json", read_file(extras.tokenizer));
  if (!extras.tokenizer_config.is_null())
    write_file_atomic(tmp / "tokenizer_config.json", extras.tokenizer_config.dump(2) + "\n");
  if (!extras.preprocessor_config.is_null())
    write_file_atomic(tmp / "preprocessor_config.json", extras.preprocessor_config.dump(2) + "\n");
  fsync_path(tmp);
  if (fs::exists(dir)) fs::remove_all(dir);
  rename_durable(tmp, dir);
}

void write_clip_folder(const std::filesystem::path& dir, MultimodalModelImpl& model,
                       ClipHeadImpl& head, const LlavaFolderExtras& extras) {
  // CLIPModel's keys: the vision tower's vision_model.*, then the head's parts as they are named.
  NamedTensors tensors = named_parameters(*model.vision_tower);
  for (auto& [name, t] : named_parameters(head)) tensors.emplace_back(name, t);
  write_hf_folder(dir, tensors, clip_config_json(model.config().vision, head.text_model->config()),
                  extras);
}

}  // namespace mllm
