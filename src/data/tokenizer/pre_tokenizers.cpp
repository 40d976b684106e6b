// Pre-tokenizers over aligned strings. Split behaviours follow
// tokenizers/src/tokenizer/normalizer.rs (SplitDelimiterBehavior) and pre_tokenizers/split.rs;
// ByteLevel follows pre_tokenizers/byte_level.rs; Metaspace pre_tokenizers/metaspace.rs.
#include "data/tokenizer/pre_tokenizers.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/tokenizer/regex.h"

namespace mllm::tok {

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    auto direct = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int n = 0;
    for (int b = 0; b < 256; ++b) utf8_append(t[b], direct(b) ? uint32_t(b) : uint32_t(256 + n++));
    return t;
  }();
  return table;
}

namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const std::string& s, const std::filesystem::path& file) {
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  throw Error(file.string() + ": unknown split behavior '" + s + "'");
}

// Splits `s` at the matches of `p` per `behavior` and appends the non-empty pieces to `out`.
void split_piece(const NormalizedString& s, const Pattern& p, Behavior behavior, bool invert,
                 Pieces& out) {
  const auto matches = p.find_all(s.text);
  struct Seg {
    size_t b, e;
    bool match;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (b > prev) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < s.text.size()) segs.push_back({prev, s.text.size(), invert});
  std::vector<std::pair<size_t, size_t>> spans;
  switch (behavior) {
    case Behavior::Removed:
      for (const auto& g : segs)
        if (!g.match) spans.emplace_back(g.b, g.e);
      break;
    case Behavior::Isolated:
      for (const auto& g : segs) spans.emplace_back(g.b, g.e);
      break;
    case Behavior::Contiguous:
      for (size_t i = 0; i < segs.size(); ++i) {
        if (i > 0 && segs[i].match && segs[i - 1].match)
          spans.back().second = segs[i].e;
        else
          spans.emplace_back(segs[i].b, segs[i].e);
      }
      break;
    case Behavior::MergedWithPrevious:
      for (size_t i = 0; i < segs.size(); ++i) {
        if (segs[i].match && !spans.empty() && i > 0 && !segs[i - 1].match)
          spans.back().second = segs[i].e;
        else
          spans.emplace_back(segs[i].b, segs[i].e);
      }
      break;
    case Behavior::MergedWithNext: {
      bool pending = false;  // the last span was a match waiting for what follows
      for (const auto& g : segs) {
        if (pending && !g.match)
          spans.back().second = g.e;
        else
          spans.emplace_back(g.b, g.e);
        pending = g.match;
      }
      break;
    }
  }
  for (const auto& [b, e] : spans)
    if (e > b) out.push_back(s.slice(b, e));
}

class SplitPre : public PreTokenizer {
 public:
  SplitPre(Pattern p, Behavior b, bool invert)
      : pattern_(std::move(p)), behavior_(b), invert_(invert) {}
  void split(Pieces& pieces, bool) const override {
    Pieces out;
    out.reserve(pieces.size() * 4);
    for (const auto& s : pieces) split_piece(s, pattern_, behavior_, invert_, out);
    pieces = std::move(out);
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPre : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) regex_ = Pattern::regex(kGpt2Regex, "ByteLevel");
  }
  void split(Pieces& pieces, bool) const override {
    Pieces split_pieces;
    for (auto& s : pieces) {
      if (add_prefix_space_ && !s.text.empty() && s.text[0] != ' ') {
        NormalizedString r;
        r.append(" ", 1, s.align[0].first, s.align[0].second);
        r.text += s.text;
        r.align.insert(r.align.end(), s.align.begin(), s.align.end());
        s = std::move(r);
      }
      if (use_regex_)
        split_piece(s, regex_, Behavior::Isolated, false, split_pieces);
      else
        split_pieces.push_back(std::move(s));
    }
    const auto& table = byte_to_unicode();
    for (auto& s : split_pieces) {
      NormalizedString r;
      r.text.reserve(s.text.size() * 2);
      r.align.reserve(s.text.size() * 2);
      for (size_t i = 0; i < s.text.size(); ++i)
        r.append(table[static_cast<unsigned char>(s.text[i])], s.align[i].first, s.align[i].second);
      s = std::move(r);
    }
    pieces = std::move(split_pieces);
  }

 private:
  bool add_prefix_space_, use_regex_;
  Pattern regex_;
};

class MetaspacePre : public PreTokenizer {
 public:
  MetaspacePre(std::string replacement, std::string scheme, bool split)
      : rep_(std::move(replacement)), scheme_(std::move(scheme)), split_(split) {
    split_pattern_ = Pattern::literal(rep_);
  }
  void split(Pieces& pieces, bool at_input_start) const override {
    Pieces out;
    for (auto& s : pieces) {
      if (s.text.empty()) continue;
      NormalizedString r;
      for (size_t i = 0; i < s.text.size(); ++i) {
        if (s.text[i] == ' ')
          r.append(rep_, s.align[i].first, s.align[i].second);
        else
          r.append(&s.text[i], 1, s.align[i].first, s.align[i].second);
      }
      const bool starts = r.text.compare(0, rep_.size(), rep_) == 0;
      const bool prepend =
          !starts &&
          (scheme_ == "always" || (scheme_ == "first" && at_input_start && s.align[0].first == 0));
      if (prepend) {
        NormalizedString p;
        p.append(rep_, r.align[0].first, r.align[0].second);
        p.text += r.text;
        p.align.insert(p.align.end(), r.align.begin(), r.align.end());
        r = std::move(p);
      }
      if (split_)
        split_piece(r, split_pattern_, Behavior::MergedWithNext, false, out);
      else
        out.push_back(std::move(r));
    }
    pieces = std::move(out);
  }

 private:
  std::string rep_, scheme_;
  bool split_;
  Pattern split_pattern_;
};

class SequencePre : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> items)
      : items_(std::move(items)) {}
  void split(Pieces& pieces, bool at_input_start) const override {
    for (const auto& p : items_) p->split(pieces, at_input_start);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> items_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j,
                                                 const std::filesystem::path& file) {
  if (j.is_null()) return nullptr;
  const std::string type = j.value("type", "");
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPre>(j.value("add_prefix_space", true),
                                          j.value("use_regex", true));
  if (type == "Split")
    return std::make_unique<SplitPre>(Pattern::from_json(j.at("pattern"), file),
                                      parse_behavior(j.value("behavior", "Isolated"), file),
                                      j.value("invert", false));
  if (type == "Digits")
    return std::make_unique<SplitPre>(
        Pattern::regex(j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)",
                       file.string()),
        Behavior::Isolated, false);
  if (type == "Whitespace")
    return std::make_unique<SplitPre>(Pattern::regex(R"(\w+|[^\w\s]+)", file.string()),
                                      Behavior::Removed, true);
  if (type == "WhitespaceSplit")
    return std::make_unique<SplitPre>(Pattern::regex(R"(\s+)", file.string()), Behavior::Removed,
                                      false);
  if (type == "Metaspace") {
    std::string scheme = j.value("prepend_scheme", "");
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    return std::make_unique<MetaspacePre>(j.value("replacement", "\xE2\x96\x81"), scheme,
                                          j.value("split", true));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> items;
    for (const auto& p : j.at("pretokenizers"))
      if (auto q = make_pre_tokenizer(p, file)) items.push_back(std::move(q));
    return std::make_unique<SequencePre>(std::move(items));
  }
  throw Error(file.string() + ": pre_tokenizer type '" + type +
              "' is not supported (supported: ByteLevel, Split, Metaspace, Digits, Whitespace, "
              "WhitespaceSplit, Sequence)");
}

}  // namespace mllm::tok
