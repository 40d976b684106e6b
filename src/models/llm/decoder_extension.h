// How feature-level connectors take part in the LLM's decoder for one forward pass (or one
// generation): before a layer (Flamingo's gated cross-attention blocks change the layer's input)
// or inside it (CogVLM's visual experts replace the layer's projections and MLP at image positions;
// LLaMA-Adapter's prompts add a gated attention over learned keys and values). The decoder asks its
// extension at each layer; without one (token-level connectors, text-only LLM use) nothing changes.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace mllm {

class LlamaAttentionImpl;
class LlamaMlpImpl;

// What one decoder layer does beyond its own weights in one forward.
struct LayerExtras {
  // Visual expert (CogVLM, Wang et al. 2023, sec. 3.1): the positions `expert_rows` go through
  // expert_attn's q/k/v/o projections and expert_mlp instead of the layer's own, the other
  // positions (`own_rows`) through the layer's; attention itself is joint over all positions.
  // Rows index the forward's B*T positions, flattened row-major (int64, on the hidden states'
  // device); `restore` (B*T) puts the concatenation [own rows; expert rows] back in position
  // order.
  LlamaAttentionImpl* expert_attn = nullptr;
  LlamaMlpImpl* expert_mlp = nullptr;
  torch::Tensor own_rows, expert_rows, restore;

  // Adaption prompts (LLaMA-Adapter, Zhang et al. 2023, eq. 6-8): K prompt tokens `prompts`
  // (B,K,C) whose keys and values the layer's own k_proj and v_proj make (no rotary: they have no
  // position). Every query attends to its row's prompts in a softmax of their own, without the
  // causal mask; the result, scaled per head by tanh(prompt_gate) (H), joins the attention's output
  // before o_proj. `prompt_mask` (B,1,T,K), additive, restricts the tokens of a packed row to
  // their own sample's prompts.
  torch::Tensor prompts, prompt_gate;
  c10::optional<torch::Tensor> prompt_mask;

  bool has_expert() const { return expert_attn != nullptr; }
  bool has_prompts() const { return prompts.defined(); }
  bool empty() const { return !has_expert() && !has_prompts(); }
  // The tensors above that require grad (the experts' trainable parameters, prompts, gate): what
  // gradient checkpointing must pass through its Function for their gradients to flow.
  std::vector<torch::Tensor> grad_inputs() const;
};

class DecoderExtension {
 public:
  virtual ~DecoderExtension() = default;
  // Before decoder layer `layer`: its new input, from h (B,T,C).
  virtual torch::Tensor before_layer(int64_t layer, const torch::Tensor& h) {
    (void)layer;
    return h;
  }
  // Inside decoder layer `layer`, for the T positions that follow `past` cached ones (a
  // generation's later steps have past > 0).
  virtual LayerExtras in_layer(int64_t layer, int64_t past, int64_t T) {
    (void)layer, (void)past, (void)T;
    return {};
  }
};

}  // namespace mllm
