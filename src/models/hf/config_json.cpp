#include "models/hf/config_json.h"

#include "core/error.h"
#include "core/fs.h"

namespace mllm {

nlohmann::json llava_config_json(const ModelConfig& m, int64_t image_token_id) {
  const auto& v = m.vision;
  const auto& l = m.llm;
  nlohmann::json text = {
      {"model_type", l.type},
      {"architectures", {l.type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
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
      {"torch_dtype", "float32"},
  };
  nlohmann::json vision = {
      {"model_type", "clip_vision_model"},   {"hidden_size", v.hidden},
      {"intermediate_size", v.intermediate}, {"num_hidden_layers", v.layers},
      {"num_attention_heads", v.heads},      {"image_size", v.image_size},
      {"patch_size", v.patch_size},          {"num_channels", 3},
      {"hidden_act", "quick_gelu"},          {"layer_norm_eps", v.layer_norm_eps},
  };
  return {
      {"architectures", {"LlavaForConditionalGeneration"}},
      {"model_type", "llava"},
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
        {"pool_factor", m.connector.pool_factor}}},
      {"torch_dtype", "float32"},
  };
}

void read_llm_config_json(const std::filesystem::path& folder, LlmConfig& llm) {
  const auto path = folder / "config.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path.string() + ": malformed JSON: " + e.what());
  }
  const nlohmann::json& t = j.contains("text_config") ? j["text_config"] : j;
  const std::string type = t.value("model_type", "llama");
  if (type != "llama" && type != "qwen2")
    throw Error(path.string() + ": model_type '" + type + "' is not supported (llama, qwen2)");
  llm.type = type;
  auto get = [&](const char* key, auto& out) {
    if (!t.contains(key)) return;
    try {
      out = t[key].get<std::decay_t<decltype(out)>>();
    } catch (const nlohmann::json::exception&) {
      throw Error(path.string() + ": " + key + " has the wrong type");
    }
  };
  get("hidden_size", llm.hidden);
  get("intermediate_size", llm.intermediate);
  get("num_hidden_layers", llm.layers);
  get("num_attention_heads", llm.heads);
  llm.kv_heads = llm.heads;
  get("num_key_value_heads", llm.kv_heads);
  get("vocab_size", llm.vocab);
  get("max_position_embeddings", llm.max_position);
  get("rope_theta", llm.rope_theta);
  get("rms_norm_eps", llm.rms_norm_eps);
  get("tie_word_embeddings", llm.tie_word_embeddings);
}

}  // namespace mllm
