// PCRE2-backed Pattern (see regex.h). Reference: tokenizers/src/utils/onig.rs and pattern.rs
// (find_matches over a regex or a literal string).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tokenizer/regex.h"

#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mllm::tok {

struct Pattern::Code {
  pcre2_code* code = nullptr;
  ~Code() {
    if (code) pcre2_code_free(code);
  }
};

Pattern Pattern::literal(std::string s) {
  Pattern p;
  p.literal_ = std::move(s);
  return p;
}

Pattern Pattern::regex(const std::string& re, const std::string& where) {
  Pattern p;
  p.code_ = std::make_shared<Code>();
  int err = 0;
  PCRE2_SIZE off = 0;
  p.code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(re.data()), re.size(),
                                PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!p.code_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(where + ": cannot compile regex '" + re + "' at offset " + std::to_string(off) +
                ": " + reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(p.code_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  return p;
}

Pattern Pattern::from_json(const nlohmann::json& j, const std::filesystem::path& file) {
  if (j.is_object() && j.contains("String")) return literal(j["String"].get<std::string>());
  if (j.is_object() && j.contains("Regex"))
    return regex(j["Regex"].get<std::string>(), file.string());
  throw Error(file.string() + ": pattern must be {\"String\": ...} or {\"Regex\": ...}, got " +
              j.dump());
}

std::vector<std::pair<size_t, size_t>> Pattern::find_all(const std::string& s) const {
  std::vector<std::pair<size_t, size_t>> out;
  if (!code_) {
    if (literal_.empty()) return out;
    for (size_t pos = s.find(literal_); pos != std::string::npos;
         pos = s.find(literal_, pos + literal_.size()))
      out.emplace_back(pos, pos + literal_.size());
    return out;
  }
  // One match-data block per thread, grown as needed.
  thread_local pcre2_match_data* md = pcre2_match_data_create(16, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    const int rc =
        pcre2_match(code_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw Error(std::string("[Pattern::find_all] pcre2_match failed: ") +
                  reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(b, e);
      pos = e;
    } else {  // empty match: step over one character
      pos = b + 1;
      while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  return out;
}

}  // namespace mllm::tok
