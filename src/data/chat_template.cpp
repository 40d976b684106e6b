// The templates' exact strings come from their reference implementations, cited per template; the
// tests in tests/data/test_datasets.cpp pin each rendering to a string derived from them.
#include "data/chat_template.h"

#include <spdlog/spdlog.h>

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "data/jinja.h"
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
  bool has_system;  // takes a system prompt (data.system applies)
};

const std::vector<TemplateEntry>& registry() {
  static const std::vector<TemplateEntry> r = {
      {"plain", render_plain, true, false},
      {"vicuna_v1", render_vicuna_v1, true, true},
      {"llama_2", render_llama_2, true, true},
      {"chatml", [](const Exchanges& ex, const TemplateTokens&) { return render_chatml(ex); }, true,
       true},
      {"text", render_text, false, false},
      // The tokenizer's own template: rendered by render_template before the turns are parsed.
      {"hf", nullptr, true, true},
  };
  return r;
}

const TemplateEntry& find_template(const std::string& name) {
  for (const auto& e : registry())
    if (name == e.name) return e;
  throw Error("unknown template '" + name + "'");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The tokenizer's own chat template.

namespace {

using OJson = nlohmann::ordered_json;

std::string role_of(const std::string& from) {
  if (from == "human") return "user";
  if (from == "gpt") return "assistant";
  return from;
}

// A special token's text in tokenizer_config.json: a string or {"content": ...}.
std::string token_text(const OJson& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return "";
}

// The folder's chat template, as transformers finds it: chat_template.jinja, else
// tokenizer_config.json's "chat_template" (a string, or a list of {name, template} of which
// "default" is used). Empty source when there is none.
struct TemplateFiles {
  std::string source, name;
  OJson config;  // tokenizer_config.json, when present
};

TemplateFiles find_template_files(const std::filesystem::path& tokenizer_file) {
  TemplateFiles t;
  const auto dir = tokenizer_file.parent_path();
  std::error_code ec;
  const auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::is_regular_file(config_path, ec)) {
    try {
      t.config = OJson::parse(read_file(config_path));
    } catch (const OJson::exception& e) {
      throw Error(config_path.string() + ": not valid JSON (" + json_error_message(e) + ")");
    }
    if (!t.config.is_object()) throw Error(config_path.string() + ": not a JSON object");
  }
  const auto jinja_path = dir / "chat_template.jinja";
  if (std::filesystem::is_regular_file(jinja_path, ec)) {
    t.source = read_file(jinja_path);
    t.name = jinja_path.string();
    return t;
  }
  if (!t.config.is_object() || !t.config.contains("chat_template")) return t;
  const OJson& ct = t.config["chat_template"];
  t.name = config_path.string() + " chat_template";
  if (ct.is_string()) {
    t.source = ct.get<std::string>();
  } else if (ct.is_array()) {
    for (const auto& entry : ct)
      if (entry.is_object() && entry.contains("name") && entry["name"] == "default" &&
          entry.contains("template") && entry["template"].is_string())
        t.source = entry["template"].get<std::string>();
    if (t.source.empty())
      throw Error(config_path.string() +
                  ": \"chat_template\" is a list without a template named \"default\"");
  } else if (!ct.is_null()) {
    throw Error(config_path.string() + ": \"chat_template\" must be a string or a list");
  }
  return t;
}

}  // namespace

bool has_hf_chat_template(const std::filesystem::path& tokenizer_file) {
  try {
    return !find_template_files(tokenizer_file).source.empty();
  } catch (const Error&) {
    return false;  // reading it for real reports the problem
  }
}

std::shared_ptr<const HfChatTemplate> hf_template_of(const Tokenizer& tokenizer) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const HfChatTemplate>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto& own = tokenizer.chat_template_file();
  const std::string key = tokenizer.path().string() + "\n" + own.string();
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  TemplateFiles files = find_template_files(tokenizer.path());
  if (!own.empty()) {  // data.chat_template: this file instead (the folder's BOS/EOS texts kept)
    files.source = read_file(own);
    files.name = own.string();
    if (files.source.empty()) throw Error(own.string() + ": the chat template file is empty");
  }
  std::shared_ptr<const HfChatTemplate> t;
  if (!files.source.empty()) {
    const auto special = [&](const char* k, int64_t id) {
      if (files.config.is_object() && files.config.contains(k)) return token_text(files.config[k]);
      return id >= 0 ? tokenizer.id_to_token(id) : std::string();
    };
    t = std::make_shared<HfChatTemplate>(files.source, files.name,
                                         special("bos_token", tokenizer.bos_id()),
                                         special("eos_token", tokenizer.eos_id()), tokenizer);
    if (!t->missing_tokens().empty()) {
      std::string list;
      for (const auto& m : t->missing_tokens()) list += (list.empty() ? "'" : ", '") + m + "'";
      spdlog::warn(
          "{}: the template writes {} in every conversation, but {} has no such token: "
          "each is split into ordinary pieces (a template for another tokenizer?)",
          t->name(), list, tokenizer.path().string());
    }
  }
  cache[key] = t;
  return t;
}

namespace {

const char* kImageTag = "<image>";

// A turn's text as transformers' multimodal content: {"type": "image"} where each <image> tag
// stands (the template writes the image token itself; the "\n" LLaVA puts after a tag goes with
// it), {"type": "text", "text"} between.
OJson content_parts(const std::string& text) {
  OJson parts = OJson::array();
  const std::string tag = kImageTag;
  size_t b = 0;
  for (;;) {
    const auto at = text.find(tag, b);
    const std::string piece = text.substr(b, at == std::string::npos ? std::string::npos : at - b);
    if (!piece.empty()) parts.push_back({{"type", "text"}, {"text", piece}});
    if (at == std::string::npos) break;
    parts.push_back({{"type", "image"}});
    b = at + tag.size();
    if (b < text.size() && text[b] == '\n') ++b;
  }
  return parts;
}

OJson messages_json(const std::vector<Turn>& turns, size_t n, bool parts) {
  OJson messages = OJson::array();
  for (size_t i = 0; i < n; ++i)
    messages.push_back(
        OJson{{"role", role_of(turns[i].from)},
              {"content", parts ? content_parts(turns[i].value) : OJson(turns[i].value)}});
  return messages;
}

size_t common_prefix(const std::string& a, size_t from_a, const std::string& b, size_t from_b) {
  size_t n = 0;
  while (from_a + n < a.size() && from_b + n < b.size() && a[from_a + n] == b[from_b + n]) ++n;
  return n;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

bool is_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

const char* kProbeQuestion = "mllm probe question";
const char* kProbeReply = "mllm probe reply";

}  // namespace

HfChatTemplate::HfChatTemplate(const std::string& source, std::string name, std::string bos,
                               std::string eos, const Tokenizer& tokenizer)
    : name_(std::move(name)), source_(source), bos_(std::move(bos)), eos_(std::move(eos)) {
  jinja_ = std::make_unique<jinja::Template>(source, name_);
  // The end-of-turn token: the special token written right after a probe reply (after any
  // whitespace, as Llama-2's " </s>"), the longest that matches.
  // Content as a string (text templates: Llama-3, Qwen3) or as typed parts (multimodal
  // templates: llava-hf's iterate over message['content']): whichever writes the probe's text.
  std::vector<Turn> probe = {{"human", kProbeQuestion}, {"gpt", kProbeReply}};
  std::string text;
  for (int attempt = 0; attempt < 4; ++attempt) {
    content_parts_ = attempt % 2 == 1;
    if (attempt == 2) probe.insert(probe.begin(), Turn{"system", "mllm probe system"});
    try {
      text = render_text(probe, false);
    } catch (const Error&) {
      text.clear();
    }
    if (text.find(kProbeQuestion) != std::string::npos) break;
  }
  if (text.find(kProbeQuestion) == std::string::npos) content_parts_ = false;
  if (const auto at = text.find(kProbeReply); at != std::string::npos) {
    // Whitespace between the generation prompt and the reply belongs to the prompt.
    try {
      const std::string prompt = render_text({probe.begin(), probe.end() - 1}, true);
      if (starts_with(text, prompt) && at >= prompt.size()) {
        const std::string between = text.substr(prompt.size(), at - prompt.size());
        if (std::all_of(between.begin(), between.end(), is_space)) reply_separator_ = between;
      }
    } catch (const Error&) {
    }
    size_t k = at + std::string(kProbeReply).size();
    while (k < text.size() && is_space(text[k])) ++k;
    std::vector<std::string> candidates = tokenizer.special_token_texts();
    if (!eos_.empty()) candidates.push_back(eos_);
    for (const auto& c : candidates)
      if (!c.empty() && text.compare(k, c.size(), c) == 0 && c.size() > end_of_turn_.size())
        end_of_turn_ = c;
  }
  // Tokens the template writes that the tokenizer lacks: <|...|> markers, BOS and EOS.
  probe.push_back({"human", kProbeQuestion});
  std::string full;
  try {
    full = render_text(probe, true);
  } catch (const Error&) {
    full = text;
  }
  std::vector<std::string> written;
  for (size_t at = 0; (at = full.find("<|", at)) != std::string::npos;) {
    const auto close = full.find("|>", at + 2);
    if (close == std::string::npos || close - at > 64) break;
    const std::string tok = full.substr(at, close + 2 - at);
    if (std::none_of(tok.begin(), tok.end(), is_space)) written.push_back(tok);
    at = close + 2;
  }
  for (const std::string* t : {&bos_, &eos_})
    if (!t->empty() && full.find(*t) != std::string::npos) written.push_back(*t);
  for (const auto& w : written)
    if (!tokenizer.token_to_id(w) &&
        std::find(missing_.begin(), missing_.end(), w) == missing_.end())
      missing_.push_back(w);
}

HfChatTemplate::~HfChatTemplate() = default;

bool HfChatTemplate::has_generation_blocks() const {
  return jinja_->has_generation();
}

std::string HfChatTemplate::render_text(const std::vector<Turn>& turns,
                                        bool add_generation_prompt) const {
  OJson context = {{"messages", messages_json(turns, turns.size(), content_parts_)},
                   {"add_generation_prompt", add_generation_prompt}};
  if (!bos_.empty()) context["bos_token"] = bos_;
  if (!eos_.empty()) context["eos_token"] = eos_;
  return jinja_->render(context).text;
}

RenderedConversation HfChatTemplate::render(const std::vector<Turn>& turns) const {
  const bool ends_with_reply = role_of(turns.back().from) == "assistant";
  OJson context = {{"messages", messages_json(turns, turns.size(), content_parts_)},
                   {"add_generation_prompt", !ends_with_reply}};
  if (!bos_.empty()) context["bos_token"] = bos_;
  if (!eos_.empty()) context["eos_token"] = eos_;
  jinja::Template::Output full = jinja_->render(context);
  RenderedConversation out;
  out.text = std::move(full.text);
  const std::string& r = out.text;
  if (jinja_->has_generation()) {
    // transformers' assistant masks: the template marks the replies itself.
    for (const auto& [b, e] : full.generation) {
      out.supervised.emplace_back(b, e);
      out.prompt_ends.push_back(b);
    }
    return out;
  }
  for (size_t i = 0; i < turns.size(); ++i) {
    if (role_of(turns[i].from) != "assistant") continue;
    std::string prompt, through;
    try {
      prompt = render_text({turns.begin(), turns.begin() + static_cast<std::ptrdiff_t>(i)}, true);
      through =
          render_text({turns.begin(), turns.begin() + static_cast<std::ptrdiff_t>(i) + 1}, false);
    } catch (const Error&) {
      ++out.inconsistent_replies;  // the template refuses the prefix on its own
      continue;
    }
    if (!starts_with(r, prompt) || !starts_with(through, prompt)) {
      ++out.inconsistent_replies;
      continue;
    }
    // What the reply renders as, as far as the whole conversation renders it the same way, up to
    // the last end-of-turn token in it (a reply's own text may hold that token's text too).
    size_t b = prompt.size();
    size_t e = b + common_prefix(through, b, r, b);
    const size_t n = end_of_turn_.size();
    const size_t eot = n == 0 || e - b < n ? std::string::npos : r.rfind(end_of_turn_, e - n);
    if (eot != std::string::npos && eot >= b) {
      e = eot + n;
    } else {
      while (e > b && is_space(r[e - 1])) --e;
    }
    if (r.compare(b, reply_separator_.size(), reply_separator_) == 0) b += reply_separator_.size();
    if (b >= e || (!out.supervised.empty() && b < out.supervised.back().second)) {
      ++out.inconsistent_replies;
      continue;
    }
    out.supervised.emplace_back(b, e);
    out.prompt_ends.push_back(prompt.size());
  }
  return out;
}

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

TemplateTokens template_tokens(const Tokenizer& tokenizer, const std::string& template_name,
                               std::optional<std::string> system) {
  return {tokenizer.bos_id() >= 0 ? tokenizer.id_to_token(tokenizer.bos_id()) : "",
          tokenizer.eos_id() >= 0 ? tokenizer.id_to_token(tokenizer.eos_id()) : "", "<image>",
          template_name == "hf" ? hf_template_of(tokenizer) : nullptr, std::move(system)};
}

bool template_has_system(const std::string& name) {
  return find_template(name).has_system;
}

RenderedConversation render_template(const std::string& name, const std::vector<Turn>& given,
                                     const TemplateTokens& tokens) {
  const TemplateEntry& entry = find_template(name);  // before the turns: a bad name says so
  std::vector<Turn> with_system;
  if (tokens.system && entry.has_system && !given.empty() && given.front().from != "system") {
    with_system.reserve(given.size() + 1);
    with_system.push_back({"system", *tokens.system});
    with_system.insert(with_system.end(), given.begin(), given.end());
  }
  const std::vector<Turn>& turns = with_system.empty() ? given : with_system;
  if (!entry.render) {
    if (!tokens.hf)
      throw Error(
          "data.template is hf but the tokenizer's folder has no chat template "
          "(tokenizer_config.json \"chat_template\" or chat_template.jinja)");
    if (turns.empty()) throw Error("no conversation turns");
    return tokens.hf->render(turns);
  }
  return entry.render(parse_turns(turns), tokens);
}

std::string move_image_to_front(const std::string& value, const std::string& image) {
  if (value.find(image) == std::string::npos) return value;
  return strip(image + "\n" + strip(erase_all(value, image)));
}

}  // namespace mllm
