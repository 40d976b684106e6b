// What a model needs to know of its tokenizer: how many ids there are and which one is the image
// placeholder — integers, so the model layer does not depend on the tokenizer (data layer).
#pragma once

#include <cstdint>
#include <string>

namespace mllm {

struct Vocabulary {
  int64_t size = 0;       // one past the largest id
  int64_t image_id = -1;  // the <image> placeholder's id (-1: the tokenizer has none)
  std::string source;     // the tokenizer file, for error messages
};

}  // namespace mllm
