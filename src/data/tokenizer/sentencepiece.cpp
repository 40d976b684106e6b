// SentencePiece `.model` files (LLaMA-1/2, Vicuna) through libsentencepiece, behind the Tokenizer
// interface. The model's control symbols (<s>, </s>) are not matched in text — as in
// sentencepiece itself, "<s>" written in text encodes as ordinary characters — and templates place
// BOS/EOS by id. Offsets come from sentencepiece's per-piece byte spans.
// libsentencepiece is reached through libmllm_spm.so (spm_shim.cpp), opened in its own symbol
// scope: see that file for why it cannot be linked into the process directly.
// Reference: google/sentencepiece src/sentencepiece_processor.h.
#include <dlfcn.h>
#include <unistd.h>

#include <climits>

#include "core/error.h"
#include "data/tokenizer/tokenizer.h"

#if defined(__SANITIZE_ADDRESS__)
#define MLLM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MLLM_ASAN 1
#endif
#endif
#ifndef MLLM_ASAN
#define MLLM_ASAN 0
#endif

namespace mllm {

namespace {

struct SpmApi {
  void* (*load)(const char*, char*, int);
  void (*free)(void*);
  int (*piece_size)(void*);
  int (*piece)(void*, int, char*, int);
  int (*is_control)(void*, int);
  void (*special_ids)(void*, int*, int*, int*, int*);
  int (*encode)(void*, const char*, int, int*, int*, int*, int);
  int (*decode)(void*, const int*, int, char*, int);
};

// The shim next to the executable (or at its build-tree path), opened once.
const SpmApi& spm_api() {
  static const SpmApi api = [] {
    std::vector<std::string> candidates;
    char exe[PATH_MAX];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0)
      candidates.push_back(
          (std::filesystem::path(std::string(exe, static_cast<size_t>(n))).parent_path() /
           "libmllm_spm.so")
              .string());
#ifdef MLLM_SPM_SHIM
    candidates.push_back(MLLM_SPM_SHIM);
#endif
#if MLLM_ASAN
    // ASan's runtime refuses RTLD_DEEPBIND (google/sanitizers#611), and without it the two
    // protobuf copies collide (spm_shim.cpp): a sanitizer build cannot read .model files.
    throw Error(
        "[SentencePiece] .model tokenizers cannot load in an AddressSanitizer build (the shim "
        "needs dlopen(RTLD_DEEPBIND), which the sanitizer runtime refuses)");
#endif
    void* h = nullptr;
    std::string why;
    for (const auto& c : candidates) {
      h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h) break;
      why += std::string(" ") + ::dlerror();
    }
    if (!h) throw Error("[SentencePiece] cannot open libmllm_spm.so:" + why);
    auto sym = [&](const char* name) {
      void* f = ::dlsym(h, name);
      if (!f) throw Error(std::string("[SentencePiece] libmllm_spm.so lacks ") + name);
      return f;
    };
    SpmApi a;
    a.load = reinterpret_cast<decltype(a.load)>(sym("mllm_spm_load"));
    a.free = reinterpret_cast<decltype(a.free)>(sym("mllm_spm_free"));
    a.piece_size = reinterpret_cast<decltype(a.piece_size)>(sym("mllm_spm_piece_size"));
    a.piece = reinterpret_cast<decltype(a.piece)>(sym("mllm_spm_piece"));
    a.is_control = reinterpret_cast<decltype(a.is_control)>(sym("mllm_spm_is_control"));
    a.special_ids = reinterpret_cast<decltype(a.special_ids)>(sym("mllm_spm_special_ids"));
    a.encode = reinterpret_cast<decltype(a.encode)>(sym("mllm_spm_encode"));
    a.decode = reinterpret_cast<decltype(a.decode)>(sym("mllm_spm_decode"));
    return a;
  }();
  return api;
}

std::string piece_of(void* h, int id) {
  const auto& api = spm_api();
  std::string buf(64, '\0');
  int n = api.piece(h, id, buf.data(), static_cast<int>(buf.size()));
  if (n >= static_cast<int>(buf.size())) {
    buf.resize(static_cast<size_t>(n) + 1);
    n = api.piece(h, id, buf.data(), static_cast<int>(buf.size()));
  }
  buf.resize(static_cast<size_t>(n));
  return buf;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& path) : api_(spm_api()) {
    path_ = path;
    char err[512];
    h_ = api_.load(path.c_str(), err, sizeof err);
    if (!h_) throw Error(path.string() + ": cannot load SentencePiece model: " + err);
    size_ = api_.piece_size(h_);
    for (int i = 0; i < size_; ++i) vocab_[piece_of(h_, i)] = i;
    finish_setup();
    int bos, eos, pad, unk;
    api_.special_ids(h_, &bos, &eos, &pad, &unk);
    if (bos >= 0) bos_id_ = bos;
    if (eos >= 0) eos_id_ = eos;
    if (pad >= 0) pad_id_ = pad;
    // LLaMA's tokenizer adds BOS (HF's LlamaTokenizer add_bos_token defaults to true).
    if (bos_id_ >= 0) special_prefix_ = {bos_id_};
  }
  ~SentencePieceTokenizer() override { api_.free(h_); }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    // sentencepiece drops control symbols; show them verbatim when not skipping.
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      std::string buf(run.size() * 16 + 64, '\0');
      int n = api_.decode(h_, run.data(), static_cast<int>(run.size()), buf.data(),
                          static_cast<int>(buf.size()));
      if (n >= static_cast<int>(buf.size())) {
        buf.resize(static_cast<size_t>(n) + 1);
        n = api_.decode(h_, run.data(), static_cast<int>(run.size()), buf.data(),
                        static_cast<int>(buf.size()));
      }
      out.append(buf.data(), static_cast<size_t>(n));
      run.clear();
    };
    for (int64_t id : ids) {
      if (id < 0 || id >= size_)
        throw Error("[Tokenizer::decode] id " + std::to_string(id) +
                    " is not in the vocabulary of " + path_.string());
      if (api_.is_control(h_, static_cast<int>(id))) {
        flush();
        if (!skip_special) out += piece_of(h_, static_cast<int>(id));
      } else {
        run.push_back(static_cast<int>(id));
      }
    }
    flush();
    return out;
  }

 protected:
  Encoding encode_segment(const std::string& text, bool) const override {
    Encoding out;
    std::vector<int> ids(text.size() + 16), b(ids.size()), e(ids.size());
    int n = api_.encode(h_, text.data(), static_cast<int>(text.size()), ids.data(), b.data(),
                        e.data(), static_cast<int>(ids.size()));
    if (n > static_cast<int>(ids.size())) {
      ids.resize(static_cast<size_t>(n)), b.resize(ids.size()), e.resize(ids.size());
      n = api_.encode(h_, text.data(), static_cast<int>(text.size()), ids.data(), b.data(),
                      e.data(), n);
    }
    for (int i = 0; i < n; ++i) {
      out.ids.push_back(ids[static_cast<size_t>(i)]);
      out.offsets.emplace_back(static_cast<size_t>(b[static_cast<size_t>(i)]),
                               static_cast<size_t>(e[static_cast<size_t>(i)]));
    }
    return out;
  }

  std::string join_tokens(const std::vector<std::string>&) const override { return {}; }

 private:
  const SpmApi& api_;
  void* h_ = nullptr;
  int size_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::filesystem::path& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace mllm
