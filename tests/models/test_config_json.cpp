// A pretrained folder's config.json is input like any other: every architecture field is checked
// with the file and key named, never divided by or allocated from unchecked.
#include <catch2/catch.hpp>

#include <tuple>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/error.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"
#include "test_util.h"

using namespace mllm;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

const nlohmann::json kLlama = {{"model_type", "llama"},    {"hidden_size", 64},
                               {"intermediate_size", 128}, {"num_hidden_layers", 2},
                               {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                               {"vocab_size", 100},        {"max_position_embeddings", 256},
                               {"rms_norm_eps", 1e-5}};

// The message read_llm_config_json gives for kLlama with `key` set to `value` ("" if none).
std::string llm_error(const std::string& key, const nlohmann::json& value) {
  TempDir dir("mllm-cfgjson");
  nlohmann::json j = kLlama;
  j[key] = value;
  write_text(dir / "config.json", j.dump());
  LlmConfig llm;
  try {
    read_llm_config_json(dir.path(), llm);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("config.json: a sound config reads") {
  CHECK(llm_error("hidden_size", 64).empty());
  TempDir dir("mllm-cfgjson");
  write_text(dir / "config.json", kLlama.dump());
  LlmConfig llm;
  read_llm_config_json(dir.path(), llm);
  CHECK(llm.heads == 4);
  CHECK(llm.kv_heads == 2);
  CHECK(llm.rms_norm_eps == Approx(1e-5));
}

TEST_CASE("config.json: architecture fields are validated with the file and key named") {
  // Each used to divide by zero (SIGFPE), build a wrong model, or reach the allocator.
  const std::vector<std::tuple<std::string, nlohmann::json, std::string>> cases = {
      {"num_attention_heads", 0, "num_attention_heads: must be in [1, "},
      {"num_attention_heads", -4, "num_attention_heads: must be in [1, "},
      {"num_attention_heads", 3, "num_attention_heads: the attention head dimension"},
      {"num_key_value_heads", 3, "num_key_value_heads: heads (4) must be a multiple of kv_heads"},
      {"num_key_value_heads", 0, "num_key_value_heads: must be in [1, "},
      {"hidden_size", 0, "hidden_size: must be in [1, "},
      {"hidden_size", 1000000000000LL, "hidden_size: must be in [1, 131072]"},
      {"hidden_size", 1e30, "hidden_size has the wrong type (expected an integer)"},
      {"hidden_size", "64", "hidden_size has the wrong type"},
      {"rms_norm_eps", "x", "rms_norm_eps has the wrong type"},
      {"head_dim", 7, "head_dim: the attention head dimension"},
      {"vocab_size", 100000000000000LL, "vocab_size: must be in [1, "},
      {"num_hidden_layers", 0, "num_hidden_layers: must be in [1, "},
      {"rms_norm_eps", 0, "rms_norm_eps: must be in (0, 1]"},
      {"rope_theta", -1, "rope_theta: must be in (0, "},
      {"model_type", 7, "malformed config: "},
  };
  for (const auto& [key, value, expect] : cases) {
    INFO(key << " = " << value.dump());
    const std::string e = llm_error(key, value);
    CHECK_THAT(e, Catch::Contains("config.json: ") && Catch::Contains(expect));
  }
}

TEST_CASE("config.json: a llava folder's text_config and vision_config keys are named in full") {
  TempDir dir("mllm-cfgjson");
  nlohmann::json text = kLlama;
  text["num_attention_heads"] = 0;
  write_text(dir / "config.json", nlohmann::json{{"text_config", text}}.dump());
  LlmConfig llm;
  CHECK_THROWS_WITH(read_llm_config_json(dir.path(), llm),
                    Catch::Contains("config.json: text_config.num_attention_heads: must be"));

  write_text(
      dir / "config.json",
      nlohmann::json{{"vision_config", {{"hidden_size", 64}, {"num_attention_heads", 0}}}}.dump());
  VisionConfig v;
  CHECK_THROWS_WITH(read_vision_config_json(dir.path(), v),
                    Catch::Contains("config.json: vision_config.num_attention_heads: must be"));
  write_text(dir / "config.json",
             nlohmann::json{{"hidden_size", 64}, {"num_attention_heads", 5}}.dump());
  CHECK_THROWS_WITH(read_vision_config_json(dir.path(), v),
                    Catch::Contains("num_attention_heads: hidden (64) must be divisible"));
  write_text(dir / "config.json", nlohmann::json{{"image_size", 224}, {"patch_size", 0}}.dump());
  CHECK_THROWS_WITH(read_vision_config_json(dir.path(), v),
                    Catch::Contains("config.json: patch_size: must be in [1, 224]"));
}

TEST_CASE("recipes: the same architecture rules, with the recipe's key paths") {
  LlmConfig l;
  CHECK_FALSE(check_architecture(l));
  l.hidden = 1000000000000LL;
  CHECK(check_architecture(l).field == "hidden");
  l = LlmConfig{};
  l.heads = 0;
  CHECK(check_architecture(l).field == "heads");
  l = LlmConfig{};
  l.kv_heads = 3;
  CHECK(check_architecture(l).field == "kv_heads");
  l = LlmConfig{};
  l.type = "mixtral";
  CHECK(check_architecture(l).field == "experts");
  VisionConfig v;
  CHECK_FALSE(check_architecture(v));
  v.image_size = 60;  // patch 8
  CHECK(check_architecture(v).field == "patch_size");
}

TEST_CASE("model_folder: a folder with weights or config.json, else a run directory's final/") {
  namespace fs = std::filesystem;
  TempDir dir("mllm-modelfolder");
  const fs::path run = dir / "run", final_dir = run / "final", step = run / "checkpoints/step-2";
  fs::create_directories(final_dir);
  fs::create_directories(step);
  // A run directory (config.yaml, no weights of its own) names its final/.
  std::ofstream(run / "config.yaml") << "run: {}\n";
  CHECK(mllm::model_folder(run) == final_dir);
  // A checkpoint holds model.safetensors and no config.json: it is itself.
  std::ofstream(step / "model.safetensors") << "x";
  CHECK(mllm::model_folder(step) == step);
  // A llava folder is itself, even when something inside is called final/.
  std::ofstream(final_dir / "config.json") << "{}";
  fs::create_directories(final_dir / "final");
  CHECK(mllm::model_folder(final_dir) == final_dir);
  // Nothing to find: unchanged, for the caller to say what is missing.
  CHECK(mllm::model_folder(dir / "nowhere") == dir / "nowhere");
  fs::remove_all(final_dir);
  CHECK(mllm::model_folder(run) == run);
}

TEST_CASE("ImageConfig::side: data.image.size, else the vision tower's") {
  mllm::ImageConfig image;
  CHECK(image.side(336) == 336);
  image.size = 224;
  CHECK(image.side(336) == 224);
}

TEST_CASE("config.json: a CLIP text tower reads with CLIPTextConfig's defaults, or says why not") {
  TempDir dir("mllm-cfgjson");
  auto read = [&](const nlohmann::json& j) {
    write_text(dir / "config.json", j.dump());
    ClipTextConfig t;
    read_clip_text_config_json(dir.path(), t);
    return t;
  };
  // A CLIPModel: the text_config's own fields, projection_dim at the top.
  const ClipTextConfig t = read(
      {{"model_type", "clip"},
       {"projection_dim", 24},
       {"text_config", {{"hidden_size", 48}, {"num_attention_heads", 6}, {"vocab_size", 99}}}});
  CHECK(t.hidden == 48);
  CHECK(t.heads == 6);
  CHECK(t.vocab == 99);
  CHECK(t.projection_dim == 24);
  CHECK(t.layers == 12);  // absent: CLIPTextConfig's
  CHECK(t.max_position == 77);
  CHECK(t.eos_token_id == 49407);
  // A CLIPTextModel's own config.
  CHECK(read({{"model_type", "clip_text_model"}, {"num_hidden_layers", 2}}).layers == 2);
  auto error = [&](const nlohmann::json& j) {
    try {
      read(j);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK_THAT(error({{"model_type", "bert"}}), Catch::Contains("text model_type 'bert'"));
  CHECK_THAT(error({{"hidden_size", 50}, {"num_attention_heads", 8}}),
             Catch::Contains("hidden_size 50 is not a multiple of num_attention_heads 8"));
  CHECK_THAT(error({{"num_hidden_layers", 0}}),
             Catch::Contains("num_hidden_layers must be in [1, 2^24] (got 0)"));
  CHECK_THAT(error({{"vocab_size", "many"}}), Catch::Contains("vocab_size has the wrong type"));
  CHECK_THAT(error({{"hidden_act", "gelu"}}),
             Catch::Contains("hidden_act 'gelu' is not supported"));
}

TEST_CASE("config.json: a llava folder's connector settings are bounded as a recipe's") {
  TempDir dir("mllm-cfgjson");
  ModelConfig m;
  m.connector.type = "visual_expert";
  m.connector.expert_every = 2;
  const nlohmann::json good = llava_config_json(m, 5);
  write_text(dir / "config.json", good.dump());
  int64_t image_id = -1;
  CHECK(read_llava_config_json(dir.path(), &image_id).connector.expert_every == 2);
  for (const char* key : {"expert_every", "xattn_every", "prompt_length", "pool_factor"}) {
    INFO(key);
    nlohmann::json bad = good;
    bad["mllm_connector"][key] = 0;  // a modulo or a division by it otherwise
    write_text(dir / "config.json", bad.dump());
    CHECK_THROWS_WITH(read_llava_config_json(dir.path(), &image_id),
                      Catch::Contains("mllm_connector." + std::string(key) + ": must be in [1, "));
  }
  // Sizes past any design are refused before they reach the allocator (a resampler of 10^10
  // queries, a connector 10^8 wide), naming the key.
  for (const auto& [key, value, message] :
       {std::tuple{"num_queries", int64_t{100000} * 100000, "must be in [0, 16384]"},
        std::tuple{"hidden", int64_t{100000000}, "must be in [0, 131072]"},
        std::tuple{"prompt_length", int64_t{1} << 40, "must be in [1, 16384]"},
        std::tuple{"prompt_layers", int64_t{-1}, "must be in [0, 1024] (got -1)"},
        std::tuple{"heads", int64_t{1} << 20, "must be in [1, 1024]"}}) {
    INFO(key);
    nlohmann::json huge = good;
    huge["mllm_connector"][key] = value;
    write_text(dir / "config.json", huge.dump());
    CHECK_THROWS_WITH(read_llava_config_json(dir.path(), &image_id),
                      Catch::Contains("mllm_connector." + std::string(key) + ": " + message));
  }
  // Within the bounds, prompts still may not outnumber the LLM's positions (2048 by default).
  nlohmann::json bad = good;
  bad["mllm_connector"]["prompt_length"] = 4000;
  write_text(dir / "config.json", bad.dump());
  CHECK_THROWS_WITH(read_llava_config_json(dir.path(), &image_id),
                    Catch::Contains("mllm_connector.prompt_length 4000 exceeds"));
  // The resampler's window round-trips; a negative one (or NaN: null) is refused.
  {
    ModelConfig r;
    r.connector.type = "resampler";
    r.connector.window = 1.5;
    write_text(dir / "config.json", llava_config_json(r, 5).dump());
    CHECK(read_llava_config_json(dir.path(), &image_id).connector.window == 1.5);
    nlohmann::json w = llava_config_json(r, 5);
    w["mllm_connector"]["window"] = -1;
    write_text(dir / "config.json", w.dump());
    CHECK_THROWS_WITH(read_llava_config_json(dir.path(), &image_id),
                      Catch::Contains("mllm_connector.window: must be in [0, 1000]"));
  }
  // The projector under the experts round-trips, and only a token-level design is read.
  m.connector.projector = "resampler";
  write_text(dir / "config.json", llava_config_json(m, 5).dump());
  REQUIRE(read_llava_config_json(dir.path(), &image_id).connector.projector == "resampler");
  bad = good;
  bad["mllm_connector"]["projector"] = "gated_xattn";
  write_text(dir / "config.json", bad.dump());
  CHECK_THROWS_WITH(read_llava_config_json(dir.path(), &image_id),
                    Catch::Contains("mllm_connector.projector 'gated_xattn' is not a token-level "
                                    "connector (linear, mlp2x_gelu, qformer, resampler, pool)"));
}

// (REQUIRE: this file's CHECK is glog's where ATen's headers follow catch.hpp.)
TEST_CASE("a model folder's template and system prompt come from its tokenizer_config.json") {
  TempDir dir("mllm-cfgjson");
  ModelConfig m;
  REQUIRE(model_template(dir.path(), m) == "vicuna_v1");  // LLaVA-1.5's, for a LLaMA LLM
  CHECK_FALSE(model_system(dir.path()).has_value());      // no file: the template's own
  write_text(dir / "tokenizer_config.json", R"({"mllm_template": "llama_2", "mllm_system": ""})");
  REQUIRE(model_template(dir.path(), m) == "llama_2");
  REQUIRE(model_system(dir.path()) == std::optional<std::string>(""));
  write_text(dir / "tokenizer_config.json", R"({"mllm_template": "chatml"})");
  CHECK_FALSE(model_system(dir.path()).has_value());
  write_text(dir / "tokenizer_config.json", R"({"mllm_system": 3})");
  CHECK_THROWS_WITH(model_system(dir.path()), Catch::Contains("tokenizer_config.json: malformed"));
  write_text(dir / "tokenizer_config.json", "{");
  CHECK_THROWS_WITH(model_system(dir.path()), Catch::Contains("tokenizer_config.json: malformed"));
}
