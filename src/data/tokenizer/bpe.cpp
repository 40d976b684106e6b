// The BPE model of HF tokenizers with the full tokenizer.json pipeline around it: normalizer ->
// pre-tokenizer -> BPE per piece (merges by rank, with a per-word cache) -> decoder. Covers
// byte-level BPE (GPT-2 / Llama-3 / Qwen) and SentencePiece-style BPE with byte fallback (Mistral,
// LLaMA converted to tokenizer.json). Dropout is ignored (inference behaviour). Offsets are byte
// spans of the input; where a normalizer merges or inserts characters (NFC, Prepend, Replace) a
// token's span covers the original characters it came from.
// Reference: tokenizers/src/models/bpe/{model.rs, word.rs}, tokenizers/src/tokenizer/mod.rs.
#include <mutex>
#include <queue>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/tokenizer/decoders.h"
#include "data/tokenizer/normalizers.h"
#include "data/tokenizer/pre_tokenizers.h"
#include "data/tokenizer/tokenizer.h"

namespace mllm {

namespace {

struct Piece {
  int32_t id;
  uint32_t b, e;  // byte span in the word
};

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(const std::filesystem::path& path, const nlohmann::json& j) {
    path_ = path;
    const std::string file = path.string();
    const auto& model = j["model"];
    if (!model.contains("vocab") || !model["vocab"].is_object())
      throw Error(file + ": model.vocab must be an object of token -> id");
    model_vocab_.reserve(model["vocab"].size());
    for (const auto& [tok, id] : model["vocab"].items()) {
      // Held as int32 below (pieces, merges), and the largest id sizes the model's embedding.
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxTokenId)
        throw Error(file + ": model.vocab[\"" + tok +
                    "\"]: expected a non-negative integer id below 2^24");
      model_vocab_[tok] = id.get<int32_t>();
      vocab_[tok] = id.get<int64_t>();
    }
    auto opt_string = [&](const char* key) {
      return model.contains(key) && model[key].is_string() ? model[key].get<std::string>() : "";
    };
    prefix_ = opt_string("continuing_subword_prefix");
    suffix_ = opt_string("end_of_word_suffix");
    const std::string unk = opt_string("unk_token");
    if (!unk.empty()) {
      auto it = model_vocab_.find(unk);
      if (it == model_vocab_.end())
        throw Error(file + ": model.unk_token '" + unk + "' is not in model.vocab");
      unk_id_ = it->second;
    }
    fuse_unk_ = model.value("fuse_unk", false);
    byte_fallback_ = model.value("byte_fallback", false);
    ignore_merges_ = model.value("ignore_merges", false);
    if (byte_fallback_) {
      static const char* hex = "0123456789ABCDEF";
      for (int b = 0; b < 256; ++b) {
        const std::string t = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
        auto it = model_vocab_.find(t);
        byte_ids_[b] = it == model_vocab_.end() ? -1 : it->second;
      }
    }
    // Merges: "a b" strings or ["a", "b"] arrays; rank = position.
    if (model.contains("merges")) {
      const auto& merges = model["merges"];
      merges_.reserve(merges.size());
      int32_t rank = 0;
      for (const auto& m : merges) {
        std::string a, b;
        if (m.is_string()) {
          const std::string s = m.get<std::string>();
          const size_t sp = s.find(' ', 1);
          if (sp == std::string::npos)
            throw Error(file + ": model.merges[" + std::to_string(rank) + "]: '" + s +
                        "' is not two tokens separated by a space");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2) {
          a = m[0].get<std::string>();
          b = m[1].get<std::string>();
        } else {
          throw Error(file + ": model.merges[" + std::to_string(rank) +
                      "]: expected \"a b\" or [\"a\", \"b\"]");
        }
        auto ia = model_vocab_.find(a), ib = model_vocab_.find(b);
        const std::string merged = a + b.substr(std::min(prefix_.size(), b.size()) *
                                                (b.compare(0, prefix_.size(), prefix_) == 0));
        auto im = model_vocab_.find(merged);
        if (ia == model_vocab_.end() || ib == model_vocab_.end() || im == model_vocab_.end())
          throw Error(file + ": model.merges[" + std::to_string(rank) + "]: '" + a + "' + '" + b +
                      "' uses a token missing from model.vocab");
        merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(rank, im->second));
        ++rank;
      }
    }
    read_added_tokens(j);
    normalizer_ = tok::make_normalizer(j.value("normalizer", nlohmann::json()), path);
    pre_tokenizer_ = tok::make_pre_tokenizer(j.value("pre_tokenizer", nlohmann::json()), path);
    decoder_ = tok::make_decoder(j.value("decoder", nlohmann::json()), path);
    finish_setup();
    special_prefix_ =
        tok::post_processor_prefix(j.value("post_processor", nlohmann::json()), path,
                                   [this](const std::string& t) { return token_to_id(t); });
  }

 protected:
  Encoding encode_segment(const std::string& text, bool at_input_start) const override {
    if (!tok::utf8_valid(text))
      throw Error(path_.string() + ": cannot encode text that is not valid UTF-8");
    tok::NormalizedString norm = tok::NormalizedString::from_original(text);
    if (normalizer_) normalizer_->normalize(norm);
    // Second pass of the added tokens: the normalized ones, in the normalized text.
    Encoding out;
    tok::Pieces pieces;
    const auto splits = split_added(norm.text, true);
    for (const Split& sp : splits) {
      if (sp.id < 0) {
        pieces.push_back(splits.size() == 1 ? std::move(norm) : norm.slice(sp.b, sp.e));
        if (pre_tokenizer_) pre_tokenizer_->split(pieces, at_input_start && sp.b == 0);
        encode_pieces(pieces, out);
        pieces.clear();
      } else {
        out.ids.push_back(sp.id);
        out.offsets.push_back(norm.original(sp.b, sp.e));
      }
    }
    return out;
  }

  std::string normalize_added(const std::string& content) const override {
    if (!normalizer_) return content;
    tok::NormalizedString s = tok::NormalizedString::from_original(content);
    normalizer_->normalize(s);
    return s.text;
  }

  void encode_pieces(const tok::Pieces& pieces, Encoding& out) const {
    std::vector<Piece> word;
    for (const auto& p : pieces) {
      if (p.text.empty()) continue;
      word.clear();
      tokenize_word(p.text, word);
      for (const Piece& w : word) {
        out.ids.push_back(w.id);
        out.offsets.push_back(p.original(w.b, w.e));
      }
    }
  }

  std::string join_tokens(const std::vector<std::string>& tokens) const override {
    std::vector<std::string> parts = decoder_ ? decoder_->decode_chain(tokens) : tokens;
    std::string out;
    for (const auto& p : parts) out += p;
    return out;
  }

 private:
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  }

  void tokenize_word(const std::string& w, std::vector<Piece>& out) const {
    if (ignore_merges_) {
      auto it = model_vocab_.find(w);
      if (it != model_vocab_.end()) {
        out.push_back({it->second, 0, uint32_t(w.size())});
        return;
      }
    }
    const bool cacheable = w.size() < 256;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(w);
      if (it != cache_.end()) {
        out = it->second;
        return;
      }
    }
    merge_word(w, out);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() >= kCacheCapacity) cache_.clear();
      cache_.emplace(w, out);
    }
  }

  // tokenizers/src/models/bpe/model.rs merge_word + word.rs merge_all: characters (with byte
  // fallback / unk), then the lowest-ranked adjacent pair is merged until none applies.
  void merge_word(const std::string& w, std::vector<Piece>& out) const {
    struct Sym {
      int32_t id;
      uint32_t b, e;
      int32_t prev, next;
    };
    std::vector<Sym> syms;
    syms.reserve(w.size());
    bool pending_unk = false;
    std::string key;
    for (size_t i = 0; i < w.size();) {
      const size_t n = std::min(tok::utf8_len(static_cast<unsigned char>(w[i])), w.size() - i);
      const bool first = i == 0, last = i + n == w.size();
      key.clear();
      if (!first) key += prefix_;
      key.append(w, i, n);
      if (last) key += suffix_;
      auto it = model_vocab_.find(key);
      if (it != model_vocab_.end()) {
        syms.push_back({it->second, uint32_t(i), uint32_t(i + n), 0, 0});
        pending_unk = false;
      } else {
        bool done = false;
        if (byte_fallback_) {
          bool all = true;
          for (size_t k = 0; k < n; ++k)
            all = all && byte_ids_[static_cast<unsigned char>(w[i + k])] >= 0;
          if (all) {
            for (size_t k = 0; k < n; ++k)
              syms.push_back({byte_ids_[static_cast<unsigned char>(w[i + k])], uint32_t(i + k),
                              uint32_t(i + k + 1), 0, 0});
            pending_unk = false;
            done = true;
          }
        }
        if (!done && unk_id_ >= 0) {
          if (fuse_unk_ && pending_unk)
            syms.back().e = uint32_t(i + n);
          else
            syms.push_back({unk_id_, uint32_t(i), uint32_t(i + n), 0, 0});
          pending_unk = true;
        }
        // No unk token: the character is dropped, as in tokenizers.
      }
      i += n;
    }
    const int32_t count = int32_t(syms.size());
    for (int32_t k = 0; k < count; ++k) {
      syms[k].prev = k - 1;
      syms[k].next = k + 1 < count ? k + 1 : -1;
    }
    struct Cand {
      int32_t rank, pos, new_id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
    auto push_pair = [&](int32_t pos) {
      if (pos < 0 || syms[pos].next < 0) return;
      const int32_t nx = syms[pos].next;
      auto it = merges_.find(pair_key(syms[pos].id, syms[nx].id));
      if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
    };
    for (int32_t k = 0; k + 1 < count; ++k) push_pair(k);
    while (!queue.empty()) {
      const Cand c = queue.top();
      queue.pop();
      Sym& s = syms[c.pos];
      if (s.e == s.b || s.next < 0) continue;  // merged away, or nothing to the right
      Sym& r = syms[s.next];
      auto it = merges_.find(pair_key(s.id, r.id));
      if (it == merges_.end() || it->second.second != c.new_id) continue;  // stale
      s.id = c.new_id;
      s.e = r.e;
      r.b = r.e;  // mark removed
      s.next = r.next;
      if (s.next >= 0) syms[s.next].prev = c.pos;
      if (s.prev >= 0) push_pair(s.prev);
      push_pair(c.pos);
    }
    for (int32_t k = count ? 0 : -1; k >= 0; k = syms[k].next)
      out.push_back({syms[k].id, syms[k].b, syms[k].e});
  }

  static constexpr size_t kCacheCapacity = 100000;
  std::unordered_map<std::string, int32_t> model_vocab_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a,b) -> (rank, merged)
  std::string prefix_, suffix_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t byte_ids_[256] = {};
  std::unique_ptr<tok::Normalizer> normalizer_;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tok::Decoder> decoder_;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<Piece>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const std::filesystem::path& path,
                                              const nlohmann::json& j) {
  return std::make_unique<BpeTokenizer>(path, j);
}

}  // namespace mllm
