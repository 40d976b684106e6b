// Whole runs through the `mllm` executable, as a user launches them.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "jsonl.h"
#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_jsonl;
using mllm::test::read_text;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

using mllm::test::Result;
Result run(const std::string& args) {
  return mllm::test::run_mllm(args);
}

std::string src(const std::string& rel) {
  return std::string(MLLM_SOURCE_DIR) + "/" + rel;
}

// --set arguments that point a shapes recipe at `data` and shrink its models and run. A recipe
// whose data.train is a mixture (a list: stage2_instruct.yaml) has it replaced by one source.
std::string shrink(const std::filesystem::path& data, const std::filesystem::path& out,
                   bool mixture = false) {
  const std::string d = data.string();
  const std::string train = mixture ? " --set 'data.train={format: llava_json, path: " + d +
                                          "/captions_train.json, image_root: " + d + "/images}'"
                                    : " --set data.train.path=" + d +
                                          "/captions_train.json --set data.train.image_root=" + d +
                                          "/images";
  return " --set run.output_dir=" + out.string() + " --set run.threads=1" +
         " --set model.tokenizer=" + d + "/tokenizer.json" + train + " --set data.eval.path=" + d +
         "/captions_val.json --set data.eval.image_root=" + d + "/images" +
         " --set model.vision.pretrained=null --set model.vision.image_size=32" +
         " --set data.image.size=32 --set model.vision.hidden=32" +
         " --set model.vision.layers=2 --set model.vision.intermediate=64" +
         " --set train.batch_size=8 --set train.log_every=2 --set train.eval_batches=1";
}

// `mllm data shapes` into `data`: a small ShapesWorld at 32 pixels (the test stops if it fails).
void make_shapes(const std::filesystem::path& data, int seed, int train, int val) {
  const Result gen =
      run("data shapes --out " + data.string() + " --seed " + std::to_string(seed) + " --train " +
          std::to_string(train) + " --val " + std::to_string(val) + " --image-size 32");
  INFO(gen.output);
  REQUIRE(gen.code == 0);
}

// The raw bytes of tensor `name` in a safetensors file (8-byte little-endian header length, a JSON
// header with each tensor's data_offsets, then the data), read without LibTorch.
std::string tensor_bytes(const std::filesystem::path& file, const std::string& name) {
  const std::string all = read_text(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(all[static_cast<size_t>(i)]);
  const auto header = nlohmann::json::parse(all.substr(8, n));
  const auto& offsets = header.at(name).at("data_offsets");
  const auto begin = offsets[0].get<size_t>(), end = offsets[1].get<size_t>();
  return all.substr(8 + n + begin, end - begin);
}

}  // namespace

TEST_CASE("cli: --version, --help and usage errors") {
  CHECK(run("--version").code == 0);
  CHECK_THAT(run("--version").output, Catch::Contains("mllm 0.1"));
  CHECK(run("--help").code == 0);
  CHECK(run("").code == 2);
  CHECK(run("frobnicate").code == 2);
  CHECK(run("train").code == 2);  // --config is required
  CHECK(run("data shapes --out /tmp/x --image-size 8").code == 2);
}

TEST_CASE(
    "cli: stage 0 then stage 1 through the shapes recipes, with checkpoints, resume and errors") {
  TempDir dir("mllm-cli");
  const auto data = dir / "shapes";
  make_shapes(data, 0, 64, 16);

  // Stage 0: text warm-up of the LLM.
  const auto s0 = dir / "stage0";
  Result r0 = run("train --config " + src("configs/shapes/stage0_text.yaml") + shrink(data, s0) +
                  " --set train.max_steps=4 --set train.save_every=2");
  INFO(r0.output);
  REQUIRE(r0.code == 0);
  for (const char* f : {"final/model.safetensors", "final/config.json", "final/tokenizer.json",
                        "config.yaml", "train.log", "metrics.jsonl", "checkpoints/latest"})
    CHECK(std::filesystem::exists(s0 / f));
  const auto final_config = nlohmann::json::parse(read_text(s0 / "final/config.json"));
  // The recipe's resampler has no transformers name: the llava layout under mllm_llava.
  CHECK(final_config["model_type"] == "mllm_llava");
  CHECK(final_config["mllm_connector"]["type"] == "resampler");
  CHECK(final_config["mllm_connector"]["value_positions"] == true);  // read back by stage 1
  CHECK(final_config["text_config"]["num_hidden_layers"] == 4);

  // Stage 1 loads it and trains the connector only.
  const auto s1 = dir / "stage1";
  const std::string stage1 = "train --config " + src("configs/shapes/stage1_pretrain.yaml") +
                             shrink(data, s1) +
                             " --set model.llm.pretrained=" + (s0 / "final").string() +
                             " --set train.max_steps=4 --set train.save_every=2";
  Result r1 = run(stage1);
  INFO(r1.output);
  REQUIRE(r1.code == 0);
  CHECK_THAT(r1.output, Catch::Contains("held-out loss:"));
  const auto metrics = read_jsonl(s1 / "metrics.jsonl");
  int logged = 0;
  for (const auto& m : metrics) {
    if (!m.contains("loss")) continue;
    ++logged;
    for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s"}) CHECK(m.contains(k));
  }
  CHECK(logged == 2);
  CHECK(read_text(s1 / "config.yaml").find("pretrained: \"" + (s0 / "final").string() + "\"") !=
        std::string::npos);

  // Running it again fresh would overwrite that run: refused with exit 2, the checkpoints intact.
  const std::string latest = read_text(s1 / "checkpoints/latest");
  Result again = run(stage1);
  CHECK(again.code == 2);
  CHECK_THAT(again.output, Catch::Contains("already holds a run"));
  CHECK(read_text(s1 / "checkpoints/latest") == latest);
  // --resume auto on a finished run finds it complete and exits cleanly.
  CHECK(run(stage1 + " --resume auto").code == 0);

  // A typo in a config key: exit 2 with the file, line, key path and a suggestion.
  const std::string recipe = read_text(src("configs/shapes/stage1_pretrain.yaml"));
  std::string typo = recipe;
  typo.replace(typo.find("  lr: "), 6, "  lrr: ");
  write_text(dir / "typo.yaml", typo);
  Result t = run("train --config " + (dir / "typo.yaml").string() + shrink(data, dir / "t"));
  CHECK(t.code == 2);
  CHECK_THAT(t.output, Catch::Contains("typo.yaml:") &&
                           Catch::Contains("train.lrr: unknown key (did you mean train.lr?)"));
  Result t2 = run("train --config " + src("configs/shapes/stage1_pretrain.yaml") +
                  shrink(data, dir / "t2") + " --set train.batch_size=many");
  CHECK(t2.code == 2);
  CHECK_THAT(t2.output,
             Catch::Contains("--set train.batch_size=many: train.batch_size: expected an integer"));

  // A corrupt image: exit 1 naming the file.
  write_text(data / "images/train/000003.png", "garbage");
  Result bad = run(
      "train --config " + src("configs/shapes/stage1_pretrain.yaml") + shrink(data, dir / "bad") +
      " --set model.llm.pretrained=" + (s0 / "final").string() + " --set train.max_steps=20");
  CHECK(bad.code == 1);
  CHECK_THAT(bad.output, Catch::Contains("000003.png: cannot decode image"));
}

TEST_CASE(
    "cli: tokenize shows ids and supervised spans; data check reports records, images and "
    "lengths") {
  TempDir dir("mllm-cli");
  const auto data = dir / "shapes";
  make_shapes(data, 2, 12, 4);
  const std::string tok = " --tokenizer " + (data / "tokenizer.json").string();

  Result plain = run("tokenize" + tok + " --text 'a red circle.'");
  REQUIRE(plain.code == 0);
  const auto j = nlohmann::json::parse(plain.output.substr(0, plain.output.find('\n')));
  CHECK(j["ids"].size() == 4);
  CHECK(j["tokens"][1] == "red");

  write_text(
      dir / "turns.json",
      R"([{"from": "human", "value": "<image>\nwhat color is the circle?"}, {"from": "gpt", "value": "red."}])");
  Result templ =
      run("tokenize" + tok + " --template vicuna_v1 --text-file " + (dir / "turns.json").string());
  REQUIRE(templ.code == 0);
  const auto t = nlohmann::json::parse(templ.output.substr(0, templ.output.find('\n')));
  CHECK(t["supervised_tokens"] == 3);  // "red", ".", "</s>"
  CHECK_THAT(templ.output, Catch::Contains("ASSISTANT: \u27e6red.</s>\u27e7"));
  CHECK(run("tokenize" + tok + " --template vicuna_v1 --text 'not json'").code == 2);

  // One record's image removed: data check counts it instead of stopping.
  std::filesystem::remove(data / "images/train/000004.png");
  Result check = run("data check --config " + src("configs/shapes/stage0_text.yaml") +
                     shrink(data, dir / "c") + " --set data.template=plain");
  INFO(check.output);
  REQUIRE(check.code == 0);
  CHECK_THAT(check.output, Catch::Contains("records 12: 11 kept, 1 skipped"));
  CHECK_THAT(check.output, Catch::Contains("image not found"));
  CHECK_THAT(check.output, Catch::Contains("images: 11 found (0 corrupt), 1 missing"));
  CHECK_THAT(check.output, Catch::Contains("tokens per sample: p50"));

  // Stage 3's preference pairs check the same way (a pair's image counted once).
  Result pref =
      run("data check --config " + src("configs/shapes/stage3_dpo.yaml") + shrink(data, dir / "p") +
          " --set data.train.path=" + (data / "preference_train.json").string() +
          " --set data.eval.path=" + (data / "preference_val.json").string() +
          " --set 'model.llm.pretrained=\"\"' --set 'train.init_from=\"\"'");
  INFO(pref.output);
  REQUIRE(pref.code == 0);
  CHECK_THAT(pref.output, Catch::Contains("preference_train.json"));
  CHECK_THAT(pref.output, Catch::Contains("1 skipped"));
  CHECK_THAT(pref.output, Catch::Contains("1 missing"));
}

TEST_CASE(
    "cli: instruction data in the LLaVA-1.5 layout trains through the vicuna_v1 and chatml "
    "templates") {
  TempDir dir("mllm-cli");
  const auto data = dir / "shapes";
  make_shapes(data, 3, 24, 4);
  for (const char* templ : {"vicuna_v1", "chatml"}) {
    const auto out = dir / templ;
    Result r =
        run("train --config " + src("configs/shapes/stage1_pretrain.yaml") + shrink(data, out) +
            " --set model.llm.pretrained=null --set model.llm.hidden=32 --set model.llm.layers=1" +
            " --set model.llm.intermediate=64 --set data.template=" + templ +
            " --set data.max_length=256 --set data.train.path=" +
            (data / "instruct_train.json").string() +
            " --set data.eval.path=" + (data / "instruct_val.json").string() +
            " --set 'train.trainable=[\"multi_modal_projector.*\",\"language_model.*\"]'" +
            " --set train.max_steps=3");
    INFO(templ << "\n" << r.output);
    CHECK(r.code == 0);
    CHECK(std::filesystem::exists(out / "final/model.safetensors"));
  }
}

TEST_CASE("cli: the orpo and simpo recipes train from the command line, without a reference") {
  TempDir dir("mllm-cli");
  const auto data = dir / "shapes";
  make_shapes(data, 0, 32, 8);
  for (const std::string stage : {"orpo", "simpo"}) {
    INFO(stage);
    const auto out = dir / stage;
    Result r = run("train --config " + src("configs/shapes/stage3_" + stage + ".yaml") +
                   shrink(data, out) +
                   " --set data.train.path=" + (data / "preference_train.json").string() +
                   " --set data.eval.path=" + (data / "preference_val.json").string() +
                   " --set 'model.llm.pretrained=\"\"' --set 'train.init_from=\"\"'" +
                   " --set train.max_steps=4 --set train.save_every=0 --set train.log_every=1");
    INFO(r.output);
    REQUIRE(r.code == 0);
    CHECK(std::filesystem::exists(out / "final/model.safetensors"));
    const auto records = read_jsonl(out / "metrics.jsonl");
    int steps = 0;
    for (const auto& j : records)
      if (j.contains("loss")) {
        ++steps;
        CHECK(j.contains("rewards/accuracies"));
        CHECK(j.contains(stage == "orpo" ? "log_odds_ratio" : "rewards/margins"));
      }
    CHECK(steps == 4);
    CHECK(records.back().contains("eval_rewards/accuracies"));
  }
  // The report puts both runs on every plot, the reward curves included.
  const Result rep = run("report " + (dir / "orpo").string() + " --compare " +
                         (dir / "simpo").string() + " --out " + (dir / "report").string());
  INFO(rep.output);
  REQUIRE(rep.code == 0);
  CHECK(std::filesystem::file_size(dir / "report/rewards.png") > 1000);
  const std::string html = read_text(dir / "report/report.html");
  CHECK(html.find("<td>orpo</td>") != std::string::npos);
  CHECK(html.find("<td>simpo</td>") != std::string::npos);
}

TEST_CASE(
    "cli: sharegpt and messages data made by `mllm data convert` train from the command line, and "
    "a tokenizer's own chat template is the default") {
  TempDir dir("mllm-cli");
  const auto data = dir / "shapes";
  make_shapes(data, 3, 24, 4);
  const auto convert = [&](const std::string& to, const std::string& in, const std::string& out) {
    Result r = run("data convert --from llava --to " + to + " " + (data / in).string() + " " +
                   (dir / out).string());
    INFO(r.output);
    REQUIRE(r.code == 0);
  };
  convert("sharegpt", "instruct_train.json", "instruct.sharegpt.json");
  convert("messages", "instruct_train.json", "instruct.messages.jsonl");
  convert("messages", "preference_train.json", "preference.messages.json");
  convert("sharegpt", "preference_train.json", "preference.sharegpt.jsonl");
  // The files are the other frameworks' layouts.
  const auto sharegpt = nlohmann::json::parse(read_text(dir / "instruct.sharegpt.json"));
  CHECK(sharegpt[0]["conversations"][0]["from"] == "human");
  CHECK(sharegpt[0]["images"].is_array());
  const auto trl = nlohmann::json::parse(read_text(dir / "preference.messages.json"));
  CHECK(trl[0]["prompt"][0]["role"] == "user");
  CHECK(trl[0]["chosen"][0]["role"] == "assistant");

  const std::string sft = " --set model.llm.pretrained=null --set model.llm.hidden=32" +
                          std::string(" --set model.llm.layers=1 --set model.llm.intermediate=64") +
                          " --set data.max_length=256" +
                          " --set 'train.trainable=[\"multi_modal_projector.*\"]'" +
                          " --set train.max_steps=2 --set train.save_every=0";
  for (const auto& [format, file] : {std::pair{"sharegpt", "instruct.sharegpt.json"},
                                     std::pair{"messages_jsonl", "instruct.messages.jsonl"}}) {
    const auto out = dir / (std::string("sft-") + format);
    // Without vicuna's system prompt (data.system: ""), which the model folder then records.
    Result r = run(
        "train --config " + src("configs/shapes/stage1_pretrain.yaml") + shrink(data, out) + sft +
        " --set data.template=vicuna_v1 --set 'data.system=\"\"'" +
        " --set data.train.format=" + format + " --set data.train.path=" + (dir / file).string() +
        " --set data.eval.path=" + (data / "instruct_val.json").string());
    INFO(format << "\n" << r.output);
    CHECK(r.code == 0);
    CHECK(read_jsonl(out / "metrics.jsonl").size() >= 1);
    const auto tc = nlohmann::json::parse(read_text(out / "final/tokenizer_config.json"));
    CHECK(tc["mllm_system"] == "");
    CHECK(tc["mllm_template"] == "vicuna_v1");
  }
  // mllm tokenize shows the prompt as such a model sees it.
  Result t = run("tokenize --tokenizer " + (data / "tokenizer.json").string() +
                 " --template vicuna_v1 --system '' --text '[{\"from\": \"human\", \"value\": "
                 "\"hi\"}, {\"from\": \"gpt\", \"value\": \"a.\"}]'");
  INFO(t.output);
  CHECK(t.code == 0);
  CHECK(t.output.find("\"rendered\":\"<s> USER: hi ASSISTANT: a.</s>\"") != std::string::npos);
  for (const auto& [format, file] : {std::pair{"messages", "preference.messages.json"},
                                     std::pair{"sharegpt_jsonl", "preference.sharegpt.jsonl"}}) {
    const auto out = dir / (std::string("orpo-") + format);
    Result r = run("train --config " + src("configs/shapes/stage3_orpo.yaml") + shrink(data, out) +
                   " --set data.train.format=" + format +
                   " --set data.train.path=" + (dir / file).string() +
                   " --set data.eval.path=" + (data / "preference_val.json").string() +
                   " --set 'model.llm.pretrained=\"\"' --set 'train.init_from=\"\"'" +
                   " --set train.max_steps=2 --set train.save_every=0");
    INFO(format << "\n" << r.output);
    CHECK(r.code == 0);
  }

  // A tokenizer folder with a chat template: data.template left out means hf, and the template
  // travels into final/.
  std::filesystem::create_directories(dir / "tok");
  std::filesystem::copy_file(data / "tokenizer.json", dir / "tok/tokenizer.json");
  std::filesystem::copy_file(src("tests/fixtures/jinja/templates/vicuna_v1.jinja"),
                             dir / "tok/chat_template.jinja");
  std::string yaml = read_text(src("configs/shapes/stage1_pretrain.yaml"));
  const auto at = yaml.find("  template: plain\n");
  REQUIRE(at != std::string::npos);
  yaml.erase(at, std::string("  template: plain\n").size());
  write_text(dir / "no_template.yaml", yaml);
  // Trains into `out` with `extra` options; the run renders the folder's template (template hf)
  // and its final/ carries it.
  auto trains_with_hf_template = [&](const std::filesystem::path& out, const std::string& extra) {
    const Result r =
        run("train --config " + (dir / "no_template.yaml").string() + shrink(data, out) + sft +
            extra + " --set data.train.path=" + (data / "instruct_train.json").string() +
            " --set data.eval.path=" + (data / "instruct_val.json").string());
    INFO(r.output);
    REQUIRE(r.code == 0);
    CHECK(read_text(out / "config.yaml").find("template: \"hf\"") != std::string::npos);
    const auto tc = nlohmann::json::parse(read_text(out / "final/tokenizer_config.json"));
    CHECK(tc["mllm_template"] == "hf");
    CHECK(tc["chat_template"] == read_text(dir / "tok/chat_template.jinja"));
  };
  trains_with_hf_template(dir / "hf",
                          " --set model.tokenizer=" + (dir / "tok/tokenizer.json").string());
  // The same template given as data.chat_template, with a tokenizer whose folder has none.
  trains_with_hf_template(
      dir / "own", " --set data.chat_template=" + (dir / "tok/chat_template.jinja").string());

  // A record convert cannot carry names its file, line and record, and writes nothing.
  write_text(
      dir / "tool.json",
      R"([{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
 {"conversations": [{"from": "human", "value": "x"}, {"from": "observation", "value": "{}"}]}])");
  Result bad = run("data convert --from sharegpt --to llava_json " + (dir / "tool.json").string() +
                   " " + (dir / "tool.llava.json").string());
  CHECK(bad.code == 1);
  CHECK(bad.output.find("tool.json:2: record 1: role 'observation' is not supported") !=
        std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "tool.llava.json"));
}

TEST_CASE(
    "cli: CogVLM's visual experts and LLaMA-Adapter's prompts train stage 1 and then stage 2 from "
    "the command line") {
  TempDir dir("mllm-cli");
  const auto data = dir / "shapes";
  make_shapes(data, 0, 32, 8);
  const std::string llm = " --set 'model.llm.pretrained=\"\"' --set model.llm.hidden=32" +
                          std::string(" --set model.llm.layers=2 --set model.llm.heads=2") +
                          " --set model.llm.kv_heads=1 --set model.llm.intermediate=64";
  for (const std::string type : {"visual_expert", "adapter_prompt"}) {
    INFO(type);
    const auto s1 = dir / (type + "-1"), s2 = dir / (type + "-2");
    Result r = run("train --config " + src("configs/shapes/stage1_pretrain.yaml") +
                   shrink(data, s1) + llm + " --set model.connector.type=" + type +
                   " --set model.connector.prompt_length=4 --set train.max_steps=6" +
                   " --set train.lr=1e-2 --set train.save_every=0");
    INFO(r.output);
    REQUIRE(r.code == 0);
    const auto f1 = s1 / "final/model.safetensors";
    if (type == "visual_expert") {
      // The experts started as copies of the frozen LLM's weights; stage 1 moved them alone.
      const auto own = tensor_bytes(f1, "language_model.model.layers.1.mlp.up_proj.weight");
      const auto expert = tensor_bytes(f1, "multi_modal_projector.experts.1.mlp.up_proj.weight");
      CHECK(own.size() == expert.size());
      CHECK(own != expert);
    } else {
      // The gates opened (they start at zero: all bytes 0).
      CHECK(tensor_bytes(f1, "multi_modal_projector.gates").find_first_not_of('\0') !=
            std::string::npos);
    }
    r = run("train --config " + src("configs/shapes/stage2_instruct.yaml") +
            shrink(data, s2, true) + llm + " --set model.connector.type=" + type +
            " --set model.connector.prompt_length=4 --set train.max_steps=4" +
            " --set train.save_every=0 --set train.init_from=" + (s1 / "final").string() +
            " --set data.train.path=" + (data / "instruct_train.json").string() +
            " --set data.eval.path=" + (data / "instruct_val.json").string() +
            " --set 'eval.tasks=[]'");
    INFO(r.output);
    REQUIRE(r.code == 0);
    int64_t last_step = 0;
    for (const auto& j : read_jsonl(s2 / "metrics.jsonl"))
      if (j.contains("loss")) last_step = j["step"].get<int64_t>();
    CHECK(last_step == 4);
    // Stage 2 trained the LLM too, starting from stage 1's connector.
    const char* llm_key = "language_model.model.layers.0.self_attn.q_proj.weight";
    CHECK(tensor_bytes(f1, llm_key) != tensor_bytes(s2 / "final/model.safetensors", llm_key));
    // The run generates (the KV cache with the design inside the layers).
    const auto image = data / "images" / "val" / "000000.png";
    const Result g = run("generate --checkpoint " + s2.string() + " --image " + image.string() +
                         " --prompt 'What is in the image?' --max-new-tokens 4");
    INFO(g.output);
    CHECK(g.code == 0);
  }
}
