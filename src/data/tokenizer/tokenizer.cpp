#include "data/tokenizer/tokenizer.h"

#include "data/chat_template.h"

#include <algorithm>
#include <cctype>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "data/tokenizer/normalizers.h"

namespace mllm {

std::unique_ptr<Tokenizer> make_wordlevel_tokenizer(const std::filesystem::path& path,
                                                    const nlohmann::json& j);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const std::filesystem::path& path,
                                              const nlohmann::json& j);
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::filesystem::path& path);

namespace {

// Rust regex's \s (Unicode White_Space) for the code point starting at s[i], as its byte length
// (0 if not a space). `back`: look at the code point ending at s[i - 1] instead.
size_t space_at(const std::string& s, size_t i, bool back) {
  size_t start = i;
  if (back) {
    if (i == 0) return 0;
    start = i - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  } else if (i >= s.size()) {
    return 0;
  }
  size_t pos = start;
  const uint32_t cp = tok::utf8_decode(s, pos);
  const bool space = (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
                     cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
                     cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
  return space ? pos - start : 0;
}

// Rust regex's \w for the code point at / before s[i]: ASCII letters, digits and '_'; beyond ASCII
// an approximation — any code point that is not a space, a control or in the common punctuation
// and symbol blocks (General Punctuation, CJK Symbols and Punctuation, Halfwidth and Fullwidth
// punctuation, Latin-1 punctuation) counts as a word character.
bool word_at(const std::string& s, size_t i, bool back) {
  size_t start = i;
  if (back) {
    if (i == 0) return false;
    start = i - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  } else if (i >= s.size()) {
    return false;
  }
  size_t pos = start;
  const uint32_t cp = tok::utf8_decode(s, pos);
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  if (space_at(s, start, false)) return false;
  if (cp < 0xC0) return cp == 0xAA || cp == 0xB5 || cp == 0xBA || (cp >= 0xB2 && cp <= 0xB3);
  if (cp >= 0x2000 && cp <= 0x2BFF) return false;  // punctuation, arrows, math, shapes...
  if (cp >= 0x3000 && cp <= 0x303F) return false;
  if ((cp >= 0xFF00 && cp <= 0xFF0F) || (cp >= 0xFF1A && cp <= 0xFF20) ||
      (cp >= 0xFF3B && cp <= 0xFF40) || (cp >= 0xFF5B && cp <= 0xFF65))
    return false;
  if (cp >= 0x1F000 && cp <= 0x1FAFF) return false;  // emoji and pictographs
  return true;
}

}  // namespace

std::vector<Tokenizer::Split> Tokenizer::split_added(const std::string& s, bool normalized) const {
  // Reference: tokenizers/src/tokenizer/added_vocabulary.rs, find_matches (an Aho-Corasick
  // leftmost-longest scan: a match rejected by single_word still consumes its bytes).
  std::vector<Split> out;
  const auto& table = added_by_first_byte_[normalized ? 1 : 0];
  size_t start = 0, pos = 0;
  if (!any_added_[normalized ? 1 : 0]) pos = s.size();
  while (pos < s.size()) {
    const AddedToken* match = nullptr;
    size_t len = 0;
    for (const AddedToken* a : table[static_cast<unsigned char>(s[pos])]) {
      const std::string& c =
          normalized ? normalized_content_[static_cast<size_t>(a - added_.data())] : a->content;
      if (s.compare(pos, c.size(), c) == 0) {
        match = a;
        len = c.size();
        break;
      }
    }
    if (!match) {
      ++pos;
      continue;
    }
    size_t b = pos, e = pos + len;
    pos = e;
    if (match->single_word && (word_at(s, b, true) || word_at(s, e, false))) continue;
    if (match->lstrip)
      for (size_t n; b > start && (n = space_at(s, b, true)) > 0;) b -= n;
    if (match->rstrip)
      for (size_t n; (n = space_at(s, e, false)) > 0;) e += n;
    if (start < b) out.push_back({start, b, -1});
    out.push_back({b, e, match->id});
    pos = start = e;
  }
  if (start < s.size()) out.push_back({start, s.size(), -1});
  return out;
}

Encoding Tokenizer::encode_with_offsets(const std::string& text) const {
  // First pass: the added tokens matched verbatim; the model type finds normalized ones.
  Encoding out;
  for (const Split& sp : split_added(text, false)) {
    if (sp.id >= 0) {
      out.ids.push_back(sp.id);
      out.offsets.emplace_back(sp.b, sp.e);
      continue;
    }
    Encoding seg = encode_segment(text.substr(sp.b, sp.e - sp.b), sp.b == 0);
    out.ids.insert(out.ids.end(), seg.ids.begin(), seg.ids.end());
    for (const auto& [b, e] : seg.offsets) out.offsets.emplace_back(sp.b + b, sp.b + e);
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  for (int64_t id : ids) {
    // A special token is skipped when its token string is its content: HF looks the string up
    // in its set of special contents, so a normalized special token ("▁<x>") is kept.
    if (skip_special && std::any_of(added_.begin(), added_.end(), [&](const AddedToken& a) {
          return a.id == id && a.special && id_to_token(id) == a.content;
        }))
      continue;
    tokens.push_back(id_to_token(id));
  }
  return join_tokens(tokens);
}

int64_t Tokenizer::vocab_size() const {
  return id_to_token_.empty() ? 0 : id_to_token_.rbegin()->first + 1;
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int64_t id) const {
  auto it = id_to_token_.find(id);
  if (it == id_to_token_.end())
    throw Error("[Tokenizer::id_to_token] id " + std::to_string(id) +
                " is not in the vocabulary of " + path_.string());
  return it->second;
}

void Tokenizer::read_added_tokens(const nlohmann::json& j) {
  if (!j.contains("added_tokens")) return;
  if (!j["added_tokens"].is_array()) throw Error(path_.string() + ": added_tokens must be a list");
  size_t i = 0;
  for (const auto& a : j["added_tokens"]) {
    const std::string where = path_.string() + ": added_tokens[" + std::to_string(i++) + "]";
    if (!a.is_object() || !a.contains("content") || !a["content"].is_string() ||
        !a.contains("id") || !a["id"].is_number_integer())
      throw Error(where + ": each entry needs a string content and an integer id");
    if (a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= kMaxTokenId)
      throw Error(where + ": id " + a["id"].dump() + " is not in [0, " +
                  std::to_string(kMaxTokenId) + ")");
    AddedToken t{a["content"].get<std::string>(), a["id"].get<int64_t>(),
                 a.value("special", false)};
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    t.normalized = a.value("normalized", !t.special);  // HF's default: special tokens are not
    added_.push_back(t);
  }
}

void Tokenizer::finish_setup() {
  // As HF's AddedVocabulary (tokenizers 0.23, checked against its Node binding): a token whose
  // content the vocabulary already has (the model's, or an earlier added one) takes that id; any
  // other gets the next free id after the model's vocabulary and is known by its normalized
  // content when normalized ("▁Yesterday" under Mistral's normalizer). The entry's own "id" is not
  // used (well-formed files agree with it; a mismatch is reported).
  const auto model_size = static_cast<int64_t>(vocab_.size());
  int64_t max_added = -1;
  for (const auto& kv : vocab_) id_to_token_[kv.second] = kv.first;
  normalized_content_.clear();
  for (auto& a : added_) {
    normalized_content_.push_back(a.normalized ? normalize_added(a.content) : a.content);
    int64_t id;
    if (auto it = vocab_.find(a.content); it != vocab_.end()) {
      id = it->second;
    } else {
      id = max_added < 0
               ? model_size
               : (max_added >= model_size || model_size == 0 ? max_added + 1 : model_size);
      vocab_.emplace(a.content, id);
      vocab_.emplace(normalized_content_.back(), id);
      id_to_token_[id] = normalized_content_.back();
    }
    if (id != a.id)
      spdlog::warn("{}: added token '{}' gets id {}, not the {} its entry names (as HF assigns it)",
                   path_.string(), a.content, id, a.id);
    a.id = id;
    max_added = std::max(max_added, id);
  }
  for (int n = 0; n < 2; ++n) {
    auto& table = added_by_first_byte_[n];
    table.assign(256, {});
    for (size_t i = 0; i < added_.size(); ++i) {
      const std::string& c = normalized_content_[i];
      if (added_[i].normalized == (n == 1) && !c.empty()) {
        table[static_cast<unsigned char>(c[0])].push_back(&added_[i]);
        any_added_[n] = true;
      }
    }
    for (auto& v : table)
      std::stable_sort(v.begin(), v.end(), [&](const AddedToken* x, const AddedToken* y) {
        return normalized_content_[static_cast<size_t>(x - added_.data())].size() >
               normalized_content_[static_cast<size_t>(y - added_.data())].size();
      });
  }
  auto find_any = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names)
      if (auto id = token_to_id(n)) return *id;
    return -1;
  };
  bos_id_ = find_any({"<s>", "<|begin_of_text|>", "<bos>"});
  eos_id_ = find_any({"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"});
  pad_id_ = find_any({"<pad>", "<|pad|>", "<unk>"});
  image_id_ = find_any({"<image>"});
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path) {
  if (path.extension() == ".model") return make_sentencepiece_tokenizer(path);
  const std::string text = read_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw Error(path.string() + ": not a tokenizer.json (no \"model\" object)");
  // Every field is type-checked where it is read; what slips through (a merge that is a number,
  // `special: "true"`) surfaces as a json exception and is reported as the file's fault here.
  try {
    const std::string type = j["model"].value("type", "");
    if (type == "WordLevel") return make_wordlevel_tokenizer(path, j);
    if (type == "BPE") return make_bpe_tokenizer(path, j);
    throw Error(path.string() + ": model.type '" + type +
                "' is not supported (supported: WordLevel, BPE; SentencePiece .model files)");
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": malformed tokenizer.json: " + json_error_message(e));
  } catch (const std::bad_alloc&) {
    throw Error(path.string() + ": tokenizer.json too large to load");
  }
}

nlohmann::json tokenizer_config_json(const Tokenizer& tokenizer, int64_t model_max_length,
                                     const std::string& template_name,
                                     const std::optional<std::string>& system) {
  nlohmann::json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                       {"model_max_length", model_max_length}};
  if (tokenizer.bos_id() >= 0) tc["bos_token"] = tokenizer.id_to_token(tokenizer.bos_id());
  if (tokenizer.eos_id() >= 0) tc["eos_token"] = tokenizer.id_to_token(tokenizer.eos_id());
  if (tokenizer.pad_id() >= 0) tc["pad_token"] = tokenizer.id_to_token(tokenizer.pad_id());
  if (!template_name.empty()) tc["mllm_template"] = template_name;
  if (system) tc["mllm_system"] = *system;
  // The tokenizer's own chat template travels with it, with the tokens it is rendered with.
  if (template_name == "hf")
    if (const auto hf = hf_template_of(tokenizer)) {
      tc["chat_template"] = hf->source();
      if (!hf->bos().empty()) tc["bos_token"] = hf->bos();
      if (!hf->eos().empty()) tc["eos_token"] = hf->eos();
    }
  return tc;
}

}  // namespace mllm
