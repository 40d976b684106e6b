// The WordLevel model of HF tokenizers: one id per whole word, unknown words -> unk_token. Supports
// the Lowercase normalizer and the Whitespace (\w+|[^\w\s]+) / WhitespaceSplit pre-tokenizers.
// Reference: tokenizers/src/models/wordlevel, tokenizers/src/pre_tokenizers/whitespace.rs.
#include <cctype>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/tokenizer/tokenizer.h"

namespace mllm {

namespace {

class WordLevelTokenizer : public Tokenizer {
 public:
  WordLevelTokenizer(const std::filesystem::path& path, const nlohmann::json& j) {
    path_ = path;
    const auto& model = j["model"];
    if (!model.contains("vocab") || !model["vocab"].is_object())
      throw Error(path.string() + ": model.vocab must be an object of token -> id");
    for (const auto& [tok, id] : model["vocab"].items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxTokenId)
        throw Error(path.string() + ": model.vocab[\"" + tok + "\"]: expected a non-negative integer id below 2^24");
      vocab_[tok] = id.get<int64_t>();
    }
    const std::string unk = model.value("unk_token", "");
    if (!unk.empty()) {
      auto it = vocab_.find(unk);
      if (it == vocab_.end())
        throw Error(path.string() + ": model.unk_token '" + unk + "' is not in model.vocab");
      unk_id_ = it->second;
    }
    read_added_tokens(j);
    const auto norm = j.value("normalizer", nlohmann::json());
    if (!norm.is_null()) {
      const std::string t = norm.value("type", "");
      if (t != "Lowercase")
        throw Error(path.string() + ": normalizer type '" + t + "' is not supported for WordLevel");
      lowercase_ = true;
    }
    const auto pre = j.value("pre_tokenizer", nlohmann::json());
    const std::string pt = pre.is_null() ? "WhitespaceSplit" : pre.value("type", "");
    if (pt == "Whitespace")
      split_punct_ = true;
    else if (pt != "WhitespaceSplit")
      throw Error(path.string() + ": pre_tokenizer type '" + pt +
                  "' is not supported for WordLevel");
    finish_setup();
  }

 protected:
  Encoding encode_segment(const std::string& text, bool) const override {
    // Lowercasing is per byte (ASCII), so normalized offsets are the input's.
    const std::string norm = normalize_added(text);
    Encoding out;
    for (const Split& sp : split_added(norm, true)) {
      if (sp.id >= 0) {
        out.ids.push_back(sp.id);
        out.offsets.emplace_back(sp.b, sp.e);
      } else {
        encode_words(norm, sp.b, sp.e, out);
      }
    }
    return out;
  }

  std::string normalize_added(const std::string& content) const override {
    std::string out = content;
    if (lowercase_)
      for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }

  // Words of text[begin, end).
  void encode_words(const std::string& text, size_t begin, size_t end, Encoding& out) const {
    std::string word;
    size_t word_begin = 0;
    int cls = 0;  // 0 none, 1 word chars, 2 punctuation
    auto flush = [&](size_t end) {
      if (word.empty()) return;
      auto it = vocab_.find(word);
      if (it != vocab_.end())
        out.ids.push_back(it->second);
      else if (unk_id_ >= 0)
        out.ids.push_back(unk_id_);
      else
        throw Error(path_.string() + ": word '" + word +
                    "' is not in the vocabulary and there is no unk_token");
      out.offsets.emplace_back(word_begin, end);
      word.clear();
    };
    for (size_t i = begin; i < end; ++i) {
      const auto ch = static_cast<unsigned char>(text[i]);
      if (std::isspace(ch)) {
        flush(i);
        cls = 0;
        continue;
      }
      // \w: ASCII letters, digits, '_' and (approximately) every non-ASCII byte.
      const int k = !split_punct_ ? 1 : (std::isalnum(ch) || ch == '_' || ch >= 0x80) ? 1 : 2;
      if (k != cls) flush(i);
      if (word.empty()) word_begin = i;
      cls = k;
      word.push_back(static_cast<char>(ch));
    }
    flush(end);
  }

  std::string join_tokens(const std::vector<std::string>& tokens) const override {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }

 private:
  int64_t unk_id_ = -1;
  bool lowercase_ = false;
  bool split_punct_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> make_wordlevel_tokenizer(const std::filesystem::path& path,
                                                    const nlohmann::json& j) {
  return std::make_unique<WordLevelTokenizer>(path, j);
}

}  // namespace mllm
