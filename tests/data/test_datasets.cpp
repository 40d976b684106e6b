#include <catch2/catch.hpp>

#include <opencv2/imgcodecs.hpp>

#include <functional>
#include <nlohmann/json.hpp>
#include <regex>

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

// A sample's (first) image file, or empty.
std::filesystem::path image_of(const mllm::Sample& s) {
  return s.visuals.empty() ? std::filesystem::path() : s.visuals.front().files.front();
}

const char* kRecords = R"([
  {"id": "r0", "image": "a.png", "conversations": [
    {"from": "human", "value": "<image>\nDescribe the image."},
    {"from": "gpt", "value": "a red circle ."}]},
  {"id": "r1", "image": "b.png", "conversations": [
    {"from": "human", "value": "<image>\nwhat is in the picture?"},
    {"from": "gpt", "value": "a large blue square at the top left and a small green triangle at the bottom ."}]}
])";

void write_image(const std::filesystem::path& p) {
  std::filesystem::create_directories(p.parent_path());
  REQUIRE(cv::imwrite(p.string(), cv::Mat(8, 12, CV_8UC3, cv::Scalar(30, 120, 200))));
}

std::filesystem::path fixture(const std::string& name) {
  return std::filesystem::path(MLLM_SOURCE_DIR) / "tests/data/fixtures" / name;
}

// A WordLevel tokenizer.json (lowercase, \w+|[^\w\s]+ words) whose vocabulary holds every word of
// `texts`, with `specials` as added tokens, so every test word has its own id and decode shows
// exactly which words are supervised.
std::unique_ptr<Tokenizer> word_tokenizer(const TempDir& dir, const std::vector<std::string>& texts,
                                          const std::vector<std::string>& specials = {
                                              "<pad>", "<s>", "</s>", "<unk>", "<image>"}) {
  nlohmann::json added = nlohmann::json::array(), vocab = nlohmann::json::object();
  int64_t id = 0;
  for (const auto& sp : specials) {
    added.push_back({{"id", id},
                     {"content", sp},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
    vocab[sp] = id++;
  }
  const std::regex word(R"(\w+|[^\w\s]+)");
  for (std::string t : texts) {
    for (const auto& sp : specials)
      for (size_t p; (p = t.find(sp)) != std::string::npos;) t.replace(p, sp.size(), " ");
    std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
    for (std::sregex_iterator it(t.begin(), t.end(), word), e; it != e; ++it)
      if (!vocab.contains(it->str())) vocab[it->str()] = id++;
  }
  const nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", {{"type", "Lowercase"}}},
      {"pre_tokenizer", {{"type", "Whitespace"}}},
      {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "<unk>"}}}};
  write_text(dir / "words.json", j.dump());
  return load_tokenizer(dir / "words.json");
}

// Every string in a record file, for word_tokenizer.
std::vector<std::string> strings_of(const std::filesystem::path& file) {
  std::vector<std::string> out = {
      "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
      "helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT: [INST] "
      "<<SYS>> <</SYS>> [/INST] system user assistant You are a helpful assistant."};
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& j) {
    if (j.is_string()) out.push_back(j.get<std::string>());
    if (j.is_structured())
      for (const auto& v : j) walk(v);
  };
  walk(nlohmann::json::parse(test::read_text(file)));
  return out;
}

// The supervised ids decoded with the special tokens kept.
std::string supervised_text(const Sample& s, const Tokenizer& tok) {
  std::vector<int64_t> ids;
  for (int64_t l : s.labels)
    if (l != kIgnoreIndex) ids.push_back(l);
  return tok.decode(ids, false);
}

// input_ids with each block of image ids collapsed to one.
std::vector<int64_t> collapse_images(const Sample& s, int64_t image_id) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < s.input_ids.size(); ++i)
    if (s.input_ids[i] != image_id || i == 0 || s.input_ids[i - 1] != image_id)
      out.push_back(s.input_ids[i]);
  return out;
}

// Images for the fixture records' paths under `root`.
void write_fixture_images(const std::filesystem::path& root) {
  for (const char* p :
       {"coco/train2017/000000033471.jpg", "coco/train2017/000000052846.jpg",
        "ocr_vqa/images/140031996.jpg", "00453/004539375.jpg", "00223/002239345.jpg"})
    write_image(root / p);
}

}  // namespace

TEST_CASE("dataset: plain template expands <image> and supervises only the caption") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  write_text(dir / "recs.json", kRecords);
  write_image(dir / "a.png");
  write_image(dir / "b.png");
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.template_name = "plain";
  data.train.path = (dir / "recs.json").string();
  data.train.image_root = dir.path().string();
  const int64_t Q = 16;
  ConversationDataset ds(data.train, data, *tok, Q, "data.train");
  REQUIRE(ds.size() == 2);
  const Sample s = ds.sample(0);
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
  CHECK(image_of(s) == dir.path() / "a.png");
  CHECK(ds.skipped() == 0);
  CHECK(ds.truncated() == 0);
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
  const Sample s = ds.sample(0);
  CHECK(s.visuals.empty());
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

TEST_CASE(
    "dataset: LLaVA-1.5 mix665k records tokenize through vicuna_v1 with the replies supervised") {
  TempDir dir;
  write_fixture_images(dir / "images");
  const auto file = fixture("llava_v1_5_mix665k_sample.json");
  auto tok = word_tokenizer(dir, strings_of(file));
  DataConfig data;
  data.template_name = "vicuna_v1";
  data.train.path = file.string();
  data.train.image_root = (dir / "images").string();
  const int64_t Q = 5;
  ConversationDataset ds(data.train, data, *tok, Q, "data.train");
  REQUIRE(ds.size() == 4);

  const Sample bus = ds.sample(0);
  CHECK(bus.id == "000000033471");
  CHECK(image_of(bus) == dir / "images" / "coco/train2017/000000033471.jpg");
  CHECK(supervised_text(bus, *tok) ==
        "the bus in the image is white and red . </s> the back of the bus features an "
        "advertisement . </s>");
  // The whole prompt string tokenized at once, with <image> expanded to Q ids.
  const std::string prompt =
      "<s>A chat between a curious user and an artificial intelligence assistant. The assistant "
      "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat "
      "are the colors of the bus in the image? ASSISTANT: The bus in the image is white and "
      "red.</s>USER: What feature can be seen on the back of the bus? ASSISTANT: The back of the "
      "bus features an advertisement.</s>";
  CHECK(collapse_images(bus, tok->image_id()) == tok->encode(prompt));
  CHECK(std::count(bus.input_ids.begin(), bus.input_ids.end(), tok->image_id()) == Q);
  CHECK(bus.input_ids[0] == tok->bos_id());

  // "...\n<image>" moves to the front of the turn, as LLaVA's preprocess_multimodal does.
  const Sample cat = ds.sample(1);
  const auto user = tok->encode("USER: <image>");
  const auto it = std::search(cat.input_ids.begin(), cat.input_ids.end(), user.begin(), user.end());
  CHECK(it != cat.input_ids.end());
  CHECK(supervised_text(cat, *tok) ==
        "the cat is positioned on top of the back of the couch in the living room . </s>");
  CHECK(supervised_text(ds.sample(2), *tok) == "sandra boynton </s>");

  // The ShareGPT record has no image: no image ids, no image path.
  const Sample text = ds.sample(3);
  CHECK(text.visuals.empty());
  CHECK(std::count(text.input_ids.begin(), text.input_ids.end(), tok->image_id()) == 0);
  CHECK(supervised_text(text, *tok) ==
        "1 . homogeneity : the segment should consist of customers who share similar "
        "characteristics . </s>");
}

TEST_CASE("dataset: LLaVA pretraining records through plain; multi-turn records do not fit it") {
  TempDir dir;
  write_fixture_images(dir / "images");
  const auto pre = fixture("blip_laion_cc_sbu_558k_sample.json");
  auto tok = word_tokenizer(dir, strings_of(pre));
  DataConfig data;
  data.template_name = "plain";
  data.train.path = pre.string();
  data.train.image_root = (dir / "images").string();
  const int64_t Q = 3;
  ConversationDataset ds(data.train, data, *tok, Q, "data.train");
  REQUIRE(ds.size() == 2);
  const std::vector<int64_t> head = {tok->bos_id(), tok->image_id(), tok->image_id(),
                                     tok->image_id()};
  const Sample first = ds.sample(0);
  CHECK(std::vector<int64_t>(first.input_ids.begin(), first.input_ids.begin() + 4) == head);
  CHECK(supervised_text(ds.sample(0), *tok) ==
        "select luxury furniture 3 - inch gel memory foam mattress topper </s>");
  CHECK(supervised_text(ds.sample(1), *tok) == "a grey watch with an army style strap </s>");
  CHECK(first.input_ids.size() == 4 + 11 + 1);

  data.train.path = fixture("llava_v1_5_mix665k_sample.json").string();
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, Q, "data.train"),
                    Catch::Contains("record 0 (id \"000000033471\")") &&
                        Catch::Contains("one human and one gpt turn"));
  data.on_bad_record = "skip";
  ConversationDataset mixed(data.train, data, *tok, Q, "data.train");
  CHECK(mixed.size() == 3);
  CHECK(mixed.skipped() == 1);
}

TEST_CASE("dataset: JSONL gives the same samples as the JSON array") {
  TempDir dir;
  write_fixture_images(dir / "images");
  const auto file = fixture("llava_v1_5_mix665k_sample.json");
  std::string lines;
  for (const auto& rec : nlohmann::json::parse(test::read_text(file))) lines += rec.dump() + "\n\n";
  write_text(dir / "mix.jsonl", lines);
  auto tok = word_tokenizer(dir, strings_of(file));
  DataConfig data;
  data.template_name = "vicuna_v1";
  data.train.image_root = (dir / "images").string();
  data.train.path = file.string();
  ConversationDataset a(data.train, data, *tok, 4, "data.train");
  data.train.path = (dir / "mix.jsonl").string();
  ConversationDataset b(data.train, data, *tok, 4, "data.train");
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a.sample(i).input_ids == b.sample(i).input_ids);
    CHECK(a.sample(i).labels == b.sample(i).labels);
  }
  // A JSONL file named .json is read as JSONL when the format says so.
  write_text(dir / "mix_lines.json", lines);
  data.train.path = (dir / "mix_lines.json").string();
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                    Catch::Contains("name the file .jsonl"));
  data.train.format = "llava_jsonl";
  CHECK(ConversationDataset(data.train, data, *tok, 4, "data.train").size() == 4);
}

TEST_CASE("dataset: chatml supervises the replies and <|im_end|>, with no BOS") {
  TempDir dir;
  write_fixture_images(dir / "images");
  const auto file = fixture("llava_v1_5_mix665k_sample.json");
  auto tok = word_tokenizer(dir, strings_of(file),
                            {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<image>"});
  REQUIRE(tok->bos_id() < 0);
  DataConfig data;
  data.template_name = "chatml";
  data.train.path = file.string();
  data.train.image_root = (dir / "images").string();
  ConversationDataset ds(data.train, data, *tok, 2, "data.train");
  CHECK(ds.sample(0).input_ids[0] == *tok->token_to_id("<|im_start|>"));
  CHECK(supervised_text(ds.sample(0), *tok) ==
        "the bus in the image is white and red . <|im_end|> the back of the bus features an "
        "advertisement . <|im_end|>");
  CHECK(supervised_text(ds.sample(2), *tok) == "sandra boynton <|im_end|>");
}

TEST_CASE("dataset: llama_2 supervises '{reply} </s>' after each [/INST]") {
  TempDir dir;
  write_fixture_images(dir / "images");
  const auto file = fixture("llava_v1_5_mix665k_sample.json");
  auto tok = word_tokenizer(dir, strings_of(file));
  DataConfig data;
  data.template_name = "llama_2";
  data.train.path = file.string();
  data.train.image_root = (dir / "images").string();
  ConversationDataset ds(data.train, data, *tok, 2, "data.train");
  CHECK(supervised_text(ds.sample(0), *tok) ==
        "the bus in the image is white and red . </s> the back of the bus features an "
        "advertisement . </s>");
  const Sample first = ds.sample(0);
  CHECK(std::count(first.input_ids.begin(), first.input_ids.end(), tok->bos_id()) == 2);
}

TEST_CASE(
    "dataset: over-long records are errors naming file and record when tokenized, or skipped") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  write_text(dir / "recs.json", kRecords);
  write_image(dir / "a.png");
  write_image(dir / "b.png");
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.train.path = (dir / "recs.json").string();
  data.train.image_root = dir.path().string();
  data.max_length = 12;  // shorter than the 16 image tokens: known at load, before tokenizing
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 16, "data.train"),
                    Catch::Contains("recs.json:2: record 0 (id \"r0\")") &&
                        Catch::Contains("the images alone take 16 tokens") &&
                        Catch::Contains("data.max_length=12"));
  data.max_length = 16;  // the image's 16 tokens fit, but after the BOS they end at 17
  {
    // Loading only renders; the rest of the length is found when a record is tokenized.
    ConversationDataset ds(data.train, data, *tok, 16, "data.train");
    REQUIRE(ds.size() == 2);
    CHECK_THROWS_WITH(ds.sample(0), Catch::Contains("recs.json:2: record 0 (id \"r0\")") &&
                                        Catch::Contains("would cut an image") &&
                                        Catch::Contains("on_bad_record=skip"));
    CHECK_THROWS_WITH(ds.try_sample(1), Catch::Contains("would cut an image"));
  }
  data.max_length = 22;  // fits record 0 (1+16+4+1), truncates record 1's caption
  {
    ConversationDataset ds(data.train, data, *tok, 16, "data.train");
    CHECK(ds.truncated() == 0);  // nothing tokenized yet
    CHECK(ds.sample(0).input_ids.size() == 22);
    CHECK(ds.sample(1).input_ids.size() == 22);
    CHECK(ds.sample(1).input_ids.size() == 22);
    CHECK(ds.truncated() == 1);  // counted once per record
  }
  data.max_length = 17;  // image fits, nothing supervised is left
  data.on_bad_record = "skip";
  {
    ConversationDataset ds(data.train, data, *tok, 16, "data.train");
    CHECK_THROWS_WITH(ds.sample(1), Catch::Contains("truncation leaves nothing supervised"));
    CHECK_FALSE(ds.try_sample(0).has_value());
    CHECK_FALSE(ds.try_sample(1).has_value());
    const DatasetStats st = ds.stats();
    CHECK(st.skipped == 2);
    CHECK(st.skip_reasons.begin()->second == 2);
    CHECK(st.skip_reasons.begin()->first == "too long");
  }
}

TEST_CASE("dataset: malformed JSON and records give one clear error") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.train.path = (dir / "bad.json").string();
  write_text(dir / "bad.json", "[{\"id\": 1,");
  CHECK_THROWS_WITH(
      ConversationDataset(data.train, data, *tok, 4, "data.train"),
      Catch::Contains("bad.json:1: malformed JSON") && Catch::Contains("ends inside record 0"));
  write_text(dir / "bad.json",
             R"([{"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}])");
  write_image(dir / "a.png");
  data.train.image_root = dir.path().string();
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                    Catch::Contains("record 0 (id \"x\")") && Catch::Contains("expected 'human'"));
  write_text(dir / "bad.json", R"({"not": "a list"})");
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                    Catch::Contains("expected a JSON array"));
  // A broken record inside a sound array is one bad record.
  write_text(dir / "bad.json", R"([{"id": "ok"}, {"id": "y" "conversations": []}])");
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                    Catch::Contains("record 0 (id \"ok\"): missing \"conversations\""));
}

TEST_CASE("dataset: each kind of bad record names file, line, record, id and reason; skip counts") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  write_image(dir / "a.png");
  auto tok = load_tokenizer(dir / "tokenizer.json");
  const std::string good =
      R"({"id": "good", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": "a red circle ."}]})";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"id": "m1", "conversations": [{"from": "human", )", "malformed JSON"},
      {R"({"id": "m2", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})",
       "image not found: "},
      {R"({"id": "m3", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})",
       "<image> in the text but the record has no \"image\""},
      {R"({"id": "m4", "image": "a.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})",
       "has an image but no <image>"},
      {R"({"id": "m5", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq"}]})",
       "no response"},
      {R"({"id": "m6", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": ""}]})",
       "empty gpt reply"},
      {R"({"id": "m7", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\n<image>\nq"}, {"from": "gpt", "value": "a"}]})",
       "2 <image> tags"},
  };
  DataConfig data;
  data.train.path = (dir / "recs.jsonl").string();
  data.train.image_root = dir.path().string();
  for (const auto& [line, reason] : bad) {
    write_text(dir / "recs.jsonl", good + "\n" + line + "\n");
    data.on_bad_record = "error";
    CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, 4, "data.train"),
                      Catch::Contains("recs.jsonl:2: record 1") && Catch::Contains(reason));
    data.on_bad_record = "skip";
    ConversationDataset ds(data.train, data, *tok, 4, "data.train");
    CHECK(ds.size() == 1);
    CHECK(ds.skipped() == 1);
  }
}

TEST_CASE("preference dataset: ShapesWorld pairs share the prompt and supervise only the reply") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  auto tok = load_tokenizer(dir / "tokenizer.json");
  DataConfig data;
  data.template_name = "vicuna_v1";
  data.train.format = "preference_json";
  data.train.path = (dir / "preference_train.json").string();
  data.train.image_root = (dir / "images").string();
  const int64_t Q = 4;
  PreferenceDataset ds(data.train, data, *tok, Q, "data.train");
  REQUIRE(ds.size() == 4);
  const auto recs = nlohmann::json::parse(test::read_text(dir / "preference_train.json"));
  for (size_t i = 0; i < ds.size(); ++i) {
    const auto [chosen, rejected] = ds.sample(i);
    CHECK(chosen.id == recs[i]["id"].get<std::string>());
    CHECK(!chosen.visuals.empty());
    CHECK(image_of(chosen) == image_of(rejected));
    // The unsupervised prompt is the same in both, up to the first supervised token.
    auto first_sup = [](const Sample& s) {
      return std::find_if(s.labels.begin(), s.labels.end(),
                          [](int64_t l) { return l != kIgnoreIndex; }) -
             s.labels.begin();
    };
    const auto p = first_sup(chosen);
    REQUIRE(p == first_sup(rejected));
    CHECK(std::equal(chosen.input_ids.begin(), chosen.input_ids.begin() + p,
                     rejected.input_ids.begin()));
    CHECK(supervised_text(chosen, *tok) ==
          tok->decode(tok->encode(recs[i]["chosen"].get<std::string>()), false) + " </s>");
    CHECK(supervised_text(rejected, *tok) ==
          tok->decode(tok->encode(recs[i]["rejected"].get<std::string>()), false) + " </s>");
  }
  // Conversation datasets refuse preference files with a pointer to the right stage.
  CHECK_THROWS_WITH(ConversationDataset(data.train, data, *tok, Q, "data.train"),
                    Catch::Contains("data.train.format=preference_json"));
}

TEST_CASE("preference dataset: TRL conversational and LLaVA-conversation layouts") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  write_image(dir / "a.png");
  auto tok = load_tokenizer(dir / "tokenizer.json");
  write_text(
      dir / "pairs.jsonl",
      std::string(
          R"({"id": "trl", "images": ["a.png"], "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}], "chosen": [{"role": "assistant", "content": "a red circle ."}], "rejected": [{"role": "assistant", "content": "a blue square ."}]})"
          "\n"
          R"({"id": "implicit", "chosen": [{"role": "user", "content": "what is it?"}, {"role": "assistant", "content": "red ."}], "rejected": [{"role": "user", "content": "what is it?"}, {"role": "assistant", "content": "blue ."}]})"
          "\n"
          R"({"id": "llava", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": "a circle ."}, {"from": "human", "value": "what colour?"}], "chosen": "red .", "rejected": "blue ."})"
          "\n"
          R"({"id": "differs", "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "red ."}], "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "blue ."}]})"
          "\n"));
  DataConfig data;
  data.template_name = "vicuna_v1";
  data.train.path = (dir / "pairs.jsonl").string();
  data.train.image_root = dir.path().string();
  CHECK_THROWS_WITH(
      PreferenceDataset(data.train, data, *tok, 2, "data.train"),
      Catch::Contains("record 3 (id \"differs\")") && Catch::Contains("must share the prompt"));
  data.on_bad_record = "skip";
  PreferenceDataset ds(data.train, data, *tok, 2, "data.train");
  REQUIRE(ds.size() == 3);
  CHECK(ds.skipped() == 1);
  const PreferenceSample first = ds.sample(0);
  CHECK(image_of(first.chosen) == dir / "a.png");
  CHECK(std::count(first.chosen.input_ids.begin(), first.chosen.input_ids.end(), tok->image_id()) ==
        2);
  CHECK(ds.sample(1).chosen.visuals.empty());
  // Only the final reply is supervised, not the earlier gpt turn of the conversation.
  CHECK(supervised_text(ds.sample(2).chosen, *tok) == "red . </s>");
  CHECK(supervised_text(ds.sample(2).rejected, *tok) == "blue . </s>");
}

TEST_CASE("image transform: pad to square with the mean colour, resize, normalise, RGB order") {
  ImageConfig ic;
  ic.mean = {0.5, 0.5, 0.5};
  ic.std = {0.5, 0.5, 0.5};
  ImageTransform t(ic, 4);
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
  ImageTransform t(ImageConfig{}, 8);
  CHECK_THROWS_WITH(t.load(dir / "broken.png"), Catch::Contains("broken.png: cannot decode image"));
  CHECK_THROWS_WITH(t.load(dir / "absent.png"), Catch::Contains("absent.png: image not found"));
}

TEST_CASE(
    "collator: right padding, -100 labels on padding, supervised token count after the shift") {
  Sample a{"a", {1, 5, 6, 2}, {-100, 5, 6, 2}, {}};
  Sample b{"b", {1, 7}, {-100, 7}, {}};
  ImageTransform t(ImageConfig{}, 8);
  const Batch batch = collate({&a, &b}, t, /*pad_id=*/0);
  REQUIRE(batch.input_ids.sizes() == torch::IntArrayRef({2, 4}));
  CHECK(batch.input_ids[1][2].item<int64_t>() == 0);
  CHECK(batch.labels[1][2].item<int64_t>() == kIgnoreIndex);
  CHECK(batch.attention_mask.sum().item<int64_t>() == 6);
  CHECK(batch.supervised_tokens == 4);
  CHECK(!batch.pixel_values.defined());
}

TEST_CASE("collator: packing puts whole samples in rows, numbers them, restarts their positions") {
  // Lengths 4, 2, 3 into rows of 6: first-fit by decreasing length gives {a, b} and {c}.
  Sample a{"a", {1, 5, 6, 2}, {-100, 5, 6, 2}, {}};
  Sample b{"b", {1, 7}, {-100, 7}, {}};
  Sample c{"c", {1, 8, 9}, {-100, -100, 9}, {}};
  ImageTransform t(ImageConfig{}, 8);
  const Batch u = collate({&a, &b, &c}, t, /*pad_id=*/0);
  const Batch p = collate({&a, &b, &c}, t, /*pad_id=*/0, false, nullptr, /*pack_length=*/6);
  REQUIRE(p.input_ids.sizes() == torch::IntArrayRef({2, 6}));
  CHECK(torch::equal(p.input_ids[0], torch::tensor({1, 5, 6, 2, 1, 7}, torch::kLong)));
  CHECK(torch::equal(p.attention_mask[0], torch::tensor({1, 1, 1, 1, 2, 2}, torch::kLong)));
  CHECK(torch::equal(p.attention_mask[1], torch::tensor({1, 1, 1, 0, 0, 0}, torch::kLong)));
  CHECK(torch::equal(p.position_ids[0], torch::tensor({0, 1, 2, 3, 0, 1}, torch::kLong)));
  // b's first token is no target: a's last token must not learn to predict it.
  CHECK(torch::equal(p.labels[0], torch::tensor({-100, 5, 6, 2, -100, 7}, torch::kLong)));
  CHECK(p.supervised_tokens == u.supervised_tokens);
  CHECK(p.tokens == u.tokens);
  CHECK(p.ids == std::vector<std::string>{"a+b", "c"});
  CHECK(p.samples == 3);
  CHECK(p.positions == 12);           // 2 rows x 6
  CHECK(p.unpacked_positions == 12);  // 3 samples x 4
  CHECK(u.positions == 12);
  CHECK_FALSE(u.position_ids.defined());
  CHECK(pack_rows({4, 2, 3}, 6) == std::vector<std::vector<size_t>>{{0, 1}, {2}});
  CHECK(pack_rows({5, 5, 5}, 4) == std::vector<std::vector<size_t>>{{0}, {1}, {2}});
}
