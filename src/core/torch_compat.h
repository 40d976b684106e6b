// Every difference between Debian's LibTorch 1.13 and the CUDA LibTorch 2.x builds lives here, so
// the rest of the code is written once against the API common to both.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <vector>

#define MLLM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||       \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace c10d {
class ProcessGroup;
class Backend;
}  // namespace c10d

namespace mllm {

// The class a c10d backend (ProcessGroupGloo, ProcessGroupNCCL) derives from, whose collectives
// take tensors directly: ProcessGroup in 1.13; in 2.x ProcessGroup dispatches to a Backend.
#if MLLM_TORCH_AT_LEAST(2, 0)
using CommBackend = c10d::Backend;
#else
using CommBackend = c10d::ProcessGroup;
#endif

// The causal mask of T queries that are the last T of S positions (incremental decoding with a
// KV cache when T < S), as an additive float mask (T,S): 0 where a query may look, -1e9 where not.
inline at::Tensor causal_additive_mask(int64_t T, int64_t S, const at::TensorOptions& options) {
  const auto future = at::ones({T, S}, options.dtype(at::kBool)).triu(S - T + 1);
  return at::zeros({T, S}, options.dtype(at::kFloat)).masked_fill(future, -1e9);
}

// Queries per block of attention()'s causal path without a fused kernel (LibTorch before 2.5).
inline constexpr int64_t kCausalQueryBlock = 128;

// Scaled dot-product attention with grouped-query heads. q is (B,H,T,D); k and v are (B,KVH,S,D)
// with H a multiple of KVH: query head h reads kv head h / (H/KVH), the arrangement of
// transformers' repeat_kv, without k and v ever being copied out to H heads. `mask` is an optional
// additive float mask, the same for every head: (T,S), (B,1,1,S) or (B,1,T,S) (padding, the
// block-diagonal mask of packed rows). `is_causal` adds the causal mask, aligned to the end when
// T < S (the queries are the last T of S positions). `mask_hides_future`: the mask itself hides
// every key after its query (the decoder's masks), which lets the blocks below drop those keys.
// Returns (B,H,T,D).
//
// LibTorch 2.5+ runs its fused kernel (flash / memory-efficient on CUDA, the flash-style CPU
// kernel) with enable_gqa. Otherwise the math is explicit and folds each kv head's H/KVH query
// heads into its rows, (B,KVH,(H/KVH)*T,D), so one batched matmul per kv head serves them all;
// the softmax in fp32 (or wider), as transformers' eager attention; causal attention over many
// queries runs in blocks of queries, each against the keys it may see.
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& mask, bool is_causal,
                            bool mask_hides_future = false) {
  const auto B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const auto KVH = k.size(1), S = k.size(2);
  TORCH_CHECK(KVH > 0 && H % KVH == 0, "attention: ", H, " query heads for ", KVH, " kv heads");
  TORCH_CHECK(!mask.has_value() || mask->dim() == 2 || (mask->dim() == 4 && mask->size(1) == 1),
              "attention: the mask must be (T,S) or (B,1,T|1,S), not ", mask->sizes());
#if MLLM_TORCH_AT_LEAST(2, 5)
  static_cast<void>(mask_hides_future);  // the fused kernels take the mask whole
  const bool gqa = KVH != H;
  if (!mask.has_value() && (!is_causal || T == S))
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, is_causal, c10::nullopt, gqa);
  // 2.x rejects a mask together with is_causal: causality joins the mask.
  auto m = mask.has_value() ? mask->to(q.scalar_type()) : at::Tensor();
  if (is_causal) {
    const auto c = causal_additive_mask(T, S, q.options()).to(q.scalar_type());
    m = m.defined() ? m + c : c;
  }
  return at::scaled_dot_product_attention(q, k, v, m, 0.0, false, c10::nullopt, gqa);
#else
  // Causal attention over many queries: in blocks of kCausalQueryBlock queries, each block
  // against the keys up to its last query (all it may see), so most of the masked upper triangle
  // of the scores is never computed: n blocks do (n+1)/2n of the whole product's work, its
  // softmax and its mask. Exact: each query's row of scores is the same, only shorter (a mask
  // that hides the future hid the keys dropped).
  const bool causal = is_causal || (mask.has_value() && mask_hides_future);
  if (causal && T >= 2 * kCausalQueryBlock) {
    std::vector<at::Tensor> blocks;
    for (int64_t s = 0; s < T; s += kCausalQueryBlock) {
      const auto n = std::min(kCausalQueryBlock, T - s), seen = S - T + s + n;
      c10::optional<at::Tensor> m;
      if (mask.has_value()) {
        m = mask->narrow(-1, 0, seen);
        if (m->size(-2) == T) m = m->narrow(-2, s, n);  // (.., T, S); (B,1,1,S) has no query axis
      }
      blocks.push_back(
          attention(q.narrow(2, s, n), k.narrow(2, 0, seen), v.narrow(2, 0, seen), m, is_causal));
    }
    return at::cat(blocks, 2);
  }
  const auto G = H / KVH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  // (B,H,T,D) -> (B,KVH,G*T,D): head h = kv*G + g, so each kv head's G query heads are adjacent.
  const auto qg = q.reshape({B, KVH, G * T, D});
  auto scores = at::matmul(qg, k.transpose(-2, -1)).mul_(scale).view({B, KVH, G, T, S});
  if (mask.has_value())  // (T,S) broadcasts as it is; (B,1,T|1,S) gains the group axis
    scores = scores + (mask->dim() == 4 ? mask->unsqueeze(2) : *mask);
  if (is_causal) scores = scores + causal_additive_mask(T, S, q.options());
  const auto probs =
      at::softmax(scores, -1, at::promote_types(q.scalar_type(), at::kFloat)).to(q.scalar_type());
  return at::matmul(probs.view({B, KVH, G * T, S}), v).view({B, H, T, D});
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

// The autocast settings of the current thread, CPU and CUDA (what gradient checkpointing replays).
struct AutocastState {
  bool cpu = false, cuda = false;
  at::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
};

inline AutocastState autocast_state() {
  AutocastState s;
#if MLLM_TORCH_AT_LEAST(2, 4)
  s.cpu = at::autocast::is_autocast_enabled(at::kCPU);
  s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
  s.cuda = at::autocast::is_autocast_enabled(at::kCUDA);
  s.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
#else
  s.cpu = at::autocast::is_cpu_enabled();
  s.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
  s.cuda = at::autocast::is_enabled();
  s.cuda_dtype = at::autocast::get_autocast_gpu_dtype();
#endif
  return s;
}

inline void set_autocast_state(const AutocastState& s) {
#if MLLM_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(at::kCPU, s.cpu);
  at::autocast::set_autocast_dtype(at::kCPU, s.cpu_dtype);
  at::autocast::set_autocast_enabled(at::kCUDA, s.cuda);
  at::autocast::set_autocast_dtype(at::kCUDA, s.cuda_dtype);
#else
  at::autocast::set_cpu_enabled(s.cpu);
  at::autocast::set_autocast_cpu_dtype(s.cpu_dtype);
  at::autocast::set_enabled(s.cuda);
  at::autocast::set_autocast_gpu_dtype(s.cuda_dtype);
#endif
}

// Puts `state` in force for the scope's lifetime, then restores what was there (with its own
// nesting level, so casts cached inside are dropped at the end).
class AutocastStateScope {
 public:
  explicit AutocastStateScope(const AutocastState& state)
      : prev_(autocast_state()), active_(state.cpu || state.cuda) {
    set_autocast_state(state);
    if (active_) at::autocast::increment_nesting();
  }
  ~AutocastStateScope() {
    if (active_ && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set_autocast_state(prev_);
  }
  AutocastStateScope(const AutocastStateScope&) = delete;
  AutocastStateScope& operator=(const AutocastStateScope&) = delete;

 private:
  AutocastState prev_;
  bool active_;
};

// The default random generators' states: the CPU one and, for an accelerator `device`, that
// device's (CUDA's default generator in a CUDA build). Dropout draws from these.
struct RngState {
  at::Tensor cpu, accelerator;
  at::Device device = at::kCPU;
};

inline RngState save_rng_state(const at::Device& device) {
  RngState s;
  s.device = device;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    s.cpu = gen.get_state();
  }
  if (!device.is_cpu()) {
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    s.accelerator = gen.get_state();
  }
  return s;
}

inline void restore_rng_state(const RngState& s) {
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(s.cpu);
  }
  if (s.accelerator.defined()) {
    auto gen = at::globalContext().defaultGenerator(s.device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(s.accelerator);
  }
}

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
