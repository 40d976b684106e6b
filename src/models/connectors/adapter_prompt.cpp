// LLaMA-Adapter's zero-initialised attention with adaption prompts (Zhang et al. 2023,
// "LLaMA-Adapter: Efficient Fine-tuning of Language Models with Zero-init Attention",
// sec. 3.1-3.3): each of the top `prompt_layers` decoder layers gets `prompt_length` learned prompt
// tokens. The layer's own (frozen) k_proj and v_proj turn them into keys and values; every query
// attends to them in a softmax of their own, and the result, scaled per head by tanh of a gate that
// starts at zero, joins the attention's output before o_proj. So at the start the frozen LLM
// computes exactly what it did alone, and the gate lets the prompts in as training finds them
// useful. The image enters through the prompts (sec. 3.3, multi-modal reasoning): its encoder
// features, projected to the LLM's width (visual_proj), are added to every adapted layer's prompts.
// With prompt_length K a square and a square patch grid, the grid is average-pooled to sqrt(K) x
// sqrt(K) regions and prompt k takes region k's feature (the layout survives); otherwise every
// prompt takes the global (mean) feature, as the paper's CLIP global feature. A token sees its own
// sample's image through the prompts; a text-only sample's tokens see the prompts alone. An <image>
// is one placeholder token (feature-level, as gated_xattn). Followed for the arithmetic: the
// adapter branch of Attention.forward in LLaMA-Adapter's llama/model.py (v1: gate (1,H,1,1) zeros;
// prompts N(0,1); keys without rotary embedding). Parameter names: multi_modal_projector.prompts
// (L,K,C), multi_modal_projector.gates (L,H), multi_modal_projector.visual_proj.*; prompt set l
// belongs to LLM layer (layers - L + l).
#include <algorithm>

#include "core/error.h"
#include "models/connectors/connector.h"

namespace mllm {

namespace {

class AdapterPrompt : public Connector {
 public:
  explicit AdapterPrompt(const ConnectorSpec& s) : K_(s.config.prompt_length) {
    const auto& c = s.config;
    if (s.llm.layers > 0 && c.prompt_layers > s.llm.layers)
      throw ConfigError("model.connector.prompt_layers: " + std::to_string(c.prompt_layers) +
                        " adapted layers, but the LLM has " + std::to_string(s.llm.layers));
    const int64_t L = c.prompt_layers > 0 ? c.prompt_layers : s.llm.layers;
    first_ = s.llm.layers - L;
    prompts = register_parameter("prompts", torch::randn({L, K_, s.llm_hidden}));
    gates = register_parameter("gates", torch::zeros({L, s.llm.heads}));
    visual_proj = register_module("visual_proj", torch::nn::Linear(s.vision_hidden, s.llm_hidden));
    const int64_t side = square_side(s.input_tokens), k_side = square_side(K_);
    regions_ = side > 0 && k_side > 0 && k_side <= side ? k_side : 1;
    side_ = side;
  }

  // features (N,P,Cv) -> (N,G,C): the image's contribution to the prompts, G = K (regions) or 1.
  torch::Tensor forward(const torch::Tensor& features) override {
    const auto N = features.size(0), Cv = features.size(2);
    if (regions_ == 1) return visual_proj(features.mean(1, true));
    if (N == 0)  // a text-only batch (pooling refuses an empty one); the projection stays in
      // the graph
      return visual_proj(features.new_zeros({0, regions_ * regions_, Cv}));
    const auto grid = features.transpose(1, 2).reshape({N, Cv, side_, side_});
    const auto pooled = torch::adaptive_avg_pool2d(grid, {regions_, regions_});  // (N,Cv,g,g)
    return visual_proj(pooled.flatten(2).transpose(1, 2));
  }
  int64_t output_tokens() const override { return 1; }
  bool feature_level() const override { return true; }

  std::shared_ptr<DecoderExtension> decoder_extension(const ImageContext& images) override {
    const auto vis = forward(images.features);  // (N,G,C)
    const auto N = vis.size(0), G = vis.size(1), C = vis.size(2);
    const auto B = images.token_image.size(0), T = images.token_image.size(1);
    const ImageSlots slots = image_slots(images.token_image);
    // Row n of `bank` is image n's contribution, row N none (text-only tokens).
    const auto bank = torch::cat({vis, torch::zeros({1, G, C}, vis.options())}, 0);
    auto ext = std::make_shared<Extension>();
    ext->owner = this;
    // Each row's slots: its images, then "none"; (B, S) indices into bank.
    const int64_t S = slots.uniform ? 1 : slots.most + 1;
    auto pick = torch::full({B, S}, N, torch::kLong);
    for (int64_t b = 0; b < B; ++b) {
      const auto& seen = slots.row_images[static_cast<size_t>(b)];
      for (size_t j = 0; j < seen.size() && static_cast<int64_t>(j) < S; ++j)
        pick[b][static_cast<int64_t>(j)] = seen[j];
    }
    ext->image = bank.index_select(0, pick.view({-1}).to(vis.device())).view({B, S, G, C});
    if (!slots.uniform) {
      // Packed rows: a token sees its own slot's K prompts (a token without an image, or
      // padding, the "none" slot S-1).
      const auto slot = slots.slot.masked_fill(slots.slot < 0, S - 1);             // (B,T)
      const auto key_slot = torch::arange(S, torch::kLong).repeat_interleave(K_);  // (S*K)
      const auto allowed = slot.view({B, 1, T, 1}) == key_slot.view({1, 1, 1, S * K_});
      ext->mask = torch::zeros(allowed.sizes(), vis.options().dtype(torch::kFloat))
                      .masked_fill(allowed.to(vis.device()).logical_not(), -1e9);
      ext->length = T;
    }
    return ext;
  }

  torch::Tensor prompts, gates;
  torch::nn::Linear visual_proj{nullptr};

 private:
  struct Extension : DecoderExtension {
    AdapterPrompt* owner = nullptr;
    torch::Tensor image;                // (B,S,G,C): each row's slots' image contributions
    c10::optional<torch::Tensor> mask;  // (B,1,T,S*K) for packed rows
    int64_t length = 0;                 // T of the packed rows the mask is for

    LayerExtras in_layer(int64_t layer, int64_t past, int64_t T) override {
      const int64_t l = layer - owner->first_;
      if (l < 0) return {};
      if (mask && (past != 0 || T != length))
        throw std::logic_error("adapter_prompt: packed rows' prompts are for one whole forward");
      const auto B = image.size(0), S = image.size(1), C = image.size(3);
      LayerExtras e;
      // (1,1,K,C) + (B,S,G,C) -> (B,S*K,C)
      e.prompts =
          (owner->prompts[l].view({1, 1, owner->K_, C}) + image).view({B, S * owner->K_, C});
      e.prompt_gate = owner->gates[l];
      e.prompt_mask = mask;
      return e;
    }
  };

  int64_t K_, first_ = 0, regions_ = 1, side_ = -1;
};

}  // namespace

std::shared_ptr<Connector> make_adapter_prompt_connector(const ConnectorSpec& spec) {
  return std::make_shared<AdapterPrompt>(spec);
}

}  // namespace mllm
