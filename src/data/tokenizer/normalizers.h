// The normalizer stage of the HF tokenizers pipeline, and the aligned string every later stage
// works on. A NormalizedString keeps, for each byte of its (normalized, pre-tokenized, byte-level
// mapped...) text, the byte span of the original segment it came from, so a token's offsets are
// found by looking up its first and last byte. Supported: NFC, Lowercase, Prepend, Replace, Strip,
// Sequence. Reference: tokenizers/src/tokenizer/normalizer.rs, tokenizers/src/normalizers/*.rs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mllm::tok {

struct NormalizedString {
  std::string text;
  std::vector<std::pair<uint32_t, uint32_t>> align;  // per byte of text: original [begin, end)

  static NormalizedString from_original(const std::string& s);
  // Appends bytes that all come from original [b, e).
  void append(const char* p, size_t n, uint32_t b, uint32_t e) {
    text.append(p, n);
    align.insert(align.end(), n, {b, e});
  }
  void append(const std::string& s, uint32_t b, uint32_t e) { append(s.data(), s.size(), b, e); }
  NormalizedString slice(size_t b, size_t e) const;
  // Original span of text bytes [b, e).
  std::pair<size_t, size_t> original(size_t b, size_t e) const {
    return {align[b].first, align[e - 1].second};
  }
};

// UTF-8 helpers shared by the tokenizer stages.
size_t utf8_len(unsigned char lead);                      // 1..4 (1 for stray bytes)
uint32_t utf8_decode(const std::string& s, size_t& pos);  // advances pos
void utf8_append(std::string& out, uint32_t cp);
bool utf8_valid(const std::string& s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(const std::string& bytes);

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(NormalizedString& s) const = 0;
};

// Builds the normalizer described by `j` (null -> nullptr); throws Error naming `file` and the
// type for unsupported ones.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j,
                                            const std::filesystem::path& file);

// Unicode canonical composition (NFC) of the aligned string. Tables come from Python's unicodedata
// (see scripts/gen_unicode_nfc.py), so code points newer than its Unicode version are left alone.
void nfc(NormalizedString& s);

}  // namespace mllm::tok
