// Flamingo's feature-level connector (Alayrac et al. 2022, "Flamingo", sec. 2.2 and fig. 4): gated
// cross-attention dense blocks inserted before every `xattn_every`-th layer of the (frozen) LLM.
// Each block lets the text tokens attend to their sample's visual features:
//   x = x + tanh(attn_gate) * CrossAttention(LayerNorm(x), media)
//   x = x + tanh(ff_gate)   * FeedForward(LayerNorm(x))          (GELU, 4x width)
// with both gates initialised at zero, so at the start the LLM computes exactly what it did alone.
// media = Linear(Cv -> C) of the encoder's patch features (Flamingo puts a Perceiver Resampler
// there; `resampler` is the separate token-level design). A sample without an image gets no
// cross-attention update. The single image of a sample is visible to all of its tokens (Flamingo
// restricts each token to the image immediately before it; with one image per record, as here,
// and LLaVA's image-first prompts the two coincide for every supervised token).
// Parameter names: multi_modal_projector.media_proj.*, multi_modal_projector.blocks.N.*.
#include <cmath>

#include "core/error.h"
#include "core/torch_compat.h"
#include "models/connectors/connector.h"

namespace mllm {

namespace {

class GatedXAttnBlockImpl : public torch::nn::Module {
 public:
  GatedXAttnBlockImpl(int64_t C, int64_t heads) : heads_(heads) {
    auto lin = [](int64_t in, int64_t out, bool bias) {
      return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
    };
    attn_norm =
        register_module("attn_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
    q_proj = register_module("q_proj", lin(C, C, false));
    k_proj = register_module("k_proj", lin(C, C, false));
    v_proj = register_module("v_proj", lin(C, C, false));
    o_proj = register_module("o_proj", lin(C, C, false));
    attn_gate = register_parameter("attn_gate", torch::zeros({1}));
    ff_norm = register_module("ff_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
    fc1 = register_module("fc1", lin(C, 4 * C, false));
    fc2 = register_module("fc2", lin(4 * C, C, false));
    ff_gate = register_parameter("ff_gate", torch::zeros({1}));
  }

  // x (B,T,C); media (B,P,C); has_image (B,1,1) 1 where the row has an image.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& media,
                        const torch::Tensor& has_image) {
    const auto B = x.size(0), T = x.size(1), P = media.size(1), C = x.size(2);
    const auto D = C / heads_;
    auto q = q_proj(attn_norm(x)).view({B, T, heads_, D}).transpose(1, 2);
    auto k = k_proj(media).view({B, P, heads_, D}).transpose(1, 2);
    auto v = v_proj(media).view({B, P, heads_, D}).transpose(1, 2);
    auto y = o_proj(attention(q, k, v, c10::nullopt, false).transpose(1, 2).reshape({B, T, C}));
    auto h = x + torch::tanh(attn_gate).to(x.scalar_type()) * y * has_image;
    auto f = fc2(torch::gelu(fc1(ff_norm(h))));
    return h + torch::tanh(ff_gate).to(x.scalar_type()) * f * has_image;
  }

  torch::nn::LayerNorm attn_norm{nullptr}, ff_norm{nullptr};
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::Tensor attn_gate, ff_gate;

 private:
  int64_t heads_;
};
TORCH_MODULE(GatedXAttnBlock);

class GatedXAttn : public Connector {
 public:
  explicit GatedXAttn(const ConnectorSpec& s) : every_(s.config.xattn_every), C_(s.llm_hidden) {
    if (s.llm_layers <= 0 || s.llm_heads <= 0 || s.llm_hidden % s.llm_heads != 0)
      throw ConfigError("model.connector.type: gated_xattn needs the LLM's layers and heads");
    media_proj = register_module("media_proj", torch::nn::Linear(s.vision_hidden, s.llm_hidden));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t l = 0; l < s.llm_layers; l += every_)
      blocks->push_back(GatedXAttnBlock(s.llm_hidden, s.llm_heads));
  }

  torch::Tensor forward(const torch::Tensor& features) override {  // (N,P,Cv) -> (N,P,C) media
    return media_proj(features);
  }
  int64_t output_tokens() const override { return 1; }
  bool feature_level() const override { return true; }

  LayerHook layer_hook(const torch::Tensor& features, const torch::Tensor& image_rows,
                       int64_t batch) override {
    const auto media_n = media_proj(features);  // (N,P,C)
    const auto P = features.size(1);
    // Per batch row: its image's media, or zeros (masked out by has_image).
    auto media = torch::zeros({batch, P, C_}, media_n.options());
    auto has_image = torch::zeros({batch, 1, 1}, media_n.options());
    if (features.size(0) > 0) {
      media = media.index_copy(0, image_rows, media_n);
      has_image = has_image.index_fill(0, image_rows, 1.0);
    } else {
      media = media + media_n.sum() * 0.0;  // keep media_proj in the graph (zero gradient)
    }
    return [this, media, has_image](int64_t layer, const torch::Tensor& h) {
      if (layer % every_ != 0) return h;
      auto block = blocks[static_cast<size_t>(layer / every_)]->as<GatedXAttnBlock>();
      return block->forward(h, media.to(h.scalar_type()), has_image.to(h.scalar_type()));
    };
  }

  torch::nn::Linear media_proj{nullptr};
  torch::nn::ModuleList blocks{nullptr};

 private:
  int64_t every_, C_;
};

}  // namespace

std::shared_ptr<Connector> make_gated_xattn_connector(const ConnectorSpec& spec) {
  return std::make_shared<GatedXAttn>(spec);
}

}  // namespace mllm
