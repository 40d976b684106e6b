// Gradient checkpointing of one decoder layer (train.gradient_checkpointing): the forward keeps
// only the layer's input, and backward runs the layer again with gradients to get them. Memory
// per layer drops from every intermediate activation to one (B,T,C) input, for about one more
// forward per step. LibTorch has no torch.utils.checkpoint (pytorch#52744), so this is a custom
// autograd Function in the manner of the reentrant torch.utils.checkpoint.CheckpointFunction
// (torch/utils/checkpoint.py, v2.1): forward without a graph, saving the input, the random
// generators' states (dropout in LoRA adapters draws from them) and the autocast state; backward
// restores them, recomputes with gradients and returns the gradients w.r.t. the input and the
// layer's trainable parameters. The generators are put back as they were after the recompute, so
// a checkpointed run draws the same random numbers as a plain one.
//
// Mixture-of-experts layers are checkpointed too: the router logits (N,E) are a second output of
// the Function, so the load-balancing loss still reaches the router through it.
#pragma once

#include <torch/torch.h>

#include "models/llm/llama.h"

namespace mllm {

// Whether a checkpointed forward would differ from a plain one in what it saves: grad mode is on
// and the input, a parameter of `layer` or a tensor of `extras` requires grad.
bool wants_checkpoint(const LlamaDecoderLayerImpl& layer, const torch::Tensor& x,
                      const LayerExtras* extras = nullptr);

// Same as layer->forward(x, cos, sin, mask, router_logits, nullptr, nullptr, extras) (x (B,T,C) ->
// (B,T,C)), keeping only x for backward. `layer` and the modules `extras` names must outlive the
// graph this builds (the model owns them); the gradients of extras.grad_inputs() flow through.
torch::Tensor checkpointed_layer_forward(const std::shared_ptr<LlamaDecoderLayerImpl>& layer,
                                         const torch::Tensor& x, const torch::Tensor& cos,
                                         const torch::Tensor& sin, const DecoderMask& mask,
                                         torch::Tensor& router_logits,
                                         const LayerExtras* extras = nullptr);

}  // namespace mllm
