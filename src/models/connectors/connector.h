// Connectors map vision features into the LLM. A token-level connector turns (N,P,Cv) image
// features into (N,Q,C) tokens that replace the <image> placeholders in the text embeddings; a
// feature-level one brings them in inside the decoder's layers (DecoderExtension); CogVLM's visual
// expert does both.
// Each design lives in its own file and registers itself by name in registry.cpp; parameter
// names are relative to `multi_modal_projector.` (HF's llava names where HF has them).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config.h"
#include "models/llm/decoder_extension.h"

namespace mllm {

struct ConnectorSpec {
  int64_t vision_hidden;  // Cv
  int64_t llm_hidden;     // C
  int64_t input_tokens;   // P, tokens per image coming from the encoder
  ConnectorConfig config;
  // The LLM the connector feeds (the designs that work inside its layers need its shape); its
  // hidden is llm_hidden (make_connector sets it).
  LlmConfig llm = {};
};

class LlamaForCausalLMImpl;

// A batch's images as the designs that work inside the LLM see them (Connector::decoder_extension).
struct ImageContext {
  torch::Tensor features;  // (N,P,Cv): the encoder's features of the batch's images
  // (B,T) int64, for each token the index (into features) of the image it sees, -1 for none, -2
  // for padding: a token sees its own sample's image, so in a packed row the samples see
  // different images (or none). Set for feature-level designs (one placeholder per image).
  torch::Tensor token_image;
  // (B,T) bool: the image placeholders' positions (for a token-level design, where its spliced
  // image tokens are).
  torch::Tensor image_positions;
};

class Connector : public torch::nn::Module {
 public:
  // features (N,P,Cv) -> (N,Q,C)
  virtual torch::Tensor forward(const torch::Tensor& features) = 0;
  // Q: tokens per image this connector emits (how many placeholders an <image> expands to).
  virtual int64_t output_tokens() const = 0;

  // Feature-level connectors (Flamingo's gated cross-attention, LLaMA-Adapter's prompts) return
  // true: an <image> stays one placeholder token with its text embedding, and the image enters the
  // LLM through decoder_extension alone.
  virtual bool feature_level() const { return false; }
  // What the design does inside the LLM's decoder for this batch (nullptr: nothing, as for the
  // plain token-level designs). Valid for one forward pass, or, when each row sees at most one
  // image (unpacked rows), for every step of a generation (whose later steps bring no image).
  virtual std::shared_ptr<DecoderExtension> decoder_extension(const ImageContext& images) {
    (void)images;
    return nullptr;
  }
  // Called once the LLM has its weights (built, then loaded from model.llm.pretrained): designs
  // whose weights start as copies of the LLM's (CogVLM's visual experts) take them here. A
  // checkpoint loaded afterwards (train.init_from, resume, a saved model) overrides them.
  virtual void adopt_llm_weights(LlamaForCausalLMImpl& llm) { (void)llm; }
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
std::shared_ptr<Connector> make_visual_expert_connector(const ConnectorSpec& spec);
std::shared_ptr<Connector> make_adapter_prompt_connector(const ConnectorSpec& spec);

// A batch's images arranged per row, for the designs that give each row its own images' features
// side by side (gated_xattn, adapter_prompt): from ImageContext::token_image (B,T).
struct ImageSlots {
  std::vector<std::vector<int64_t>> row_images;  // per row: its images, by first appearance
  torch::Tensor slot;  // (B,T) int64 on the CPU: the token's image's place in row_images, else -1
  int64_t most = 0;    // the most images of one row
  // Every row's real tokens see one and the same image, or all none (unpacked rows): then the
  // whole row may see it, whatever its length (which also serves a generation's later steps).
  bool uniform = true;
};
ImageSlots image_slots(const torch::Tensor& token_image);

// sqrt(n) when n is a perfect square, else -1.
int64_t square_side(int64_t n);

// The side of the square grid the P patch features come from (P = side * side, row-major, as the
// vision tower emits them). Throws ConfigError naming model.connector.type when P is not a square
// (model.vision.select: cls_patch adds the class token).
int64_t patch_grid_side(const ConnectorSpec& spec);

}  // namespace mllm
