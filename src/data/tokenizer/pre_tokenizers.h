// The pre-tokenizer stage of the HF tokenizers pipeline: splits the normalized segment into pieces
// the model encodes independently (and maps bytes to printable characters for byte-level BPE).
// Supported: ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence.
// Reference: tokenizers/src/pre_tokenizers/*.rs, tokenizers/src/tokenizer/pre_tokenizer.rs.
#pragma once

#include <array>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "data/tokenizer/normalizers.h"

namespace mllm::tok {

using Pieces = std::vector<NormalizedString>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece further. `at_input_start`: the segment begins at byte 0 of the input
  // (Metaspace's prepend_scheme "first" only prepends there).
  virtual void split(Pieces& pieces, bool at_input_start) const = 0;
};

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j,
                                                 const std::filesystem::path& file);

// GPT-2's byte <-> printable-character map (tokenizers/src/pre_tokenizers/byte_level.rs
// bytes_char): UTF-8 of the character standing for each byte.
const std::array<std::string, 256>& byte_to_unicode();

}  // namespace mllm::tok
