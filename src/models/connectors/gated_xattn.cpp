// Flamingo's feature-level connector (Alayrac et al. 2022, "Flamingo", sec. 2.2 and fig. 4): gated
// cross-attention dense blocks inserted before every `xattn_every`-th layer of the (frozen) LLM.
// Each block lets the text tokens attend to their sample's visual features:
//   x = x + tanh(attn_gate) * CrossAttention(LayerNorm(x), media)
//   x = x + tanh(ff_gate)   * FeedForward(LayerNorm(x))          (GELU, 4x width)
// with both gates initialised at zero, so at the start the LLM computes exactly what it did alone.
// media = Linear(Cv -> C) of the encoder's patch features (Flamingo puts a Perceiver Resampler
// there; `resampler` is the separate token-level design). A sample without an image gets no
// cross-attention update. The single image of a sample is visible to all of its tokens, and to
// no other sample's in a packed row (Flamingo
// restricts each token to the image immediately before it; with one image per record, as here,
// and LLaVA's image-first prompts the two coincide for every supervised token).
// Parameter names: multi_modal_projector.media_proj.*, multi_modal_projector.blocks.N.*.
#include <algorithm>
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

  // x (B,T,C); media (B,S,C); has_image (B,1,1) or (B,T,1): 1 where the row (token) sees an
  // image; mask: optional additive (B,1,T,S) restricting each token to its own image's media.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& media,
                        const torch::Tensor& has_image, const c10::optional<torch::Tensor>& mask) {
    const auto B = x.size(0), T = x.size(1), P = media.size(1), C = x.size(2);
    const auto D = C / heads_;
    auto q = q_proj(attn_norm(x)).view({B, T, heads_, D}).transpose(1, 2);
    auto k = k_proj(media).view({B, P, heads_, D}).transpose(1, 2);
    auto v = v_proj(media).view({B, P, heads_, D}).transpose(1, 2);
    auto y = o_proj(attention(q, k, v, mask, false).transpose(1, 2).reshape({B, T, C}));
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
    if (s.llm.heads <= 0 || s.llm_hidden % s.llm.heads != 0)
      throw ConfigError(
          "model.connector.type: gated_xattn needs heads that divide the LLM's width");
    media_proj = register_module("media_proj", torch::nn::Linear(s.vision_hidden, s.llm_hidden));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t l = 0; l < s.llm.layers; l += every_)
      blocks->push_back(GatedXAttnBlock(s.llm_hidden, s.llm.heads));
  }

  torch::Tensor forward(const torch::Tensor& features) override {  // (N,P,Cv) -> (N,P,C) media
    return media_proj(features);
  }
  int64_t output_tokens() const override { return 1; }
  bool feature_level() const override { return true; }

  std::shared_ptr<DecoderExtension> decoder_extension(const ImageContext& images) override {
    const auto& features = images.features;
    const auto media_n = media_proj(features);  // (N,P,C)
    const auto B = images.token_image.size(0), T = images.token_image.size(1), P = features.size(1);
    const ImageSlots slots = image_slots(images.token_image);
    const int64_t M = slots.most;
    // Media slot b*M + j holds row b's j-th image; empty slots stay zero (and are never seen).
    std::vector<int64_t> dest, src;
    for (int64_t b = 0; b < B; ++b)
      for (size_t j = 0; j < slots.row_images[static_cast<size_t>(b)].size(); ++j)
        dest.push_back(b * M + static_cast<int64_t>(j)),
            src.push_back(slots.row_images[static_cast<size_t>(b)][j]);
    const auto M1 = std::max<int64_t>(M, 1);
    auto media = torch::zeros({B * M1, P, C_}, media_n.options());
    if (!dest.empty()) {
      const auto device = media_n.device();
      media =
          media.index_copy(0, torch::tensor(dest, torch::kLong).to(device),
                           media_n.index_select(0, torch::tensor(src, torch::kLong).to(device)));
    } else {
      media = media + media_n.sum() * 0.0;  // keep media_proj in the graph (zero gradient)
    }
    auto ext = std::make_shared<Extension>();
    ext->owner = this;
    ext->media = media.view({B, M1 * P, C_});
    if (slots.uniform) {
      // Each row sees one image or none (unpacked rows): the whole row sees it.
      ext->has_image =
          (std::get<0>(slots.slot.max(1)) >= 0).to(media_n.scalar_type()).view({B, 1, 1});
    } else {
      // Packed rows: each token sees only its slot's P media positions (a token of a text-only
      // sample none: its has_image is 0).
      ext->has_image = (slots.slot >= 0).to(media_n.scalar_type()).view({B, T, 1});
      const auto key_slot = torch::arange(M, torch::kLong).repeat_interleave(P);  // (M*P)
      const auto allowed = slots.slot.view({B, 1, T, 1}) == key_slot.view({1, 1, 1, M * P});
      ext->mask = torch::zeros(allowed.sizes(), media_n.options().dtype(torch::kFloat))
                      .masked_fill(allowed.to(media_n.device()).logical_not(), -1e9);
    }
    ext->has_image = ext->has_image.to(media_n.device());
    return ext;
  }

  torch::nn::Linear media_proj{nullptr};
  torch::nn::ModuleList blocks{nullptr};

 private:
  // A block before every every_-th layer, over the batch's media.
  struct Extension : DecoderExtension {
    GatedXAttn* owner = nullptr;
    torch::Tensor media, has_image;
    c10::optional<torch::Tensor> mask;
    torch::Tensor before_layer(int64_t layer, const torch::Tensor& h) override {
      if (layer % owner->every_ != 0) return h;
      auto block = owner->blocks[static_cast<size_t>(layer / owner->every_)]->as<GatedXAttnBlock>();
      return block->forward(h, media.to(h.scalar_type()), has_image.to(h.scalar_type()), mask);
    }
  };

  int64_t every_, C_;
};

}  // namespace

std::shared_ptr<Connector> make_gated_xattn_connector(const ConnectorSpec& spec) {
  return std::make_shared<GatedXAttn>(spec);
}

}  // namespace mllm
