// The templates' exact strings come from their reference implementations, cited per template; the
// tests in tests/data/test_datasets.cpp pin each rendering to a string derived from them.
#include "data/chat_template.h"

#include "core/error.h"
#include "data/tokenizer/tokenizer.h"

namespace mllm {

namespace {

// LLaVA's system prompts, llava/conversation.py (conv_vicuna_v1, conv_llava_llama_2).
const char* kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.";
const char* kLlavaLlama2System =
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language.";
// Qwen2's tokenizer_config.json chat_template (Qwen/Qwen2-7B-Instruct):
// {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
// {{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}
// {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
// {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
const char* kChatmlSystem = "You are a helpful assistant.";
const char* kImStart = "<|im_start|>";
const char* kImEnd = "<|im_end|>";

// Python's str.strip() whitespace.
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string erase_all(std::string s, const std::string& what) {
  if (what.empty()) return s;
  for (size_t p; (p = s.find(what)) != std::string::npos;) s.erase(p, what.size());
  return s;
}

// A conversation with its roles checked: an optional system prompt, then exchanges.
struct Exchanges {
  bool has_system = false;
  std::string system;
  std::vector<std::string> human, gpt;  // gpt.size() is human.size() or human.size() - 1
};

Exchanges parse_turns(const std::vector<Turn>& turns) {
  Exchanges ex;
  size_t first = 0;
  if (!turns.empty() && turns[0].from == "system") {
    ex.has_system = true;
    ex.system = turns[0].value;
    first = 1;
  }
  if (turns.size() == first) throw Error("no conversation turns");
  for (size_t i = first; i < turns.size(); ++i) {
    const bool want_human = (i - first) % 2 == 0;
    const std::string& from = turns[i].from;
    const bool is_human = from == "human" || from == "user";
    const bool is_gpt = from == "gpt" || from == "assistant";
    if (want_human ? !is_human : !is_gpt)
      throw Error("turn " + std::to_string(i) + " is from '" + from + "', expected '" +
                  (want_human ? "human" : "gpt") + "' (turns alternate human, gpt)");
    if (want_human) {
      ex.human.push_back(turns[i].value);
    } else {
      if (strip(turns[i].value).empty())
        throw Error("turn " + std::to_string(i) + ": empty gpt reply");
      ex.gpt.push_back(turns[i].value);
    }
  }
  return ex;
}

// Appends `s` to out.text as a supervised span.
void supervise(RenderedConversation& out, const std::string& s) {
  out.supervised.emplace_back(out.text.size(), out.text.size() + s.size());
  out.text += s;
}

// llava/train/train.py preprocess_plain: the human turn becomes DEFAULT_IMAGE_TOKEN alone and the
// caption follows it. LLaVA ends the caption with conv_llava_plain's sep "\n" and relies on the
// tokenizer's BOS; we write BOS and end with EOS instead, so generation knows where a caption ends.
// A record without an image renders as <s>caption</s> (text-only records mixed into pretraining).
RenderedConversation render_plain(const Exchanges& ex, const TemplateTokens& t) {
  if (ex.has_system) throw Error("the plain template takes no system turn");
  if (ex.human.size() != 1)
    throw Error("the plain template takes one human and one gpt turn (got " +
                std::to_string(ex.human.size() + ex.gpt.size()) + " turns)");
  RenderedConversation out;
  out.text = t.bos;
  // Every image tag (several images, or one standing for a video) and nothing else of the turn.
  for (size_t p = 0; (p = ex.human[0].find(t.image, p)) != std::string::npos; p += t.image.size())
    out.text += t.image;
  if (!ex.gpt.empty()) supervise(out, ex.gpt[0] + t.eos);
  return out;
}

// llava/conversation.py SeparatorStyle.TWO with conv_vicuna_v1 (sep " ", sep2 "</s>"):
//   system + sep, then per message role + ": " + message + seps[i % 2]; an empty message (the
//   generation prompt) is role + ":". The BOS comes from the tokenizer in LLaVA; we write it.
// preprocess_v1 masks everything up to "ASSISTANT: " in each round, so the reply and its "</s>"
// are supervised.
RenderedConversation render_vicuna_v1(const Exchanges& ex, const TemplateTokens& t) {
  RenderedConversation out;
  out.text = t.bos + (ex.has_system ? ex.system : kVicunaSystem) + " ";
  for (size_t i = 0; i < ex.human.size(); ++i) {
    out.text += "USER: " + ex.human[i] + " ";
    if (i < ex.gpt.size()) {
      out.text += "ASSISTANT: ";
      supervise(out, ex.gpt[i] + t.eos);
    } else {
      out.text += "ASSISTANT:";
    }
  }
  return out;
}

// llava/conversation.py SeparatorStyle.LLAMA_2 with conv_llava_llama_2 (sep "<s>", sep2 "</s>"):
//   the first human message is prefixed with "<<SYS>>\n{system}\n<</SYS>>\n\n"; each human message
//   is sep + "[INST] {msg} [/INST]", each reply " {msg} " + sep2; the leading "<s>" that LLaVA
//   lstrips (the tokenizer adds it back as BOS) we keep. preprocess_llama_2 masks up to "[/INST] ",
//   so "{reply} </s>" is supervised. Meta's format omits <<SYS>> when there is no system prompt.
RenderedConversation render_llama_2(const Exchanges& ex, const TemplateTokens& t) {
  RenderedConversation out;
  const std::string system = ex.has_system ? ex.system : kLlavaLlama2System;
  for (size_t i = 0; i < ex.human.size(); ++i) {
    std::string q = ex.human[i];
    if (i == 0 && !system.empty()) q = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + q;
    out.text += t.bos + "[INST] " + q + " [/INST]";
    if (i < ex.gpt.size()) {
      out.text += " ";
      supervise(out, ex.gpt[i] + " " + t.eos);
    }
  }
  return out;
}

// Qwen2's chat_template (quoted above); the reply and its <|im_end|> are supervised, the "\n"
// after it is not (it is the next message's separator).
RenderedConversation render_chatml(const Exchanges& ex) {
  RenderedConversation out;
  out.text = std::string(kImStart) + "system\n" + (ex.has_system ? ex.system : kChatmlSystem) +
             kImEnd + "\n";
  for (size_t i = 0; i < ex.human.size(); ++i) {
    out.text += std::string(kImStart) + "user\n" + ex.human[i] + kImEnd + "\n";
    out.text += std::string(kImStart) + "assistant\n";
    if (i < ex.gpt.size()) {
      supervise(out, ex.gpt[i] + kImEnd);
      out.text += "\n";
    }
  }
  return out;
}

// Our own warm-up format: <s>q a</s>q2 a2</s>..., with <image> removed and each turn stripped.
RenderedConversation render_text(const Exchanges& ex, const TemplateTokens& t) {
  if (ex.has_system) throw Error("the text template takes no system turn");
  RenderedConversation out;
  out.text = t.bos;
  for (size_t i = 0; i < ex.human.size(); ++i) {
    out.text += strip(erase_all(ex.human[i], t.image)) + " ";
    if (i < ex.gpt.size()) supervise(out, strip(ex.gpt[i]) + t.eos);
  }
  return out;
}

// The template registry: each name once, with its renderer and whether it keeps images.
struct TemplateEntry {
  const char* name;
  RenderedConversation (*render)(const Exchanges&, const TemplateTokens&);
  bool uses_images;
};

const std::vector<TemplateEntry>& registry() {
  static const std::vector<TemplateEntry> r = {
      {"plain", render_plain, true},
      {"vicuna_v1", render_vicuna_v1, true},
      {"llama_2", render_llama_2, true},
      {"chatml", [](const Exchanges& ex, const TemplateTokens&) { return render_chatml(ex); },
       true},
      {"text", render_text, false},
  };
  return r;
}

const TemplateEntry& find_template(const std::string& name) {
  for (const auto& e : registry())
    if (name == e.name) return e;
  throw Error("unknown template '" + name + "'");
}

}  // namespace

const std::vector<std::string>& template_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& e : registry()) v.push_back(e.name);
    return v;
  }();
  return names;
}

bool template_uses_images(const std::string& name) {
  return find_template(name).uses_images;
}

TemplateTokens template_tokens(const Tokenizer& tokenizer) {
  return {tokenizer.bos_id() >= 0 ? tokenizer.id_to_token(tokenizer.bos_id()) : "",
          tokenizer.eos_id() >= 0 ? tokenizer.id_to_token(tokenizer.eos_id()) : "", "<image>"};
}

RenderedConversation render_template(const std::string& name, const std::vector<Turn>& turns,
                                     const TemplateTokens& tokens) {
  const TemplateEntry& entry = find_template(name);  // before the turns: a bad name says so
  return entry.render(parse_turns(turns), tokens);
}

std::string move_image_to_front(const std::string& value, const std::string& image) {
  if (value.find(image) == std::string::npos) return value;
  return strip(image + "\n" + strip(erase_all(value, image)));
}

}  // namespace mllm
