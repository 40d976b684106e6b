// A LLaMA-style causal decoder (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention),
// laid out as transformers' LlamaForCausalLM so parameter names are the HF keys
// (`model.layers.N.self_attn.q_proj.weight`, `lm_head.weight`). `type: qwen2` is the same graph
// with biases on the q/k/v projections; `type: mixtral` (or any type with experts > 0) replaces
// each MLP with a sparse mixture of experts (`model.layers.N.block_sparse_moe.*`).
// References: transformers/models/{llama,qwen2,mixtral}/modeling_*.py and modeling_rope_utils.py
// (v4.48), which tests/reference/hf_models.py follows for the parity fixtures.
#pragma once

#include <functional>

#include <torch/torch.h>

#include "core/config.h"
#include "models/llm/decoder_extension.h"
#include "models/llm/layer_shards.h"
#include "models/llm/lora_linear.h"

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

// cos and sin tables for `positions` ((T) or (B,T), any integer type), each (...,D) for head dim
// D, in HF's rotate_half layout. Linear scaling divides the positions by `scaling_factor`. Angles
// are computed in fp32, as HF does, then cast to options' dtype.
std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Tensor& positions,
                                                    int64_t head_dim, double theta,
                                                    double scaling_factor,
                                                    const torch::TensorOptions& options);

// Keys and values of the positions seen so far, per layer, for incremental decoding: (B,KVH,S,D)
// after the rotary embedding, one per kv head (what transformers' DynamicCache
// holds). Empty until the first forward that is given it.
struct KvCache {
  std::vector<torch::Tensor> k, v;  // one per layer
  int64_t length() const { return k.empty() || !k[0].defined() ? 0 : k[0].size(2); }
};

// The decoder's attention pattern for one forward, shared by its layers: plain causal (nothing
// set), an additive mask (B,1,T,S) with causality included (padding), or the samples of packed
// rows, each attending only to itself, causally: the block-diagonal causal mask, computed one
// sample at a time so that no work is spent on the blocks off the diagonal.
struct DecoderMask {
  c10::optional<torch::Tensor> additive;
  struct Span {
    int64_t row, start, length;
  };
  std::vector<Span> samples;  // packed rows; positions outside every span (padding) get zeros
  bool packed() const { return !samples.empty(); }
  // Unpadded layers: the layers' input is (1,N,C), the batch's N real tokens in a row (padding
  // skipped by every projection and MLP); attention puts them back on the (B,T) grid (`real`:
  // each one's b*T + t, ascending), where `additive` masks the padding, and takes them off again.
  // `spans`, when not empty: each row's real tokens are one run, and attention runs per run on
  // the (1,N) row itself (packed_attention), not on the grid, with no additive mask (row_spans
  // says when).
  struct Grid {
    torch::Tensor real;
    int64_t rows = 0, length = 0;  // B, T
    std::vector<Span> spans;
  };
  c10::optional<Grid> grid;
};

// The DecoderMask for T queries over S keys (the queries are the last T) from `attention_mask`
// (B,S): 0 marks padding; any other value names the sample a token belongs to, so a row may pack
// several samples (1,1,2,2,2,3,0,0) and each token attends only to earlier tokens of its own
// sample (values 0/1 are the usual padding mask). Plain causal when attention_mask is undefined
// or all ones; packed spans when T == S and a value exceeds 1 (each sample's tokens contiguous);
// else additive, where -1e9 marks what a query may not see. `padding_runs`: a caller that will
// skip the padding (DecoderMask::Grid) asks for the runs of real tokens first; when row_spans
// finds them, the mask is a grid with those spans (its `real` for the caller to fill) and no
// additive mask is built.
DecoderMask decoder_mask(const torch::Tensor& attention_mask, int64_t T, int64_t S,
                         const torch::TensorOptions& options, bool padding_runs = false);

// The runs of real tokens of a padded batch laid out in one row, as DecoderMask::Grid::spans:
// `is_real` (B,T), each row's real tokens contiguous (right or left padding). Empty — attention
// stays on the padded grid — when a row's are not, or when the grid costs less: rows shorter
// than two of attention()'s causal blocks, or the runs' squared lengths over half the grid's
// B*T*T (per-run attention is a call per row, the grid one for all).
std::vector<DecoderMask::Span> row_spans(const torch::Tensor& is_real);

// Attention of packed rows, one sample at a time: q (B,H,T,D), k and v (B,KVH,T,D), each span of
// `samples` attending causally to itself alone; positions outside every span get zeros.
torch::Tensor packed_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v,
                               const std::vector<DecoderMask::Span>& samples);

// The queries of a decoder's last layer when only some positions' outputs are wanted
// (LlamaModelImpl::forward's `wanted`): N positions, each a slot of a (B,Tq) query block (Tq the
// most any row has, the rest of the block idle), with the additive mask of what each may see.
struct WantedRows {
  torch::Tensor flat;             // (N) long: b*T + t into the layer's (B*T) positions, ascending
  torch::Tensor input;            // (N) long: their rows in the layer's input (flat; under a Grid,
                                  // the real tokens' numbering)
  torch::Tensor slot;             // (N) long: b*Tq + its rank in row b
  torch::Tensor t;                // (N) long: its position in the row
  torch::Tensor mask;             // (B,1,Tq,S) additive: 0 where the query may look, -1e9 where not
  int64_t rows = 0, per_row = 0;  // B, Tq
  c10::optional<DecoderMask::Grid> grid;  // the decoder's, when its layers run unpadded
};

// The WantedRows of the (B,T) bool `wanted`, for T queries that are the last T of S keys, under
// `mask` (the decoder's: causal, padding, or packed samples, each of which the queries keep).
// Under mask.grid, every wanted position must be a real token.
WantedRows wanted_rows(const torch::Tensor& wanted, int64_t S, const DecoderMask& mask,
                       const torch::TensorOptions& options);

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const LlmConfig& c);
  // x (B,T,C); cos/sin (T,D) or (B,T,D); mask: the decoder's (decoder_mask). Returns (B,T,C).
  // With `cache_k`/`cache_v` (a layer's slot of a KvCache), x holds only the new positions: their
  // keys and values are appended, and they attend to every cached position (S = cached + T).
  // `extras`: visual experts' projections for image positions, adaption prompts (LayerExtras).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const DecoderMask& mask, torch::Tensor* cache_k = nullptr,
                        torch::Tensor* cache_v = nullptr, const LayerExtras* extras = nullptr);
  // The outputs at rows.flat only, (N,C): keys and values from every position of x (and the
  // cache, which grows as forward's does), queries from the wanted ones alone.
  torch::Tensor forward_rows(const torch::Tensor& x, const torch::Tensor& cos,
                             const torch::Tensor& sin, const WantedRows& rows,
                             torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr);
  LoraLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t heads, kv_heads, head_dim;
};
TORCH_MODULE(LlamaAttention);

class LlamaMlpImpl : public torch::nn::Module {
 public:
  explicit LlamaMlpImpl(const LlmConfig& c);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  LoraLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMlp);

// One expert of a Mixtral MoE block: w2(silu(w1 x) * w3 x).
class MixtralExpertImpl : public torch::nn::Module {
 public:
  explicit MixtralExpertImpl(const LlmConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  LoraLinear w1{nullptr}, w2{nullptr}, w3{nullptr};
};
TORCH_MODULE(MixtralExpert);

// Mixtral's sparse feed-forward: router softmax (fp32) -> top-k -> weights renormalised to sum to
// one -> the weighted sum of the chosen experts' outputs. Each token runs only its k experts.
class MixtralSparseMoeImpl : public torch::nn::Module {
 public:
  explicit MixtralSparseMoeImpl(const LlmConfig& c);
  // x (B,T,C) -> (B,T,C); router_logits (B*T,E) is set to the router's output.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor& router_logits);
  LoraLinear gate{nullptr};
  torch::nn::ModuleList experts{nullptr};
  int64_t top_k;
};
TORCH_MODULE(MixtralSparseMoe);

// Mixtral's load-balancing auxiliary loss (transformers' load_balancing_loss_func, Switch
// Transformer eq. 4-6 with top-k): E * sum_{k,e} f[k,e] * P[e] over the router logits of all
// layers, f[k,e] the fraction of tokens whose k-th choice is e, P[e] the mean router probability
// of e; with `attention_mask` (B,T) only real tokens count. 2.0 for a balanced top-2 router.
torch::Tensor load_balancing_loss(const std::vector<torch::Tensor>& router_logits,
                                  int64_t num_experts, int64_t top_k,
                                  const torch::Tensor& attention_mask = {});

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlmConfig& c);
  // router_logits: set for MoE layers, left alone otherwise. `extras`: what a connector changes
  // inside the layer (LayerExtras; a visual expert needs a dense layer).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const DecoderMask& mask, torch::Tensor& router_logits,
                        torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr,
                        const LayerExtras* extras = nullptr);
  // The layer's outputs at rows.flat only, (N,C) (a dense layer without extras).
  torch::Tensor forward_rows(const torch::Tensor& x, const torch::Tensor& cos,
                             const torch::Tensor& sin, const WantedRows& rows,
                             torch::Tensor* cache_k = nullptr, torch::Tensor* cache_v = nullptr);
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};                       // dense layers
  MixtralSparseMoe block_sparse_moe{nullptr};  // MoE layers
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlmConfig& c);
  // inputs_embeds (B,T,C); attention_mask (B,T) with 1 for real tokens (or, in packed rows, the
  // number of the sample each token belongs to: decoder_mask), or undefined when every token is
  // real; position_ids (B,T) or undefined for 0..T-1 (left-padded generation passes
  // them). Returns the final-normed hidden states (B,T,C). With `hidden_states`, also collects
  // HF's output_hidden_states: the embeddings, then each layer's output, the last one normed.
  // `extension`, when given, acts before and inside each layer (feature-level connectors:
  // DecoderExtension). With `cache`,
  // inputs_embeds are the positions after the cached ones: attention_mask then covers all of them
  // (B, cached + T), position_ids default to cached..cached+T-1, and the cache grows by T.
  // `wanted` (B,T) bool, when given, names the positions whose hidden states the caller reads
  // (the supervised ones, the last one to generate from): the others may come back as zeros.
  // The last layer then runs its queries, attention, MLP and the final norm at those positions
  // only, as no later layer needs the others' outputs (its keys and values still come from every
  // position); the same values, a layer's worth of work less. Not for MoE layers (the router's
  // auxiliary loss counts every token), a last layer with extras, or with hidden_states.
  // Padding (zeros in a 0/1 attention_mask) is skipped: the layers run on the real tokens alone
  // (DecoderMask::Grid), and padded positions come back as zeros; not with a cache, an
  // extension, MoE layers or hidden_states, which run the padded grid whole.
  torch::Tensor forward(const torch::Tensor& inputs_embeds,
                        const torch::Tensor& attention_mask = {},
                        const torch::Tensor& position_ids = {},
                        std::vector<torch::Tensor>* hidden_states = nullptr,
                        DecoderExtension* extension = nullptr, KvCache* cache = nullptr,
                        const torch::Tensor& wanted = {});
  // Gradient checkpointing (models/llm/layer_checkpoint.h): when on, a layer that would build a
  // graph (grad mode on, its input or a parameter requiring grad) keeps only its input and is run
  // again in backward. Same loss and gradients, less memory; off by default. An extension's
  // before_layer runs outside the checkpoint; what it changes inside a layer is recomputed with the
  // layer.
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  bool gradient_checkpointing() const { return gradient_checkpointing_; }
  // Sharded weights (models/llm/layer_shards.h): called around each layer; nullptr = none.
  void set_layer_shards(LayerShards* shards) { shards_ = shards; }

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
  // Set by forward for MoE models: each layer's router logits (B*T,E), for the auxiliary loss.
  std::vector<torch::Tensor> router_logits;

 private:
  LlmConfig config_;
  bool gradient_checkpointing_ = false;
  LayerShards* shards_ = nullptr;
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  explicit LlamaForCausalLMImpl(const LlmConfig& c);
  torch::Tensor embed(const torch::Tensor& input_ids);  // (B,T) -> (B,T,C)
  // (B,T,C) -> (B,T,C) hidden states after the final norm (see LlamaModelImpl::forward).
  torch::Tensor forward(const torch::Tensor& inputs_embeds,
                        const torch::Tensor& attention_mask = {},
                        const torch::Tensor& position_ids = {},
                        std::vector<torch::Tensor>* hidden_states = nullptr,
                        DecoderExtension* extension = nullptr, KvCache* cache = nullptr,
                        const torch::Tensor& wanted = {});
  // The load-balancing loss of the last forward (undefined for dense models).
  torch::Tensor aux_loss(const torch::Tensor& attention_mask = {}) const;
  torch::Tensor logits(const torch::Tensor& hidden);  // (...,C) -> (...,V)
  // log softmax(logits(hidden))[i, targets[i]]: hidden (N,C), targets (N) -> (N) fp32, the LM head
  // run in chunks of rows so that at most max_logits() fp32 logits exist at once, forward or
  // backward (models/llm/lm_head_logprobs.h). An LM head with a LoRA adapter runs unchunked.
  torch::Tensor target_logprobs(const torch::Tensor& hidden, const torch::Tensor& targets);
  // The bound on the logits of target_logprobs (elements; <= 0: none). 64 Mi by default (256 MiB
  // of fp32: 441 rows of a 152k vocabulary at a time).
  void set_max_logits(int64_t n) { max_logits_ = n; }
  int64_t max_logits() const { return max_logits_; }
  const LlmConfig& config() const { return config_; }
  // Grows the vocabulary to `vocab` rows (a tokenizer with added tokens such as <image>): the
  // existing rows of embed_tokens and lm_head are kept, each new row is the mean of the old ones
  // (the centre of transformers' mean_resizing). Parameters keep their identity.
  void resize_vocab(int64_t vocab);

  LlamaModel model{nullptr};
  LoraLinear lm_head{nullptr};  // absent when tie_word_embeddings

 private:
  LlmConfig config_;
  int64_t max_logits_ = int64_t{64} << 20;
};
TORCH_MODULE(LlamaForCausalLM);

}  // namespace mllm
