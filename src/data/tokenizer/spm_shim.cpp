// A C shim over libsentencepiece, built as its own shared module (libmllm_spm.so) and opened with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND) by sentencepiece.cpp. Debian's libsentencepiece exports its
// own bundled copy of protobuf-lite; linked into the same process as LibTorch's libprotobuf, the
// two copies resolve into each other at start-up and the process crashes before main. Kept in a
// local symbol scope, libsentencepiece only ever sees its own copy.
#include <sentencepiece_processor.h>

#include <cstring>
#include <string>

namespace {
int copy_out(const std::string& s, char* buf, int cap) {
  if (cap > 0) {
    const size_t n = std::min(s.size(), static_cast<size_t>(cap - 1));
    std::memcpy(buf, s.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int>(s.size());
}
}  // namespace

extern "C" {

void* mllm_spm_load(const char* path, char* err, int errlen) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  const auto status = sp->Load(path);
  if (!status.ok()) {
    copy_out(status.ToString(), err, errlen);
    delete sp;
    return nullptr;
  }
  return sp;
}

void mllm_spm_free(void* h) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(h);
}

int mllm_spm_piece_size(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize();
}

int mllm_spm_piece(void* h, int id, char* buf, int cap) {
  return copy_out(static_cast<sentencepiece::SentencePieceProcessor*>(h)->IdToPiece(id), buf, cap);
}

int mllm_spm_is_control(void* h, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->IsControl(id) ? 1 : 0;
}

void mllm_spm_special_ids(void* h, int* bos, int* eos, int* pad, int* unk) {
  auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  *bos = sp->bos_id(), *eos = sp->eos_id(), *pad = sp->pad_id(), *unk = sp->unk_id();
}

// Writes up to `cap` pieces (id, byte begin, byte end); returns how many there are in all.
int mllm_spm_encode(void* h, const char* text, int len, int* ids, int* begins, int* ends, int cap) {
  auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  const auto spt = sp->EncodeAsImmutableProto(std::string(text, static_cast<size_t>(len)));
  int n = 0;
  for (const auto& p : spt.pieces()) {
    if (n < cap)
      ids[n] = static_cast<int>(p.id()), begins[n] = static_cast<int>(p.begin()),
      ends[n] = static_cast<int>(p.end());
    ++n;
  }
  return n;
}

int mllm_spm_decode(void* h, const int* ids, int n, char* buf, int cap) {
  std::string out;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(std::vector<int>(ids, ids + n),
                                                                 &out);
  return copy_out(out, buf, cap);
}

}  // extern "C"
