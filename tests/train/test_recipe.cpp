// Reading a recipe through the registries (train/recipe.h): each name a registry owns is checked
// against that registry, and a stage's own checks apply.
#include <catch2/catch.hpp>

#include "core/config.h"
#include "core/error.h"
#include "recipe_fixture.h"
#include "test_util.h"
#include "train/recipe.h"
#include "train/stage.h"

using namespace mllm;
using mllm::test::error_of;
using mllm::test::recipe;
using mllm::test::TempDir;
using mllm::test::write_text;

TEST_CASE("recipe: every registered name is accepted and every accepted name registered") {
  TempDir dir;
  write_text(dir / "pairs.json", "[]");
  const auto p = recipe(dir, "");
  // Each key the registries own, asked through the recipe loader: each registered name loads
  // (with the data a stage reads), a name off the list is refused with a suggestion.
  for (const auto& [key, names] : registered_names()) {
    INFO(key);
    REQUIRE_FALSE(names.empty());
    const bool task = key.rfind("eval.tasks[0].", 0) == 0;
    std::vector<std::string> base;
    if (task) base = {"eval.tasks=[{name: t, path: " + (dir / "train.json").string() + "}]"};
    for (const auto& name : names) {
      INFO(name);
      auto set = base;
      const std::string value = key == "eval.tasks[0].metrics" ? "[" + name + "]" : name;
      set.push_back(key + "=" + value);
      if (key == "train.stage" && find_stage(name).data == StageData::preference_pairs)
        set.push_back("data.train.format=preference_json");
      CHECK(error_of(p, set) == "");
    }
    auto set = base;
    const std::string typo = names.front() + "x";
    set.push_back(key + "=" + (key == "eval.tasks[0].metrics" ? "[" + typo + "]" : typo));
    const std::string e = error_of(p, set);
    CHECK_THAT(e, Catch::Contains(key + ": must be one of "));
    CHECK_THAT(e, Catch::Contains("did you mean '" + names.front() + "'?"));
  }
  // The lists are the registries' own.
  const auto names = registered_names();
  CHECK(names[0].second == stage_names());
  CHECK(std::find(names[0].second.begin(), names[0].second.end(), "simpo") !=
        names[0].second.end());
  // A stage's data formats come from the stage.
  CHECK_THAT(error_of(p, {"train.stage=orpo"}),
             Catch::Contains("data.train.format: 'llava_json' does not suit train.stage 'orpo' "
                             "(orpo reads preference_json or preference_jsonl or sharegpt or "
                             "sharegpt_jsonl or messages or messages_jsonl)"));
  CHECK_THAT(error_of(p, {"train.stage=dpo", "data.train.format=preference_json",
                          "train.dpo.loss_type=ipo", "train.dpo.label_smoothing=0.1"}),
             Catch::Contains("train.dpo.label_smoothing: applies to loss_type sigmoid only"));
}

TEST_CASE(
    "recipe: data.packing is for the next-token stages; preference and clip stages refuse it") {
  TempDir dir;
  write_text(dir / "pairs.json", "[]");
  const auto p = recipe(dir, "");
  CHECK(error_of(p, {"data.packing=true"}) == "");
  CHECK(error_of(p, {"data.packing=true", "train.stage=instruct"}) == "");
  CHECK_THAT(
      error_of(p, {"data.packing=true", "train.stage=dpo", "data.train.format=preference_json"}),
      Catch::Contains("data.packing: train.stage 'dpo' does not pack samples (a preference "
                      "pair is scored row against row); set data.packing: false"));
  CHECK_THAT(error_of(p, {"data.packing=true", "train.stage=clip"}),
             Catch::Contains("data.packing: train.stage 'clip' does not pack samples"));
  CHECK_THAT(error_of(p, {"data.packing=yes please"}), Catch::Contains("data.packing"));
}

TEST_CASE("recipe: data.chat_template makes the template hf; another data.template is an error") {
  TempDir dir;
  write_text(dir / "mine.jinja", "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  const auto p = recipe(dir, "");
  const std::string file = "data.chat_template=" + (dir / "mine.jinja").string();
  CHECK(load_config(p).data.template_name == "plain");  // the tokenizer's folder has none
  const Config c = load_config(p, {file});
  CHECK(c.data.template_name == "hf");
  CHECK(c.data.chat_template == (dir / "mine.jinja").string());
  CHECK(load_config(p, {file, "data.template=hf"}).data.template_name == "hf");
  CHECK_THAT(error_of(p, {file, "data.template=vicuna_v1"}),
             Catch::Contains("data.chat_template: " + (dir / "mine.jinja").string() +
                             " is rendered as the tokenizer's own template (data.template hf), "
                             "but --set data.template=vicuna_v1: data.template is vicuna_v1"));
  CHECK_THAT(error_of(p, {"data.chat_template=" + (dir / "none.jinja").string()}),
             Catch::Contains("data.chat_template: not found: "));
  CHECK_THAT(error_of(p, {"data.chat_template=" + dir.path().string()}),
             Catch::Contains("data.chat_template: "));  // a directory
}
