#include "models/llm/lm_head_logprobs.h"

#include <algorithm>

#include "core/torch_compat.h"

namespace mllm {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dtype an LM head's matmul runs in: autocast's for the device when it is on.
at::ScalarType compute_dtype(const torch::Tensor& hidden) {
  const auto s = autocast_state();
  if (hidden.is_cuda() && s.cuda) return s.cuda_dtype;
  if (hidden.is_cpu() && s.cpu) return s.cpu_dtype;
  return hidden.scalar_type();
}

class LmHeadLogprobs : public torch::autograd::Function<LmHeadLogprobs> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& targets,
                               int64_t chunk, int64_t dtype) {
    const auto dt = static_cast<at::ScalarType>(dtype);
    const auto N = hidden.size(0);
    const auto w = weight.to(dt);
    auto out = torch::empty({N}, hidden.options().dtype(torch::kFloat));
    auto lse = torch::empty({N}, hidden.options().dtype(torch::kFloat));
    torch::Tensor kept;  // one chunk's worth: its logits are kept for backward, not recomputed
    for (int64_t i = 0; i < N; i += chunk) {
      const auto n = std::min(chunk, N - i);
      const auto logits = torch::matmul(hidden.narrow(0, i, n).to(dt), w.t()).to(torch::kFloat);
      const auto l = logits.logsumexp(-1);
      lse.narrow(0, i, n).copy_(l);
      out.narrow(0, i, n).copy_(logits.gather(1, targets.narrow(0, i, n).unsqueeze(1)).squeeze(1) -
                                l);
      if (N <= chunk) kept = logits;
    }
    ctx->save_for_backward({hidden, weight, targets, lse, kept});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["dtype"] = dtype;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &hidden = saved[0], &weight = saved[1], &targets = saved[2], &lse = saved[3],
               &kept = saved[4];
    const auto chunk = ctx->saved_data["chunk"].toInt();
    const auto dt = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const bool need_h = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    const auto go = grads[0].to(torch::kFloat);
    const auto w = weight.to(dt);
    const auto N = hidden.size(0);
    torch::Tensor grad_h, grad_w;
    if (need_h) grad_h = torch::empty_like(hidden);
    if (need_w && N == 0) grad_w = torch::zeros(weight.sizes(), weight.options());
    for (int64_t i = 0; i < N && (need_h || need_w); i += chunk) {
      const auto n = std::min(chunk, N - i);
      const auto h = hidden.narrow(0, i, n).to(dt);
      const auto g_out = go.narrow(0, i, n).unsqueeze(1);  // (n,1)
      const auto logits = kept.defined() ? kept : torch::matmul(h, w.t()).to(torch::kFloat);
      // d logp_t / d logits = onehot(t) - softmax(logits), scaled by the incoming gradient.
      auto g = (logits - lse.narrow(0, i, n).unsqueeze(1)).exp_().mul_(-g_out);
      g.scatter_add_(1, targets.narrow(0, i, n).unsqueeze(1), g_out);
      const auto gd = g.to(dt);
      if (need_h) grad_h.narrow(0, i, n).copy_(torch::matmul(gd, w));
      if (need_w) {
        // Accumulated in fp32 across chunks (the first one's product is the sum so far).
        const auto part = torch::matmul(gd.t(), h).to(torch::kFloat);
        grad_w = grad_w.defined() ? grad_w.add_(part) : part;
      }
    }
    return {grad_h, need_w ? grad_w.to(weight.scalar_type()) : torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor lm_head_target_logprobs(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& targets, int64_t max_logits) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "lm_head_target_logprobs: hidden ", hidden.sizes(), ", weight ", weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "lm_head_target_logprobs: ", targets.size(0), " targets for ", hidden.size(0),
              " rows");
  const int64_t N = hidden.size(0), V = weight.size(0);
  const int64_t chunk = max_logits > 0 ? std::max<int64_t>(1, max_logits / std::max<int64_t>(V, 1))
                                       : std::max<int64_t>(N, 1);
  return LmHeadLogprobs::apply(hidden, weight, targets.to(torch::kLong), chunk,
                               static_cast<int64_t>(compute_dtype(hidden)));
}

}  // namespace mllm
