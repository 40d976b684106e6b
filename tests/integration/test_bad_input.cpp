// What a user can feed `mllm`, broken: each class ends in one clear line naming the file, key,
// line or record, exit 1 or 2, never a signal or a backtrace; under data.on_bad_record: skip a bad
// record (or image) is skipped and counted instead.
#include <catch2/catch.hpp>

#include <sstream>

#include <nlohmann/json.hpp>

#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_text;
using mllm::test::Result;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace fs = std::filesystem;

namespace {

// A PNG whose header claims 100000 x 100000 pixels (valid CRCs, a few bytes of data).
const std::string kHugePng(
    "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x01\x86\xa0\x00\x01\x86"
    "\xa0\x08\x02\x00\x00\x00\x27\x30\x9c\x9f\x00\x00\x00\x0b\x49\x44\x41\x54\x78\x9c\x63\x60\x80"
    "\x01\x00\x00\x0a\x00\x01\x7f\x80\x74\x5e\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82",
    69);

struct Fixture {
  TempDir dir{"mllm-bad"};
  fs::path data = dir / "shapes";
  Fixture() {
    REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                                 " --seed 5 --train 16 --val 4 --image-size 32")
                .code == 0);
  }
  // A tiny stage-1 run (images decoded) over `train_json`, two steps.
  std::string stage1(const fs::path& out, const fs::path& train_json) const {
    const std::string d = data.string();
    return "train --config " + std::string(MLLM_SOURCE_DIR) +
           "/configs/shapes/stage1_pretrain.yaml --set run.output_dir=" + out.string() +
           " --set run.threads=1 --set model.tokenizer=" + d + "/tokenizer.json" +
           " --set data.train.path=" + train_json.string() + " --set data.train.image_root=" + d +
           "/images --set data.eval.path=null --set data.eval.image_root=" + d +
           "/images --set model.llm.pretrained=null --set model.vision.pretrained=null" +
           " --set model.llm.hidden=32 --set model.llm.layers=1 --set model.llm.intermediate=64" +
           " --set model.vision.image_size=32 --set data.image.size=32 --set "
           "model.vision.hidden=32" +
           " --set model.vision.layers=1 --set model.vision.intermediate=64" +
           " --set train.batch_size=4 --set train.max_steps=2 --set train.save_every=0" +
           " --set data.workers=0";
  }
  // captions_train.json with record `i`'s image replaced by `image` (a path under images/).
  fs::path with_image(size_t i, const std::string& image, const std::string& name) const {
    auto j = nlohmann::json::parse(read_text(data / "captions_train.json"));
    j[i]["image"] = image;
    const auto p = dir / name;
    write_text(p, j.dump());
    return p;
  }
};

// Exit `code`, `expect` in the output, exactly one error line and nothing a crash prints.
void check_clean_error(const Result& r, int code, const std::string& expect) {
  INFO(r.output);
  CHECK(r.code == code);
  CHECK_THAT(r.output, Catch::Contains(expect));
  for (const char* crash : {"Exception raised from", "frame #", "terminate called", "Segmentation",
                            "Floating point", "Aborted", "core dumped", "what():"})
    CHECK_THAT(r.output, !Catch::Contains(crash));
  std::istringstream in(r.output);
  int errors = 0;
  for (std::string line; std::getline(in, line);)
    if (line.find("] error ") != std::string::npos) ++errors;
  CHECK(errors == 1);
}

}  // namespace

TEST_CASE("bad input: a pretrained config.json with zero heads is an error, not SIGFPE") {
  Fixture f;
  nlohmann::json cfg = {{"model_type", "llama"},    {"hidden_size", 32},
                        {"num_attention_heads", 0}, {"num_hidden_layers", 1},
                        {"intermediate_size", 64},  {"vocab_size", 128}};
  write_text(f.dir / "llm/config.json", cfg.dump());
  const Result r = mllm::test::run_mllm(f.stage1(f.dir / "out", f.data / "captions_train.json") +
                                        " --set model.llm.pretrained=" + (f.dir / "llm").string());
  check_clean_error(r, 1, "llm/config.json: num_attention_heads: must be in [1, ");
  CHECK_FALSE(fs::exists(f.dir / "out"));
}

TEST_CASE("bad input: absurd sizes are refused before the allocator, naming the key") {
  Fixture f;
  const std::string run = f.stage1(f.dir / "out", f.data / "captions_train.json");
  check_clean_error(mllm::test::run_mllm(run + " --set model.llm.hidden=1000000000000"), 2,
                    "model.llm.hidden: must be in [1, 131072]");
  // Within the bounds, but far beyond this machine's memory.
  check_clean_error(
      mllm::test::run_mllm(run + " --set model.llm.hidden=65536 --set model.llm.layers=1000 --set "
                                 "model.llm.heads=512 --set model.llm.kv_heads=512 --set "
                                 "model.llm.intermediate=262144"),
      2, "--set model.llm.hidden=65536: model.llm.hidden: the model needs");
  // The connector's width too: bounded, and within the bound counted against the memory (a
  // resampler 131072 wide has ~2.4e11 parameters).
  const std::string resampler =
      run + " --set model.connector.type=resampler --set model.connector.num_queries=16";
  check_clean_error(mllm::test::run_mllm(resampler + " --set model.connector.hidden=100000000"), 2,
                    "model.connector.hidden: must be in [0, 131072]");
  check_clean_error(mllm::test::run_mllm(resampler + " --set model.connector.hidden=131072"), 2,
                    "model.connector.hidden: the model needs");
  // A tokenizer id of 10^14 would have become the embedding's size.
  auto tok = nlohmann::json::parse(read_text(f.data / "tokenizer.json"));
  tok["model"]["vocab"]["circle"] = 100000000000000LL;
  write_text(f.dir / "tok.json", tok.dump());
  check_clean_error(
      mllm::test::run_mllm(run + " --set model.tokenizer=" + (f.dir / "tok.json").string()), 1,
      "tok.json: model.vocab[\"circle\"]: expected a non-negative integer id below 2^24");
}

TEST_CASE("bad input: malformed tokenizer.json fields name the file, not a json exception") {
  Fixture f;
  const std::string text = " --text 'a b'";
  // Merges that are arrays of numbers; `special` given as a string.
  write_text(
      f.dir / "bpe.json",
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [[1, 2]]}})");
  check_clean_error(
      mllm::test::run_mllm("tokenize --tokenizer " + (f.dir / "bpe.json").string() + text), 1,
      "bpe.json: ");
  auto tok = nlohmann::json::parse(read_text(f.data / "tokenizer.json"));
  tok["added_tokens"][0]["special"] = "true";
  write_text(f.dir / "special.json", tok.dump());
  check_clean_error(
      mllm::test::run_mllm("tokenize --tokenizer " + (f.dir / "special.json").string() + text), 1,
      "special.json: malformed tokenizer.json: ");
  // A turn whose value is a number.
  write_text(f.dir / "turns.json",
             R"([{"from": "human", "value": 7}, {"from": "gpt", "value": "x"}])");
  check_clean_error(
      mllm::test::run_mllm("tokenize --tokenizer " + (f.data / "tokenizer.json").string() +
                           " --template vicuna_v1 --text-file " + (f.dir / "turns.json").string()),
      2, "turns.json: each turn needs string");
}

TEST_CASE("bad input: a recipe key given twice names both lines") {
  Fixture f;
  const std::string recipe =
      read_text(fs::path(MLLM_SOURCE_DIR) / "configs/shapes/stage1_pretrain.yaml");
  write_text(f.dir / "twice.yaml", recipe + "\ntrain:\n  lr: 5.0e-1\n");
  const Result r = mllm::test::run_mllm("train --config " + (f.dir / "twice.yaml").string());
  check_clean_error(r, 2, "twice.yaml:");
  CHECK_THAT(r.output, Catch::Contains(": train: given twice (first at line "));
}

TEST_CASE("bad input: broken images are named, and skipped and counted in skip mode") {
  Fixture f;
  write_text(f.data / "images/train/empty.png", "");
  write_text(f.data / "images/train/huge.png", kHugePng);
  for (const char* name : {"empty", "huge"}) {
    DYNAMIC_SECTION(name) {
      const auto json =
          f.with_image(2, std::string("train/") + name + ".png", std::string(name) + ".json");
      // A whole epoch, so the record's image is read whatever the shuffle.
      const std::string run =
          f.stage1(f.dir / (std::string("out-") + name), json) + " --set train.max_steps=4";
      check_clean_error(mllm::test::run_mllm(run), 1,
                        std::string("images/train/") + name + ".png: cannot decode image");
      const Result skip =
          mllm::test::run_mllm(run + " --set data.on_bad_record=skip" + " --set run.output_dir=" +
                               (f.dir / (std::string("skip-") + name)).string());
      INFO(skip.output);
      CHECK(skip.code == 0);
      CHECK_THAT(skip.output, Catch::Contains("dropped for unreadable images"));
      // mllm data check counts it as corrupt rather than stopping.
      const Result check = mllm::test::run_mllm(
          "data check --config " + std::string(MLLM_SOURCE_DIR) +
          "/configs/shapes/stage1_pretrain.yaml --set model.tokenizer=" +
          (f.data / "tokenizer.json").string() + " --set data.train.path=" + json.string() +
          " --set data.train.image_root=" + (f.data / "images").string() +
          " --set data.eval.path=null --set data.eval.image_root=" + (f.data / "images").string() +
          " --set model.llm.pretrained=null --set model.vision.pretrained=null");
      INFO(check.output);
      CHECK(check.code == 0);
      CHECK_THAT(check.output, Catch::Contains("(1 corrupt)"));
    }
  }
}

TEST_CASE("bad input: image paths may not leave image_root unless allowed") {
  Fixture f;
  for (const std::string image :
       {"../../../../../../etc/passwd", "/etc/passwd", "train/../../x.png"}) {
    INFO(image);
    const auto json = f.with_image(3, image, "escape.json");
    check_clean_error(mllm::test::run_mllm(f.stage1(f.dir / "out", json)), 1, "escape.json:");
    const Result r = mllm::test::run_mllm(f.stage1(f.dir / "out", json));
    CHECK_THAT(r.output, Catch::Contains("record 3") &&
                             Catch::Contains("image outside data.train.image_root: " + image));
  }
  // Allowed: the path is followed (here to a real image outside the root).
  fs::copy_file(f.data / "images/train/000000.png", f.dir / "outside.png");
  const auto json = f.with_image(3, "../../outside.png", "allowed.json");
  const Result ok = mllm::test::run_mllm(f.stage1(f.dir / "ok", json) +
                                         " --set data.allow_outside_image_root=true");
  INFO(ok.output);
  CHECK(ok.code == 0);
}

TEST_CASE("bad input: an image record with no turns says so") {
  Fixture f;
  auto j = nlohmann::json::parse(read_text(f.data / "captions_train.json"));
  j[1]["conversations"] = nlohmann::json::array();
  write_text(f.dir / "empty.json", j.dump());
  const Result r = mllm::test::run_mllm(f.stage1(f.dir / "out", f.dir / "empty.json"));
  check_clean_error(r, 1, "record 1");
  CHECK_THAT(r.output, Catch::Contains("no conversation turns"));
  CHECK_THAT(r.output, !Catch::Contains("has an image but no"));
}

TEST_CASE("tokenize --template moves <image> to the front of its turn, as training does") {
  Fixture f;
  write_text(
      f.dir / "turns.json",
      R"({"image": "x.png", "conversations": [{"from": "human", "value": "what is it?\n<image>"}, {"from": "gpt", "value": "a red circle ."}]})");
  const Result r =
      mllm::test::run_mllm("tokenize --tokenizer " + (f.data / "tokenizer.json").string() +
                           " --template vicuna_v1 --text-file " + (f.dir / "turns.json").string());
  INFO(r.output);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.output.substr(0, r.output.find('\n')));
  CHECK_THAT(j["rendered"].get<std::string>(), Catch::Contains("USER: <image>\nwhat is it?"));
  CHECK_THAT(j["rendered"].get<std::string>(), !Catch::Contains("what is it?\n<image>"));
}
