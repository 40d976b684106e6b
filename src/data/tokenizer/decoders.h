// The decoder stage of the HF tokenizers pipeline (tokens -> text) and the post-processor, parsed
// only to learn which special tokens a template puts before the text (encode() itself adds none).
// Decoders: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence.
// Post-processors: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence.
// Reference: tokenizers/src/decoders/*.rs, tokenizers/src/processors/template.rs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mllm::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::filesystem::path& file);

// Ids the post-processor puts before a single sequence (e.g. [<s>] for Mistral's template).
// `token_id` resolves token strings for Bert/Roberta processors.
std::vector<int64_t> post_processor_prefix(
    const nlohmann::json& j, const std::filesystem::path& file,
    const std::function<std::optional<int64_t>(const std::string&)>& token_id);

}  // namespace mllm::tok
