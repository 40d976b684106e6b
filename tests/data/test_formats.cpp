// Other frameworks' layouts (data/formats.h): records written the way LLaMA-Factory's
// data/README.md, ms-swift's custom-dataset docs and TRL's dataset-format docs show them come to
// the project's LLaVA layout; round trips through each layout give back every turn and image.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/formats.h"
#include "data/shapes_world.h"
#include "test_util.h"

using namespace mllm;
using Json = nlohmann::json;

TEST_CASE("formats: LLaMA-Factory sharegpt records, with its system column and video tags") {
  const Json rec = Json::parse(R"({
    "conversations": [{"from": "human", "value": "<image>Who are they?"},
                      {"from": "gpt", "value": "They're Kane and Gretzka."},
                      {"from": "human", "value": "What are they doing?"},
                      {"from": "gpt", "value": "Celebrating."}],
    "system": "You are a helpful assistant.",
    "images": ["mllm_demo_data/1.jpg"]})");
  CHECK(to_llava_record("sharegpt", rec, false) == Json::parse(R"({
    "image": "mllm_demo_data/1.jpg",
    "conversations": [{"from": "system", "value": "You are a helpful assistant."},
                      {"from": "human", "value": "<image>Who are they?"},
                      {"from": "gpt", "value": "They're Kane and Gretzka."},
                      {"from": "human", "value": "What are they doing?"},
                      {"from": "gpt", "value": "Celebrating."}]})"));
  // mllm_demo.json's own spelling: "messages" with role/content, under the sharegpt formatting.
  const Json demo = Json::parse(R"({"messages": [{"content": "<video>What is she doing?",
    "role": "user"}, {"content": "Dancing.", "role": "assistant"}], "videos": ["a.mp4"]})");
  CHECK(to_llava_record("sharegpt", demo, false) == Json::parse(R"({"video": "a.mp4",
    "conversations": [{"from": "human", "value": "<image>What is she doing?"},
                      {"from": "gpt", "value": "Dancing."}]})"));
  // Its ranking datasets: the conversation up to the question, chosen and rejected replies.
  const Json ranking = Json::parse(R"({"conversations": [{"from": "human", "value": "Q?"}],
    "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}})");
  CHECK(to_llava_record("sharegpt", ranking, true) == Json::parse(R"({
    "conversations": [{"from": "human", "value": "Q?"}], "chosen": "good", "rejected": "bad"})"));
  const Json tool = Json::parse(R"({"conversations": [{"from": "human", "value": "x"},
    {"from": "function_call", "value": "{}"}]})");
  CHECK_THROWS_WITH(to_llava_record("sharegpt", tool, false),
                    Catch::Contains("role 'function_call' is not supported"));
}

TEST_CASE("formats: ms-swift and TRL messages records, and their preference variants") {
  const Json swift = Json::parse(R"({"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<image><image>What differs?"},
    {"role": "assistant", "content": "The colour."}], "images": ["a.png", "b.png"]})");
  CHECK(to_llava_record("messages", swift, false) == Json::parse(R"({
    "image": ["a.png", "b.png"],
    "conversations": [{"from": "system", "value": "Be brief."},
                      {"from": "human", "value": "<image><image>What differs?"},
                      {"from": "gpt", "value": "The colour."}]})"));
  const Json trl = Json::parse(R"({"messages": [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
    "images": ["cat.jpg"]})");
  CHECK(to_llava_record("messages", trl, false)["conversations"] == Json::parse(R"([
    {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}])"));
  const Json expected = Json::parse(R"({"conversations": [{"from": "human", "value": "Q?"}],
    "chosen": "good", "rejected": "bad"})");
  // TRL, explicit prompt
  CHECK(to_llava_record("messages", Json::parse(R"({"prompt": [{"role": "user", "content": "Q?"}],
    "chosen": [{"role": "assistant", "content": "good"}],
    "rejected": [{"role": "assistant", "content": "bad"}]})"),
                        true) == expected);
  // TRL, implicit prompt
  CHECK(to_llava_record("messages", Json::parse(R"({
    "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
    "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "bad"}]})"),
                        true) == expected);
  // ms-swift's RLHF layout
  CHECK(to_llava_record("messages", Json::parse(R"({"messages": [{"role": "user", "content": "Q?"},
    {"role": "assistant", "content": "good"}], "rejected_response": "bad"})"),
                        true) == expected);
  CHECK_THROWS_WITH(to_llava_record("messages", Json::parse(R"({
    "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
    "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "bad"}]})"),
                                    true),
                    Catch::Contains("must share the prompt"));
}

TEST_CASE("formats: ShapesWorld's records survive llava -> sharegpt/messages -> llava") {
  test::TempDir dir;
  data::ShapesWorldOptions o;
  o.seed = 2;
  o.train = 24;
  o.val = 4;
  o.image_size = 32;
  o.visual = 6;
  data::generate_shapes_world(dir.path(), o);
  for (const char* file : {"instruct_train.json", "preference_train.json", "visual_train.json",
                           "captions_train.json"}) {
    const bool preference = std::string(file).rfind("preference", 0) == 0;
    const Json records = Json::parse(test::read_text(dir / file));
    REQUIRE(records.size() > 3);
    for (const char* layout : {"sharegpt", "messages"}) {
      INFO(file << " via " << layout);
      for (const auto& rec : records) {
        const Json other = from_llava_record(layout, rec, preference);
        const Json back = to_llava_record(layout, other, preference);
        Json want = rec;
        // The prompt string of ShapesWorld's pairs comes back as the one-turn conversation it is.
        if (want.contains("prompt")) {
          want["conversations"] = Json::array({{{"from", "human"}, {"value", want["prompt"]}}});
          want.erase("prompt");
        }
        CHECK(back == want);
      }
    }
  }
}

TEST_CASE("formats: a sharegpt file's own names from the dataset_info.json beside it") {
  test::TempDir dir;
  // LLaMA-Factory's dataset_info.json with custom columns and tags for this file.
  test::write_text(dir / "dataset_info.json", R"({
    "other": {"file_name": "other.json"},
    "mine": {"file_name": "dialogs.json", "formatting": "sharegpt",
             "columns": {"messages": "dialog", "images": "pics", "system": "persona"},
             "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client",
                      "assistant_tag": "agent"}}})");
  const SharegptNames n = sharegpt_names(dir / "dialogs.json");
  CHECK(n.from_dataset_info);
  CHECK(n.messages == "dialog");
  CHECK(n.role_tag == "speaker");
  CHECK(n.assistant_tag == "agent");
  CHECK(n.system_tag == "system");  // not named: LLaMA-Factory's default
  CHECK_FALSE(sharegpt_names(dir / "unlisted.json").from_dataset_info);
  const Json rec = Json::parse(R"({"dialog": [{"speaker": "client", "text": "<image>Hi?"},
    {"speaker": "agent", "text": "Hello."}], "pics": ["a.png"], "persona": "Be kind."})");
  CHECK(to_llava_record("sharegpt", rec, false, n) == Json::parse(R"({"image": "a.png",
    "conversations": [{"from": "system", "value": "Be kind."},
                      {"from": "human", "value": "<image>Hi?"},
                      {"from": "gpt", "value": "Hello."}]})"));
  test::write_text(dir / "dataset_info.json", "{\"mine\": [");
  CHECK_THROWS_WITH(sharegpt_names(dir / "dialogs.json"),
                    Catch::Contains("dataset_info.json: not valid JSON"));
}
