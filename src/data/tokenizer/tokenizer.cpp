#include "data/tokenizer/tokenizer.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace mllm {

std::unique_ptr<Tokenizer> make_wordlevel_tokenizer(const std::filesystem::path& path,
                                                    const nlohmann::json& j);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const std::filesystem::path& path,
                                              const nlohmann::json& j);
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::filesystem::path& path);

namespace {
bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
}  // namespace

Encoding Tokenizer::encode_with_offsets(const std::string& text) const {
  // Split on added tokens, leftmost match first and the longest at a position; lstrip / rstrip
  // tokens take the whitespace beside them (tokenizers/src/tokenizer/added_vocabulary.rs).
  Encoding out;
  auto add_segment = [&](size_t begin, size_t end) {
    if (end <= begin) return;
    Encoding seg = encode_segment(text.substr(begin, end - begin), begin == 0);
    out.ids.insert(out.ids.end(), seg.ids.begin(), seg.ids.end());
    for (const auto& [b, e] : seg.offsets) out.offsets.emplace_back(begin + b, begin + e);
  };
  size_t start = 0, pos = 0;
  while (pos < text.size()) {
    const AddedToken* match = nullptr;
    if (!added_by_first_byte_.empty())
      for (const AddedToken* a : added_by_first_byte_[static_cast<unsigned char>(text[pos])])
        if (text.compare(pos, a->content.size(), a->content) == 0) {
          match = a;
          break;
        }
    if (!match) {
      ++pos;
      continue;
    }
    size_t b = pos, e = pos + match->content.size();
    if (match->lstrip)
      while (b > start && is_space(text[b - 1])) --b;
    if (match->rstrip)
      while (e < text.size() && is_space(text[e])) ++e;
    add_segment(start, b);
    out.ids.push_back(match->id);
    out.offsets.emplace_back(b, e);
    pos = e;
    start = pos;
  }
  add_segment(start, text.size());
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  for (int64_t id : ids) {
    if (skip_special && std::any_of(added_.begin(), added_.end(),
                                    [&](const AddedToken& a) { return a.id == id && a.special; }))
      continue;
    tokens.push_back(id_to_token(id));
  }
  return join_tokens(tokens);
}

int64_t Tokenizer::vocab_size() const {
  return id_to_token_.empty() ? 0 : id_to_token_.rbegin()->first + 1;
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int64_t id) const {
  auto it = id_to_token_.find(id);
  if (it == id_to_token_.end())
    throw Error("[Tokenizer::id_to_token] id " + std::to_string(id) +
                " is not in the vocabulary of " + path_.string());
  return it->second;
}

void Tokenizer::finish_setup() {
  for (const auto& a : added_) vocab_[a.content] = a.id;
  added_by_first_byte_.assign(256, {});
  for (const auto& a : added_)
    if (!a.content.empty())
      added_by_first_byte_[static_cast<unsigned char>(a.content[0])].push_back(&a);
  for (auto& v : added_by_first_byte_)
    std::stable_sort(v.begin(), v.end(), [](const AddedToken* x, const AddedToken* y) {
      return x->content.size() > y->content.size();
    });
  for (const auto& kv : vocab_) id_to_token_[kv.second] = kv.first;
  auto find_any = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names)
      if (auto id = token_to_id(n)) return *id;
    return -1;
  };
  bos_id_ = find_any({"<s>", "<|begin_of_text|>", "<bos>"});
  eos_id_ = find_any({"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"});
  pad_id_ = find_any({"<pad>", "<|pad|>", "<unk>"});
  image_id_ = find_any({"<image>"});
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path) {
  if (path.extension() == ".model") return make_sentencepiece_tokenizer(path);
  const std::string text = read_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw Error(path.string() + ": not a tokenizer.json (no \"model\" object)");
  const std::string type = j["model"].value("type", "");
  if (type == "WordLevel") return make_wordlevel_tokenizer(path, j);
  if (type == "BPE") return make_bpe_tokenizer(path, j);
  throw Error(path.string() + ": model.type '" + type +
              "' is not supported (supported: WordLevel, BPE; SentencePiece .model files)");
}

}  // namespace mllm
