#include <catch2/catch.hpp>

#include "core/config.h"
#include "core/error.h"
#include "core/strings.h"
#include "recipe_fixture.h"
#include "test_util.h"
#include "train/recipe.h"

using namespace mllm;
using mllm::test::error_of;
using mllm::test::recipe;
using mllm::test::TempDir;
using mllm::test::write_text;

TEST_CASE("config: defaults fill what a recipe leaves out") {
  TempDir dir;
  const Config c = load_config(recipe(dir, "train:\n  lr: 2.0e-5\n  batch_size: 4\n"));
  CHECK(c.train.lr == Approx(2e-5));
  CHECK(c.train.batch_size == 4);
  CHECK(c.train.grad_accum == 1);
  CHECK(c.model.vision.feature_layer == -2);
  CHECK(c.model.connector.type == "mlp2x_gelu");
  CHECK(c.output_dir() == std::filesystem::path("runs/run"));
}

TEST_CASE("config: an unknown key names the file, line, key path and a suggestion") {
  TempDir dir;
  const auto p = recipe(dir, "train:\n  batch_size: 4\n  lrr: 0.1\n");
  const std::string e = error_of(p);
  CHECK_THAT(e, Catch::Contains(p.string() + ":8"));
  CHECK_THAT(e, Catch::Contains("train.lrr: unknown key"));
  CHECK_THAT(e, Catch::Contains("did you mean train.lr?"));
}

TEST_CASE("config: a key in the wrong section suggests the right one") {
  TempDir dir;
  CHECK_THAT(error_of(recipe(dir, "train:\n  seed: 3\n")),
             Catch::Contains("did you mean run.seed?"));
}

TEST_CASE("config: unknown top-level section is an error") {
  TempDir dir;
  CHECK_THAT(error_of(recipe(dir, "trian:\n  lr: 1\n")),
             Catch::Contains("trian: unknown key (did you mean train?)"));
}

TEST_CASE("config: wrong types are reported with the offending value") {
  TempDir dir;
  CHECK_THAT(error_of(recipe(dir, "train:\n  lr: fast\n")),
             Catch::Contains("train.lr: expected a number, got 'fast'"));
  CHECK_THAT(error_of(recipe(dir, "train:\n  batch_size: 2.5\n")),
             Catch::Contains("train.batch_size: expected an integer, got '2.5'"));
  CHECK_THAT(error_of(recipe(dir, "train:\n  trainable: projector\n")),
             Catch::Contains("train.trainable: expected a list"));
  CHECK_THAT(error_of(recipe(dir, "run: 3\n")), Catch::Contains("run: expected a mapping"));
}

TEST_CASE("config: values out of range and bad choices") {
  TempDir dir;
  CHECK_THAT(error_of(recipe(dir, "train:\n  lr: -1\n")),
             Catch::Contains("train.lr: must be in (0"));
  CHECK_THAT(error_of(recipe(dir, "train:\n  batch_size: 0\n")),
             Catch::Contains("train.batch_size: must be >= 1 (got 0)"));
  CHECK_THAT(error_of(recipe(dir, "train:\n  schedule: cosin\n")),
             Catch::Contains("did you mean 'cosine'?"));
  CHECK_THAT(error_of(recipe(dir, "train:\n  betas: [0.9]\n")), Catch::Contains("train.betas"));
  CHECK_THAT(error_of(recipe(dir, "", "  llm: {heads: 4, kv_heads: 3}\n")),
             Catch::Contains("model.llm.kv_heads"));
}

TEST_CASE("config: connector settings are read, range-checked and written back") {
  TempDir dir;
  const auto p = recipe(
      dir, "", "  connector: {type: qformer, num_queries: 64, layers: 3, heads: 4, hidden: 96}\n");
  const Config c = load_config(p);
  CHECK(c.model.connector.type == "qformer");
  CHECK(c.model.connector.num_queries == 64);
  CHECK(c.model.connector.layers == 3);
  CHECK(c.model.connector.heads == 4);
  CHECK(c.model.connector.hidden == 96);
  CHECK(c.model.connector.pool_factor == 2);  // default
  const std::string yaml = config_to_yaml(c);
  CHECK_THAT(yaml, Catch::Contains("num_queries: 64") && Catch::Contains("hidden: 96"));
  CHECK(load_config(p, {"model.connector.type=pool", "model.connector.pool_factor=4"})
            .model.connector.pool_factor == 4);
  CHECK_THAT(error_of(p, {"model.connector.heads=0"}),
             Catch::Contains("model.connector.heads: must be >= 1 (got 0)"));
  CHECK_THAT(error_of(p, {"model.connector.hidden=-8"}),
             Catch::Contains("model.connector.hidden: must be >= 0"));
  CHECK_THAT(error_of(p, {"model.connector.type=resampeler"}),
             Catch::Contains("did you mean 'resampler'?"));
  CHECK_THAT(error_of(p, {"model.connector.num_query=8"}),
             Catch::Contains("did you mean model.connector.num_queries?"));
  CHECK_THAT(error_of(p, {"model.vision.position_init_std=-0.1"}),
             Catch::Contains("model.vision.position_init_std: must be in [0, 10]"));
  // AnyRes: pinpoints are [height, width] multiples of the tile (image_size 32 in this recipe).
  CHECK_FALSE(c.model.vision.anyres.enabled());
  const Config any = load_config(
      p, {"model.vision.image_size=32", "model.vision.anyres.grid_pinpoints=[[32,64],[64,32]]"});
  REQUIRE(any.model.vision.anyres.grid_pinpoints.size() == 2);
  CHECK(any.model.vision.anyres.grid_pinpoints[1] == std::vector<int64_t>{64, 32});
  CHECK_THAT(config_to_yaml(any), Catch::Contains("grid_pinpoints"));
  CHECK(load_config(p, {"model.vision.anyres.max_tiles=4"}).model.vision.anyres.enabled());
  CHECK_THAT(error_of(p, {"model.vision.image_size=32",
                          "model.vision.anyres.grid_pinpoints=[[32,64],[48,32]]"}),
             Catch::Contains("model.vision.anyres.grid_pinpoints[1]: must be [height, width], "
                             "multiples of image_size (32)"));
  CHECK_THAT(error_of(p, {"model.vision.anyres.grid_pinpoints=[[32]]"}),
             Catch::Contains("model.vision.anyres.grid_pinpoints[0]"));
  CHECK_THAT(error_of(p, {"model.vision.anyres.grid_pinpoints=[[a,b]]"}),
             Catch::Contains("model.vision.anyres.grid_pinpoints[0][0]"));
  CHECK_THAT(error_of(p, {"model.vision.anyres.max_tiles=65"}),
             Catch::Contains("model.vision.anyres.max_tiles"));
  CHECK(c.model.connector.projector == "mlp2x_gelu");  // CogVLM's, under visual_expert
  CHECK(load_config(p, {"model.connector.projector=resampler"}).model.connector.projector ==
        "resampler");
  CHECK_THAT(error_of(p, {"model.connector.projector=gated_xattn"}),
             Catch::Contains("model.connector.projector"));
  CHECK(!c.model.connector.value_positions);  // Qwen-VL's resampler: positions on the keys only
  CHECK(load_config(p, {"model.connector.value_positions=true"}).model.connector.value_positions);
  CHECK_THAT(error_of(p, {"model.connector.value_positions=sometimes"}),
             Catch::Contains("model.connector.value_positions"));
  CHECK(c.model.connector.window == 0);  // Qwen-VL's resampler: every query reads every patch
  CHECK(load_config(p, {"model.connector.window=1.5"}).model.connector.window == 1.5);
  CHECK_THAT(error_of(p, {"model.connector.window=-1"}), Catch::Contains("model.connector.window"));
}

TEST_CASE("config: a key that is a list or a mapping is a config error with its line") {
  // Such keys once escaped as yaml-cpp's TypedBadConversion instead of a ConfigError.
  TempDir dir;
  CHECK_THROWS_AS(load_config(recipe(dir, "train: {lr: 0.1, {epochs: 2}: 1}\n")), ConfigError);
  CHECK_THROWS_WITH(load_config(recipe(dir, "train: {lr: 0.1, {epochs: 2}: 1}\n")),
                    Catch::Contains("recipe.yaml:6: train: a key must be a name, got a mapping"));
  CHECK_THROWS_AS(load_config(recipe(dir, "[run]: 1\n")), ConfigError);
  CHECK_THROWS_AS(load_config(recipe(dir, ""), {"train={[1]: 2}"}), ConfigError);
}

TEST_CASE("config: a missing file names the key and the path") {
  TempDir dir;
  const std::string e = error_of(recipe(dir, "", "  llm: {pretrained: /nonexistent/llm}\n"));
  CHECK_THAT(e, Catch::Contains("model.llm.pretrained: not found: /nonexistent/llm"));
  CHECK_THAT(error_of(dir / "nope.yaml"), Catch::Contains("nope.yaml: config file not found"));
}

TEST_CASE("config: malformed YAML gives the line") {
  TempDir dir;
  write_text(dir / "bad.yaml", "train:\n  lr: [1, 2\n");
  CHECK_THAT(error_of(dir / "bad.yaml"),
             Catch::Contains("bad.yaml:") && Catch::Contains("invalid YAML"));
}

TEST_CASE("config: --set overrides are applied and type-checked the same way") {
  TempDir dir;
  const auto p = recipe(dir, "train:\n  lr: 0.1\n");
  const Config c = load_config(p, {"train.lr=2e-5", "model.connector.type=linear",
                                   "train.trainable=[\"a.*\", \"b.*\"]", "run.threads=auto"});
  CHECK(c.train.lr == Approx(2e-5));
  CHECK(c.model.connector.type == "linear");
  CHECK(c.train.trainable == std::vector<std::string>{"a.*", "b.*"});
  CHECK(c.run.threads == 0);
  CHECK(c.where("train.lr") == "--set train.lr=2e-5: train.lr");

  CHECK_THAT(error_of(p, {"train.lr=abc"}),
             Catch::Contains("--set train.lr=abc: train.lr: expected a number"));
  CHECK_THAT(error_of(p, {"train.lrr=1"}),
             Catch::Contains("--set train.lrr=1: train.lrr: unknown key (did you mean train.lr?)"));
  CHECK_THAT(error_of(p, {"train.lr"}), Catch::Contains("expected key.path=value"));
}

TEST_CASE("config: the resolved YAML reads back to the same config") {
  TempDir dir;
  const Config a =
      load_config(recipe(dir, "train:\n  lr: 3.0e-4\n  trainable: [\"x.*\"]\nrun:\n  name: r1\n"),
                  {"model.llm.layers=7"});
  write_text(dir / "resolved.yaml", config_to_yaml(a));
  const Config b = load_config(dir / "resolved.yaml");
  CHECK(config_to_yaml(b) == config_to_yaml(a));
  CHECK(b.train.lr == a.train.lr);
  CHECK(b.model.llm.layers == 7);
  CHECK(b.train.trainable == a.train.trainable);
  CHECK(b.run.name == "r1");
}

TEST_CASE("config: data.system is unset, empty or a prompt, and refused where there is none") {
  TempDir dir;
  const auto p = recipe(dir, "  template: vicuna_v1\n");
  CHECK_FALSE(load_config(p).data.system.has_value());  // the template's own
  const Config none = load_config(p, {"data.system=\"\""});
  REQUIRE(none.data.system.has_value());
  CHECK(none.data.system->empty());
  CHECK(load_config(p, {"data.system=Be brief."}).data.system ==
        std::optional<std::string>("Be brief."));
  CHECK_FALSE(load_config(p, {"data.system=null"}).data.system.has_value());
  // Written back, "" stays "" (no system prompt), not null (the template's).
  write_text(dir / "resolved.yaml", config_to_yaml(none));
  CHECK(load_config(dir / "resolved.yaml").data.system == std::optional<std::string>(""));
  CHECK_THAT(error_of(p, {"data.template=plain", "data.system=Be brief."}),
             Catch::Contains("data.system: the plain template has no system prompt"));
  CHECK_THAT(error_of(p, {"data.system=[a, b]"}),
             Catch::Contains("data.system: expected a string"));
}

TEST_CASE("config: edit distance") {
  CHECK(edit_distance("lr", "lrr") == 1);
  CHECK(edit_distance("kitten", "sitting") == 3);
  CHECK(edit_distance("", "abc") == 3);
}

TEST_CASE("config: the shipped recipes load, with the LLaVA-1.5 anchor hyperparameters") {
  TempDir dir("mllm-recipes");
  std::filesystem::create_directories(dir / "folder");
  write_text(dir / "file.json", "[]");
  const std::string folder = (dir / "folder").string(), file = (dir / "file.json").string();
  // Point every path at something that exists here; the rest is the recipe's own.
  auto load = [&](const std::string& name) {
    const std::string text = test::read_text(std::string(MLLM_SOURCE_DIR) + "/configs/" + name);
    auto has = [&](const std::string& s) { return text.find(s) != std::string::npos; };
    std::vector<std::string> set = {"model.tokenizer=" + file};
    if (has("  train:\n    - {"))  // a mixture of two sources
      for (const char* at : {"data.train[0].", "data.train[1]."})
        set.insert(set.end(),
                   {at + std::string("path=") + file, at + std::string("image_root=") + folder});
    else
      set.insert(set.end(), {"data.train.path=" + file, "data.train.image_root=" + folder});
    if (has("eval:"))
      set.insert(set.end(), {"data.eval.path=" + file, "data.eval.image_root=" + folder});
    if (has("llm: {type: llama, pretrained") || has("llm: {type: qwen2, pretrained"))
      set.push_back("model.llm.pretrained=" + folder);
    if (has("vision: {type: clip_vit, pretrained"))
      set.push_back("model.vision.pretrained=" + folder);
    if (has("init_from:")) set.push_back("train.init_from=" + folder);
    if (has("\n  tasks:"))  // generation tasks during training
      set.insert(set.end(), {"eval.tasks[0].path=" + file, "eval.tasks[0].image_root=" + folder});
    INFO(name);
    return load_config(std::string(MLLM_SOURCE_DIR) + "/configs/" + name, set);
  };
  for (const char* name : {"shapes/stage0_text.yaml", "shapes/stage1_pretrain.yaml"})
    CHECK(load(name).train.stage == "pretrain");
  const Config s2 = load("shapes/stage2_instruct.yaml");
  CHECK(s2.train.stage == "instruct");
  CHECK(s2.data.template_name == "vicuna_v1");
  // The questions, and a quarter epoch of captions so that it keeps captioning.
  REQUIRE(s2.data.mixture.size() == 2);
  CHECK(s2.data.mixture[0].epochs == 1);
  CHECK(s2.data.mixture[1].epochs == 0.25);
  const Config s3 = load("shapes/stage3_dpo.yaml");
  CHECK(s3.train.stage == "dpo");
  CHECK(s3.data.train.format == "preference_json");
  CHECK(s3.train.dpo.beta == 0.1);
  const Config orpo = load("shapes/stage3_orpo.yaml");
  CHECK(orpo.train.stage == "orpo");
  CHECK(orpo.train.orpo.beta == 0.5);
  const Config simpo = load("shapes/stage3_simpo.yaml");
  CHECK(simpo.train.stage == "simpo");
  CHECK(simpo.train.simpo.gamma == 1.0);
  CHECK(simpo.data.train.format == "preference_json");

  for (const char* llm : {"vicuna7b", "qwen2_0.5b"}) {
    const Config pre = load(std::string("llava15/pretrain_") + llm + ".yaml");
    const Config fin = load(std::string("llava15/finetune_") + llm + ".yaml");
    CHECK(pre.train.lr == 1e-3);
    CHECK(pre.train.batch_size * pre.train.grad_accum == 256);
    CHECK(pre.train.trainable == std::vector<std::string>{"multi_modal_projector.*"});
    CHECK(pre.data.template_name == "plain");
    CHECK(fin.train.lr == 2e-5);
    // The 7B fine-tune is laid out for 8 ranks with ZeRO-3 (what fits 8 x 40 GB; the memory plan
    // test holds it to that), the 0.5B one for a single GPU.
    const bool seven = std::string(llm) == "vicuna7b";
    CHECK(fin.train.batch_size * fin.train.grad_accum * (seven ? 8 : 1) == 128);
    CHECK(fin.train.sharding == (seven ? "parameters" : "none"));
    CHECK(fin.train.stage == "instruct");
    CHECK(fin.data.template_name == (std::string(llm) == "vicuna7b" ? "vicuna_v1" : "chatml"));
    for (const Config* c : {&pre, &fin}) {
      CHECK(c->train.epochs == 1);
      CHECK(c->train.warmup_ratio == 0.03);
      CHECK(c->train.schedule == "cosine");
      CHECK(c->train.weight_decay == 0.0);
      CHECK(c->data.max_length == 2048);
      CHECK(c->train.precision == "bf16");
      CHECK(c->model.connector.type == "mlp2x_gelu");
      CHECK(c->model.vision.feature_layer == -2);
      CHECK(c->model.llm.type == (std::string(llm) == "vicuna7b" ? "llama" : "qwen2"));
    }
  }
}

TEST_CASE("config: eval tasks are a list of sections, checked like the rest") {
  TempDir dir;
  write_text(dir / "q.json", "[]");
  const std::string q = (dir / "q.json").string();
  const std::string tasks =
      "eval:\n  batch_size: 8\n  tasks:\n    - name: qa\n      format: "
      "qa_json\n      path: " +
      q +
      "\n      types: [color]\n      generation: {max_new_tokens: 5}\n"
      "    - name: cap\n      path: " +
      q + "\n      metrics: [cider_d, bleu]\n";
  const Config c = load_config(recipe(dir, tasks));
  REQUIRE(c.eval.tasks.size() == 2);
  CHECK(c.eval.batch_size == 8);
  CHECK(c.eval.tasks[0].format == "qa_json");
  CHECK(c.eval.tasks[0].types == std::vector<std::string>{"color"});
  CHECK(c.eval.tasks[0].generation.max_new_tokens == 5);
  CHECK(c.eval.tasks[0].metrics == std::vector<std::string>{"exact"});
  CHECK(c.eval.tasks[1].metrics == std::vector<std::string>{"cider_d", "bleu"});
  CHECK(c.eval.tasks[1].generation.max_new_tokens == 32);

  // Round trip through the resolved YAML.
  write_text(dir / "resolved.yaml", config_to_yaml(c));
  CHECK(config_to_yaml(load_config(dir / "resolved.yaml")) == config_to_yaml(c));

  // --set reaches into an element; a missing element is an error naming the override.
  const Config d = load_config(recipe(dir, tasks), {"eval.tasks[1].max_samples=7"});
  CHECK(d.eval.tasks[1].max_samples == 7);
  CHECK(d.eval.tasks[0].max_samples == 0);
  CHECK_THAT(error_of(recipe(dir, tasks), {"eval.tasks[5].max_samples=7"}),
             Catch::Contains("--set eval.tasks[5].max_samples=7: there is no element 5"));
  CHECK_THAT(error_of(recipe(dir, tasks), {"eval.tasks[0].max_samples=x"}),
             Catch::Contains("eval.tasks[0].max_samples: expected an integer"));

  // A typo inside an element names the element and suggests the key.
  const auto typo = recipe(dir, tasks + "      max_sample: 3\n");
  const std::string e = error_of(typo);
  CHECK_THAT(e, Catch::Contains(typo.string() + ":"));
  CHECK_THAT(e, Catch::Contains("eval.tasks[1].max_sample: unknown key"));
  CHECK_THAT(e, Catch::Contains("did you mean eval.tasks[].max_samples?"));

  CHECK_THAT(error_of(recipe(dir, tasks + "      template: vicuna\n")),
             Catch::Contains("eval.tasks[1].template: must be one of"));
  CHECK_THAT(error_of(recipe(dir, tasks), {"eval.tasks[1].metrics=[cidr_d]"}),
             Catch::Contains("did you mean 'cider_d'?"));
  CHECK_THAT(error_of(recipe(dir, tasks), {"eval.tasks[1].name=qa"}),
             Catch::Contains("eval.tasks[1].name: 'qa' is already the name of eval.tasks[0]"));
  CHECK_THAT(error_of(recipe(dir, tasks), {"eval.tasks[1].types=[x]"}),
             Catch::Contains("eval.tasks[1].types: filters qa_json records"));
  CHECK_THAT(error_of(recipe(dir, tasks), {"eval.tasks[0].path=/nonexistent/q.json"}),
             Catch::Contains("eval.tasks[0].path: not found"));
  CHECK_THAT(error_of(recipe(dir, "eval:\n  tasks: {name: x}\n")),
             Catch::Contains("eval.tasks: expected a list of mappings"));
}

TEST_CASE("config: an eval recipe has eval (and run) only") {
  TempDir dir;
  write_text(dir / "q.json", "[]");
  write_text(dir / "eval.yaml", "run: {threads: 1}\neval:\n  tasks:\n    - name: qa\n      path: " +
                                    (dir / "q.json").string() + "\n");
  const EvalFile f = load_eval_config(dir / "eval.yaml");
  CHECK(f.run.threads == 1);
  REQUIRE(f.eval.tasks.size() == 1);
  CHECK(f.eval.chance);
  auto error = [&](const std::string& text) -> std::string {
    write_text(dir / "bad.yaml", text);
    try {
      load_eval_config(dir / "bad.yaml");
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  CHECK_THAT(error("eval:\n  tasks: []\n"), Catch::Contains("eval.tasks: needs at least one task"));
  CHECK_THAT(error("train: {lr: 1}\neval:\n  tasks: []\n"), Catch::Contains("train: unknown key"));
  CHECK_THAT(error("eval:\n  tasks:\n    - {name: a}\n"),
             Catch::Contains("eval.tasks[0].path: is required"));
}

TEST_CASE("config: the ShapesWorld report card recipe loads") {
  TempDir dir("mllm-recipes");
  std::filesystem::create_directories(dir / "folder");
  write_text(dir / "file.json", "[]");
  std::vector<std::string> set;
  for (int i = 0; i < 4; ++i) {
    const std::string at = "eval.tasks[" + std::to_string(i) + "].";
    set.push_back(at + "path=" + (dir / "file.json").string());
    set.push_back(at + "image_root=" + (dir / "folder").string());
  }
  const EvalFile f =
      load_eval_config(std::string(MLLM_SOURCE_DIR) + "/configs/shapes/eval.yaml", set);
  REQUIRE(f.eval.tasks.size() == 4);
  CHECK(f.eval.tasks[0].metrics == std::vector<std::string>{"cider_d", "bleu", "rouge_l"});
  CHECK(f.eval.tasks[2].metrics == std::vector<std::string>{"pope"});
  CHECK(f.eval.tasks[3].types == std::vector<std::string>{"choice"});
}

TEST_CASE("config: a key given twice is an error naming both lines") {
  TempDir dir;
  // recipe(): model (lines 1-2), data.train (3-5), then the body from line 6.
  const auto p = recipe(dir, "train:\n  lr: 1.0e-4\n  batch_size: 4\n  lr: 5.0e-1\n");
  CHECK_THAT(error_of(p),
             Catch::Contains("recipe.yaml:9: train.lr: given twice (first at line 7)"));
  // The same section twice: the second would silently be dropped.
  const auto q = recipe(dir, "train:\n  lr: 1.0e-4\ntrain:\n  batch_size: 4\n");
  CHECK_THAT(error_of(q), Catch::Contains("recipe.yaml:8: train: given twice (first at line 6)"));
  // Inside a list of sections too.
  const auto r = recipe(dir, "eval:\n  tasks:\n    - name: a\n      name: b\n");
  CHECK_THAT(error_of(r), Catch::Contains("eval.tasks[0].name: given twice"));
  // Aliases that expand to an exponential tree are refused, not walked.
  std::string bomb = "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n";
  for (int i = 1; i < 9; ++i)
    bomb += "x" + std::to_string(i) + ": &a" + std::to_string(i) + " [*a" + std::to_string(i - 1) +
            ", *a" + std::to_string(i - 1) + ", *a" + std::to_string(i - 1) + ", *a" +
            std::to_string(i - 1) + ", *a" + std::to_string(i - 1) + ", *a" +
            std::to_string(i - 1) + ", *a" + std::to_string(i - 1) + ", *a" +
            std::to_string(i - 1) + "]\n";
  const auto b = recipe(dir, bomb);
  CHECK_THAT(error_of(b), Catch::Contains("more than a million YAML nodes"));
}

TEST_CASE("config: architecture sizes are bounded and divisibility checked in recipes") {
  TempDir dir;
  CHECK_THAT(error_of(recipe(dir, "", "  llm:\n    hidden: 1000000000000\n")),
             Catch::Contains("model.llm.hidden: must be in [1, 131072]"));
  CHECK_THAT(error_of(recipe(dir, "", "  llm:\n    heads: 3\n")),
             Catch::Contains("model.llm.heads: the attention head dimension"));
  CHECK_THAT(error_of(recipe(dir, "", "  llm:\n    vocab: 100000000000000\n")),
             Catch::Contains("model.llm.vocab: must be in [1, "));
  CHECK_THAT(error_of(recipe(dir, "", "  vision:\n    image_size: 100000\n")),
             Catch::Contains("model.vision.image_size: must be in [1, 16384]"));
  // The connector's and the CLIP text tower's sizes too (a typo's extra zeros would otherwise
  // reach the allocator: "can't allocate memory" naming nothing, or the OOM killer).
  CHECK_THAT(error_of(recipe(dir, "", "  connector:\n    hidden: 100000000\n")),
             Catch::Contains("model.connector.hidden: must be in [0, 131072]"));
  CHECK_THAT(error_of(recipe(dir, "", "  connector:\n    num_queries: 100000000\n")),
             Catch::Contains("model.connector.num_queries: must be in [0, 16384]"));
  CHECK_THAT(error_of(recipe(dir, "", "  connector:\n    layers: 5000\n")),
             Catch::Contains("model.connector.layers: must be in [1, 1024]"));
  CHECK_THAT(error_of(recipe(dir, "", "  text:\n    hidden: 100000000\n")),
             Catch::Contains("model.text.hidden: must be in [1, 131072]"));
  CHECK_THAT(error_of(recipe(dir, "", "  text:\n    max_position: 1\n")),
             Catch::Contains("model.text.max_position: must be >= 2"));
}

TEST_CASE("strings: trim drops the given edge characters, join puts the separator between") {
  CHECK(mllm::trim("  a b \t\n") == "a b");
  CHECK(mllm::trim(" \r\n\f\v").empty());
  CHECK(mllm::trim("xxaxx", "x") == "a");
  CHECK(mllm::trim("\tkey ", " ") == "\tkey");
  CHECK(mllm::join({"a", "b", "c"}, ", ") == "a, b, c");
  CHECK(mllm::join({"a"}, ", ") == "a");
  CHECK(mllm::join({}, ", ").empty());
}
