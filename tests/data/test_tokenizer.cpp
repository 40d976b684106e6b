#include <catch2/catch.hpp>

#include "core/error.h"
#include "data/chat_template.h"
#include "data/shapes_world.h"
#include "data/tokenizer/tokenizer.h"
#include "test_util.h"

using namespace mllm;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {
std::unique_ptr<Tokenizer> shapes_tokenizer(const TempDir& dir) {
  write_text(dir / "tokenizer.json", data::shapes_world_tokenizer_json());
  return load_tokenizer(dir / "tokenizer.json");
}
}  // namespace

TEST_CASE("tokenizer: ShapesWorld text round-trips through encode and decode") {
  TempDir dir;
  auto tok = shapes_tokenizer(dir);
  const std::string text =
      "a large red circle at the top left and a small blue square in the center .";
  const auto ids = tok->encode(text);
  REQUIRE(ids.size() == 17);
  for (int64_t id : ids) CHECK(id != *tok->token_to_id("<unk>"));
  CHECK(tok->decode(ids) == text);
}

TEST_CASE("tokenizer: punctuation splits from words, case is folded, whitespace is free") {
  TempDir dir;
  auto tok = shapes_tokenizer(dir);
  CHECK(tok->encode("Red  circle.") == tok->encode("red circle ."));
  CHECK(tok->encode("red circle.").size() == 3);
}

TEST_CASE("tokenizer: added tokens are matched verbatim and special ones dropped on decode") {
  TempDir dir;
  auto tok = shapes_tokenizer(dir);
  REQUIRE(tok->image_id() >= 0);
  REQUIRE(tok->bos_id() >= 0);
  REQUIRE(tok->eos_id() >= 0);
  const auto ids = tok->encode("<s><image>\nred circle</s>");
  REQUIRE(ids.size() == 5);
  CHECK(ids[0] == tok->bos_id());
  CHECK(ids[1] == tok->image_id());
  CHECK(ids[4] == tok->eos_id());
  CHECK(tok->decode(ids) == "red circle");
  CHECK(tok->decode(ids, false) == "<s> <image> red circle </s>");
}

TEST_CASE("tokenizer: unknown words map to <unk>") {
  TempDir dir;
  auto tok = shapes_tokenizer(dir);
  const auto ids = tok->encode("a zebra");
  REQUIRE(ids.size() == 2);
  CHECK(ids[1] == *tok->token_to_id("<unk>"));
}

TEST_CASE("tokenizer: malformed files name the file") {
  TempDir dir;
  write_text(dir / "bad.json", "{\"model\": ");
  CHECK_THROWS_WITH(load_tokenizer(dir / "bad.json"), Catch::Contains("bad.json: not valid JSON"));
  write_text(dir / "bpe.json", R"({"model": {"type": "Unigram"}})");
  CHECK_THROWS_WITH(load_tokenizer(dir / "bpe.json"), Catch::Contains("Unigram' is not supported"));
  write_text(dir / "vocab.json", R"({"model": {"type": "WordLevel", "vocab": {"a": "x"}}})");
  CHECK_THROWS_WITH(load_tokenizer(dir / "vocab.json"), Catch::Contains("model.vocab[\"a\"]"));
  CHECK_THROWS_WITH(load_tokenizer(dir / "missing.json"),
                    Catch::Contains("missing.json: cannot read"));
}

TEST_CASE("tokenizer: a BPE vocabulary id beyond 32 bits is refused, not truncated") {
  // 2^32 + 1 once came out of encode("b") as id 1, the id of "a".
  TempDir dir;
  write_text(dir / "big.json",
             R"({"model": {"type": "BPE", "vocab": {"a": 1, "b": 4294967297}, "merges": []}})");
  CHECK_THROWS_WITH(load_tokenizer(dir / "big.json"),
                    Catch::Contains("model.vocab[\"b\"]: expected a non-negative integer id"));
}

TEST_CASE("tokenizer: a number too large for JSON's parser is the file's error, not a crash") {
  // nlohmann's parser throws out_of_range (406), not parse_error, for "1e999"; it escaped once.
  TempDir dir;
  write_text(dir / "overflow.json", R"({"model": {"type": "WordLevel", "vocab": {"a": 4e3686}}})");
  CHECK_THROWS_AS(load_tokenizer(dir / "overflow.json"), mllm::Error);
  CHECK_THROWS_WITH(
      load_tokenizer(dir / "overflow.json"),
      Catch::Contains("overflow.json: not valid JSON") && Catch::Contains("number overflow"));
}

TEST_CASE("tokenizer: offsets map every token back to its bytes in the input") {
  TempDir dir;
  auto tok = shapes_tokenizer(dir);
  const std::string text = "<s>Where is the red  circle?</s>";
  const Encoding e = tok->encode_with_offsets(text);
  REQUIRE(e.ids.size() == e.offsets.size());
  std::vector<std::string> pieces;
  for (const auto& [b, end] : e.offsets) pieces.push_back(text.substr(b, end - b));
  CHECK(pieces ==
        std::vector<std::string>{"<s>", "Where", "is", "the", "red", "circle", "?", "</s>"});
}

TEST_CASE("tokenizer: template_tokens are its BOS and EOS texts and <image>") {
  TempDir dir;
  auto tok = shapes_tokenizer(dir);
  const TemplateTokens t = template_tokens(*tok, "vicuna_v1");
  CHECK(t.bos == "<s>");
  CHECK(t.eos == "</s>");
  CHECK(t.image == "<image>");
  CHECK(tok->token_to_id(t.bos) == tok->bos_id());
  CHECK(tok->token_to_id(t.eos) == tok->eos_id());
}
