// Records with several images and with video train from the CLI: a stage-2 run over a mix of
// text-only, one-image, two-image, video-file and frame-list records (frames pooled 2 x 2), with a
// broken video skipped and counted; `mllm data check` reports the videos. And a mixture of two
// sources weighted 3:1 draws them 3:1 and resumes exactly.
#include <catch2/catch.hpp>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <cmath>

#include <nlohmann/json.hpp>

#include "jsonl.h"
#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_jsonl;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

nlohmann::json convo(const std::string& human, const std::string& reply) {
  return nlohmann::json::array(
      {{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", reply}}});
}

// The stage-2 recipe over `records` (images under `images`, ShapesWorld's tokenizer in `data`),
// with 32-pixel images, a one-layer tower, mlp2x_gelu, one epoch, no evaluation; then `extra`.
std::string stage2_args(const std::filesystem::path& out, const std::filesystem::path& data,
                        const std::filesystem::path& records, const std::filesystem::path& images,
                        const std::string& extra) {
  return "--config " + std::string(MLLM_SOURCE_DIR) + "/configs/shapes/stage2_instruct.yaml" +
         " --set run.output_dir=" + out.string() +
         " --set run.threads=1 --set train.init_from= --set model.llm.pretrained=" +
         " --set model.vision.pretrained= --set model.tokenizer=" + data.string() +
         "/tokenizer.json --set 'data.train={format: llava_json, path: " + records.string() +
         ", image_root: " + images.string() + "}'" +
         " --set data.eval.path=" + " --set data.eval.image_root=" + images.string() +
         " --set data.image.size=32" +
         " --set model.vision.image_size=32 --set model.vision.hidden=32" +
         " --set model.vision.layers=1 --set model.vision.intermediate=64" +
         " --set model.connector.type=mlp2x_gelu --set data.on_bad_record=skip" +
         " --set train.epochs=1 --set train.log_every=1 --set train.save_every=0" +
         " --set eval.tasks=[]" + extra;
}

}  // namespace

TEST_CASE("visual records: several images and video per record train from the CLI") {
  TempDir dir("mllm-visuals");
  const auto data = dir / "shapes";
  REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                               " --seed 3 --train 24 --val 4 --image-size 32")
              .code == 0);
  const auto images = data / "images";
  {
    cv::VideoWriter w((images / "clip.avi").string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'),
                      10, cv::Size(32, 32));
    REQUIRE(w.isOpened());
    for (int k = 0; k < 12; ++k) w.write(cv::Mat(32, 32, CV_8UC3, cv::Scalar::all(20 * k)));
  }
  write_text(images / "broken.avi", "not a video");
  nlohmann::json recs = nlohmann::json::array();
  for (int i = 0; i < 4; ++i) {
    const std::string a = "train/00000" + std::to_string(2 * i) + ".png";
    const std::string b = "train/00000" + std::to_string(2 * i + 1) + ".png";
    recs.push_back({{"id", "text" + std::to_string(i)},
                    {"conversations", convo("what is a circle ?", "a round shape .")}});
    recs.push_back({{"id", "one" + std::to_string(i)},
                    {"image", a},
                    {"conversations", convo("<image>\nwhat is shown ?", "shapes .")}});
    recs.push_back({{"id", "two" + std::to_string(i)},
                    {"image", {a, b}},
                    {"conversations", convo("first <image> second <image> which has more shapes ?",
                                            "the first .")}});
    recs.push_back({{"id", "clip" + std::to_string(i)},
                    {"video", "clip.avi"},
                    {"conversations", convo("<image>\nwhat changes ?", "it gets brighter .")}});
    recs.push_back({{"id", "frames" + std::to_string(i)},
                    {"video", {a, b, a, b, a}},
                    {"conversations", convo("<image>\nwhat changes ?", "nothing .")}});
  }
  recs.push_back({{"id", "broken"},
                  {"video", "broken.avi"},
                  {"conversations", convo("<image>\nwhat ?", "no .")}});
  write_text(dir / "mixed.json", recs.dump());

  const auto out = dir / "run";
  const std::string args =
      stage2_args(out, data, dir / "mixed.json", images,
                  " --set data.video.frames=3 --set data.video.pool=2 --set train.batch_size=7");

  const auto check = mllm::test::run_mllm("data check " + args);
  INFO(check.output);
  REQUIRE(check.code == 0);
  CHECK_THAT(check.output, Catch::Contains("videos: 5 found (1 unreadable)"));

  const auto r = mllm::test::run_mllm("train " + args);
  INFO(r.output);
  REQUIRE(r.code == 0);
  const auto records = read_jsonl(out / "metrics.jsonl");
  int steps = 0;
  int64_t dropped = 0;
  for (const auto& rec : records)
    if (rec.contains("loss") && !rec.contains("eval_loss")) {
      ++steps;
      CHECK(std::isfinite(rec["loss"].get<double>()));
      dropped = std::max<int64_t>(dropped, rec.value("dropped_images", int64_t{0}));
    }
  CHECK(steps == 3);    // 21 records / 7 per step
  CHECK(dropped == 1);  // the broken clip, counted
}

TEST_CASE(
    "AnyRes: images of several sizes train from the CLI; final/ is llava_next and generates") {
  TempDir dir("mllm-anyres");
  const auto data = dir / "shapes";
  REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                               " --seed 5 --train 12 --val 2 --image-size 32")
              .code == 0);
  const auto images = data / "images";
  // Wide, tall and large versions of the scenes: their token counts differ with their sizes.
  const std::vector<cv::Size> shapes = {{64, 32}, {32, 80}, {64, 64}, {40, 30}};
  nlohmann::json recs = nlohmann::json::array();
  for (int i = 0; i < 8; ++i) {
    const cv::Mat scene =
        cv::imread((images / ("train/00000" + std::to_string(i) + ".png")).string());
    REQUIRE(!scene.empty());
    cv::Mat big;
    cv::resize(scene, big, shapes[static_cast<size_t>(i) % shapes.size()]);
    const std::string name = "big" + std::to_string(i) + ".png";
    REQUIRE(cv::imwrite((images / name).string(), big));
    recs.push_back({{"id", "one" + std::to_string(i)},
                    {"image", name},
                    {"conversations", convo("<image>\nwhat is shown ?", "shapes .")}});
  }
  recs.push_back({{"id", "two"},
                  {"image", {"big0.png", "big1.png"}},
                  {"conversations", convo("<image> <image> which is wider ?", "the first .")}});
  recs.push_back({{"id", "broken"},
                  {"image", "nothing.png"},
                  {"conversations", convo("<image>\nwhat ?", "no .")}});
  write_text(images / "nothing.png", "not an image");
  write_text(dir / "anyres.json", recs.dump());
  const auto out = dir / "run";
  const std::string args =
      stage2_args(out, data, dir / "anyres.json", images,
                  " --set model.vision.anyres.grid_pinpoints=[[32,64],[64,32],[64,64]]"
                  " --set data.max_length=256 --set train.batch_size=3"
                  " --set 'train.trainable=[\"multi_modal_projector.*\"]'");
  const auto check = mllm::test::run_mllm("data check " + args);
  INFO(check.output);
  REQUIRE(check.code == 0);
  CHECK_THAT(check.output, Catch::Contains("per crop, AnyRes"));
  const auto r = mllm::test::run_mllm("train " + args);
  INFO(r.output);
  REQUIRE(r.code == 0);
  // The unreadable image is a bad record at load (its size is read there), skipped and counted.
  CHECK_THAT(r.output, Catch::Contains("nothing.png"));
  int steps = 0;
  for (const auto& rec : read_jsonl(out / "metrics.jsonl"))
    if (rec.contains("loss") && !rec.contains("eval_loss")) {
      ++steps;
      CHECK(std::isfinite(rec["loss"].get<double>()));
    }
  CHECK(steps == 3);  // 9 good records / 3 per step
  // image_newline trained with the connector; final/ is a LlavaNext folder.
  CHECK_THAT(r.output, Catch::Contains("image_newline"));
  const auto config = nlohmann::json::parse(mllm::test::read_text(out / "final" / "config.json"));
  CHECK(config["model_type"] == "llava_next");
  CHECK(config["image_grid_pinpoints"].size() == 3);
  const auto pre =
      nlohmann::json::parse(mllm::test::read_text(out / "final" / "preprocessor_config.json"));
  CHECK(pre["image_processor_type"] == "LlavaNextImageProcessor");
  const auto g = mllm::test::run_mllm("generate --checkpoint " + out.string() + " --image " +
                                      (images / "big1.png").string() +
                                      " --prompt 'what is shown ?' --max-new-tokens 3");
  INFO(g.output);
  CHECK(g.code == 0);
}

TEST_CASE("data mixture: two sources weighted 3:1 train 3:1 from the CLI and resume exactly") {
  TempDir dir("mllm-mixture-cli");
  const auto data = dir / "shapes";
  REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                               " --seed 4 --train 48 --val 4 --image-size 32")
              .code == 0);
  // Two copies of the captions under their own names: 48 + 48 items, weights 3:1 -> 72 + 24.
  std::filesystem::copy_file(data / "captions_train.json", dir / "big.json");
  std::filesystem::copy_file(data / "captions_train.json", dir / "small.json");
  const std::string d = data.string();
  // The stage-0 recipe with its data.train replaced by the mixture (--set cannot write a list).
  std::string recipe = mllm::test::read_text(std::filesystem::path(MLLM_SOURCE_DIR) /
                                             "configs/shapes/stage0_text.yaml");
  const auto train =
      recipe.find("  train: {format: llava_json, path: data/shapes/text_train.json}");
  REQUIRE(train != std::string::npos);
  recipe.replace(train, recipe.find('\n', train) - train,
                 "  train:\n    - {path: " + (dir / "big.json").string() + ", image_root: " + d +
                     "/images, weight: 3}\n    - {path: " + (dir / "small.json").string() +
                     ", image_root: " + d + "/images, weight: 1}");
  const auto mixed = dir / "mixed.yaml";
  write_text(mixed, recipe);
  auto run = [&](const std::filesystem::path& out, const std::string& extra) {
    return mllm::test::run_mllm(
        "train --config " + mixed.string() + " --set run.output_dir=" + out.string() +
        " --set run.threads=1 --set model.tokenizer=" + d + "/tokenizer.json" +
        " --set data.eval.path= --set data.eval.image_root= --set model.vision.image_size=32" +
        " --set model.vision.hidden=32 --set model.vision.layers=1" +
        " --set model.vision.intermediate=64 --set train.batch_size=8 --set train.epochs=2" +
        " --set train.max_steps=0 --set train.grad_accum=1 --set train.eval_every=0" +
        " --set train.log_every=1 --set train.save_every=3 --set train.keep_last=0" + extra);
  };
  const auto full = dir / "full";
  const auto r = run(full, "");
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output,
             Catch::Contains("data.train[0]: big.json (48 samples; 72 per epoch, weight 3)"));
  CHECK_THAT(r.output,
             Catch::Contains("data.train[1]: small.json (48 samples; 24 per epoch, weight 1)"));
  nlohmann::json last;
  int steps = 0;
  for (const auto& rec : read_jsonl(full / "metrics.jsonl"))
    if (rec.contains("source_items")) last = rec["source_items"], ++steps;
  CHECK(steps == 24);  // 2 epochs of 96 / 8
  CHECK(last["big.json"] == 144);
  CHECK(last["small.json"] == 48);

  // Stopped after 7 steps (checkpoint at 6), resumed: the same weights and the same counts.
  const auto part = dir / "part";
  REQUIRE(run(part, " --stop-after 7").code == 0);
  const auto rest = run(part, " --resume auto");
  INFO(rest.output);
  REQUIRE(rest.code == 0);
  nlohmann::json resumed;
  for (const auto& rec : read_jsonl(part / "metrics.jsonl"))
    if (rec.contains("source_items")) resumed = rec["source_items"];
  CHECK(resumed == last);
  CHECK(mllm::test::run_shell("cmp " + (full / "final/model.safetensors").string() + " " +
                              (part / "final/model.safetensors").string())
            .code == 0);
}
