// The LM head and the log-softmax of the target tokens fused, in chunks of rows: a model with a
// large vocabulary (Qwen2's 152k) and thousands of supervised positions per batch would otherwise
// hold an (N,V) fp32 logits tensor of gigabytes, and autograd would keep it (the log-softmax's
// output) until backward. Here no more than `max_logits` logits exist at once, in the forward or
// the backward pass: the forward keeps each row's log-sum-exp, and the backward computes each
// chunk's logits again and turns them into the gradient of the hidden states and of the weight at
// once (d logp_t / d logits = onehot(t) - softmax). When all rows fit in one chunk, the forward's
// logits are kept for backward instead (the same bounded tensor, not a second GEMM). The idea of
// Liger-Kernel's fused linear cross-entropy and of torchtune's chunked output loss.
#pragma once

#include <torch/torch.h>

namespace mllm {

// log softmax(hidden @ weight^T)[i, targets[i]] for each row i: hidden (N,C), weight (V,C),
// targets (N) int64 in [0,V). Returns (N) fp32. The matmuls run in the autocast dtype when
// autocast is on for hidden's device (as an LM head under autocast does), else in hidden's dtype;
// the softmax is fp32. Gradients reach hidden and weight (whichever require them) and equal those
// of the unchunked `log_softmax(linear(hidden, weight).float()).gather(targets)`.
// `max_logits` <= 0: one chunk.
torch::Tensor lm_head_target_logprobs(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& targets, int64_t max_logits);

}  // namespace mllm
