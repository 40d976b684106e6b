// train.init_from takes the shape-free architecture numbers from the folder it names, or refuses a
// recipe that disagrees with them.
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>
#include <sstream>

#include "core/config.h"
#include "core/error.h"
#include "models/hf/config_json.h"
#include "test_util.h"
#include "train/init_from.h"

using namespace mllm;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

// A final/ folder written by a run whose LLM used LLaMA's eps and a scaled RoPE.
ModelConfig folder_model() {
  ModelConfig m;
  m.llm.rms_norm_eps = 1e-5;
  m.llm.rope_theta = 500000;
  m.llm.rope_scaling = "linear";
  m.llm.rope_scaling_factor = 4;
  m.vision.layer_norm_eps = 1e-6;
  m.vision.feature_layer = -1;
  m.vision.select = "cls_patch";
  return m;
}

Config recipe_with(const std::filesystem::path& from) {
  Config c;
  c.source = "stage2.yaml";
  c.train.init_from = from.string();
  return c;
}

}  // namespace

TEST_CASE("init_from: values the recipe leaves out come from the folder's config.json") {
  TempDir dir("mllm-initfrom");
  write_text(dir / "run/final/config.json", llava_config_json(folder_model(), 3).dump());
  // The run directory and its final/ both resolve.
  for (const auto& from : {dir / "run", dir / "run/final"}) {
    Config c = recipe_with(from);
    REQUIRE(c.model.llm.rms_norm_eps == Approx(1e-6));  // the recipe default, which differs
    adopt_init_from_architecture(c);
    CHECK(c.model.llm.rms_norm_eps == Approx(1e-5));
    CHECK(c.model.llm.rope_theta == Approx(500000));
    CHECK(c.model.llm.rope_scaling == "linear");
    CHECK(c.model.llm.rope_scaling_factor == Approx(4));
    CHECK(c.model.vision.layer_norm_eps == Approx(1e-6));
    CHECK(c.model.vision.feature_layer == -1);
    CHECK(c.model.vision.select == "cls_patch");
  }
}

TEST_CASE("init_from: a recipe value that disagrees is refused, naming both files and keys") {
  TempDir dir("mllm-initfrom");
  write_text(dir / "final/config.json", llava_config_json(folder_model(), 3).dump());
  Config c = recipe_with(dir / "final");
  c.origin["model.llm.rms_norm_eps"] = "stage2.yaml:14";
  CHECK_THROWS_AS(adopt_init_from_architecture(c), ConfigError);
  CHECK_THROWS_WITH(adopt_init_from_architecture(c),
                    Catch::Contains("stage2.yaml:14: model.llm.rms_norm_eps = 1e-06") &&
                        Catch::Contains("config.json: text_config.rms_norm_eps = 1e-05"));
  // Agreeing is fine.
  c.model.llm.rms_norm_eps = 1e-5;
  c.origin["model.vision.select"] = "stage2.yaml:9";
  c.model.vision.select = "cls_patch";
  adopt_init_from_architecture(c);
  CHECK(c.model.llm.rope_theta == Approx(500000));
}

TEST_CASE("init_from: a pretrained LLM whose config.json disagrees with init_from's is refused") {
  TempDir dir("mllm-initfrom");
  write_text(dir / "final/config.json", llava_config_json(folder_model(), 3).dump());
  ModelConfig base = folder_model();
  base.llm.rms_norm_eps = 1e-6;
  write_text(dir / "base/config.json", llava_config_json(base, 3).dump());
  Config c = recipe_with(dir / "final");
  c.model.llm.pretrained = (dir / "base").string();
  CHECK_THROWS_WITH(adopt_init_from_architecture(c),
                    Catch::Contains("base/config.json") && Catch::Contains("1e-06") &&
                        Catch::Contains("final/config.json: text_config.rms_norm_eps = 1e-05"));
}

TEST_CASE("init_from: a checkpoint's architecture is its run's config.yaml") {
  TempDir dir("mllm-initfrom");
  write_text(dir / "run/checkpoints/step-000010/trainer_state.json", "{}");
  Config written;
  written.model = folder_model();
  written.model.connector.type = "resampler";
  written.model.connector.window = 1.5;
  written.model.connector.value_positions = true;
  write_text(dir / "run/config.yaml", config_to_yaml(written));
  Config c = recipe_with(dir / "run/checkpoints/step-000010");
  c.model.connector.type = "resampler";
  adopt_init_from_architecture(c);
  CHECK(c.model.llm.rms_norm_eps == Approx(1e-5));
  CHECK(c.model.vision.select == "cls_patch");
  CHECK(c.model.connector.window == Approx(1.5));
  CHECK(c.model.connector.value_positions);
}

namespace {

// What spdlog writes while `f` runs.
template <typename F>
std::string logged(F&& f) {
  std::ostringstream out;
  const auto before = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "captured", std::make_shared<spdlog::sinks::ostream_sink_st>(out)));
  try {
    f();
  } catch (...) {
    spdlog::set_default_logger(before);
    throw;
  }
  spdlog::set_default_logger(before);
  return out.str();
}

ModelConfig resampler_folder() {
  ModelConfig m;
  m.connector.type = "resampler";
  m.connector.num_queries = 9;
  m.connector.window = 1.5;
  m.connector.value_positions = true;
  return m;
}

}  // namespace

TEST_CASE("init_from: the resampler's window and value_positions come from the folder") {
  TempDir dir("mllm-initfrom");
  write_text(dir / "final/config.json", llava_config_json(resampler_folder(), 3).dump());
  Config c = recipe_with(dir / "final");
  c.model.connector.type = "resampler";
  adopt_init_from_architecture(c);
  CHECK(c.model.connector.window == Approx(1.5));
  CHECK(c.model.connector.value_positions);

  // Stated otherwise in the recipe: kept (a design choice), and said with both values.
  Config stated = recipe_with(dir / "final");
  stated.model.connector.type = "resampler";
  stated.model.connector.window = 1.0;
  stated.origin["model.connector.window"] = "stage2.yaml:20";
  const std::string log = logged([&] { adopt_init_from_architecture(stated); });
  CHECK(stated.model.connector.window == Approx(1.0));
  CHECK(stated.model.connector.value_positions);  // not stated: the folder's
  CHECK_THAT(log, Catch::Contains("stage2.yaml:20: model.connector.window = 1") &&
                      Catch::Contains("mllm_connector.window = 1.5"));

  // Another design: the resampler's settings are not its own and stay as the recipe has them.
  Config other = recipe_with(dir / "final");
  other.model.connector.type = "mlp2x_gelu";
  adopt_init_from_architecture(other);
  CHECK(other.model.connector.window == Approx(0));
  CHECK_FALSE(other.model.connector.value_positions);
}
