// BLIP-2's Querying Transformer as a connector: `num_queries` learnable query tokens pass through
// `layers` blocks of self-attention over the queries, cross-attention from the queries to the
// (N,P,Cv) patch features, and a GELU feed-forward; every sub-block is post-LN, BERT style
// (x = LayerNorm(x + sublayer(x))). A linear projection then maps the queries to the LLM width.
// Only the query path is here: the Q-Former's text branch serves BLIP-2's own pretraining losses,
// not the LLM.
//
// Followed: transformers/models/blip_2/modeling_blip_2.py — Blip2QFormerModel (LayerNorm on the
// query embeddings before the first layer), Blip2QFormerLayer (attention -> crossattention ->
// intermediate_query / output_query, each sub-block's output LayerNorm'd with its residual),
// Blip2QFormerMultiHeadAttention (the cross-attention's keys and values projected from the encoder
// width), Blip2ForConditionalGeneration (query_tokens (1,Q,H), language_projection). The queries
// start from N(0, 0.02) as in BLIP-2's own Blip2Base.init_Qformer (LAVIS); transformers' class
// starts them at zero and expects a checkpoint. Differences: BLIP-2 cross-attends every
// `cross_attention_frequency` (2) layers, here every layer does; the feed-forward is 4H wide
// (BERT's ratio); no dropout.
//
// Parameter names, relative to multi_modal_projector.: query_tokens (1,Q,H), layernorm,
// layers.N.{self_attn, self_attn_layer_norm, cross_attn, cross_attn_layer_norm, mlp.fc1, mlp.fc2,
// final_layer_norm}, language_projection. The attention blocks hold q_proj, k_proj, v_proj and
// out_proj.
#include "models/connectors/attention.h"

namespace mllm {

namespace {

constexpr double kLayerNormEps = 1e-12;  // BERT's, as Blip2QFormerConfig

torch::nn::LayerNorm layer_norm(int64_t width) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}).eps(kLayerNormEps));
}

class QFormerMlpImpl : public torch::nn::Module {
 public:
  explicit QFormerMlpImpl(int64_t width) {
    fc1 = register_module("fc1", torch::nn::Linear(width, 4 * width));
    fc2 = register_module("fc2", torch::nn::Linear(4 * width, width));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::gelu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(QFormerMlp);

class QFormerLayerImpl : public torch::nn::Module {
 public:
  QFormerLayerImpl(int64_t width, int64_t vision_width, int64_t heads) {
    self_attn = register_module("self_attn", ConnectorAttention(width, width, heads));
    self_attn_layer_norm = register_module("self_attn_layer_norm", layer_norm(width));
    cross_attn = register_module("cross_attn", ConnectorAttention(width, vision_width, heads));
    cross_attn_layer_norm = register_module("cross_attn_layer_norm", layer_norm(width));
    mlp = register_module("mlp", QFormerMlp(width));
    final_layer_norm = register_module("final_layer_norm", layer_norm(width));
  }
  // x (N,Q,H), features (N,P,Cv) -> (N,Q,H)
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& features) {
    x = self_attn_layer_norm(x + self_attn(x, x, x));
    x = cross_attn_layer_norm(x + cross_attn(x, features, features));
    return final_layer_norm(x + mlp(x));
  }

  ConnectorAttention self_attn{nullptr}, cross_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr}, cross_attn_layer_norm{nullptr},
      final_layer_norm{nullptr};
  QFormerMlp mlp{nullptr};
};
TORCH_MODULE(QFormerLayer);

class QFormer : public Connector {
 public:
  explicit QFormer(const ConnectorSpec& s)
      : queries_(s.config.num_queries > 0 ? s.config.num_queries : 32) {
    const int64_t width = attention_width(s);
    query_tokens = register_parameter("query_tokens", torch::randn({1, queries_, width}) * 0.02);
    layernorm = register_module("layernorm", layer_norm(width));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < s.config.layers; ++i)
      layers->push_back(QFormerLayer(width, s.vision_hidden, s.config.heads));
    language_projection =
        register_module("language_projection", torch::nn::Linear(width, s.llm_hidden));
  }

  torch::Tensor forward(const torch::Tensor& features) override {         // (N,P,Cv) -> (N,Q,C)
    auto x = layernorm(query_tokens).expand({features.size(0), -1, -1});  // (N,Q,H)
    for (const auto& layer : *layers) x = layer->as<QFormerLayer>()->forward(x, features);
    return language_projection(x);
  }
  int64_t output_tokens() const override { return queries_; }

 private:
  torch::Tensor query_tokens;
  torch::nn::LayerNorm layernorm{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::Linear language_projection{nullptr};
  int64_t queries_;
};

}  // namespace

std::shared_ptr<Connector> make_qformer_connector(const ConnectorSpec& spec) {
  return std::make_shared<QFormer>(spec);
}

}  // namespace mllm
