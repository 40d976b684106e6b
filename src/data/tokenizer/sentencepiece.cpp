// SentencePiece `.model` files (LLaMA-1/2, Vicuna) through libsentencepiece, behind the Tokenizer
// interface. The model's control symbols (<s>, </s>) are not matched in text — as in
// sentencepiece itself, "<s>" written in text encodes as ordinary characters — and templates place
// BOS/EOS by id. Offsets come from sentencepiece's per-piece byte spans.
// Reference: google/sentencepiece src/sentencepiece_processor.h.
#include <sentencepiece_processor.h>

#include "core/error.h"
#include "data/tokenizer/tokenizer.h"

namespace mllm {

namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& path) {
    path_ = path;
    const auto status = sp_.Load(path.string());
    if (!status.ok())
      throw Error(path.string() + ": cannot load SentencePiece model: " + status.ToString());
    for (int i = 0; i < sp_.GetPieceSize(); ++i) vocab_[sp_.IdToPiece(i)] = i;
    finish_setup();
    if (sp_.bos_id() >= 0) bos_id_ = sp_.bos_id();
    if (sp_.eos_id() >= 0) eos_id_ = sp_.eos_id();
    if (sp_.pad_id() >= 0) pad_id_ = sp_.pad_id();
    // LLaMA's tokenizer adds BOS (HF's LlamaTokenizer add_bos_token defaults to true).
    if (bos_id_ >= 0) special_prefix_ = {bos_id_};
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    // sentencepiece drops control symbols; show them verbatim when not skipping.
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      std::string s;
      sp_.Decode(run, &s);
      out += s;
      run.clear();
    };
    for (int64_t id : ids) {
      if (id < 0 || id >= sp_.GetPieceSize())
        throw Error("[Tokenizer::decode] id " + std::to_string(id) +
                    " is not in the vocabulary of " + path_.string());
      if (sp_.IsControl(int(id))) {
        flush();
        if (!skip_special) out += sp_.IdToPiece(int(id));
      } else {
        run.push_back(int(id));
      }
    }
    flush();
    return out;
  }

 protected:
  Encoding encode_segment(const std::string& text, bool) const override {
    Encoding out;
    const auto spt = sp_.EncodeAsImmutableProto(text);
    for (const auto& p : spt.pieces()) {
      out.ids.push_back(p.id());
      out.offsets.emplace_back(p.begin(), p.end());
    }
    return out;
  }

  std::string join_tokens(const std::vector<std::string>&) const override { return {}; }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::filesystem::path& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace mllm
