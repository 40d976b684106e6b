// `mllm inspect` and `mllm export` through the executable.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "fixtures.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"
#include "run_mllm.h"
#include "test_util.h"
#include "train/trainer.h"

using namespace mllm;
using mllm::test::TempDir;

namespace {

using mllm::test::Result;
using mllm::test::run_mllm;

// The streamed reply: the first line of the output that is not the log's.
std::string reply(const Result& r) {
  return mllm::test::first_reply_line(r.output);
}

torch::Tensor logits_of(MultimodalModel& m, const torch::Tensor& ids, const torch::Tensor& px) {
  torch::NoGradGuard no_grad;
  m->eval();
  return m->logits(m->forward(ids, px));
}

}  // namespace

TEST_CASE("export: a run becomes a llava folder whose reload gives exactly the same logits") {
  TempDir data("mllm-export");
  test::make_shapes(data.path(), 8, 4);
  for (const std::string connector :
       {"mlp2x_gelu", "qformer", "gated_xattn", "visual_expert", "adapter_prompt"}) {
    INFO(connector);
    Config c = test::tiny_config(data.path(), data / ("run-" + connector));
    c.model.connector.type = connector;
    c.model.connector.num_queries = 4;
    c.model.connector.heads = 2;
    c.train.max_steps = 2;
    train(c);
    const auto out = data / ("export-" + connector);
    const auto r = run_mllm("export --from " + (data / ("run-" + connector)).string() + " --out " +
                            out.string());
    INFO(r.output);
    REQUIRE(r.code == 0);
    const auto config = nlohmann::json::parse(test::read_text(out / "config.json"));
    if (connector == "mlp2x_gelu") {
      CHECK(config["architectures"][0] == "LlavaForConditionalGeneration");
      CHECK(config["model_type"] == "llava");
    } else {
      CHECK(config["model_type"] == "mllm_llava");
    }
    CHECK(config["mllm_connector"]["type"] == connector);  // with the design's settings
    CHECK(config["mllm_connector"]["prompt_length"] == c.model.connector.prompt_length);
    CHECK(std::filesystem::exists(out / "tokenizer.json"));
    CHECK(test::read_text(out / "preprocessor_config.json") ==
          test::read_text(data / ("run-" + connector) / "final" / "preprocessor_config.json"));
    CHECK(nlohmann::json::parse(test::read_text(out / "tokenizer_config.json"))["eos_token"] ==
          "</s>");
    auto trained = load_llava_folder(data / ("run-" + connector) / "final");
    auto exported = load_llava_folder(out);
    const int64_t Q = exported->image_tokens();
    std::vector<int64_t> seq{1};
    seq.insert(seq.end(), static_cast<size_t>(Q), exported->image_token_id());
    seq.insert(seq.end(), {10, 11, 12, 2});
    const auto ids = torch::tensor(seq).unsqueeze(0);
    const auto px = torch::randn({1, 3, 32, 32});
    CHECK(torch::equal(logits_of(trained, ids, px), logits_of(exported, ids, px)));
  }
  // An existing, non-empty output folder is never overwritten.
  const auto again = run_mllm("export --from " + (data / "run-mlp2x_gelu").string() + " --out " +
                              (data / "export-mlp2x_gelu").string());
  CHECK(again.code == 2);
  CHECK_THAT(again.output, Catch::Contains("exists and is not empty"));
}

TEST_CASE("inspect: parameters per component, trainable counts, visual tokens; weights listing") {
  TempDir data("mllm-inspect");
  test::make_shapes(data.path(), 8, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  c.model.connector.type = "pool";
  c.model.connector.pool_factor = 2;
  test::write_text(data / "recipe.yaml", config_to_yaml(c));
  const auto r = run_mllm("inspect --config " + (data / "recipe.yaml").string());
  INFO(r.output);
  REQUIRE(r.code == 0);
  // pool: 2x2 patches of the 4x4 grid -> 4 tokens; trainable = the projector's 2 linears.
  CHECK_THAT(r.output, Catch::Contains("pool: 4 visual tokens per image"));
  const int64_t projector = (32 * 32 + 32) + (32 * 32 + 32);
  CHECK_THAT(r.output, Catch::Contains("parameters_trainable " + std::to_string(projector)));
  CHECK_THAT(r.output, Catch::Contains("multi_modal_projector"));
  CHECK_THAT(r.output, Catch::Contains("language_model"));
  CHECK_THAT(r.output, !Catch::Contains("does not read"));
  // The resampler's settings on a pool connector: read by nothing, and said so.
  Config ignored = c;
  ignored.model.connector.window = 1.0;
  ignored.model.connector.value_positions = true;
  test::write_text(data / "ignored.yaml", config_to_yaml(ignored));
  const auto ir = run_mllm("inspect --config " + (data / "ignored.yaml").string());
  INFO(ir.output);
  CHECK(ir.code == 0);
  CHECK_THAT(ir.output, Catch::Contains("ignored.yaml:") &&
                            Catch::Contains("model.connector.type: the pool connector does not "
                                            "read value_positions, window (it reads pool_factor)"));

  // The designs inside the LLM's layers: their parts and counts (LLM width 32, 2 layers, head
  // dim 16 with 1 kv head, MLP 64; vision width 32, 16 patches).
  c.model.connector.type = "visual_expert";
  test::write_text(data / "recipe.yaml", config_to_yaml(c));
  auto e = run_mllm("inspect --config " + (data / "recipe.yaml").string());
  INFO(e.output);
  REQUIRE(e.code == 0);
  const int64_t per_layer = (32 * 32 + 2 * 32 * 16 + 32 * 32) + 3 * 32 * 64;  // q k v o, MLP
  CHECK_THAT(e.output,
             Catch::Contains("parameters_trainable " + std::to_string(projector + 2 * per_layer)));
  CHECK_THAT(e.output, Catch::Contains("visual_expert: 16 visual tokens per image (through") &&
                           Catch::Contains("connector parameters: experts"));
  c.model.connector.type = "adapter_prompt";
  c.model.connector.prompt_length = 4;
  test::write_text(data / "recipe.yaml", config_to_yaml(c));
  e = run_mllm("inspect --config " + (data / "recipe.yaml").string());
  INFO(e.output);
  REQUIRE(e.code == 0);
  const int64_t adapter = 2 * 4 * 32 + 2 * 2 + (32 * 32 + 32);  // prompts, gates, visual_proj
  CHECK_THAT(e.output, Catch::Contains("parameters_trainable " + std::to_string(adapter)));
  CHECK_THAT(e.output, Catch::Contains("adapter_prompt: 1 visual tokens per image (one") &&
                           Catch::Contains("gates") && Catch::Contains("prompts") &&
                           Catch::Contains("visual_proj"));

  const auto w = run_mllm("inspect --weights " + std::string(MLLM_SOURCE_DIR) +
                          "/tests/fixtures/hf/llama_sharded");
  CHECK(w.code == 0);
  CHECK_THAT(w.output, Catch::Contains("21 tensors in 2 file(s), 26784 parameters") &&
                           Catch::Contains("model.layers.1.mlp.down_proj.weight"));
  // A truncated file: one clear error, exit 1.
  const std::string bytes =
      test::read_text(std::string(MLLM_SOURCE_DIR) + "/tests/fixtures/hf/llama/model.safetensors");
  test::write_text(data / "cut.safetensors", bytes.substr(0, bytes.size() / 2));
  const auto cut = run_mllm("inspect --weights " + (data / "cut.safetensors").string());
  CHECK(cut.code == 1);
  CHECK_THAT(cut.output, Catch::Contains("cut.safetensors"));
}

TEST_CASE("generate: a run's model answers a prompt about an image, greedy or seeded sampling") {
  TempDir data("mllm-generate");
  test::make_shapes(data.path(), 8, 2);
  Config c = test::tiny_config(data.path(), data / "run");
  c.train.max_steps = 2;
  train(c);
  // final/ records how images were prepared (transformers' CLIPImageProcessor keys).
  ImageConfig ic;
  ic.aspect = "resize";
  REQUIRE(read_preprocessor_config_json(data / "run" / "final", ic));
  CHECK(ic.size == 32);
  CHECK(ic.aspect == c.data.image.aspect);
  CHECK(ic.mean == c.data.image.mean);
  CHECK(ic.std == c.data.image.std);
  const std::string base = "generate --checkpoint " + (data / "run").string() + " --image " +
                           (data / "images/val/000000.png").string() +
                           " --prompt 'what is in the picture?' --threads 1";
  const Result greedy = run_mllm(base + " --max-new-tokens 5");
  INFO(greedy.output);
  REQUIRE(greedy.code == 0);
  CHECK_THAT(greedy.output,
             Catch::Matches("(.|\\n)*[1-5] tokens, stopped by (length|stop_id)(.|\\n)*"));
  CHECK(reply(run_mllm(base + " --max-new-tokens 5")) == reply(greedy));  // deterministic
  CHECK_FALSE(reply(greedy).empty());
  const Result s1 = run_mllm(base + " --max-new-tokens 8 --temperature 1.5 --seed 4");
  INFO(s1.output);
  REQUIRE(s1.code == 0);
  CHECK(reply(run_mllm(base + " --max-new-tokens 8 --temperature 1.5 --seed 4")) == reply(s1));
  // The plain template (stage 1) takes the image alone.
  CHECK(run_mllm(base + " --template plain --max-new-tokens 3").code == 0);

  const Result missing =
      run_mllm("generate --checkpoint " + (data / "nowhere").string() + " --prompt hi");
  CHECK(missing.code == 2);
  CHECK_THAT(missing.output, Catch::Contains("neither a llava folder"));
  CHECK(run_mllm(base + " --top-p 0").code == 2);
}
