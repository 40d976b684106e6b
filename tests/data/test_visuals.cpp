// Several images and video in one record (data/datasets.h): tags counted and kept in place, each
// image's placeholder run where its tag is, truncation that never cuts an image, the visual-token
// budget at load; video files decoded by OpenCV with LLaVA-OneVision's uniform sampling, frame
// lists sampled the same way, frames' token grids pooled; mixed batches collated in placeholder
// order; broken videos are bad records.
#include <catch2/catch.hpp>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/collator.h"
#include "data/datasets.h"
#include "data/image_transform.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "models/multimodal_model.h"

using namespace mllm;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

// A flat image of one grey level (so that a decoded pixel says which image it was).
void write_grey(const std::filesystem::path& p, int level) {
  std::filesystem::create_directories(p.parent_path());
  REQUIRE(cv::imwrite(p.string(), cv::Mat(16, 16, CV_8UC3, cv::Scalar(level, level, level))));
}

// An MJPEG AVI of `n` frames, frame k a flat grey of 20 k + 10.
void write_clip(const std::filesystem::path& p, int n) {
  cv::VideoWriter w(p.string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 10, cv::Size(32, 32));
  REQUIRE(w.isOpened());
  for (int k = 0; k < n; ++k) w.write(cv::Mat(32, 32, CV_8UC3, cv::Scalar::all(20 * k + 10)));
}

// Runs of the image id in a sample: (start, length) each.
std::vector<std::pair<size_t, size_t>> image_runs(const Sample& s, int64_t image_id) {
  std::vector<std::pair<size_t, size_t>> runs;
  for (size_t i = 0; i < s.input_ids.size(); ++i) {
    if (s.input_ids[i] != image_id) continue;
    if (!runs.empty() && runs.back().first + runs.back().second == i)
      ++runs.back().second;
    else
      runs.emplace_back(i, 1);
  }
  return runs;
}

struct Setup {
  TempDir dir;
  std::unique_ptr<Tokenizer> tok;
  DataConfig data;
  Setup() {
    test::make_shapes(dir.path(), 4, 1);
    tok = load_tokenizer(dir / "tokenizer.json");
    data.template_name = "plain";
    data.train.path = (dir / "recs.json").string();
    data.train.image_root = dir.path().string();
    data.max_length = 256;
    for (int i = 0; i < 10; ++i) write_grey(dir / ("f" + std::to_string(i) + ".png"), 20 * i + 10);
    write_clip(dir / "clip.avi", 10);
  }
  void records(const nlohmann::json& recs) { write_text(dir / "recs.json", recs.dump()); }
};

nlohmann::json convo(const std::string& human, const std::string& reply = "a red circle .") {
  return nlohmann::json::array(
      {{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", reply}}});
}

}  // namespace

TEST_CASE("visuals: several images per record, each where its tag stands") {
  Setup s;
  s.data.template_name = "vicuna_v1";  // keeps the human text (plain keeps only the tags)
  const int64_t Q = 9;
  s.records({{{"id", "two"},
              {"image", {"f1.png", "f2.png"}},
              {"conversations", convo("first <image> then <image> : which is darker ?")}},
             {{"id", "trl"},
              {"images", {"f3.png", "f4.png", "f5.png"}},
              {"conversations", convo("<image> <image> <image> how many ?", "three .")}},
             {{"id", "text"}, {"conversations", convo("hello", "hi .")}}});
  ConversationDataset ds(s.data.train, s.data, *s.tok, Q, "data.train");
  REQUIRE(ds.size() == 3);
  const Sample two = ds.sample(0);
  REQUIRE(two.visuals.size() == 2);
  CHECK(two.visuals[0].files.at(0) == s.dir / "f1.png");
  CHECK(two.visuals[1].files.at(0) == s.dir / "f2.png");
  const auto runs = image_runs(two, s.tok->image_id());
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].second == Q);
  CHECK(runs[1].second == Q);
  // Kept in place: text ("then") between the two images, and before the first.
  CHECK(runs[0].first > 1);
  CHECK(runs[1].first > runs[0].first + Q);
  for (const auto& [at, n] : runs)
    for (size_t i = at; i < at + n; ++i) CHECK(two.labels[i] == kIgnoreIndex);
  CHECK(ds.sample(1).visuals.size() == 3);
  const Sample trl = ds.sample(1);
  CHECK(std::count(trl.input_ids.begin(), trl.input_ids.end(), s.tok->image_id()) == 3 * Q);
  CHECK(ds.sample(2).visuals.empty());
  CHECK(ds.length_hint(0) >= 2 * Q);
}

TEST_CASE("visuals: bad multi-image and video records name the record") {
  Setup s;
  auto load_one = [&](const nlohmann::json& rec) {
    s.records(nlohmann::json::array({rec}));
    ConversationDataset ds(s.data.train, s.data, *s.tok, 9, "data.train");
    return ds.sample(0);
  };
  CHECK_THROWS_WITH(load_one({{"id", "x"},
                              {"image", {"f1.png", "f2.png"}},
                              {"conversations", convo("<image> only one")}}),
                    Catch::Contains("recs.json:1: record 0 (id \"x\")") &&
                        Catch::Contains("1 <image> tags for 2 images"));
  CHECK_THROWS_WITH(load_one({{"id", "y"},
                              {"image", {"f1.png", "nope.png"}},
                              {"conversations", convo("<image> <image>")}}),
                    Catch::Contains("image not found") && Catch::Contains("nope.png"));
  CHECK_THROWS_WITH(load_one({{"id", "z"},
                              {"image", "f1.png"},
                              {"video", "clip.avi"},
                              {"conversations", convo("<image>")}}),
                    Catch::Contains("not several"));
  CHECK_THROWS_WITH(load_one({{"id", "v"},
                              {"video", "clip.avi"},
                              {"conversations", convo("<image> <image> what moves ?")}}),
                    Catch::Contains("2 <image> tags for 1 images (a video counts as one)"));
  CHECK_THROWS_WITH(
      load_one(
          {{"id", "w"}, {"video", nlohmann::json::array()}, {"conversations", convo("<image>")}}),
      Catch::Contains("empty list of frames"));
}

TEST_CASE("visuals: truncation never cuts any image; the budget is checked at load") {
  Setup s;
  const int64_t Q = 9;
  s.records({{{"id", "two"},
              {"image", {"f1.png", "f2.png"}},
              {"conversations",
               convo("<image> and <image>", "a long reply with many words so that it is cut .")}}});
  // plain: BOS, the two images' 2Q tokens, the reply, EOS.
  s.data.max_length = 2 * Q;  // the images fit alone, but end at 2Q + 1
  {
    ConversationDataset ds(s.data.train, s.data, *s.tok, Q, "data.train");
    CHECK_THROWS_WITH(ds.sample(0), Catch::Contains("would cut an image"));
  }
  s.data.max_length = 2 * Q + 1;  // the images end exactly there: nothing supervised is left
  {
    ConversationDataset ds(s.data.train, s.data, *s.tok, Q, "data.train");
    CHECK_THROWS_WITH(ds.sample(0), Catch::Contains("leaves nothing supervised"));
  }
  s.data.max_length = 2 * Q + 5;  // cut inside the reply
  {
    ConversationDataset ds(s.data.train, s.data, *s.tok, Q, "data.train");
    const Sample t = ds.sample(0);
    CHECK(t.input_ids.size() == static_cast<size_t>(2 * Q + 5));
    CHECK(std::count(t.input_ids.begin(), t.input_ids.end(), s.tok->image_id()) == 2 * Q);
    CHECK(ds.truncated() == 1);
  }
  s.data.max_length = 2 * Q - 1;  // the images alone do not fit: at load, before tokenizing
  CHECK_THROWS_WITH(ConversationDataset(s.data.train, s.data, *s.tok, Q, "data.train"),
                    Catch::Contains("the images alone take 18 tokens"));
  s.data.on_bad_record = "skip";
  s.records({{{"id", "two"},
              {"image", {"f1.png", "f2.png"}},
              {"conversations", convo("<image> <image>")}},
             {{"id", "one"}, {"image", "f1.png"}, {"conversations", convo("<image>")}}});
  ConversationDataset skipping(s.data.train, s.data, *s.tok, Q, "data.train");
  CHECK(skipping.size() == 1);
  CHECK(skipping.skipped() == 1);
}

TEST_CASE("visuals: a video is frames sampled uniformly, pooled tokens per frame") {
  Setup s;
  const int64_t Q = 16;  // a 4 x 4 grid
  s.data.video.frames = 4;
  s.records(
      {{{"id", "clip"}, {"video", "clip.avi"}, {"conversations", convo("<image> which way ?")}},
       {{"id", "frames"},
        {"video",
         {"f0.png", "f1.png", "f2.png", "f3.png", "f4.png", "f5.png", "f6.png", "f7.png", "f8.png",
          "f9.png"}},
        {"conversations", convo("<image> which way ?")}}});
  {
    ConversationDataset ds(s.data.train, s.data, *s.tok, Q, "data.train");
    const Sample clip = ds.sample(0);
    REQUIRE(clip.visuals.size() == 1);
    CHECK(clip.visuals[0].kind == Visual::Kind::video_file);
    const auto runs = image_runs(clip, s.tok->image_id());
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].second == 4 * Q);  // 4 frames, unpooled
    // A list of 10 frame files: np.linspace(0, 9, 4) -> 0, 3, 6, 9.
    const Sample frames = ds.sample(1);
    REQUIRE(frames.visuals.at(0).files.size() == 4);
    CHECK(frames.visuals[0].files[1] == s.dir / "f3.png");
    CHECK(frames.visuals[0].files[2] == s.dir / "f6.png");
    CHECK(frames.visuals[0].files[3] == s.dir / "f9.png");
  }
  s.data.video.pool = 2;
  ConversationDataset pooled(s.data.train, s.data, *s.tok, Q, "data.train");
  CHECK(image_runs(pooled.sample(0), s.tok->image_id())[0].second == 4 * 4);  // 2 x 2 per frame
  s.data.video.pool = 3;  // ceil(4 / 3) = 2: still 2 x 2
  ConversationDataset pooled3(s.data.train, s.data, *s.tok, Q, "data.train");
  CHECK(image_runs(pooled3.sample(0), s.tok->image_id())[0].second == 4 * 4);
  CHECK_THROWS_WITH(ConversationDataset(s.data.train, s.data, *s.tok, 12, "data.train"),
                    Catch::Contains("data.video.pool") && Catch::Contains("square"));

  // The decoder: frames 0, 3, 6, 9 of the clip, in order (grey 10, 70, 130, 190, within JPEG's
  // error).
  ImageConfig ic;
  ic.mean = {0, 0, 0};
  ic.std = {1, 1, 1};
  const ImageTransform transform(ic, 8);
  const auto frames = transform.load_video(s.dir / "clip.avi", 4);
  REQUIRE(frames.sizes() == torch::IntArrayRef({4, 3, 8, 8}));
  for (int64_t k = 0; k < 4; ++k)
    CHECK(frames[k].mean().item<double>() * 255 == Approx(60 * k + 10).margin(4));
  // Fewer frames than asked: some are repeated, as linspace over 10 frames asks.
  CHECK(transform.load_video(s.dir / "clip.avi", 16).size(0) == 16);
}

TEST_CASE("visuals: a mixed batch collates every image in placeholder order; broken videos") {
  Setup s;
  const int64_t Q = 16;
  s.data.video.frames = 3;
  s.data.video.pool = 2;
  s.records({{{"id", "text"}, {"conversations", convo("hello")}},
             {{"id", "one"}, {"image", "f1.png"}, {"conversations", convo("<image> what ?")}},
             {{"id", "two"},
              {"image", {"f2.png", "f3.png"}},
              {"conversations", convo("<image> <image>")}},
             {{"id", "clip"}, {"video", "clip.avi"}, {"conversations", convo("<image> where ?")}}});
  ConversationDataset ds(s.data.train, s.data, *s.tok, Q, "data.train");
  std::vector<Sample> samples;
  for (size_t i = 0; i < ds.size(); ++i) samples.push_back(ds.sample(i));
  std::vector<const Sample*> ptrs;
  for (const auto& x : samples) ptrs.push_back(&x);
  ImageConfig ic;
  ic.mean = {0, 0, 0};
  ic.std = {1, 1, 1};
  const ImageTransform transform(ic, 8);
  const Batch b = collate(ptrs, transform, 0);
  REQUIRE(b.pixel_values.size(0) == 1 + 2 + 3);
  const double want[] = {30, 50, 70, 10, 90, 190};  // f1, f2, f3, clip frames 0, 4, 9
  for (int64_t i = 0; i < 6; ++i)
    CHECK(b.pixel_values[i].mean().item<double>() * 255 == Approx(want[i]).margin(4));
  REQUIRE(b.image_pool.defined());
  CHECK(b.image_pool.equal(torch::tensor({1, 1, 1, 2, 2, 2}, torch::kLong)));
  CHECK(b.has_image == std::vector<bool>{false, true, true, true});
  // The placeholders add up to the tokens the model will splice in: 3 images x 16 + 3 frames x 4.
  CHECK((b.input_ids == s.tok->image_id()).sum().item<int64_t>() == 3 * 16 + 3 * 4);

  // A file that is not a video: an error naming it and the record, or the sample dropped.
  write_text(s.dir / "clip.avi", "not a video at all");
  CHECK_THROWS_WITH(collate(ptrs, transform, 0), Catch::Contains("clip.avi: cannot decode video") &&
                                                     Catch::Contains("record id clip"));
  int64_t dropped = 0;
  const Batch kept = collate(ptrs, transform, 0, true, &dropped);
  CHECK(dropped == 1);
  CHECK(kept.samples == 3);
  CHECK_FALSE(kept.image_pool.defined());
}

TEST_CASE("visuals: a video frame's tokens are average-pooled on their grid (ceil)") {
  const int64_t C = 2;
  const auto tokens = torch::arange(3 * 9 * C, torch::kFloat).reshape({3, 9, C});
  const auto out = pool_image_tokens(tokens, torch::tensor({1, 2, 1}, torch::kLong));
  REQUIRE(out.sizes() == torch::IntArrayRef({9 + 4 + 9, C}));
  CHECK(out.slice(0, 0, 9).equal(tokens[0]));
  CHECK(out.slice(0, 13).equal(tokens[2]));
  // Image 1's 3 x 3 grid in 2 x 2 windows: full, right column, bottom row, corner.
  const auto g = tokens[1].reshape({3, 3, C});
  auto mean = [&](std::vector<std::pair<int, int>> cells) {
    auto acc = torch::zeros({C});
    for (auto [r, c] : cells) acc += g[r][c];
    return acc / static_cast<double>(cells.size());
  };
  CHECK(torch::allclose(out[9], mean({{0, 0}, {0, 1}, {1, 0}, {1, 1}})));
  CHECK(torch::allclose(out[10], mean({{0, 2}, {1, 2}})));
  CHECK(torch::allclose(out[11], mean({{2, 0}, {2, 1}})));
  CHECK(torch::allclose(out[12], mean({{2, 2}})));
  CHECK(pool_image_tokens(tokens, {}).sizes() == torch::IntArrayRef({27, C}));
}
