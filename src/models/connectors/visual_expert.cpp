// CogVLM's visual expert (Wang et al. 2023, "CogVLM: Visual Expert for Pretrained Language
// Models", sec. 2.1 and fig. 3): the image's patch features enter the sequence as tokens through
// an MLP projector (LLaVA-1.5's mlp2x_gelu: multi_modal_projector.linear_1 / linear_2), and in
// every `expert_every`-th decoder layer the image positions go through their own attention
// projections (q/k/v and the output projection) and their own SwiGLU MLP, the text positions
// through the LLM's; attention is computed jointly over all positions, so text attends to the image
// through the LLM's own keys of the expert's making. The experts start as copies of their layer's
// weights (CogVLM initialises them from the language model), so at the start the model computes
// exactly what the plain token-level model with the same projector does; stage 1 trains them with
// the projector while the LLM's own weights stay frozen. Each image position is computed once, by
// its expert only (the positions are split, not masked). Parameter names:
// multi_modal_projector.experts.N.self_attn.{q,k,v,o}_proj.*,
// multi_modal_projector.experts.N.mlp.{gate,up,down}_proj.weight, for the N-th expert layer
// (LLM layer N * expert_every).
// model.connector.projector puts another token-level design in the projector's place (its
// parameter names then, e.g. a resampler's query, attn.*, proj): experts over the resampler's
// few tokens cost about what the resampler alone does, where CogVLM's every-patch tokens make the
// sequence as long as the image has patches.
#include "core/error.h"
#include "models/connectors/connector.h"
#include "models/llm/llama.h"

namespace mllm {

namespace {

class ExpertLayerImpl : public torch::nn::Module {
 public:
  explicit ExpertLayerImpl(const LlmConfig& c) {
    self_attn = register_module("self_attn", LlamaAttention(c));
    mlp = register_module("mlp", LlamaMlp(c));
  }
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
};
TORCH_MODULE(ExpertLayer);

class VisualExpert : public Connector {
 public:
  explicit VisualExpert(const ConnectorSpec& s) : every_(s.config.expert_every) {
    if (s.llm.experts > 0)
      throw ConfigError(
          "model.connector.type: visual_expert copies each layer's MLP, but model.llm has "
          "mixture-of-experts layers (experts: " +
          std::to_string(s.llm.experts) + "); use a dense LLM");
    ConnectorSpec under = s;
    under.config.type = s.config.projector;
    if (under.config.type == "visual_expert")
      throw ConfigError("model.connector.projector: visual_expert cannot be its own projector");
    projector_ = make_connector(under);
    if (projector_->feature_level())
      throw ConfigError("model.connector.projector: '" + under.config.type +
                        "' is feature-level; the experts need a token-level design");
    tokens_ = projector_->output_tokens();
    // The projector's parts become this module's own, under their own names (linear_1,
    // linear_2 for mlp2x_gelu, as CogVLM's): one tensor each, saved and loaded as the
    // connector's.
    for (const auto& kv : projector_->named_parameters(/*recurse=*/false))
      register_parameter(kv.key(), kv.value(), kv.value().requires_grad());
    for (const auto& kv : projector_->named_buffers(/*recurse=*/false))
      register_buffer(kv.key(), kv.value());
    for (const auto& kv : projector_->named_children()) register_module(kv.key(), kv.value());
    experts = register_module("experts", torch::nn::ModuleList());
    for (int64_t l = 0; l < s.llm.layers; l += every_) experts->push_back(ExpertLayer(s.llm));
  }

  torch::Tensor forward(const torch::Tensor& features) override {  // (N,P,Cv) -> (N,Q,C)
    return projector_->forward(features);
  }
  int64_t output_tokens() const override { return tokens_; }

  void adopt_llm_weights(LlamaForCausalLMImpl& llm) override {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < experts->size(); ++i) {
      const auto layer = llm.model->layers->ptr<LlamaDecoderLayerImpl>(
          static_cast<size_t>(static_cast<int64_t>(i) * every_));
      const auto expert = experts->ptr<ExpertLayerImpl>(i);
      copy_matching(*layer->self_attn, *expert->self_attn);
      copy_matching(*layer->mlp, *expert->mlp);
    }
  }

  std::shared_ptr<DecoderExtension> decoder_extension(const ImageContext& images) override {
    auto ext = std::make_shared<Extension>();
    ext->owner = this;
    ext->image = images.image_positions;
    ext->full = rows(images.image_positions);
    return ext;
  }

  torch::nn::ModuleList experts{nullptr};

 private:
  // Each parameter of `from` into the one of `to` with the same name (adapters a later LoRA adds
  // are not there yet).
  static void copy_matching(torch::nn::Module& from, torch::nn::Module& to) {
    const auto src = from.named_parameters();
    for (auto& kv : to.named_parameters())
      if (const auto* p = src.find(kv.key())) kv.value().copy_(*p);
  }

  // The own/expert rows of a (B,T) image-position mask and the permutation back (LayerExtras).
  static LayerExtras rows(const torch::Tensor& image) {
    LayerExtras e;
    const auto flat = image.reshape({-1});
    e.expert_rows = flat.nonzero().view({-1});
    e.own_rows = flat.logical_not().nonzero().view({-1});
    const auto order = torch::cat({e.own_rows, e.expert_rows});
    e.restore = torch::empty_like(order).index_copy(0, order,
                                                    torch::arange(order.size(0), order.options()));
    return e;
  }

  struct Extension : DecoderExtension {
    VisualExpert* owner = nullptr;
    torch::Tensor image;  // (B,T) the prepared positions' image mask
    LayerExtras full;     // its rows

    LayerExtras in_layer(int64_t layer, int64_t past, int64_t T) override {
      if (layer % owner->every_ != 0) return {};
      LayerExtras e;
      if (past == 0 && T == image.size(1))
        e = full;
      else if (past + T <= image.size(1))  // a slice of the prepared positions
        e = rows(image.slice(1, past, past + T));
      else
        return {};  // a generation's new tokens: text
      // Without images and without a graph to build, the layer's own weights alone. While
      // training the (empty) expert path still runs, so its parameters take part in every step.
      if (e.expert_rows.size(0) == 0 && !torch::GradMode::is_enabled()) return {};
      const auto expert =
          owner->experts->ptr<ExpertLayerImpl>(static_cast<size_t>(layer / owner->every_));
      e.expert_attn = expert->self_attn.get();
      e.expert_mlp = expert->mlp.get();
      return e;
    }
  };

  std::shared_ptr<Connector> projector_;
  int64_t tokens_ = 0, every_;
};

}  // namespace

std::shared_ptr<Connector> make_visual_expert_connector(const ConnectorSpec& spec) {
  return std::make_shared<VisualExpert>(spec);
}

}  // namespace mllm
