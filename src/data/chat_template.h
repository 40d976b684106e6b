// Conversation templates: how a record's turns become the one string the model trains on, and which
// byte spans of it carry the loss. The dataset tokenizes the whole string once (with offsets) and
// supervises the tokens that fall in those spans, so no template has to predict how a tokenizer
// splits a round boundary (LLaVA tokenizes rounds separately and drops samples on a "tokenization
// mismatch"; HF's assistant masks work from offsets, as we do). This file knows strings, not ids:
// of the tokenizer it reads only its special tokens' texts (template_tokens); no LibTorch here.
//
//   plain     LLaVA's pretraining template: <s><image>caption</s>. The human turn is replaced by
//             the image alone; the loss is on the caption and </s>.
//   vicuna_v1 LLaVA-1.5's conv_vicuna_v1: "<s>{system} USER: {q} ASSISTANT: {a}</s>USER: ..."
//   llama_2   LLaVA's conv_llava_llama_2 (Meta's format):
//             "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{q} [/INST] {a} </s><s>[INST] {q2} [/INST]
//             ..."
//   chatml    Qwen2's chat_template: "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
//             <|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" (no BOS)
//   text      text only, for warming up an LLM: <s>, then per exchange the human turn
//   (unsupervised,
//             <image> removed) and the gpt turn followed by </s> (supervised); images are dropped.
//   hf        the tokenizer's own chat template (Jinja; `chat_template` in tokenizer_config.json or
//             chat_template.jinja beside tokenizer.json), rendered as transformers renders it
//             (data/jinja.h). Roles: human -> user, gpt -> assistant, system and others as named.
//             Content is a string, or, for templates that iterate over it (llava-hf's), typed
//             parts with an image part for each <image> tag (the template writes the tag).
// In every template the supervised spans are the assistant replies with their end-of-turn marker.
// For hf they come from rendering, not from knowing the template: the `{% generation %}` blocks
// where the template has them, else for each reply the difference between the conversation up to
// it with the generation prompt and the conversation up to and including it, taken where that
// difference is also what the whole conversation renders, and ended after the template's
// end-of-turn token (the special token it writes after a reply, found by rendering a probe).
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mllm {

struct Turn {
  std::string from;  // "human" | "gpt" (LLaVA JSON); "user"/"assistant" are read as the same; an
                     // optional first "system" turn replaces the template's system prompt
  std::string value;
};

class HfChatTemplate;
namespace jinja {
class Template;
}

// The texts of the tokenizer's special tokens, which templates write into the string.
struct TemplateTokens {
  std::string bos;    // e.g. "<s>"; empty when the tokenizer has none
  std::string eos;    // e.g. "</s>"
  std::string image;  // "<image>"
  // The tokenizer's own chat template (data.template: hf); null when its folder has none.
  std::shared_ptr<const HfChatTemplate> hf;
  // data.system: when set, a conversation without a system turn is rendered as if it began with
  // one saying this ("" included), in the templates that have a system prompt (not plain, text).
  std::optional<std::string> system = std::nullopt;
};

class Tokenizer;

// The tokenizer's BOS and EOS texts (empty when it has none), "<image>" and, for template "hf",
// its folder's chat template (hf_template_of): what every template is rendered with, made here
// only. Other templates never read the folder's chat template.
TemplateTokens template_tokens(const Tokenizer& tokenizer, const std::string& template_name,
                               std::optional<std::string> system = std::nullopt);

// The chat template of the tokenizer's folder (read once per tokenizer file and process; a
// template that does not parse is an Error naming its file); null when the folder has none.
std::shared_ptr<const HfChatTemplate> hf_template_of(const Tokenizer& tokenizer);

// Whether the folder of `tokenizer_file` holds a chat template (what data.template defaults to:
// hf when it does, plain otherwise).
bool has_hf_chat_template(const std::filesystem::path& tokenizer_file);

struct RenderedConversation {
  std::string text;
  // Byte spans [begin, end) of `text` that carry the loss, in order, non-overlapping.
  std::vector<std::pair<size_t, size_t>> supervised;
  // hf only: where the prompt before each supervised span ends (the rendered prefix's length);
  // the tokenization must have a token boundary there, or the prefix does not tokenize as a
  // prefix of the whole (checked where it is tokenized).
  std::vector<size_t> prompt_ends;
  // hf only: replies that carry no loss because the template renders them differently once
  // later turns follow (Qwen3 drops earlier replies' <think> blocks), so no rendering of them is
  // the one trained on.
  int inconsistent_replies = 0;
};

// A Hugging Face chat template and the special tokens it is rendered with.
class HfChatTemplate {
 public:
  // `name` says where the template came from (for errors). bos/eos are tokenizer_config.json's
  // bos_token / eos_token; `tokenizer` names the special tokens the template may end a reply with
  // and is checked for the tokens the template writes.
  HfChatTemplate(const std::string& source, std::string name, std::string bos, std::string eos,
                 const Tokenizer& tokenizer);
  ~HfChatTemplate();

  // Renders `turns`; a conversation that ends with a non-assistant turn gets the generation
  // prompt. Throws Error (the template's raise_exception message, or a construct outside the
  // Jinja subset) with the template's name.
  RenderedConversation render(const std::vector<Turn>& turns) const;

  const std::string& name() const { return name_; }
  const std::string& source() const { return source_; }
  const std::string& bos() const { return bos_; }
  const std::string& eos() const { return eos_; }
  // The special token the template writes right after a reply ("<|im_end|>", "<|eot_id|>",
  // "</s>"); empty when it writes none there.
  const std::string& end_of_turn() const { return end_of_turn_; }
  // Special-looking tokens ("<|start_header_id|>", "</s>") the template writes that are not
  // single tokens of the tokenizer: each would be split into ordinary pieces.
  const std::vector<std::string>& missing_tokens() const { return missing_; }
  // Whether messages are given as typed parts (each <image> tag an image part).
  bool content_parts() const { return content_parts_; }
  bool has_generation_blocks() const;

 private:
  std::string render_text(const std::vector<Turn>& turns, bool add_generation_prompt) const;

  std::string name_, source_, bos_, eos_, end_of_turn_;
  // The whitespace the template writes between the generation prompt and a reply (Vicuna's " "
  // after "ASSISTANT:"): part of the prompt, not of the reply.
  std::string reply_separator_;
  // Messages' content as transformers' typed parts ({"type": "image"}, {"type": "text"}) rather
  // than a string: for templates that iterate over it (llava-hf's), found by the probe.
  bool content_parts_ = false;
  std::vector<std::string> missing_;
  std::unique_ptr<const jinja::Template> jinja_;
};

// The names accepted by data.template.
const std::vector<std::string>& template_names();

// Whether the template keeps the record's image (all but "text").
bool template_uses_images(const std::string& name);

// Whether the template has a system prompt (data.system applies): all but plain and text.
bool template_has_system(const std::string& name);

// Renders a conversation (human and gpt turns alternating, starting with human, after an optional
// system turn). A conversation that ends with a human turn renders the generation prompt for the
// reply ("... ASSISTANT:", "<|im_start|>assistant\n") and has no supervised span for it.
// Throws Error with a short reason for a conversation the template cannot render (the caller adds
// the file and record).
RenderedConversation render_template(const std::string& name, const std::vector<Turn>& turns,
                                     const TemplateTokens& tokens);

// LLaVA's preprocess_multimodal for one turn: removes `image` wherever it is and puts it in front,
// "<image>\n" + the rest (stripped). llava/train/train.py, preprocess_multimodal.
std::string move_image_to_front(const std::string& value, const std::string& image);

}  // namespace mllm
