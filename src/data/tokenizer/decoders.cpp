// Decoders and post-processor parsing (see decoders.h). References:
// tokenizers/src/decoders/{byte_level via pre_tokenizers/byte_level.rs, byte_fallback.rs, fuse.rs,
// strip.rs, sequence.rs}, pre_tokenizers/metaspace.rs, normalizers/replace.rs,
// processors/{template.rs, bert.rs, roberta.rs, sequence.rs}.
#include "data/tokenizer/decoders.h"

#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/tokenizer/normalizers.h"
#include "data/tokenizer/pre_tokenizers.h"
#include "data/tokenizer/regex.h"

namespace mllm::tok {

namespace {

class ByteLevelDec : public Decoder {
 public:
  ByteLevelDec() {
    const auto& t = byte_to_unicode();
    for (int b = 0; b < 256; ++b) {
      size_t pos = 0;
      char_to_byte_[utf8_decode(t[b], pos)] = static_cast<unsigned char>(b);
    }
  }
  // A token whose characters are all in the byte map becomes those bytes, any other token its
  // own UTF-8; the whole is read lossily as one string.
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      std::string mapped;
      bool ok = true;
      for (size_t i = 0; i < t.size() && ok;) {
        auto it = char_to_byte_.find(utf8_decode(t, i));
        if (it == char_to_byte_.end())
          ok = false;
        else
          mapped += static_cast<char>(it->second);
      }
      bytes += ok ? mapped : t;
    }
    return {utf8_lossy(bytes)};
  }

 private:
  std::unordered_map<uint32_t, unsigned char> char_to_byte_;
};

class MetaspaceDec : public Decoder {
 public:
  MetaspaceDec(std::string rep, bool strip_first)
      : rep_(std::move(rep)), strip_first_(strip_first) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t p = 0; p < t.size();) {
        if (t.compare(p, rep_.size(), rep_) == 0) {
          if (!(i == 0 && strip_first_)) out += ' ';
          p += rep_.size();
        } else {
          out += t[p++];
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  std::string rep_;
  bool strip_first_;
};

class ReplaceDec : public Decoder {
 public:
  ReplaceDec(Pattern p, std::string content)
      : pattern_(std::move(p)), content_(std::move(content)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      const auto m = pattern_.find_all(t);
      if (m.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (const auto& [b, e] : m) {
        out.append(t, prev, b - prev);
        out += content_;
        prev = e;
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  Pattern pattern_;
  std::string content_;
};

int hex_byte(const std::string& t) {
  // "<0xAB>"
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[k];
    v *= 16;
    if (c >= '0' && c <= '9')
      v += c - '0';
    else if (c >= 'A' && c <= 'F')
      v += c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v += c - 'a' + 10;
    else
      return -1;
  }
  return v;
}

class ByteFallbackDec : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_valid(pending)) {
        out.push_back(pending);
      } else {
        std::string r;
        for (size_t i = 0; i < pending.size(); ++i) r += "\xEF\xBF\xBD";
        out.push_back(r);
      }
      pending.clear();
    };
    for (auto& t : tokens) {
      const int b = hex_byte(t);
      if (b >= 0) {
        pending += static_cast<char>(b);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }
};

class FuseDec : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    return {all};
  }
};

class StripDec : public Decoder {
 public:
  StripDec(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      size_t b = 0, e = t.size();
      for (size_t k = 0; k < start_ && t.compare(b, content_.size(), content_) == 0 && b < e; ++k)
        b += content_.size();
      for (size_t k = 0; k < stop_ && e >= b + content_.size() &&
                         t.compare(e - content_.size(), content_.size(), content_) == 0;
           ++k)
        e -= content_.size();
      t = t.substr(b, e - b);
    }
    return tokens;
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class SequenceDec : public Decoder {
 public:
  explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> items) : items_(std::move(items)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& d : items_) tokens = d->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> items_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::filesystem::path& file) {
  if (j.is_null()) return nullptr;
  const std::string type = j.value("type", "");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (type == "Metaspace") {
    std::string scheme = j.value("prepend_scheme", "");
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    return std::make_unique<MetaspaceDec>(j.value("replacement", "\xE2\x96\x81"),
                                          scheme != "never");
  }
  if (type == "Replace")
    return std::make_unique<ReplaceDec>(Pattern::from_json(j.at("pattern"), file),
                                        j.at("content").get<std::string>());
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (type == "Fuse") return std::make_unique<FuseDec>();
  if (type == "Strip")
    return std::make_unique<StripDec>(j.value("content", " "), j.value("start", 0),
                                      j.value("stop", 0));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> items;
    for (const auto& d : j.at("decoders"))
      if (auto p = make_decoder(d, file)) items.push_back(std::move(p));
    return std::make_unique<SequenceDec>(std::move(items));
  }
  throw Error(file.string() + ": decoder type '" + type +
              "' is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
              "Strip, Sequence)");
}

std::vector<int64_t> post_processor_prefix(
    const nlohmann::json& j, const std::filesystem::path& file,
    const std::function<std::optional<int64_t>(const std::string&)>& token_id) {
  if (j.is_null()) return {};
  const std::string type = j.value("type", "");
  if (type == "ByteLevel") return {};
  if (type == "TemplateProcessing") {
    std::vector<int64_t> out;
    for (const auto& piece : j.at("single")) {
      if (piece.contains("Sequence")) break;
      if (!piece.contains("SpecialToken")) continue;
      const std::string id = piece["SpecialToken"].at("id").get<std::string>();
      const auto& specials = j.at("special_tokens");
      if (!specials.contains(id))
        throw Error(file.string() + ": post_processor: special token '" + id +
                    "' is not in special_tokens");
      for (const auto& v : specials[id].at("ids")) out.push_back(v.get<int64_t>());
    }
    return out;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const auto& cls = j.at("cls");  // [token, id]
    return {cls.at(1).get<int64_t>()};
  }
  if (type == "Sequence") {
    std::vector<int64_t> out;
    for (const auto& p : j.at("processors")) {
      auto v = post_processor_prefix(p, file, token_id);
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  }
  throw Error(file.string() + ": post_processor type '" + type +
              "' is not supported (supported: TemplateProcessing, ByteLevel, BertProcessing, "
              "RobertaProcessing, Sequence)");
}

}  // namespace mllm::tok
