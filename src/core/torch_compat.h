// Every difference between Debian's LibTorch 1.13 and the CUDA LibTorch 2.x builds lives here, so
// the rest of the code is written once against the API common to both.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#define MLLM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||       \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace mllm {

// Scaled dot-product attention. q is (B,H,T,D), k and v are (B,H,S,D); `mask` is an optional
// additive float mask broadcastable to (B,H,T,S). Returns (B,H,T,D).
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& mask, bool is_causal) {
#if MLLM_TORCH_AT_LEAST(2, 0)
  c10::optional<at::Tensor> m;
  if (mask.has_value()) m = mask->to(q.scalar_type());
  if (!mask.has_value()) return at::scaled_dot_product_attention(q, k, v, m, 0.0, is_causal);
  // With a padding mask, causality is folded into the mask (2.x rejects mask + is_causal).
  const auto T = q.size(-2), S = k.size(-2);
  auto causal = at::ones({T, S}, q.options().dtype(at::kBool)).triu(S - T + 1);
  return at::scaled_dot_product_attention(
      q, k, v, is_causal ? (*m + at::zeros({T, S}, m->options())).masked_fill(causal, -1e9) : *m,
      0.0, false);
#else
  if (!mask.has_value())
    return std::get<0>(at::_scaled_dot_product_attention(q, k, v, {}, 0.0, false, is_causal));
  // 1.13's fused entry point does not combine a mask with is_causal: do the math explicitly.
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = at::matmul(q, k.transpose(-2, -1)) * scale + *mask;
  if (is_causal) {
    const auto T = q.size(-2), S = k.size(-2);
    auto causal = at::ones({T, S}, q.options().dtype(at::kBool)).triu(S - T + 1);
    scores = scores.masked_fill(causal, -std::numeric_limits<float>::infinity());
  }
  return at::matmul(at::softmax(scores, -1, at::kFloat).to(q.scalar_type()), v);
#endif
}

// Enables autocast to `dtype` on `device_type` for the lifetime of the scope (bf16 mixed
// precision).
class AutocastScope {
 public:
  AutocastScope(bool enabled, at::DeviceType device_type, at::ScalarType dtype)
      : enabled_(enabled), device_type_(device_type) {
    if (!enabled_) return;
#if MLLM_TORCH_AT_LEAST(2, 4)
    prev_enabled_ = at::autocast::is_autocast_enabled(device_type_);
    prev_dtype_ = at::autocast::get_autocast_dtype(device_type_);
    at::autocast::set_autocast_enabled(device_type_, true);
    at::autocast::set_autocast_dtype(device_type_, dtype);
#else
    if (device_type_ == at::kCUDA) {
      prev_enabled_ = at::autocast::is_enabled();
      prev_dtype_ = at::autocast::get_autocast_gpu_dtype();
      at::autocast::set_enabled(true);
      at::autocast::set_autocast_gpu_dtype(dtype);
    } else {
      prev_enabled_ = at::autocast::is_cpu_enabled();
      prev_dtype_ = at::autocast::get_autocast_cpu_dtype();
      at::autocast::set_cpu_enabled(true);
      at::autocast::set_autocast_cpu_dtype(dtype);
    }
#endif
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if MLLM_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_enabled(device_type_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_type_, prev_dtype_);
#else
    if (device_type_ == at::kCUDA) {
      at::autocast::set_enabled(prev_enabled_);
      at::autocast::set_autocast_gpu_dtype(prev_dtype_);
    } else {
      at::autocast::set_cpu_enabled(prev_enabled_);
      at::autocast::set_autocast_cpu_dtype(prev_dtype_);
    }
#endif
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  at::DeviceType device_type_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

}  // namespace mllm

#include <torch/optim/optimizer.h>

namespace mllm {

namespace detail {
template <class Key>
Key optimizer_state_key(const at::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>)
    return c10::guts::to_string(p.unsafeGetTensorImpl());
  else
    return static_cast<Key>(p.unsafeGetTensorImpl());
}
}  // namespace detail

// The optimizer's per-parameter state for `p` (null if none yet). The state map is keyed by a
// string of the TensorImpl address in 1.13 and by the address itself in later releases.
inline torch::optim::OptimizerParamState* optimizer_param_state(torch::optim::Optimizer& opt,
                                                                const at::Tensor& p) {
  auto& state = opt.state();
  using Key = typename std::decay_t<decltype(state)>::key_type;
  auto it = state.find(detail::optimizer_state_key<Key>(p));
  return it == state.end() ? nullptr : it->second.get();
}

}  // namespace mllm
