// Conversation templates: how a record's turns become the token stream the model trains on, and
// which parts of it carry the loss. A template yields pieces of text, each marked supervised or
// not; the dataset tokenizes them and builds labels from the marks.
//   plain — LLaVA's pretraining template: <s> <image> caption </s>; the loss is on the caption.
//           (LLaVA: conversation_lib "plain" — the human turn is replaced by the image alone.)
//   text  — text only, for warming up an LLM: <s>, then per exchange the human turn (unsupervised,
//           <image> removed) and the gpt turn followed by </s> (supervised); images are dropped.
// No LibTorch here.
#pragma once

#include <string>
#include <vector>

namespace mllm {

struct Turn {
  std::string from;  // "human" | "gpt" (LLaVA JSON) — "system" is accepted where templates allow
  std::string value;
};

struct TemplatePiece {
  std::string text;
  bool supervised;
};

struct TemplateTokens {
  std::string bos;    // e.g. "<s>"
  std::string eos;    // e.g. "</s>"
  std::string image;  // "<image>"
};

// Whether the template keeps the record's image.
bool template_uses_images(const std::string& name);

// Throws Error with a short reason for a conversation the template cannot render (the caller adds
// the file and record).
std::vector<TemplatePiece> render_template(const std::string& name, const std::vector<Turn>& turns,
                                           const TemplateTokens& tokens);

}  // namespace mllm
