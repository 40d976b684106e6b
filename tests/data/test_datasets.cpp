#include <catch2/catch.hpp>

#include <opencv2/imgcodecs.hpp>

#include "core/error.h"
#include "data/collator.h"
#include "data/datasets.h"
#include "data/image_transform.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"

using namespace mllm;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {
const char* kRecords = R"([
  {"id": "r0", "image": "a.png", "conversations": [
    {"from": "human", "value": "<image>\nDescribe the image."},
    {"from": "gpt", "value": "a red circle ."}]},
  {"id": "r1", "image": "b.png", "conversations": [
    {"from": "human", "value": "<image>\nwhat is in the picture?"},
    {"from": "gpt", "value": "a large blue square at the top left and a small green triangle at the bottom ."}]}
])";
}  // namespace

TEST_CASE("dataset: plain template expands <image> and supervises only the caption") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  write_text(dir / "recs.json", kRecords);
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.template_name = "plain";
  data.train.path = (dir / "recs.json").string();
  data.train.image_root = dir.path().string();
  const int64_t Q = 16;
  ConversationDataset ds(data.train, data, *tok, Q, "data.train");
  REQUIRE(ds.size() == 2);
  const Sample& s = ds[0];
  const auto caption = tok->encode("a red circle .");
  REQUIRE(s.input_ids.size() == 1 + Q + caption.size() + 1);
  CHECK(s.input_ids[0] == tok->bos_id());
  for (int64_t i = 1; i <= Q; ++i) {
    CHECK(s.input_ids[static_cast<size_t>(i)] == tok->image_id());
    CHECK(s.labels[static_cast<size_t>(i)] == kIgnoreIndex);
  }
  CHECK(s.labels[0] == kIgnoreIndex);
  for (size_t i = 0; i < caption.size(); ++i) {
    CHECK(s.input_ids[1 + Q + i] == caption[i]);
    CHECK(s.labels[1 + Q + i] == caption[i]);
  }
  CHECK(s.labels.back() == tok->eos_id());
  CHECK(s.image == dir.path() / "a.png");
}

TEST_CASE(
    "dataset: text template drops images, keeps prompts unsupervised, supervises the responses") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  write_text(dir / "recs.json", kRecords);
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.template_name = "text";
  data.train.path = (dir / "recs.json").string();
  ConversationDataset ds(data.train, data, *tok, 16, "data.train");
  const Sample& s = ds[0];
  CHECK(s.image.empty());
  CHECK(std::count(s.input_ids.begin(), s.input_ids.end(), tok->image_id()) == 0);
  const auto prompt = tok->encode("Describe the image.");
  const auto answer = tok->encode("a red circle .");
  REQUIRE(s.input_ids.size() == 1 + prompt.size() + answer.size() + 1);
  for (size_t i = 0; i <= prompt.size(); ++i) CHECK(s.labels[i] == kIgnoreIndex);
  for (size_t i = 0; i < answer.size(); ++i) {
    CHECK(s.input_ids[1 + prompt.size() + i] == answer[i]);
    CHECK(s.labels[1 + prompt.size() + i] == answer[i]);
  }
  CHECK(s.labels.back() == tok->eos_id());
}

TEST_CASE("dataset: over-long records are errors naming file and record, or skipped") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  write_text(dir / "recs.json", kRecords);
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.train.path = (dir / "recs.json").string();
  data.max_length = 12;  // shorter than 1 + 16 image tokens
  CHECK_THROWS_WITH(
      ConversationDataset(data.train, data, *tok, 16, "data.train"),
      Catch::Contains("recs.json: record 0 (id \"r0\")") && Catch::Contains("would cut the image"));
  data.max_length = 22;  // fits record 0 (1+16+4+1), truncates record 1's caption
  ConversationDataset ds(data.train, data, *tok, 16, "data.train");
  REQUIRE(ds.size() == 2);
  CHECK(ds[1].input_ids.size() == 22);
  data.max_length = 17;  // image fits, nothing supervised is left
  data.on_bad_record = "skip";
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 16, "data.train"),
                    Catch::Contains("no usable records"));
}

TEST_CASE("dataset: malformed JSON and records give one clear error") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.train.path = (dir / "bad.json").string();
  write_text(dir / "bad.json", "[{\"id\": 1,");
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                    Catch::Contains("bad.json: malformed JSON"));
  write_text(
      dir / "bad.json",
      R"([{"id": "x", "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]}])");
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                    Catch::Contains("record 0 (id \"x\")") && Catch::Contains("expected 'human'"));
  write_text(dir / "bad.json", R"({"not": "a list"})");
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                    Catch::Contains("expected a JSON array"));
}

TEST_CASE("image transform: pad to square with the mean colour, resize, normalise, RGB order") {
  ImageConfig ic;
  ic.mean = {0.5, 0.5, 0.5};
  ic.std = {0.5, 0.5, 0.5};
  ImageTransform t(4, ic);
  cv::Mat img(2, 4, CV_8UC3, cv::Scalar(255, 0, 0));  // BGR blue, wide
  auto x = t(img);
  REQUIRE(x.sizes() == torch::IntArrayRef({3, 4, 4}));
  // Blue in RGB order: channel 2 is +1 (255 normalised), channel 0 is -1, in the middle rows.
  CHECK(x[2][1][1].item<float>() == Approx(1.0).margin(0.02));
  CHECK(x[0][1][1].item<float>() == Approx(-1.0).margin(0.02));
  // The padded top row is the mean colour: 0 after normalisation (up to bicubic ringing at the
  // edge).
  CHECK(std::abs(x[0][0][0].item<float>()) < 0.05);
}

TEST_CASE("image transform: a corrupt or missing image names the file") {
  TempDir dir;
  write_text(dir / "broken.png", "\x89PNG\r\n\x1a\nnot really");
  ImageTransform t(8, ImageConfig{});
  CHECK_THROWS_WITH(t.load(dir / "broken.png"), Catch::Contains("broken.png: cannot decode image"));
  CHECK_THROWS_WITH(t.load(dir / "absent.png"), Catch::Contains("absent.png: image not found"));
}

TEST_CASE(
    "collator: right padding, -100 labels on padding, supervised token count after the shift") {
  Sample a{"a", {1, 5, 6, 2}, {-100, 5, 6, 2}, {}};
  Sample b{"b", {1, 7}, {-100, 7}, {}};
  ImageTransform t(8, ImageConfig{});
  const Batch batch = collate({&a, &b}, t, /*pad_id=*/0);
  REQUIRE(batch.input_ids.sizes() == torch::IntArrayRef({2, 4}));
  CHECK(batch.input_ids[1][2].item<int64_t>() == 0);
  CHECK(batch.labels[1][2].item<int64_t>() == kIgnoreIndex);
  CHECK(batch.attention_mask.sum().item<int64_t>() == 6);
  CHECK(batch.supervised_tokens == 4);
  CHECK(!batch.pixel_values.defined());
}
