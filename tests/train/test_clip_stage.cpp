// The contrastive stage (train.stage: clip): its retrieval figures, a short run on a tiny
// ShapesWorld, and its final/ as the CLIPModel folder a later stage loads as
// model.vision.pretrained.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>

#include "core/safetensors.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "jsonl.h"
#include "models/clip_model.h"
#include "models/factory.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"
#include "train/stage.h"
#include "train/trainer.h"

using namespace mllm;
using mllm::test::read_jsonl;
using mllm::test::TempDir;

namespace {

Config clip_config(const std::filesystem::path& data, const std::filesystem::path& out) {
  Config c = test::tiny_config(data, out);
  c.train.stage = "clip";
  c.train.trainable = {"vision_tower.*", "clip.*"};
  c.model.text.hidden = 32;
  c.model.text.layers = 1;
  c.model.text.heads = 2;
  c.model.text.intermediate = 64;
  c.model.text.max_position = 40;
  c.model.text.projection_dim = 32;
  c.train.batch_size = 16;
  c.train.lr = 3e-3;
  c.train.max_steps = 200;
  c.train.log_every = 50;
  c.train.eval_batches = 0;
  return c;
}

}  // namespace

TEST_CASE("clip retrieval: identical captions count as hits; chance is 1 - C(B-m,k)/C(B,k)") {
  // Captions a, a, b, c: image j scores caption j highest, except image 3, which prefers 2.
  auto logits = torch::eye(4, torch::kDouble);  // (texts, images)
  logits.index_put_({2, 3}, 2.0);
  const std::vector<std::vector<int64_t>> captions = {{7, 8}, {7, 8}, {9}, {10}};
  auto r = clip_retrieval(logits, captions);
  CHECK(r.at("recall@1") == Approx(0.75));  // images 0, 1, 2 right; 3 retrieves b
  // With 4 captions the top 5 hold them all.
  CHECK(r.at("recall@5") == Approx(1.0));
  CHECK(r.at("recall@5_chance") == Approx(1.0));
  // Image 0 and 1: a occurs twice (2/4); b and c once (1/4).
  CHECK(r.at("recall@1_chance") == Approx((0.5 + 0.5 + 0.25 + 0.25) / 4));
  // Ties with an identical caption: image 1 retrieving caption 0 (also "a") is a hit.
  logits.index_put_({0, 1}, 3.0);
  CHECK(clip_retrieval(logits, captions).at("recall@1") == Approx(0.75));

  // Distinct captions among B = 10: chance at 5 is 5/10, at 1 is 1/10.
  std::vector<std::vector<int64_t>> distinct;
  for (int64_t i = 0; i < 10; ++i) distinct.push_back({i});
  r = clip_retrieval(torch::eye(10), distinct);
  CHECK(r.at("recall@1") == Approx(1.0));
  CHECK(r.at("recall@1_chance") == Approx(0.1));
  CHECK(r.at("recall@5_chance") == Approx(0.5));
  // Scores reversed for every image: its own caption ranks last.
  r = clip_retrieval(-torch::eye(10), distinct);
  CHECK(r.at("recall@5") == Approx(0.0));
}

TEST_CASE("clip head: the temperature's scale is capped at 100 as open_clip clamps it") {
  VisionConfig v;
  v.hidden = 8;
  ClipTextConfig t;
  t.vocab = 16, t.hidden = 8, t.layers = 1, t.heads = 2, t.intermediate = 16, t.max_position = 8;
  t.projection_dim = 4;
  ClipHead head(v, t);
  {
    torch::NoGradGuard no_grad;
    head->logit_scale.fill_(10.0);
  }
  const auto a = torch::tensor({{1.0, 0.0, 0.0, 0.0}}), b = torch::tensor({{2.0, 0.0, 0.0, 0.0}});
  CHECK(head->logits_per_text(a, b, std::log(100.0)).item<double>() == Approx(100.0));
  CHECK(head->logits_per_text(a, b).item<double>() == Approx(std::exp(10.0)));
  auto scaled = head->logits_per_text(a, b, std::log(100.0));
  scaled.sum().backward();
  // Above the cap the scale takes no gradient, as with open_clip's in-place clamp.
  CHECK(head->logit_scale.grad().item<double>() == 0.0);
}

TEST_CASE(
    "clip stage: both towers learn image-caption retrieval; final/ is a CLIPModel folder "
    "that stage 1 loads as model.vision.pretrained") {
  TempDir data("mllm-clip");
  test::make_shapes(data.path(), 96, 32);
  const Config c = clip_config(data.path(), data / "clip");
  const TrainSummary r = train(c);
  REQUIRE(!r.final_dir.empty());
  REQUIRE(r.first_eval_loss.has_value());

  // Held out: retrieval among the 16 captions of an eval batch, well above chance.
  const auto records = read_jsonl(data / "clip" / "metrics.jsonl");
  nlohmann::json last;
  for (const auto& rec : records)
    if (rec.contains("eval_loss")) last = rec;
  REQUIRE(last.contains("eval_recall@1"));
  INFO(last.dump());
  CHECK(last["eval_recall@1"].get<double>() >= 3 * last["eval_recall@1_chance"].get<double>());
  CHECK(last["eval_recall@5"].get<double>() > last["eval_recall@5_chance"].get<double>());
  // On 96 training images the held-out loss soon overfits; the training loss falls from
  // ln 16 = 2.77, where towers that do not yet agree start.
  REQUIRE(r.losses.size() == 200);
  CHECK(r.losses.front().second == Approx(std::log(16.0)).epsilon(0.1));
  CHECK(r.losses.back().second < 0.5 * r.losses.front().second);

  // The folder: CLIPModel's config and keys, the text tower sized by the tokenizer.
  const auto dir = r.final_dir;
  const auto config = nlohmann::json::parse(test::read_text(dir / "config.json"));
  CHECK(config["model_type"] == "clip");
  CHECK(config["architectures"][0] == "CLIPModel");
  const auto tok = load_tokenizer(c.model.tokenizer);
  ClipTextConfig text;
  read_clip_text_config_json(dir, text);
  CHECK(text.vocab == tok->vocab_size());
  CHECK(text.eos_token_id == tok->eos_id());
  CHECK(text.bos_token_id == tok->bos_id());
  CHECK(text.hidden == 32);
  CHECK(text.projection_dim == 32);
  VisionConfig vision;
  read_vision_config_json(dir, vision);
  CHECK(vision.hidden == c.model.vision.hidden);
  CHECK(vision.layers == c.model.vision.layers);
  CHECK(vision.image_size == c.model.vision.image_size);
  std::map<std::string, torch::Tensor> saved;
  for (auto& [name, t] : load_safetensors(dir / "model.safetensors")) saved[name] = t;
  for (const char* key :
       {"logit_scale", "visual_projection.weight", "text_projection.weight",
        "text_model.embeddings.token_embedding.weight", "text_model.final_layer_norm.weight",
        "vision_model.post_layernorm.weight", "vision_model.embeddings.patch_embedding.weight"})
    CHECK(saved.count(key) == 1);
  for (const auto& [name, t] : saved) {
    INFO(name);
    CHECK(name.rfind("language_model.", 0) != 0);
    CHECK(name.rfind("multi_modal_projector.", 0) != 0);
  }
  CHECK(std::exp(saved.at("logit_scale").item<double>()) <= 100.0 + 1e-3);
  CHECK(test::read_text(dir / "tokenizer.json") == test::read_text(c.model.tokenizer));

  // Stage 1 loads the trained tower: every vision_model tensor as saved, not a fresh init.
  Config s1 = test::tiny_config(data.path(), data / "s1");
  s1.model.vision = VisionConfig{};
  s1.model.vision.pretrained = dir.string();
  MultimodalModel m = build_model(s1, tok->vocabulary());
  CHECK(m->config().vision.hidden == c.model.vision.hidden);
  int64_t compared = 0;
  for (const auto& [name, t] : named_parameters(*m->vision_tower)) {
    INFO(name);
    REQUIRE(saved.count(name));
    CHECK(torch::equal(saved.at(name), t));
    ++compared;
  }
  CHECK(compared == static_cast<int64_t>(named_parameters(*m->vision_tower).size()));
  // ... which are not what the seed alone gives: the contrastive stage trained them.
  Config fresh_config = test::tiny_config(data.path(), data / "fresh");
  MultimodalModel fresh = build_model(fresh_config, tok->vocabulary());
  std::map<std::string, torch::Tensor> initial;
  for (auto& [name, t] : named_parameters(*fresh->vision_tower)) initial[name] = t;
  const std::string fc1 = "vision_model.encoder.layers.0.mlp.fc1.weight";
  REQUIRE(initial.at(fc1).sizes() == saved.at(fc1).sizes());
  CHECK_FALSE(torch::allclose(initial.at(fc1), saved.at(fc1)));
}

TEST_CASE("clip stage: resumes its text tower and temperature from a checkpoint") {
  TempDir data("mllm-clip-resume");
  test::make_shapes(data.path(), 48, 16);
  Config c = clip_config(data.path(), data / "run");
  c.train.max_steps = 6;
  c.train.save_every = 3;
  c.train.eval_batches = 1;
  TrainOptions stop;
  stop.stop_after = 3;
  const TrainSummary part = train(c, stop);
  CHECK(part.final_dir.empty());
  TrainOptions resume;
  resume.resume = "auto";
  const TrainSummary rest = train(c, resume);
  REQUIRE(!rest.final_dir.empty());
  Config straight = c;
  straight.run.output_dir = (data / "straight").string();
  const TrainSummary whole = train(straight);
  // The resumed steps' losses equal the uninterrupted run's: the head's weights and optimizer
  // moments came back from the checkpoint.
  REQUIRE(rest.losses.size() == 3);
  REQUIRE(whole.losses.size() == 6);
  for (size_t i = 0; i < 3; ++i) CHECK(rest.losses[i].second == Approx(whole.losses[i + 3].second));
}

TEST_CASE("clip stage: a record without an image or a caption is named in the error") {
  TempDir data("mllm-clip-bad");
  test::make_shapes(data.path(), 48, 16);
  const auto path = data / "captions_train.json";
  auto records = nlohmann::json::parse(test::read_text(path));
  REQUIRE(records.size() == 48);
  Config c = clip_config(data.path(), data / "run");
  c.train.max_steps = 3;  // one epoch of 48: every record is read
  c.train.eval_batches = 0;
  SECTION("no image") {
    const std::string id = records[7]["id"];
    records[7].erase("image");
    records[7]["conversations"][0]["value"] = "write a short caption.";
    test::write_text(path, records.dump());
    REQUIRE_THROWS_WITH(train(c), Catch::Contains("record " + id + " has no image"));
  }
  // A caption-less record never reaches the stage: the reader refuses it by file, line, record.
  SECTION("an empty caption: the reader names the file, line and record") {
    const std::string id = records[11]["id"];
    records[11]["conversations"][1]["value"] = "";
    test::write_text(path, records.dump());
    REQUIRE_THROWS_WITH(train(c), Catch::Contains("captions_train.json:1: record 11") &&
                                      Catch::Contains(id) && Catch::Contains("empty gpt reply"));
  }
  SECTION("no reply at all: the reader names the file, line and record") {
    const std::string id = records[11]["id"];
    records[11]["conversations"].erase(1);
    test::write_text(path, records.dump());
    REQUIRE_THROWS_WITH(train(c), Catch::Contains("captions_train.json:1: record 11") &&
                                      Catch::Contains(id) && Catch::Contains("no response"));
  }
  CHECK(!std::filesystem::exists(data / "run" / "final"));
}
