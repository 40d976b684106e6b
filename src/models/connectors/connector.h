// Connectors map vision features into the LLM. A token-level connector turns (N,P,Cv) image
// features into (N,Q,C) tokens that replace the <image> placeholders in the text embeddings.
// Each design lives in its own file and registers itself by name in registry.cpp; parameter
// names are relative to `multi_modal_projector.` (HF's llava names where HF has them).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include <torch/torch.h>

#include "core/config.h"

namespace mllm {

struct ConnectorSpec {
  int64_t vision_hidden;  // Cv
  int64_t llm_hidden;     // C
  int64_t input_tokens;   // P, tokens per image coming from the encoder
  ConnectorConfig config;
  int64_t llm_layers = 0;  // for feature-level connectors, which live inside the LLM
  int64_t llm_heads = 0;
};

// See llama.h: called before each LLM decoder layer.
using LayerHook = std::function<torch::Tensor(int64_t layer, const torch::Tensor& h)>;

class Connector : public torch::nn::Module {
 public:
  // features (N,P,Cv) -> (N,Q,C)
  virtual torch::Tensor forward(const torch::Tensor& features) = 0;
  // Q: tokens per image this connector emits (how many placeholders an <image> expands to).
  virtual int64_t output_tokens() const = 0;

  // Feature-level connectors (Flamingo's gated cross-attention) return true: an <image> stays one
  // placeholder token with its text embedding, and the image enters the LLM through layer_hook.
  virtual bool feature_level() const { return false; }
  // features (N,P,Cv) of the batch's images; token_image (B,T) int64, for each token the index
  // (into features) of the image it sees, -1 for none, -2 for padding: a token sees its own
  // sample's image, so in a packed row the samples see different images (or none). The hook is
  // valid for one forward pass, or, when each row sees at most one image (unpacked rows), for every
  // step of a generation (where it is called on the new positions only).
  virtual LayerHook layer_hook(const torch::Tensor& features, const torch::Tensor& token_image) {
    (void)features, (void)token_image;
    throw std::logic_error("layer_hook on a token-level connector");
  }
};

using ConnectorFactory = std::function<std::shared_ptr<Connector>(const ConnectorSpec&)>;

// Builds the connector named spec.config.type; throws ConfigError listing the known names.
std::shared_ptr<Connector> make_connector(const ConnectorSpec& spec);
std::vector<std::string> connector_names();

// One line per design, defined next to each connector.
std::shared_ptr<Connector> make_linear_connector(const ConnectorSpec& spec);
std::shared_ptr<Connector> make_mlp2x_gelu_connector(const ConnectorSpec& spec);
std::shared_ptr<Connector> make_gated_xattn_connector(const ConnectorSpec& spec);
std::shared_ptr<Connector> make_qformer_connector(const ConnectorSpec& spec);
std::shared_ptr<Connector> make_resampler_connector(const ConnectorSpec& spec);
std::shared_ptr<Connector> make_pool_connector(const ConnectorSpec& spec);

// sqrt(n) when n is a perfect square, else -1.
int64_t square_side(int64_t n);

// The side of the square grid the P patch features come from (P = side * side, row-major, as the
// vision tower emits them). Throws ConfigError naming model.connector.type when P is not a square
// (model.vision.select: cls_patch adds the class token).
int64_t patch_grid_side(const ConnectorSpec& spec);

}  // namespace mllm
