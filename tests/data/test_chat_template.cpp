// Each template renders a known conversation to exactly the reference string and supervises exactly
// the assistant replies with their end-of-turn markers. The expected strings are written out by
// hand from the anchors: LLaVA's llava/conversation.py get_prompt (conv_vicuna_v1,
// conv_llava_llama_2, conv_llava_plain) with llava/train/train.py's preprocess_* masking, and
// Qwen2's tokenizer_config.json chat_template for chatml.
#include <catch2/catch.hpp>

#include "core/error.h"
#include "data/chat_template.h"

using namespace mllm;

namespace {

const TemplateTokens kTokens{"<s>", "</s>", "<image>", nullptr};

// The first two rounds of llava_v1_5_mix665k.json's record 000000033471.
const std::vector<Turn> kBus = {
    {"human", "<image>\nWhat are the colors of the bus in the image?"},
    {"gpt", "The bus in the image is white and red."},
    {"human", "What feature can be seen on the back of the bus?"},
    {"gpt", "The back of the bus features an advertisement."},
};

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::vector<std::string> spans(const RenderedConversation& r) {
  std::vector<std::string> out;
  for (const auto& [b, e] : r.supervised) out.push_back(r.text.substr(b, e - b));
  return out;
}

}  // namespace

TEST_CASE("template vicuna_v1: LLaVA-1.5's conv_vicuna_v1 prompt, replies and </s> supervised") {
  const auto r = render_template("vicuna_v1", kBus, kTokens);
  CHECK(r.text ==
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat "
        "are the colors of the bus in the image? ASSISTANT: The bus in the image is white and "
        "red.</s>USER: What feature can be seen on the back of the bus? ASSISTANT: The back of "
        "the bus features an advertisement.</s>");
  CHECK(spans(r) == std::vector<std::string>{"The bus in the image is white and red.</s>",
                                             "The back of the bus features an advertisement.</s>"});
}

TEST_CASE(
    "template llama_2: conv_llava_llama_2's [INST] <<SYS>> prompt, '{reply} </s>' supervised") {
  const auto r = render_template("llama_2", kBus, kTokens);
  CHECK(r.text ==
        "<s>[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to "
        "understand the visual content that the user provides, and assist the user with a variety "
        "of tasks using natural language.\n<</SYS>>\n\n<image>\nWhat are the colors of the bus in "
        "the image? [/INST] The bus in the image is white and red. </s><s>[INST] What feature can "
        "be seen on the back of the bus? [/INST] The back of the bus features an advertisement. "
        "</s>");
  CHECK(spans(r) ==
        std::vector<std::string>{"The bus in the image is white and red. </s>",
                                 "The back of the bus features an advertisement. </s>"});
}

TEST_CASE("template chatml: Qwen2's chat_template with its default system prompt, no BOS") {
  const auto r = render_template("chatml", kBus, kTokens);
  CHECK(r.text ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat are the colors of the bus in the image?<|im_end|>\n"
        "<|im_start|>assistant\nThe bus in the image is white and red.<|im_end|>\n"
        "<|im_start|>user\nWhat feature can be seen on the back of the bus?<|im_end|>\n"
        "<|im_start|>assistant\nThe back of the bus features an advertisement.<|im_end|>\n");
  CHECK(spans(r) ==
        std::vector<std::string>{"The bus in the image is white and red.<|im_end|>",
                                 "The back of the bus features an advertisement.<|im_end|>"});
}

TEST_CASE("template plain: the image alone, then the caption and </s> supervised") {
  const std::vector<Turn> caption = {
      {"human", "Share a concise interpretation of the image provided.\n<image>"},
      {"gpt", "the divine queen in her elaborate masks canvas print featuring the face"}};
  const auto r = render_template("plain", caption, kTokens);
  CHECK(r.text ==
        "<s><image>the divine queen in her elaborate masks canvas print featuring the face</s>");
  CHECK(spans(r) ==
        std::vector<std::string>{
            "the divine queen in her elaborate masks canvas print featuring the face</s>"});
  CHECK_THROWS_WITH(render_template("plain", kBus, kTokens),
                    Catch::Contains("one human and one gpt turn"));
}

TEST_CASE("template text: human turns without <image> as context, replies and </s> supervised") {
  const auto r = render_template("text", kBus, kTokens);
  CHECK(r.text ==
        "<s>What are the colors of the bus in the image? The bus in the image is white and "
        "red.</s>What feature can be seen on the back of the bus? The back of the bus features an "
        "advertisement.</s>");
  CHECK(spans(r) == std::vector<std::string>{"The bus in the image is white and red.</s>",
                                             "The back of the bus features an advertisement.</s>"});
}

TEST_CASE("template: a trailing human turn renders the generation prompt, unsupervised") {
  const std::vector<Turn> q = {{"human", "<image>\nWhat is this?"}};
  auto r = render_template("vicuna_v1", q, kTokens);
  CHECK(r.supervised.empty());
  CHECK(ends_with(r.text, " USER: <image>\nWhat is this? ASSISTANT:"));
  r = render_template("chatml", q, kTokens);
  CHECK(ends_with(r.text, "<|im_end|>\n<|im_start|>assistant\n"));
  r = render_template("llama_2", q, kTokens);
  CHECK(ends_with(r.text, "What is this? [/INST]"));
}

TEST_CASE("template: a system turn replaces the system prompt; roles user/assistant are accepted") {
  const std::vector<Turn> turns = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}};
  CHECK(render_template("chatml", turns, kTokens).text ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n");
  CHECK(render_template("vicuna_v1", turns, kTokens).text ==
        "<s>Be brief. USER: Hi ASSISTANT: Hello.</s>");
  CHECK(render_template("llama_2", turns, kTokens).text ==
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s>");
}

TEST_CASE("template: data.system is the system prompt of conversations without their own") {
  const std::vector<Turn> turns = {{"user", "Hi"}, {"assistant", "Hello."}};
  TemplateTokens none = kTokens, brief = kTokens;
  none.system = "";
  brief.system = "Be brief.";
  // LLaVA's get_prompt writes system + sep even when the system is empty.
  CHECK(render_template("vicuna_v1", turns, none).text == "<s> USER: Hi ASSISTANT: Hello.</s>");
  CHECK(render_template("vicuna_v1", turns, brief).text ==
        "<s>Be brief. USER: Hi ASSISTANT: Hello.</s>");
  // Meta's format has no <<SYS>> block without a system prompt.
  CHECK(render_template("llama_2", turns, none).text == "<s>[INST] Hi [/INST] Hello. </s>");
  // Qwen2's template renders a system message with empty content as an empty system turn.
  CHECK(render_template("chatml", turns, none).text ==
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n");
  // A conversation's own system turn wins; the reply is still what is supervised.
  const std::vector<Turn> own = {{"system", "Be kind."}, {"user", "Hi"}, {"assistant", "Hello."}};
  const auto r = render_template("vicuna_v1", own, brief);
  CHECK(r.text == "<s>Be kind. USER: Hi ASSISTANT: Hello.</s>");
  CHECK(spans(r) == std::vector<std::string>{"Hello.</s>"});
  // The templates without a system prompt are unchanged by it (text would refuse a system turn).
  CHECK(render_template("text", turns, brief).text == render_template("text", turns, kTokens).text);
  CHECK(render_template("plain", {{"human", "<image>"}, {"gpt", "a cat."}}, brief).text ==
        "<s><image>a cat.</s>");
  CHECK(template_has_system("vicuna_v1"));
  CHECK_FALSE(template_has_system("plain"));
  CHECK_FALSE(template_has_system("text"));
}

TEST_CASE("template: turns out of order, empty replies and unknown names are errors") {
  CHECK_THROWS_WITH(render_template("vicuna_v1", {{"gpt", "hi"}}, kTokens),
                    Catch::Contains("turn 0 is from 'gpt', expected 'human'"));
  CHECK_THROWS_WITH(render_template("vicuna_v1", {{"human", "q"}, {"gpt", "  "}}, kTokens),
                    Catch::Contains("turn 1: empty gpt reply"));
  CHECK_THROWS_WITH(render_template("vicuna_v1", {}, kTokens),
                    Catch::Contains("no conversation turns"));
  CHECK_THROWS_WITH(render_template("alpaca", kBus, kTokens),
                    Catch::Contains("unknown template 'alpaca'"));
  for (const auto& name : template_names())
    if (name != "hf")  // the tokenizer's own: tests/data/test_hf_template.cpp
      CHECK_NOTHROW(render_template(name, {kBus[0], kBus[1]}, kTokens));
}

TEST_CASE("template: <image> moves to the front of its turn, as LLaVA's preprocess_multimodal") {
  CHECK(move_image_to_front("What is this? <image>", "<image>") == "<image>\nWhat is this?");
  CHECK(move_image_to_front("<image>\nWhat is this?", "<image>") == "<image>\nWhat is this?");
  CHECK(move_image_to_front("  <image>  ", "<image>") == "<image>");
  CHECK(move_image_to_front("no image", "<image>") == "no image");
}
