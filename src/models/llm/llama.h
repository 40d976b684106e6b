// A LLaMA-style causal decoder (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention),
// laid out as transformers' LlamaForCausalLM so parameter names are the HF keys
// (`model.layers.N.self_attn.q_proj.weight`, `lm_head.weight`). `type: qwen2` is the same graph
// with biases on the q/k/v projections.
// Reference: transformers/models/llama/modeling_llama.py.
#pragma once

#include <torch/torch.h>

#include "core/config.h"

namespace mllm {

class RmsNormImpl : public torch::nn::Module {
 public:
  RmsNormImpl(int64_t hidden, double eps);
  // Normalises in fp32 and casts back before the weight, as HF's LlamaRMSNorm does.
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RmsNorm);

// cos and sin tables, each (T,D) for head dim D, in HF's rotate_half layout.
std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t T, int64_t head_dim, double theta,
                                                    const torch::TensorOptions& options);

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const LlmConfig& c);
  // x (B,T,C); cos/sin (T,D); mask: optional additive (B,1,T,T). Returns (B,T,C).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const c10::optional<torch::Tensor>& mask);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t heads, kv_heads, head_dim;
};
TORCH_MODULE(LlamaAttention);

class LlamaMlpImpl : public torch::nn::Module {
 public:
  explicit LlamaMlpImpl(const LlmConfig& c);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMlp);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlmConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const c10::optional<torch::Tensor>& mask);
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlmConfig& c);
  // inputs_embeds (B,T,C); attention_mask (B,T) with 1 for real tokens, or undefined when every
  // token is real. Returns the final-normed hidden states (B,T,C).
  torch::Tensor forward(const torch::Tensor& inputs_embeds,
                        const torch::Tensor& attention_mask = {});
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};

 private:
  LlmConfig config_;
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  explicit LlamaForCausalLMImpl(const LlmConfig& c);
  torch::Tensor embed(const torch::Tensor& input_ids);  // (B,T) -> (B,T,C)
  // (B,T,C) -> (B,T,C) hidden states after the final norm.
  torch::Tensor forward(const torch::Tensor& inputs_embeds,
                        const torch::Tensor& attention_mask = {});
  torch::Tensor logits(const torch::Tensor& hidden);  // (...,C) -> (...,V)
  const LlmConfig& config() const { return config_; }

  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // absent when tie_word_embeddings

 private:
  LlmConfig config_;
};
TORCH_MODULE(LlamaForCausalLM);

}  // namespace mllm
