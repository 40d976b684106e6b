// Tokenizers read from Hugging Face `tokenizer.json` files. The base class handles what every model
// type shares — added tokens (those with normalized=false, such as <s> and <image>, are matched
// verbatim in the input before anything else; those with normalized=true are matched by the
// model type in each segment's normalized text) and id <-> token lookup — and each model type
// (WordLevel, BPE in bpe.cpp, SentencePiece .model files in sentencepiece.cpp) implements
// `encode_segment` for the text between added tokens.
// Reference: huggingface/tokenizers, tokenizers/src/tokenizer/added_vocabulary.rs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/vocabulary.h"

namespace mllm {

// Ids read from a tokenizer file are below this (16.7M; the largest real vocabularies are ~256k):
// an id of 10^14 would otherwise become the size of the model's embedding.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

// Ids with the byte span [begin, end) of the input text each token came from, so templates can
// supervise exactly the tokens of the assistant's spans after tokenizing the whole prompt at once
// (as HF's return_offsets_mapping / assistant masks do).
struct Encoding {
  std::vector<int64_t> ids;
  std::vector<std::pair<size_t, size_t>> offsets;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text -> ids. No BOS/EOS are added: templates place them explicitly.
  std::vector<int64_t> encode(const std::string& text) const {
    return encode_with_offsets(text).ids;
  }
  Encoding encode_with_offsets(const std::string& text) const;
  // Ids -> text; special added tokens are dropped when skip_special.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special = true) const;

  // Special ids the tokenizer's post-processor (template) puts before a text, e.g. [<s>] for
  // LLaMA/Mistral; encode() never adds them.
  const std::vector<int64_t>& special_prefix() const { return special_prefix_; }
  bool adds_bos() const {
    return !special_prefix_.empty() && bos_id_ >= 0 && special_prefix_.front() == bos_id_;
  }

  int64_t vocab_size() const;  // one past the largest id
  // The texts of the added tokens marked special ("</s>", "<|im_end|>", ...).
  std::vector<std::string> special_token_texts() const {
    std::vector<std::string> out;
    for (const auto& a : added_)
      if (a.special) out.push_back(a.content);
    return out;
  }
  std::optional<int64_t> token_to_id(const std::string& token) const;
  std::string id_to_token(int64_t id) const;

  // Ids of well-known tokens, -1 when the vocabulary has none.
  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t image_id() const { return image_id_; }
  const std::filesystem::path& path() const { return path_; }
  // A chat template file used in place of the folder's (data.chat_template; data/chat_template.h's
  // hf_template_of reads it); empty for the folder's own.
  void set_chat_template_file(std::filesystem::path file) { chat_template_file_ = std::move(file); }
  const std::filesystem::path& chat_template_file() const { return chat_template_file_; }
  // The size and image id, as a model is built from them (models/factory.h).
  Vocabulary vocabulary() const { return {vocab_size(), image_id(), path_.string()}; }

 protected:
  struct AddedToken {
    std::string content;
    int64_t id;
    bool special;
    bool lstrip = false, rstrip = false;  // the match swallows whitespace on that side
    bool single_word = false;             // only matches with no word character beside it
    bool normalized = false;  // matched in the normalized text (against its normalized content)
  };
  // A piece of a string: an added token's id, or -1 for text to encode, over bytes [b, e).
  struct Split {
    size_t b, e;
    int64_t id;
  };
  // HF's AddedVocabulary::find_matches: leftmost-longest non-overlapping matches of the added
  // tokens whose `normalized` flag is `normalized`, honouring single_word / lstrip / rstrip. The
  // splits cover `s`.
  std::vector<Split> split_added(const std::string& s, bool normalized) const;
  // A normalized added token's content as the normalizer turns it (the identity by default).
  virtual std::string normalize_added(const std::string& content) const { return content; }
  // Encodes text that contains no added token; offsets are relative to `text`. `at_input_start`:
  // the segment begins at byte 0 of the input.
  virtual Encoding encode_segment(const std::string& text, bool at_input_start) const = 0;
  // Joins decoded pieces (model-specific: WordLevel joins with spaces).
  virtual std::string join_tokens(const std::vector<std::string>& tokens) const = 0;

  // Reads tokenizer.json's "added_tokens" into added_ (errors name path_).
  void read_added_tokens(const nlohmann::json& j);
  // Called by subclasses once vocab_ and added_ are filled: fills the reverse map and special ids.
  void finish_setup();

  std::filesystem::path chat_template_file_;
  std::filesystem::path path_;
  std::map<std::string, int64_t> vocab_;  // model vocabulary plus added tokens
  std::vector<AddedToken> added_;
  std::map<int64_t, std::string> id_to_token_;
  int64_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, image_id_ = -1;
  std::vector<int64_t> special_prefix_;

 private:
  // Per first byte, longest first; [0] the raw-matched tokens, [1] the normalized ones.
  std::vector<std::vector<const AddedToken*>> added_by_first_byte_[2];
  std::vector<std::string> normalized_content_;  // per added_ entry
  bool any_added_[2] = {false, false};
};

// Loads a tokenizer.json; throws Error naming the file and the offending field.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

// tokenizer_config.json as transformers reads it (tokenizer class, special tokens, max length)
// plus "mllm_template": the conversation template the model was trained with (data.template), so
// that `mllm generate` and `mllm eval` prompt it the same way, and "mllm_system" when the run set
// one (data.system). Written in final/ and exports.
nlohmann::json tokenizer_config_json(const Tokenizer& tokenizer, int64_t model_max_length,
                                     const std::string& template_name,
                                     const std::optional<std::string>& system = std::nullopt);

}  // namespace mllm
