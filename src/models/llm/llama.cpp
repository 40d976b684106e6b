#include "models/llm/llama.h"

#include "core/torch_compat.h"

namespace mllm {

namespace F = torch::nn::functional;

RmsNormImpl::RmsNormImpl(int64_t hidden, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({hidden}));
}

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  auto h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
  return weight * h.to(x.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t T, int64_t head_dim, double theta,
                                                    const torch::TensorOptions& options) {
  auto f32 = options.dtype(torch::kFloat);
  // inv_freq[i] = theta^(-2i/D); angles (T,D/2) duplicated to (T,D) for rotate_half.
  auto inv_freq =
      1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, f32) / static_cast<double>(head_dim));
  auto angles = torch::outer(torch::arange(T, f32), inv_freq);
  auto emb = torch::cat({angles, angles}, -1);
  return {emb.cos().to(options.dtype()), emb.sin().to(options.dtype())};
}

namespace {
torch::Tensor rotate_half(const torch::Tensor& x) {
  const auto half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}
}  // namespace

LlamaAttentionImpl::LlamaAttentionImpl(const LlmConfig& c)
    : heads(c.heads), kv_heads(c.kv_heads), head_dim(c.hidden / c.heads) {
  const bool qkv_bias = c.type == "qwen2";
  auto lin = [](int64_t in, int64_t out, bool bias) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  q_proj = register_module("q_proj", lin(c.hidden, heads * head_dim, qkv_bias));
  k_proj = register_module("k_proj", lin(c.hidden, kv_heads * head_dim, qkv_bias));
  v_proj = register_module("v_proj", lin(c.hidden, kv_heads * head_dim, qkv_bias));
  o_proj = register_module("o_proj", lin(heads * head_dim, c.hidden, false));
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                          const torch::Tensor& sin,
                                          const c10::optional<torch::Tensor>& mask) {
  const auto B = x.size(0), T = x.size(1);
  auto q = q_proj(x).view({B, T, heads, head_dim}).transpose(1, 2);  // (B,H,T,D)
  auto k = k_proj(x).view({B, T, kv_heads, head_dim}).transpose(1, 2);
  auto v = v_proj(x).view({B, T, kv_heads, head_dim}).transpose(1, 2);
  const auto c = cos.to(q.scalar_type()), s = sin.to(q.scalar_type());
  q = q * c + rotate_half(q) * s;
  k = k * c + rotate_half(k) * s;
  if (kv_heads != heads) {  // grouped-query attention: each kv head serves heads/kv_heads queries
    k = k.repeat_interleave(heads / kv_heads, 1);
    v = v.repeat_interleave(heads / kv_heads, 1);
  }
  auto y = attention(q, k, v, mask, true);
  return o_proj(y.transpose(1, 2).reshape({B, T, heads * head_dim}));
}

LlamaMlpImpl::LlamaMlpImpl(const LlmConfig& c) {
  auto lin = [](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  };
  gate_proj = register_module("gate_proj", lin(c.hidden, c.intermediate));
  up_proj = register_module("up_proj", lin(c.hidden, c.intermediate));
  down_proj = register_module("down_proj", lin(c.intermediate, c.hidden));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  return down_proj(F::silu(gate_proj(x)) * up_proj(x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlmConfig& c) {
  self_attn = register_module("self_attn", LlamaAttention(c));
  mlp = register_module("mlp", LlamaMlp(c));
  input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RmsNorm(c.hidden, c.rms_norm_eps));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                             const torch::Tensor& sin,
                                             const c10::optional<torch::Tensor>& mask) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, mask);
  return h + mlp(post_attention_layernorm(h));
}

LlamaModelImpl::LlamaModelImpl(const LlmConfig& c) : config_(c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab, c.hidden));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) layers->push_back(LlamaDecoderLayer(c));
  norm = register_module("norm", RmsNorm(c.hidden, c.rms_norm_eps));
  torch::NoGradGuard no_grad;
  embed_tokens->weight.normal_(0, 0.02);
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& inputs_embeds,
                                      const torch::Tensor& attention_mask) {
  const auto T = inputs_embeds.size(1);
  const int64_t head_dim = config_.hidden / config_.heads;
  auto [cos, sin] = rope_tables(T, head_dim, config_.rope_theta, inputs_embeds.options());
  c10::optional<torch::Tensor> mask;
  if (attention_mask.defined() && !attention_mask.all().item<bool>()) {
    // Padding keys get a large negative score (finite, so a fully padded row stays a number).
    auto keep = attention_mask.to(torch::kBool).view({attention_mask.size(0), 1, 1, T});
    mask = torch::zeros(keep.sizes(), inputs_embeds.options().dtype(torch::kFloat))
               .masked_fill(keep.logical_not(), -1e9);
  }
  auto h = inputs_embeds;
  for (const auto& layer : *layers) h = layer->as<LlamaDecoderLayer>()->forward(h, cos, sin, mask);
  return norm(h);
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const LlmConfig& c) : config_(c) {
  model = register_module("model", LlamaModel(c));
  if (!c.tie_word_embeddings)
    lm_head = register_module(
        "lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.hidden, c.vocab).bias(false)));
}

torch::Tensor LlamaForCausalLMImpl::embed(const torch::Tensor& input_ids) {
  return model->embed_tokens(input_ids);
}

torch::Tensor LlamaForCausalLMImpl::forward(const torch::Tensor& inputs_embeds,
                                            const torch::Tensor& attention_mask) {
  return model(inputs_embeds, attention_mask);
}

torch::Tensor LlamaForCausalLMImpl::logits(const torch::Tensor& hidden) {
  return lm_head ? lm_head(hidden) : F::linear(hidden, model->embed_tokens->weight);
}

}  // namespace mllm
