// The demo's pipeline, shortened (fewer images, 32-pixel images, smaller towers, fewer steps),
// through the shipped ShapesWorld recipes and the `mllm` executable: each stage must show its
// effect, in the direction the demo shows it and by a margin — the encoder retrieves captions
// above chance, stage 1's captions are likelier than the text-only stage 0's, stage 2 answers
// above chance — and the report card reads the runs.
#include <catch2/catch.hpp>

#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "jsonl.h"
#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_text;
using mllm::test::TempDir;

namespace {

std::string recipe(const std::string& name) {
  return std::string(MLLM_SOURCE_DIR) + "/configs/shapes/" + name + ".yaml";
}

// The last record of a run's metrics.jsonl that holds `key`.
nlohmann::json last_with(const std::filesystem::path& run, const std::string& key) {
  nlohmann::json last;
  for (const auto& j : mllm::test::read_jsonl(run / "metrics.jsonl"))
    if (j.contains(key)) last = j;
  return last;
}

mllm::test::Result train(const std::string& name, const std::filesystem::path& data,
                         const std::filesystem::path& out, const std::string& extra) {
  const std::string d = data.string();
  // The data of every recipe is under data/shapes/: point it at this one. (Stage 2's data.train
  // is a mixture, a list: its call replaces it whole.)
  auto at = [&](const std::string& key, const std::string& file) {
    return " --set " + key + "=" + d + "/" + file;
  };
  const bool mixture = name == "stage2_instruct";
  std::string args = "train --config " + recipe(name) + " --set run.output_dir=" + out.string() +
                     " --set run.threads=1 --set data.workers=0" +
                     at("model.tokenizer", "tokenizer.json") +
                     (mixture ? "" : at("data.train.image_root", "images")) +
                     at("data.eval.image_root", "images") +
                     " --set model.vision.image_size=32 --set data.image.size=32" +
                     " --set model.vision.hidden=32 --set model.vision.layers=2" +
                     " --set model.vision.intermediate=64 --set train.log_every=20" + extra;
  const auto r = mllm::test::run_mllm(args);
  INFO(args << "\n" << r.output);
  REQUIRE(r.code == 0);
  return r;
}

std::string fmt_3(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", x);
  return buf;
}

}  // namespace

TEST_CASE("pipeline: a shortened demo shows each stage's effect, and the report card reads it") {
  TempDir dir("mllm-pipeline");
  const auto data = dir / "shapes";
  REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                               " --seed 1 --train 1000 --val 100 --image-size 32")
              .code == 0);
  const std::string d = data.string();
  const auto runs = dir / "demo";

  // The encoder: contrastive, with hard negatives; retrieval among the 25 captions of a batch.
  train("stage0_clip", data, runs / "encoder",
        " --set data.train.path=" + d + "/caption_pairs_train.json --set data.eval.path=" + d +
            "/caption_pairs_val.json --set model.text.hidden=32 --set model.text.layers=1" +
            " --set model.text.intermediate=64 --set model.text.projection_dim=32" +
            " --set train.batch_size=25 --set train.epochs=6 --set train.eval_every=0");
  const auto enc = last_with(runs / "encoder", "eval_recall@1");
  INFO(enc.dump());
  REQUIRE(enc.contains("eval_recall@1_chance"));
  CHECK(enc["eval_recall@1"].get<double>() >= 3 * enc["eval_recall@1_chance"].get<double>());
  CHECK(enc["eval_hard_negative_accuracy"].get<double>() > 0.6);  // chance 0.5

  // Stage 0: the LLM, text only; its held-out loss on the captions alone is the baseline.
  train("stage0_text", data, runs / "stage0",
        " --set data.train.path=" + d + "/text_train.json --set data.eval.path=" + d +
            "/captions_val.json --set model.llm.hidden=64 --set model.llm.layers=2" +
            " --set model.llm.intermediate=176 --set train.epochs=3 --set train.max_steps=0" +
            " --set train.eval_batches=0");
  const double text_only = last_with(runs / "stage0", "eval_loss")["eval_loss"].get<double>();

  // Stage 1: the encoder and the LLM frozen, the connector trained: the image makes the
  // captions likelier than the text-only model finds them.
  train("stage1_pretrain", data, runs / "stage1",
        " --set model.vision.pretrained=" + (runs / "encoder/final").string() +
            " --set model.llm.pretrained=" + (runs / "stage0/final").string() +
            " --set data.train.path=" + d + "/captions_train.json --set data.eval.path=" + d +
            "/captions_val.json --set train.epochs=10 --set train.eval_batches=0");
  const double with_image = last_with(runs / "stage1", "eval_loss")["eval_loss"].get<double>();
  INFO("stage 0 " << text_only << ", stage 1 " << with_image);
  CHECK(with_image < 0.9 * text_only);

  // Stage 2 from stage 1: answers above chance on held-out images (mllm eval's report card).
  train("stage2_instruct", data, runs / "stage2",
        " --set model.llm.pretrained=" + (runs / "stage0/final").string() +
            " --set train.init_from=" + (runs / "stage1/final").string() +
            " --set 'data.train={format: llava_json, path: " + d +
            "/instruct_train.json, image_root: " + d + "/images}' --set data.eval.path=" + d +
            "/instruct_val.json --set train.epochs=8 --set eval.tasks=[]");
  const auto ev = mllm::test::run_mllm(
      "eval --config " + recipe("eval") + " --checkpoint " + (runs / "stage2").string() +
      " --set run.threads=1 --set eval.tasks[0].path=" + d + "/captions_val.json" +
      " --set eval.tasks[0].image_root=" + d + "/images --set eval.tasks[1].path=" + d +
      "/questions_val.json --set eval.tasks[1].image_root=" + d + "/images" +
      " --set eval.tasks[2].path=" + d + "/questions_val.json --set eval.tasks[2].image_root=" + d +
      "/images --set eval.tasks[3].path=" + d + "/questions_val.json" +
      " --set eval.tasks[3].image_root=" + d + "/images");
  INFO(ev.output);
  REQUIRE(ev.code == 0);
  const auto results = nlohmann::json::parse(read_text(runs / "stage2/eval/results.json"));
  const auto& qa = results["tasks"]["qa"];
  const double accuracy = qa["scores"]["exact"]["accuracy"].get<double>();
  const double chance = qa["chance"]["exact"]["accuracy"].get<double>();
  const auto& by_type = qa["scores"]["exact"]["by_category"];
  const auto& chance_by_type = qa["chance"]["exact"]["by_category"];
  INFO("qa accuracy " << accuracy << ", chance " << chance << "; by type " << by_type.dump()
                      << ", chance " << chance_by_type.dump());
  CHECK(accuracy > chance + 0.04);

  // Stage 2v from stage 2: the visual questions (AnyRes over 64-px images in 32-px tiles, two
  // images, three-frame clips), the shipped recipe with its paths pointed here and more passes
  // over the few visual records this data set has.
  std::string visual = read_text(recipe("stage2_visual"));
  for (size_t at; (at = visual.find("data/shapes/")) != std::string::npos;)
    visual.replace(at, 12, d + "/");
  const auto passes = visual.find("epochs: 2}");
  REQUIRE(passes != std::string::npos);
  visual.replace(passes, 10, "epochs: 12}");
  mllm::test::write_text(dir / "stage2_visual.yaml", visual);
  const std::string v_args = "train --config " + (dir / "stage2_visual.yaml").string() +
                             " --set run.output_dir=" + (runs / "stage2v").string() +
                             " --set run.threads=1 --set data.workers=0" +
                             " --set model.llm.pretrained=" + (runs / "stage0/final").string() +
                             " --set train.init_from=" + (runs / "stage2/final").string() +
                             " --set model.vision.image_size=32 --set data.image.size=32" +
                             " --set model.vision.hidden=32 --set model.vision.layers=2" +
                             " --set model.vision.intermediate=64 --set "
                             "model.vision.anyres.grid_pinpoints=[[32,32],[64,64]]" +
                             " --set eval.tasks=[] --set train.log_every=20";
  const auto v = mllm::test::run_mllm(v_args);
  INFO(v_args << "\n" << v.output);
  REQUIRE(v.code == 0);
  const auto vev =
      mllm::test::run_mllm("eval --config " + recipe("eval_visual") + " --checkpoint " +
                           (runs / "stage2v").string() + " --set run.threads=1" + [&] {
                             std::string sets;
                             for (int i = 0; i < 4; ++i)
                               sets += " --set eval.tasks[" + std::to_string(i) + "].path=" + d +
                                       "/questions_visual_val.json --set eval.tasks[" +
                                       std::to_string(i) + "].image_root=" + d + "/images";
                             return sets;
                           }());
  INFO(vev.output);
  REQUIRE(vev.code == 0);
  const auto vres = nlohmann::json::parse(read_text(runs / "stage2v/eval/results.json"));
  auto acc = [&](const char* task, const char* which) {
    return vres["tasks"][task][which]["exact"]["accuracy"].get<double>();
  };
  for (const char* task : {"hires", "hires_base", "two_image", "motion"})
    UNSCOPED_INFO(task << " " << acc(task, "scores") << " (chance " << acc(task, "chance") << ")");
  CHECK(acc("motion", "scores") > acc("motion", "chance") + 0.1);

  // The card reads what the runs wrote: the encoder's and stage 1's figures as measured above.
  const auto card = mllm::test::run_mllm("eval --card " + runs.string());
  INFO(card.output);
  REQUIRE(card.code == 0);
  CHECK(std::filesystem::exists(runs / "report.md"));
  CHECK_THAT(card.output, Catch::Contains("| 1 | caption loss per token, with the image | " +
                                          fmt_3(with_image)));
  CHECK_THAT(card.output, Catch::Contains("| 2v | which way a shape moves, 3 frames | " +
                                          fmt_3(acc("motion", "scores"))));
}
