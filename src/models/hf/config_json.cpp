#include "models/hf/config_json.h"

#include <map>
#include <type_traits>

#include "core/error.h"
#include "core/fs.h"

namespace mllm {

nlohmann::json vision_config_json(const VisionConfig& v) {
  return {
      {"model_type", "clip_vision_model"},   {"hidden_size", v.hidden},
      {"intermediate_size", v.intermediate}, {"num_hidden_layers", v.layers},
      {"num_attention_heads", v.heads},      {"image_size", v.image_size},
      {"patch_size", v.patch_size},          {"num_channels", 3},
      {"hidden_act", "quick_gelu"},          {"layer_norm_eps", v.layer_norm_eps},
  };
}

nlohmann::json clip_config_json(const VisionConfig& vision, const ClipTextConfig& text) {
  auto v = vision_config_json(vision);
  v["projection_dim"] = text.projection_dim;
  const nlohmann::json t = {
      {"model_type", "clip_text_model"},
      {"vocab_size", text.vocab},
      {"hidden_size", text.hidden},
      {"intermediate_size", text.intermediate},
      {"num_hidden_layers", text.layers},
      {"num_attention_heads", text.heads},
      {"max_position_embeddings", text.max_position},
      {"hidden_act", "quick_gelu"},
      {"layer_norm_eps", text.layer_norm_eps},
      {"projection_dim", text.projection_dim},
      {"bos_token_id", text.bos_token_id},
      {"eos_token_id", text.eos_token_id},
      {"pad_token_id", text.pad_token_id},
  };
  return {
      {"architectures", {"CLIPModel"}},
      {"model_type", "clip"},
      {"projection_dim", text.projection_dim},
      {"logit_scale_init_value", 2.6592},
      {"initializer_factor", 1.0},
      {"text_config", t},
      {"vision_config", v},
      {"torch_dtype", "float32"},
  };
}

nlohmann::json llava_config_json(const ModelConfig& m, int64_t image_token_id) {
  const auto& v = m.vision;
  const auto& l = m.llm;
  const char* arch = l.type == "qwen2"     ? "Qwen2ForCausalLM"
                     : l.type == "mixtral" ? "MixtralForCausalLM"
                                           : "LlamaForCausalLM";
  nlohmann::json text = {
      {"model_type", l.type},
      {"architectures", {arch}},
      {"hidden_size", l.hidden},
      {"intermediate_size", l.intermediate},
      {"num_hidden_layers", l.layers},
      {"num_attention_heads", l.heads},
      {"num_key_value_heads", l.kv_heads},
      {"vocab_size", l.vocab},
      {"max_position_embeddings", l.max_position},
      {"rope_theta", l.rope_theta},
      {"rms_norm_eps", l.rms_norm_eps},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", l.tie_word_embeddings},
      {"head_dim", l.attention_head_dim()},
      {"torch_dtype", "float32"},
  };
  if (l.rope_scaling == "linear")
    text["rope_scaling"] = {
        {"rope_type", "linear"}, {"type", "linear"}, {"factor", l.rope_scaling_factor}};
  if (l.experts > 0) {
    text["num_local_experts"] = l.experts;
    text["num_experts_per_tok"] = l.experts_per_token;
    text["router_aux_loss_coef"] = l.router_aux_loss_coef;
  }
  const nlohmann::json vision = vision_config_json(v);
  const auto pinpoints = anyres_pinpoints(v.anyres, v.image_size);
  nlohmann::json grid = nlohmann::json::array();
  for (const auto& [h, w] : pinpoints) grid.push_back({h, w});
  // AnyRes: transformers' LlavaNextForConditionalGeneration (image_newline at the top level, as
  // llava-hf's llava-v1.6 checkpoints keep it).
  nlohmann::json out = {
      {"architectures",
       {pinpoints.empty() ? "LlavaForConditionalGeneration" : "LlavaNextForConditionalGeneration"}},
      {"model_type", pinpoints.empty() ? "llava" : "llava_next"},
      {"image_token_index", image_token_id},
      {"projector_hidden_act", "gelu"},
      {"vision_feature_layer", v.feature_layer},
      {"vision_feature_select_strategy", v.select == "patch" ? "default" : "full"},
      {"text_config", text},
      {"vision_config", vision},
      {"mllm_connector",
       {{"type", m.connector.type},
        {"num_queries", m.connector.num_queries},
        {"layers", m.connector.layers},
        {"heads", m.connector.heads},
        {"hidden", m.connector.hidden},
        {"pool_factor", m.connector.pool_factor},
        {"xattn_every", m.connector.xattn_every},
        {"value_positions", m.connector.value_positions},
        {"window", m.connector.window},
        {"expert_every", m.connector.expert_every},
        {"projector", m.connector.projector},
        {"prompt_length", m.connector.prompt_length},
        {"prompt_layers", m.connector.prompt_layers}}},
      {"torch_dtype", "float32"},
  };
  if (!pinpoints.empty()) out["image_grid_pinpoints"] = grid;
  return out;
}

namespace {

nlohmann::json read_json(const std::filesystem::path& path) {
  try {
    return nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": malformed JSON: " + e.what());
  }
}

// Reads t[key] into out when present; a wrong type is an Error naming the file and key.
template <typename T>
void get(const std::filesystem::path& path, const nlohmann::json& t, const char* key, T& out) {
  if (!t.contains(key) || t[key].is_null()) return;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // A float (1e30) would be cast, not checked: integers must be written as integers.
    if (!t[key].is_number_integer())
      throw Error(path.string() + ": " + key + " has the wrong type (expected an integer)");
  }
  try {
    out = t[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(path.string() + ": " + key + " has the wrong type");
  }
}

}  // namespace

namespace {

// config.json's name for a field of LlmConfig / VisionConfig, for messages.
const char* hf_llm_key(const std::string& field) {
  static const std::map<std::string, const char*> keys = {
      {"hidden", "hidden_size"},
      {"layers", "num_hidden_layers"},
      {"heads", "num_attention_heads"},
      {"kv_heads", "num_key_value_heads"},
      {"head_dim", "head_dim"},
      {"intermediate", "intermediate_size"},
      {"vocab", "vocab_size"},
      {"max_position", "max_position_embeddings"},
      {"rope_theta", "rope_theta"},
      {"rope_scaling_factor", "rope_scaling.factor"},
      {"rms_norm_eps", "rms_norm_eps"},
      {"experts", "num_local_experts"},
      {"experts_per_token", "num_experts_per_tok"},
      {"router_aux_loss_coef", "router_aux_loss_coef"}};
  const auto it = keys.find(field);
  return it == keys.end() ? "?" : it->second;
}

const char* hf_vision_key(const std::string& field) {
  static const std::map<std::string, const char*> keys = {
      {"image_size", "image_size"},
      {"patch_size", "patch_size"},
      {"hidden", "hidden_size"},
      {"layers", "num_hidden_layers"},
      {"heads", "num_attention_heads"},
      {"intermediate", "intermediate_size"},
      {"layer_norm_eps", "layer_norm_eps"},
      {"feature_layer", "vision_feature_layer"}};
  const auto it = keys.find(field);
  return it == keys.end() ? "?" : it->second;
}

void read_llm_fields(const std::filesystem::path& path, const nlohmann::json& j, LlmConfig& llm);
void read_vision_fields(const std::filesystem::path& path, const nlohmann::json& j,
                        VisionConfig& v);

}  // namespace

void read_llm_config_json(const std::filesystem::path& folder, LlmConfig& llm) {
  const auto path = folder / "config.json";
  const nlohmann::json j = read_json(path);
  try {
    read_llm_fields(path, j, llm);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": malformed config: " + json_error_message(e));
  }
  // The config's numbers meet the same rules as a recipe's, named by config.json's keys: a zero
  // num_attention_heads is an error here, not a division by zero in the model.
  if (const auto p = check_architecture(llm))
    throw Error(path.string() + ": " + (j.contains("text_config") ? "text_config." : "") +
                hf_llm_key(p.field) + ": " + p.message);
}

void read_vision_config_json(const std::filesystem::path& folder, VisionConfig& v) {
  const auto path = folder / "config.json";
  const nlohmann::json j = read_json(path);
  try {
    read_vision_fields(path, j, v);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": malformed config: " + json_error_message(e));
  }
  if (const auto p = check_architecture(v))
    throw Error(path.string() + ": " + (j.contains("vision_config") ? "vision_config." : "") +
                hf_vision_key(p.field) + ": " + p.message);
}

namespace {

void read_llm_fields(const std::filesystem::path& path, const nlohmann::json& j, LlmConfig& llm) {
  const nlohmann::json& t = j.contains("text_config") ? j["text_config"] : j;
  const std::string type = t.value("model_type", "llama");
  if (type != "llama" && type != "qwen2" && type != "mixtral")
    throw Error(path.string() + ": model_type '" + type +
                "' is not supported (llama, qwen2, mixtral)");
  llm.type = type;
  get(path, t, "hidden_size", llm.hidden);
  get(path, t, "intermediate_size", llm.intermediate);
  get(path, t, "num_hidden_layers", llm.layers);
  get(path, t, "num_attention_heads", llm.heads);
  llm.kv_heads = llm.heads;
  get(path, t, "num_key_value_heads", llm.kv_heads);
  llm.head_dim = 0;
  get(path, t, "head_dim", llm.head_dim);
  if (llm.heads > 0 && llm.head_dim == llm.hidden / llm.heads) llm.head_dim = 0;  // the default
  get(path, t, "vocab_size", llm.vocab);
  get(path, t, "max_position_embeddings", llm.max_position);
  get(path, t, "rope_theta", llm.rope_theta);
  get(path, t, "rms_norm_eps", llm.rms_norm_eps);
  // Qwen2's default is tied; LLaMA's and Mixtral's are not.
  llm.tie_word_embeddings = type == "qwen2" && !t.contains("tie_word_embeddings");
  get(path, t, "tie_word_embeddings", llm.tie_word_embeddings);
  llm.rope_scaling = "none";
  llm.rope_scaling_factor = 1.0;
  if (t.contains("rope_scaling") && !t["rope_scaling"].is_null()) {
    const auto& r = t["rope_scaling"];
    if (!r.is_object()) throw Error(path.string() + ": rope_scaling must be an object or null");
    // transformers reads "rope_type", falling back to the older "type".
    const std::string kind = r.value("rope_type", r.value("type", std::string()));
    if (kind == "linear") {
      llm.rope_scaling = "linear";
      get(path, r, "factor", llm.rope_scaling_factor);
    } else if (kind != "default") {
      throw Error(path.string() + ": rope_scaling type '" + kind +
                  "' is not supported (linear, default)");
    }
  }
  if (type == "qwen2" && t.value("use_sliding_window", false))
    throw Error(path.string() + ": use_sliding_window is not supported");
  llm.experts = 0;
  if (type == "mixtral") {
    llm.experts = 8;
    llm.experts_per_token = 2;
    llm.router_aux_loss_coef = 0.001;  // MixtralConfig's defaults
    get(path, t, "num_local_experts", llm.experts);
    get(path, t, "num_experts_per_tok", llm.experts_per_token);
    get(path, t, "router_aux_loss_coef", llm.router_aux_loss_coef);
  }
  if (t.value("hidden_act", std::string("silu")) != "silu")
    throw Error(path.string() + ": hidden_act '" + t.value("hidden_act", std::string()) +
                "' is not supported (silu)");
}

void read_vision_fields(const std::filesystem::path& path, const nlohmann::json& j,
                        VisionConfig& v) {
  // CLIPVisionModel's own config, or the vision_config of a CLIPModel / llava folder.
  const nlohmann::json& t = j.contains("vision_config") ? j["vision_config"] : j;
  const std::string type = t.value("model_type", j.value("model_type", std::string()));
  if (type != "clip_vision_model" && type != "clip" && !type.empty())
    throw Error(path.string() + ": vision model_type '" + type +
                "' is not supported (clip_vision_model)");
  // CLIPVisionConfig's defaults (save_pretrained omits values equal to them).
  v.hidden = 768;
  v.intermediate = 3072;
  v.layers = 12;
  v.heads = 12;
  v.image_size = 224;
  v.patch_size = 32;
  v.layer_norm_eps = 1e-5;
  get(path, t, "hidden_size", v.hidden);
  get(path, t, "intermediate_size", v.intermediate);
  get(path, t, "num_hidden_layers", v.layers);
  get(path, t, "num_attention_heads", v.heads);
  get(path, t, "image_size", v.image_size);
  get(path, t, "patch_size", v.patch_size);
  get(path, t, "layer_norm_eps", v.layer_norm_eps);
  int64_t channels = 3;
  get(path, t, "num_channels", channels);
  if (channels != 3) throw Error(path.string() + ": num_channels must be 3");
  const std::string act = t.value("hidden_act", std::string("quick_gelu"));
  if (act != "quick_gelu")
    throw Error(path.string() + ": hidden_act '" + act + "' is not supported (quick_gelu)");
}

}  // namespace

void read_clip_text_config_json(const std::filesystem::path& folder, ClipTextConfig& text) {
  const auto path = folder / "config.json";
  const nlohmann::json j = read_json(path);
  try {
    // A CLIPModel's text_config (projection_dim at the top), or a CLIPTextModel's own config.
    const nlohmann::json& t = j.contains("text_config") ? j["text_config"] : j;
    const std::string type = t.value("model_type", std::string("clip_text_model"));
    if (type != "clip_text_model" && type != "clip")
      throw Error(path.string() + ": text model_type '" + type +
                  "' is not supported (clip_text_model)");
    ClipTextConfig c;  // CLIPTextConfig's defaults (save_pretrained omits values equal to them)
    get(path, t, "vocab_size", c.vocab);
    get(path, t, "hidden_size", c.hidden);
    get(path, t, "intermediate_size", c.intermediate);
    get(path, t, "num_hidden_layers", c.layers);
    get(path, t, "num_attention_heads", c.heads);
    get(path, t, "max_position_embeddings", c.max_position);
    get(path, t, "layer_norm_eps", c.layer_norm_eps);
    get(path, t, "eos_token_id", c.eos_token_id);
    get(path, t, "bos_token_id", c.bos_token_id);
    get(path, t, "pad_token_id", c.pad_token_id);
    get(path, t, "projection_dim", c.projection_dim);
    get(path, j, "projection_dim", c.projection_dim);
    const std::string act = t.value("hidden_act", std::string("quick_gelu"));
    if (act != "quick_gelu")
      throw Error(path.string() + ": hidden_act '" + act + "' is not supported (quick_gelu)");
    for (const auto& [key, value] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab},
                                     {"hidden_size", c.hidden},
                                     {"intermediate_size", c.intermediate},
                                     {"num_hidden_layers", c.layers},
                                     {"num_attention_heads", c.heads},
                                     {"max_position_embeddings", c.max_position},
                                     {"projection_dim", c.projection_dim}})
      if (value <= 0 || value > (int64_t{1} << 24))
        throw Error(path.string() + ": " + key + " must be in [1, 2^24] (got " +
                    std::to_string(value) + ")");
    if (c.hidden % c.heads != 0)
      throw Error(path.string() + ": hidden_size " + std::to_string(c.hidden) +
                  " is not a multiple of num_attention_heads " + std::to_string(c.heads));
    text = c;
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": malformed config: " + json_error_message(e));
  }
}

nlohmann::json preprocessor_config_json(const ImageConfig& image, int64_t vision_image_size,
                                        const std::vector<Resolution>& pinpoints) {
  const int64_t size = image.side(vision_image_size);
  nlohmann::json out = {{"image_processor_type", "CLIPImageProcessor"},
                        {"do_resize", true},
                        {"size", {{"shortest_edge", size}}},
                        {"do_center_crop", true},
                        {"crop_size", {{"height", size}, {"width", size}}},
                        {"resample", 3},
                        {"do_rescale", true},
                        {"rescale_factor", 1.0 / 255.0},
                        {"do_normalize", true},
                        {"image_mean", image.mean},
                        {"image_std", image.std},
                        {"do_convert_rgb", true},
                        {"mllm_aspect", image.aspect}};
  if (!pinpoints.empty()) {
    out["image_processor_type"] = "LlavaNextImageProcessor";
    out["do_pad"] = true;
    nlohmann::json grid = nlohmann::json::array();
    for (const auto& [h, w] : pinpoints) grid.push_back({h, w});
    out["image_grid_pinpoints"] = grid;
  }
  return out;
}

bool read_preprocessor_config_json(const std::filesystem::path& folder, ImageConfig& image) {
  const auto file = folder / "preprocessor_config.json";
  if (!std::filesystem::is_regular_file(file)) return false;
  try {
    const auto j = nlohmann::json::parse(read_file(file));
    ImageConfig out = image;
    int64_t s = j.contains("crop_size") ? j.at("crop_size").at("height").get<int64_t>()
                                        : j.at("size").at("shortest_edge").get<int64_t>();
    out.mean = j.at("image_mean").get<std::vector<double>>();
    out.std = j.at("image_std").get<std::vector<double>>();
    out.aspect = j.value("mllm_aspect", std::string("crop"));
    if (out.mean.size() != 3 || out.std.size() != 3 || s <= 0 ||
        (out.aspect != "pad" && out.aspect != "crop" && out.aspect != "resize"))
      throw Error("unexpected values");
    out.size = s;
    image = out;
  } catch (const nlohmann::json::exception& e) {
    throw Error(file.string() + ": malformed (" + e.what() + ")");
  } catch (const Error& e) {
    throw Error(file.string() + ": " + e.what());
  }
  return true;
}

namespace {

// `read` applied to folder/tokenizer_config.json, its JSON errors one line naming the file;
// `absent` when the folder has no such file.
template <class T, class Read>
T from_tokenizer_config(const std::filesystem::path& folder, T absent, Read read) {
  const auto file = folder / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(file)) return absent;
  try {
    return read(nlohmann::json::parse(read_file(file)));
  } catch (const nlohmann::json::exception& e) {
    throw Error(file.string() + ": malformed (" + e.what() + ")");
  }
}

}  // namespace

std::string model_template(const std::filesystem::path& folder, const ModelConfig& model) {
  const std::string recorded =
      from_tokenizer_config(folder, std::string(), [](const nlohmann::json& j) -> std::string {
        if (j.contains("mllm_template")) return j.at("mllm_template").get<std::string>();
        return j.contains("chat_template") ? "hf" : "";  // a Hugging Face folder's own template
      });
  if (!recorded.empty()) return recorded;
  if (std::filesystem::is_regular_file(folder / "chat_template.jinja")) return "hf";
  return model.llm.type == "qwen2" ? "chatml" : "vicuna_v1";
}

std::optional<std::string> model_system(const std::filesystem::path& folder) {
  return from_tokenizer_config(folder, std::optional<std::string>(),
                               [](const nlohmann::json& j) -> std::optional<std::string> {
                                 if (j.contains("mllm_system"))
                                   return j.at("mllm_system").get<std::string>();
                                 return std::nullopt;
                               });
}

std::filesystem::path model_folder(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(path / "config.json", ec) || fs::exists(path / "model.safetensors", ec))
    return path;
  if (fs::is_directory(path / "final", ec)) return path / "final";
  return path;
}

}  // namespace mllm
