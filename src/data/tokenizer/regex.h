// Patterns of tokenizer.json ({"String": "..."} literal or {"Regex": "..."}), matched with PCRE2
// in UTF + UCP mode (JIT-compiled) so \p{L}, (?i:...) and the \s+(?!\S) lookahead of the GPT-2 /
// Llama-3 / Qwen2 pre-tokenizer patterns behave as in Oniguruma, which HF tokenizers uses.
// Subjects must be valid UTF-8 (checked once per encode by the caller).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mllm::tok {

class Pattern {
 public:
  static Pattern literal(std::string s);
  static Pattern regex(const std::string& re, const std::string& where);
  // {"String": s} or {"Regex": r}; errors name `file`.
  static Pattern from_json(const nlohmann::json& j, const std::filesystem::path& file);

  // Non-overlapping, non-empty matches [begin, end), left to right.
  std::vector<std::pair<size_t, size_t>> find_all(const std::string& s) const;

 private:
  struct Code;
  std::string literal_;
  std::shared_ptr<Code> code_;  // null for literals
};

}  // namespace mllm::tok
