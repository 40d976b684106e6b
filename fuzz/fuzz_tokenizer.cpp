// Fuzz target: tokenizer.json loading and encoding (src/data/tokenizer/). The input is a
// tokenizer.json, then a NUL byte and the text to encode (without one, a fixed text with added
// tokens, Unicode and whitespace is encoded). A tokenizer that loads must give one byte span per
// id, inside the text, and ids it can turn back into tokens; decoding them must not fail.
#include <cstring>

#include "data/tokenizer/tokenizer.h"
#include "fuzz_common.h"

using namespace mllm;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init("tokenizer");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t json_size = nul ? static_cast<size_t>(nul - data) : size;
  const std::string text =
      nul ? std::string(reinterpret_cast<const char*>(nul + 1), size - json_size - 1)
          : std::string("<s>Hello  world! \xC3\xA9t\xC3\xA9 12345 <image>\n\t\xE2\x96\x81x</s>");
  const auto path = fuzz::write_scratch("tokenizer.json", data, json_size);
  fuzz::read([&] {
    const auto tok = load_tokenizer(path);
    const Encoding e = tok->encode_with_offsets(text);
    fuzz::check(e.ids.size() == e.offsets.size(), "one offset per id");
    for (size_t i = 0; i < e.ids.size(); ++i) {
      const auto [b, end] = e.offsets[i];
      fuzz::check(b <= end && end <= text.size(), "token " + std::to_string(i) + ": offsets [" +
                                                      std::to_string(b) + ", " +
                                                      std::to_string(end) + ") outside the text");
      fuzz::check(e.ids[i] >= 0 && e.ids[i] < tok->vocab_size(),
                  "token " + std::to_string(i) + ": id " + std::to_string(e.ids[i]) +
                      " outside the vocabulary");
      try {
        tok->id_to_token(e.ids[i]);
      } catch (const Error&) {
        fuzz::check(false, "encode gave id " + std::to_string(e.ids[i]) + ", which has no token");
      }
    }
    tok->decode(e.ids, true);
    tok->decode(e.ids, false);
  });
  return 0;
}
