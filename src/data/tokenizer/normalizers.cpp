// Normalizers (NFC, Lowercase, Prepend, Replace, Strip, Sequence) over aligned strings.
// References: tokenizers/src/normalizers/{unicode,utils,prepend,replace,strip}.rs and the Unicode
// normalization algorithm (UAX #15: decompose, canonically reorder, compose).
#include "data/tokenizer/normalizers.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/tokenizer/regex.h"

namespace mllm::tok {

namespace {
#include "data/tokenizer/unicode_nfc_data.inc"
}  // namespace

NormalizedString NormalizedString::from_original(const std::string& s) {
  NormalizedString n;
  n.text = s;
  n.align.resize(s.size());
  for (size_t i = 0; i < s.size(); ++i) n.align[i] = {uint32_t(i), uint32_t(i + 1)};
  return n;
}

NormalizedString NormalizedString::slice(size_t b, size_t e) const {
  NormalizedString n;
  n.text = text.substr(b, e - b);
  n.align.assign(align.begin() + b, align.begin() + e);
  return n;
}

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 6) return 2;
  if ((c >> 4) == 14) return 3;
  if ((c >> 3) == 30) return 4;
  return 1;
}

uint32_t utf8_decode(const std::string& s, size_t& pos) {
  const auto c = static_cast<unsigned char>(s[pos]);
  size_t n = utf8_len(c);
  if (pos + n > s.size()) n = 1;
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  pos += n;
  return cp;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

namespace {
// Length of the valid UTF-8 sequence at p (0 if invalid); `good` is how many leading bytes form a
// valid prefix (the maximal subpart to replace). Ranges follow Unicode Table 3-7.
size_t utf8_seq(const unsigned char* p, size_t avail, size_t& good) {
  good = 0;
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  good = 1;
  for (size_t k = 1; k < n; ++k) {
    if (k >= avail) return 0;
    const unsigned char b = p[k];
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    ++good;
  }
  return n;
}
}  // namespace

bool utf8_valid(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    size_t good;
    const size_t n = utf8_seq(p + i, s.size() - i, good);
    if (!n) return false;
    i += n;
  }
  return true;
}

std::string utf8_lossy(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    size_t good;
    const size_t n = utf8_seq(p + i, s.size() - i, good);
    if (n) {
      out.append(s, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += std::max<size_t>(good, 1);
    }
  }
  return out;
}

// ---- NFC ----
namespace {
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

int ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* end = kCombiningClass + sizeof(kCombiningClass) / sizeof(kCombiningClass[0]);
  auto it = std::lower_bound(kCombiningClass, end, cp,
                             [](const uint32_t* e, uint32_t v) { return e[0] < v; });
  return (it != end && (*it)[0] == cp) ? int((*it)[1]) : 0;
}

const uint32_t* decomposition_of(uint32_t cp) {
  if (cp < 0xC0) return nullptr;
  const auto* end = kDecomposition + sizeof(kDecomposition) / sizeof(kDecomposition[0]);
  auto it = std::lower_bound(kDecomposition, end, cp,
                             [](const uint32_t* e, uint32_t v) { return e[0] < v; });
  return (it != end && (*it)[0] == cp) ? *it : nullptr;
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* end = kComposition + sizeof(kComposition) / sizeof(kComposition[0]);
  auto it = std::lower_bound(kComposition, end, std::make_pair(a, b),
                             [](const uint32_t* e, const std::pair<uint32_t, uint32_t>& v) {
                               return e[0] < v.first || (e[0] == v.first && e[1] < v.second);
                             });
  return (it != end && (*it)[0] == a && (*it)[1] == b) ? (*it)[2] : 0;
}

struct Cp {
  uint32_t cp;
  uint32_t b, e;  // original span
  int ccc;
};

void decompose(uint32_t cp, uint32_t b, uint32_t e, std::vector<Cp>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {  // Hangul syllable
    const uint32_t s = cp - kSBase;
    out.push_back({kLBase + s / kNCount, b, e, 0});
    out.push_back({kVBase + (s % kNCount) / kTCount, b, e, 0});
    if (s % kTCount) out.push_back({kTBase + s % kTCount, b, e, 0});
    return;
  }
  if (const uint32_t* d = decomposition_of(cp)) {
    decompose(d[1], b, e, out);
    if (d[2]) decompose(d[2], b, e, out);
    return;
  }
  out.push_back({cp, b, e, ccc_of(cp)});
}
}  // namespace

void nfc(NormalizedString& s) {
  // Fast path: ASCII needs nothing, and nothing below U+0300 composes with ASCII.
  bool ascii = true;
  for (char c : s.text)
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return;
  std::vector<Cp> cps;
  cps.reserve(s.text.size());
  for (size_t i = 0; i < s.text.size();) {
    const size_t start = i;
    const uint32_t cp = utf8_decode(s.text, i);
    decompose(cp, s.align[start].first, s.align[i - 1].second, cps);
  }
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (cps[i].ccc == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && cps[j].ccc != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](const Cp& x, const Cp& y) { return x.ccc < y.ccc; });
    i = j;
  }
  // Canonical composition.
  std::vector<Cp> out;
  out.reserve(cps.size());
  long starter = -1;
  int last_ccc = 0;
  for (const Cp& c : cps) {
    if (starter >= 0) {
      const bool blocked = out.size() > size_t(starter) + 1 && (last_ccc == 0 || last_ccc >= c.ccc);
      if (!blocked) {
        if (uint32_t comp = compose_pair(out[starter].cp, c.cp)) {
          out[starter].cp = comp;
          out[starter].b = std::min(out[starter].b, c.b);
          out[starter].e = std::max(out[starter].e, c.e);
          continue;
        }
      }
    }
    if (c.ccc == 0) {
      starter = long(out.size());
      last_ccc = 0;
    } else {
      last_ccc = c.ccc;
    }
    out.push_back(c);
  }
  NormalizedString r;
  r.text.reserve(s.text.size());
  r.align.reserve(s.text.size());
  std::string buf;
  for (const Cp& c : out) {
    buf.clear();
    utf8_append(buf, c.cp);
    r.append(buf, c.b, c.e);
  }
  s = std::move(r);
}

namespace {

class Nfc : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override { nfc(s); }
};

// Unicode lowercase for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (the scripts that
// occur in practice); other scripts are left unchanged.
uint32_t lower_cp(uint32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x138 && c != 0x149 && c != 0x178 &&
      c != 0x17F) {
    const bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (odd_upper ? (c % 2 == 1) : (c % 2 == 0)) return c + 1;
    return c;
  }
  if (c == 0x178) return 0xFF;
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}

class Lowercase : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override {
    NormalizedString r;
    std::string buf;
    for (size_t i = 0; i < s.text.size();) {
      const size_t start = i;
      const uint32_t cp = utf8_decode(s.text, i);
      buf.clear();
      utf8_append(buf, lower_cp(cp));
      r.append(buf, s.align[start].first, s.align[i - 1].second);
    }
    s = std::move(r);
  }
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string p) : prepend_(std::move(p)) {}
  void normalize(NormalizedString& s) const override {
    if (s.text.empty()) return;
    // The prepended bytes align to the first character (tokenizers' NormalizedString::prepend).
    const size_t n = utf8_len(static_cast<unsigned char>(s.text[0]));
    NormalizedString r;
    r.append(prepend_, s.align[0].first, s.align[std::min(n, s.text.size()) - 1].second);
    r.text += s.text;
    r.align.insert(r.align.end(), s.align.begin(), s.align.end());
    s = std::move(r);
  }

 private:
  std::string prepend_;
};

class Replace : public Normalizer {
 public:
  Replace(Pattern p, std::string content) : pattern_(std::move(p)), content_(std::move(content)) {}
  void normalize(NormalizedString& s) const override {
    const auto matches = pattern_.find_all(s.text);
    if (matches.empty()) return;
    NormalizedString r;
    size_t prev = 0;
    for (const auto& [b, e] : matches) {
      r.text.append(s.text, prev, b - prev);
      r.align.insert(r.align.end(), s.align.begin() + prev, s.align.begin() + b);
      r.append(content_, s.align[b].first, s.align[e - 1].second);
      prev = e;
    }
    r.text.append(s.text, prev, std::string::npos);
    r.align.insert(r.align.end(), s.align.begin() + prev, s.align.end());
    s = std::move(r);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(NormalizedString& s) const override {
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    size_t b = 0, e = s.text.size();
    if (left_)
      while (b < e && ws(s.text[b])) ++b;
    if (right_)
      while (e > b && ws(s.text[e - 1])) --e;
    if (b != 0 || e != s.text.size()) s = s.slice(b, e);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> n) : items_(std::move(n)) {}
  void normalize(NormalizedString& s) const override {
    for (const auto& n : items_) n->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> items_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j,
                                            const std::filesystem::path& file) {
  if (j.is_null()) return nullptr;
  const std::string type = j.value("type", "");
  if (type == "NFC") return std::make_unique<Nfc>();
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Prepend") return std::make_unique<Prepend>(j.at("prepend").get<std::string>());
  if (type == "Replace")
    return std::make_unique<Replace>(Pattern::from_json(j.at("pattern"), file),
                                     j.at("content").get<std::string>());
  if (type == "Strip")
    return std::make_unique<Strip>(j.value("strip_left", true), j.value("strip_right", true));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> items;
    for (const auto& n : j.at("normalizers"))
      if (auto p = make_normalizer(n, file)) items.push_back(std::move(p));
    return std::make_unique<SequenceNormalizer>(std::move(items));
  }
  throw Error(file.string() + ": normalizer type '" + type +
              "' is not supported (supported: NFC, Lowercase, Prepend, Replace, Strip, Sequence)");
}

}  // namespace mllm::tok
