// Autoregressive generation from a MultimodalModel with a KV cache: the prompt (images spliced in)
// runs once, then each new token costs one position. Greedy, or sampling with temperature, top-k
// and top-p from a seeded generator; stops at max_new_tokens, a stop id, or a stop string found in
// the decoded continuation. Several prompts generate together, left-padded (positions count real
// tokens only, as transformers' generate does), each row stopping on its own.
// Logits processing follows transformers' TemperatureLogitsWarper, TopKLogitsWarper and
// TopPLogitsWarper (generation/logits_process.py): temperature, then top-k, then top-p.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/multimodal_model.h"

namespace mllm {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  bool sample = false;                    // false: greedy (argmax)
  double temperature = 1.0;               // sampling only
  int64_t top_k = 0;                      // 0 = off
  double top_p = 1.0;                     // 1 = off
  uint64_t seed = 0;                      // the sampling generator's seed
  std::vector<int64_t> stop_ids;          // e.g. the tokenizer's eos
  std::vector<std::string> stop_strings;  // need `decode`
  int64_t pad_id = 0;
  // Only ids below this are chosen (the tokenizer's size when the LLM's vocabulary is padded
  // beyond it, as 32064 for 32002 ids); 0 = every row of the LM head.
  int64_t vocab_limit = 0;
};

struct GenerationResult {
  std::vector<std::vector<int64_t>> tokens;  // per prompt: the new tokens (a stop id included)
  std::vector<std::string> stopped_by;       // per prompt: "stop_id", "stop_string" or "length"
};

// A prompt batch's images: the crops (M,3,S,S) of its images in prompt order (undefined if none)
// and how they become tokens (MultimodalModelImpl::image_tokens_of). A tensor alone converts.
struct ImageBatch {
  ImageBatch(torch::Tensor pixels = {}, ImageLayout l = {})  // NOLINT: a tensor converts
      : pixel_values(std::move(pixels)), layout(std::move(l)) {}
  torch::Tensor pixel_values;
  ImageLayout layout;
};

// `prompts`: token ids with the image placeholders already expanded (as many as each image takes);
// `images`: their crops and layout. `decode` turns
// ids into text (for stop strings); `on_token(row, id)` is called as each token is chosen (for
// streaming). Runs without autograd, in eval mode.
GenerationResult generate(
    MultimodalModelImpl& model, const std::vector<std::vector<int64_t>>& prompts,
    const ImageBatch& images, const GenerationOptions& options,
    const std::function<std::string(const std::vector<int64_t>&)>& decode = {},
    const std::function<void(int64_t, int64_t)>& on_token = {});

// The next-token distribution after temperature / top-k / top-p: logits (B,V) -> probabilities
// (B,V) (fp32), zero outside the kept set. Exposed for tests.
torch::Tensor sampling_probs(const torch::Tensor& logits, double temperature, int64_t top_k,
                             double top_p);

}  // namespace mllm
