#include "models/llm/layer_checkpoint.h"

#include "core/torch_compat.h"

namespace mllm {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What backward needs besides the saved input. The autograd node owns it (through a capsule in
// ctx->saved_data, the one slot of a custom Function that holds an arbitrary C++ object).
struct Recompute : torch::CustomClassHolder {
  std::shared_ptr<LlamaDecoderLayerImpl> layer;
  torch::Tensor cos, sin;
  DecoderMask mask;
  LayerExtras extras;  // empty() when none
  // The layer's trainable parameters, then extras.grad_inputs(), as passed after x.
  std::vector<torch::Tensor> params;
  RngState rng;
  AutocastState autocast;
  bool moe = false;
  const LayerExtras* extras_ptr() const { return extras.empty() ? nullptr : &extras; }
};

// Restores the random generators' current state when it goes out of scope.
class RngFork {
 public:
  explicit RngFork(const at::Device& device) : saved_(save_rng_state(device)) {}
  ~RngFork() { restore_rng_state(saved_); }
  RngFork(const RngFork&) = delete;
  RngFork& operator=(const RngFork&) = delete;

 private:
  RngState saved_;
};

struct LayerCheckpoint : torch::autograd::Function<LayerCheckpoint> {
  // inputs: {x (B,T,C), trainable params...}. Returns {y} or, for an MoE layer, {y, logits}.
  // Function::apply runs this with grad mode off: nothing of the layer's graph is kept.
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<Recompute> r,
                               at::TensorList inputs) {
    const auto& x = inputs[0];
    r->rng = save_rng_state(x.device());
    r->autocast = autocast_state();
    torch::Tensor logits;
    FuseWithoutGradScope fused;  // the projections as the recomputation (with gradients) runs them
    auto y =
        r->layer->forward(x, r->cos, r->sin, r->mask, logits, nullptr, nullptr, r->extras_ptr());
    r->moe = logits.defined();
    ctx->save_for_backward({x});
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(r);
    if (r->moe) return {y, logits};
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto r =
        c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["recompute"].toCapsule());
    const auto saved = ctx->get_saved_variables()[0];
    const bool x_grad = ctx->needs_input_grad(0);
    const auto x = saved.detach().requires_grad_(x_grad);

    // The forward again, with gradients, the random numbers and the autocast settings it had.
    torch::Tensor y, logits;
    {
      RngFork fork(r->rng.device);
      restore_rng_state(r->rng);
      torch::AutoGradMode grad_mode(true);
      AutocastStateScope autocast(r->autocast);
      y = r->layer->forward(x, r->cos, r->sin, r->mask, logits, nullptr, nullptr, r->extras_ptr());
    }

    std::vector<torch::Tensor> outputs, output_grads;
    if (y.requires_grad()) outputs.push_back(y), output_grads.push_back(grads[0]);
    if (r->moe && logits.requires_grad())
      outputs.push_back(logits), output_grads.push_back(grads[1]);
    std::vector<torch::Tensor> wrt;
    if (x_grad) wrt.push_back(x);
    wrt.insert(wrt.end(), r->params.begin(), r->params.end());
    std::vector<torch::Tensor> g(wrt.size());
    if (!outputs.empty() && !wrt.empty())
      g = torch::autograd::grad(outputs, wrt, output_grads, /*retain_graph=*/false,
                                /*create_graph=*/false, /*allow_unused=*/true);

    // One per forward argument: none for `r`, then x, then the parameters.
    variable_list result{torch::Tensor()};
    size_t k = 0;
    result.push_back(x_grad ? g[k++] : torch::Tensor());
    for (size_t i = 0; i < r->params.size(); ++i) result.push_back(g[k++]);
    return result;
  }
};

}  // namespace

bool wants_checkpoint(const LlamaDecoderLayerImpl& layer, const torch::Tensor& x,
                      const LayerExtras* extras) {
  if (!torch::GradMode::is_enabled()) return false;
  if (x.requires_grad()) return true;
  if (extras && !extras->grad_inputs().empty()) return true;
  for (const auto& p : layer.parameters())
    if (p.requires_grad()) return true;
  return false;
}

torch::Tensor checkpointed_layer_forward(const std::shared_ptr<LlamaDecoderLayerImpl>& layer,
                                         const torch::Tensor& x, const torch::Tensor& cos,
                                         const torch::Tensor& sin, const DecoderMask& mask,
                                         torch::Tensor& router_logits, const LayerExtras* extras) {
  auto r = c10::make_intrusive<Recompute>();
  r->layer = layer;
  r->cos = cos;
  r->sin = sin;
  r->mask = mask;
  for (const auto& p : layer->parameters())
    if (p.requires_grad()) r->params.push_back(p);
  if (extras) {
    r->extras = *extras;
    // The non-leaf ones (prompts made from the image) receive their gradient at their own node:
    // autograd::grad stops there, and the Function's output edge carries it on.
    for (const auto& t : extras->grad_inputs()) r->params.push_back(t);
  }
  std::vector<torch::Tensor> inputs{x};
  inputs.insert(inputs.end(), r->params.begin(), r->params.end());
  // A std::vector argument would not count as an input: pass a TensorList (see LIBTORCH.md).
  const auto out = LayerCheckpoint::apply(r, at::TensorList(inputs));
  if (out.size() > 1) router_logits = out[1];
  return out[0];
}

}  // namespace mllm
