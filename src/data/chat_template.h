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
// In every template the supervised spans are the assistant replies with their end-of-turn marker.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace mllm {

struct Turn {
  std::string from;  // "human" | "gpt" (LLaVA JSON); "user"/"assistant" are read as the same; an
                     // optional first "system" turn replaces the template's system prompt
  std::string value;
};

// The texts of the tokenizer's special tokens, which templates write into the string.
struct TemplateTokens {
  std::string bos;    // e.g. "<s>"; empty when the tokenizer has none
  std::string eos;    // e.g. "</s>"
  std::string image;  // "<image>"
};

class Tokenizer;

// The tokenizer's BOS and EOS texts (empty when it has none) and "<image>": what every template is
// rendered with, made here only.
TemplateTokens template_tokens(const Tokenizer& tokenizer);

struct RenderedConversation {
  std::string text;
  // Byte spans [begin, end) of `text` that carry the loss, in order, non-overlapping.
  std::vector<std::pair<size_t, size_t>> supervised;
};

// The names accepted by data.template.
const std::vector<std::string>& template_names();

// Whether the template keeps the record's image (all but "text").
bool template_uses_images(const std::string& name);

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
