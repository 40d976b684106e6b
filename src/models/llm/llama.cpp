#include "models/llm/llama.h"

#include "core/torch_compat.h"
#include "models/llm/layer_checkpoint.h"
#include "models/llm/lm_head_logprobs.h"

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

std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Tensor& positions,
                                                    int64_t head_dim, double theta,
                                                    double scaling_factor,
                                                    const torch::TensorOptions& options) {
  auto f32 = options.dtype(torch::kFloat);
  // inv_freq[i] = theta^(-2i/D) (divided by the linear scaling factor); angles (...,D/2)
  // duplicated to (...,D) for rotate_half.
  auto inv_freq =
      1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, f32) / static_cast<double>(head_dim));
  if (scaling_factor != 1.0) inv_freq = inv_freq / scaling_factor;
  auto angles = positions.to(f32).unsqueeze(-1) * inv_freq;
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
    : heads(c.heads), kv_heads(c.kv_heads), head_dim(c.attention_head_dim()) {
  const bool qkv_bias = c.type == "qwen2";
  auto lin = [](int64_t in, int64_t out, bool bias) { return LoraLinear(in, out, bias); };
  q_proj = register_module("q_proj", lin(c.hidden, heads * head_dim, qkv_bias));
  k_proj = register_module("k_proj", lin(c.hidden, kv_heads * head_dim, qkv_bias));
  v_proj = register_module("v_proj", lin(c.hidden, kv_heads * head_dim, qkv_bias));
  o_proj = register_module("o_proj", lin(heads * head_dim, c.hidden, false));
}

std::vector<torch::Tensor> LayerExtras::grad_inputs() const {
  std::vector<torch::Tensor> out;
  auto add = [&out](const torch::Tensor& t) {
    if (t.defined() && t.requires_grad()) out.push_back(t);
  };
  if (expert_attn)
    for (const auto& p : expert_attn->parameters()) add(p);
  if (expert_mlp)
    for (const auto& p : expert_mlp->parameters()) add(p);
  add(prompts);
  add(prompt_gate);
  return out;
}

namespace {
// (1,N,h,D) of the real tokens -> (B,T,h,D) on the padded grid, zeros at the padding.
torch::Tensor on_grid(const torch::Tensor& t, const DecoderMask::Grid& grid) {
  return torch::zeros({grid.rows * grid.length, t.size(2), t.size(3)}, t.options())
      .index_copy(0, grid.real, t.squeeze(0))
      .view({grid.rows, grid.length, t.size(2), t.size(3)});
}

// x (B,T,C) through `own` at extras.own_rows and `expert` at extras.expert_rows: each output
// (B,T,O_i) with every position's row from the function that owns it. Two GEMMs on the rows each
// needs (index_select), not both on every row.
template <typename Own, typename Expert>
std::vector<torch::Tensor> by_rows(const torch::Tensor& x, const LayerExtras& extras, Own own,
                                   Expert expert) {
  const auto B = x.size(0), T = x.size(1);
  const auto flat = x.reshape({B * T, x.size(2)});
  const std::vector<torch::Tensor> a = own(flat.index_select(0, extras.own_rows));
  const std::vector<torch::Tensor> b = expert(flat.index_select(0, extras.expert_rows));
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < a.size(); ++i)
    out.push_back(
        torch::cat({a[i], b[i]}, 0).index_select(0, extras.restore).view({B, T, a[i].size(-1)}));
  return out;
}
}  // namespace

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                          const torch::Tensor& sin, const DecoderMask& mask,
                                          torch::Tensor* cache_k, torch::Tensor* cache_v,
                                          const LayerExtras* extras) {
  const auto B = x.size(0), T = x.size(1);
  torch::Tensor joint;
  const bool expert = extras && extras->has_expert();
  // Under a grid, q/k/v go onto it for attention — unless attention runs per run of real tokens
  // on the row they are in (the grid's spans).
  const bool per_run = mask.grid && !mask.grid->spans.empty(), to_grid = mask.grid && !per_run;
  const auto qkv =
      expert ? by_rows(
                   x, *extras,
                   [this](const torch::Tensor& r) {
                     return fused_linear(r, {q_proj.get(), k_proj.get(), v_proj.get()});
                   },
                   [e = extras->expert_attn](const torch::Tensor& r) {
                     return fused_linear(r, {e->q_proj.get(), e->k_proj.get(), e->v_proj.get()});
                   })
             : fused_linear(x, {q_proj.get(), k_proj.get(), v_proj.get()}, &joint);
  auto v = qkv[2].reshape({B, T, kv_heads, head_dim});  // (B,T,KVH,D)
  // (T,D) tables broadcast as (T,1,D), per-row (B,T,D) ones as (B,T,1,D).
  const auto c = cos.to(qkv[0].scalar_type()).unsqueeze(-2),
             s = sin.to(qkv[0].scalar_type()).unsqueeze(-2);
  torch::Tensor q, k;  // (B,T,H,D), (B,T,KVH,D)
  if (joint.defined()) {
    // q and k side by side in the fused output (B,T,H+KVH,D): one rotary pass for both heads.
    auto qk =
        joint.narrow(-1, 0, (heads + kv_heads) * head_dim).view({B, T, heads + kv_heads, head_dim});
    qk = qk * c + rotate_half(qk) * s;
    if (to_grid) qk = on_grid(qk, *mask.grid);
    q = qk.narrow(2, 0, heads);
    k = qk.narrow(2, heads, kv_heads);
  } else {
    q = qkv[0].reshape({B, T, heads, head_dim});
    k = qkv[1].reshape({B, T, kv_heads, head_dim});
    q = q * c + rotate_half(q) * s;
    k = k * c + rotate_half(k) * s;
    if (to_grid) q = on_grid(q, *mask.grid), k = on_grid(k, *mask.grid);
  }
  if (to_grid) v = on_grid(v, *mask.grid);
  q = q.transpose(1, 2), k = k.transpose(1, 2), v = v.transpose(1, 2);  // (B,H|KVH,T,D)
  if (cache_k && cache_v) {
    if (cache_k->defined()) {
      k = torch::cat({*cache_k, k}, 2);
      v = torch::cat({*cache_v, v}, 2);
    }
    *cache_k = k, *cache_v = v;
  }
  // Grouped-query attention reads each kv head for its heads/kv_heads query heads in place.
  // An additive mask, when given, is the whole mask (causal included); without one, causal.
  auto y = mask.packed() ? packed_attention(q, k, v, mask.samples)
           : per_run     ? packed_attention(q, k, v, mask.grid->spans)
                         : attention(q, k, v, mask.additive, !mask.additive.has_value(), true);
  if (extras && extras->has_prompts()) {
    // LLaMA-Adapter's zero-init attention: the prompts' keys and values through this layer's own
    // projections, a softmax of their own over them, gated per head (reference: the adapter_*
    // branch of Attention.forward in LLaMA-Adapter's llama/model.py).
    const auto p = extras->prompts.to(x.scalar_type());  // (B,K,C)
    const auto K = p.size(1);
    const auto pkv = fused_linear(p, {k_proj.get(), v_proj.get()});
    const auto pk = pkv[0].reshape({B, K, kv_heads, head_dim}).transpose(1, 2);
    const auto pv = pkv[1].reshape({B, K, kv_heads, head_dim}).transpose(1, 2);
    const auto gate = torch::tanh(extras->prompt_gate).to(y.scalar_type()).view({1, heads, 1, 1});
    y = y + gate * attention(q, pk.to(q.scalar_type()), pv.to(q.scalar_type()), extras->prompt_mask,
                             false);
  }
  auto merged = y.transpose(1, 2).reshape({y.size(0), y.size(2), heads * head_dim});
  if (to_grid)  // off the grid: the real tokens' rows again, (1,N,H*D)
    merged = merged.reshape({-1, heads * head_dim}).index_select(0, mask.grid->real).unsqueeze(0);
  if (!expert) return o_proj(merged);
  return by_rows(
      merged, *extras, [this](const torch::Tensor& r) { return std::vector{o_proj(r)}; },
      [e = extras->expert_attn](const torch::Tensor& r) { return std::vector{e->o_proj(r)}; })[0];
}

WantedRows wanted_rows(const torch::Tensor& wanted, int64_t S, const DecoderMask& mask,
                       const torch::TensorOptions& options) {
  const auto B = wanted.size(0), T = wanted.size(1), past = S - T;
  const auto along = options.dtype(torch::kLong);
  const auto w = wanted.to(options.device(), torch::kBool);
  WantedRows r;
  r.rows = B;
  r.flat = w.reshape({-1}).nonzero().squeeze(1);  // ascending: row by row, as index({wanted})
  r.per_row = r.flat.size(0) > 0 ? w.sum(1).max().item<int64_t>() : 0;
  const auto b = torch::div(r.flat, T, "trunc");
  r.t = r.flat - b * T;
  const auto rank = (w.to(torch::kLong).cumsum(1) - 1).reshape({-1}).index_select(0, r.flat);
  r.slot = b * r.per_row + rank;
  r.input = r.flat;
  r.grid = mask.grid;
  if (mask.grid) {  // each wanted position's number among the real tokens
    const auto& real = mask.grid->real;
    r.input = torch::full({B * T}, -1, along)
                  .index_copy_(0, real, torch::arange(real.size(0), along))
                  .index_select(0, r.flat);
  }
  // What each wanted query sees, (N,S): its row of the additive mask when there is one; else
  // the keys up to its own, from its own sample's first when the rows are packed, its own row's
  // real ones under a grid (with spans, it has no additive mask).
  torch::Tensor seen;
  if (mask.additive) {
    seen = mask.additive->reshape({B * T, S}).index_select(0, r.flat);
  } else {
    const auto keys = torch::arange(S, along).view({1, S});
    auto allowed = keys <= (r.t + past).view({-1, 1});
    if (mask.packed()) {
      std::vector<int64_t> first(static_cast<size_t>(B * T));
      for (int64_t i = 0; i < B * T; ++i) first[static_cast<size_t>(i)] = i % T;  // pads: self
      for (const auto& span : mask.samples)
        for (int64_t t = span.start; t < span.start + span.length; ++t)
          first[static_cast<size_t>(span.row * T + t)] = span.start;
      const auto lowest = torch::tensor(first, torch::kLong).to(options.device());
      allowed = allowed & (keys >= lowest.index_select(0, r.flat).view({-1, 1}));
    }
    if (mask.grid) {  // S == T: no cache under a grid
      const auto real_keys = torch::zeros({B * T}, options.dtype(torch::kBool))
                                 .index_fill_(0, mask.grid->real, true)
                                 .view({B, T});
      allowed = allowed & real_keys.index_select(0, b);
    }
    seen = torch::zeros(allowed.sizes(), options.dtype(torch::kFloat))
               .masked_fill(allowed.logical_not(), -1e9);
  }
  // Idle slots see every key (no row of -1e9 only); what they compute is dropped.
  r.mask = torch::zeros({B * r.per_row, S}, seen.options())
               .index_copy(0, r.slot, seen)
               .view({B, 1, r.per_row, S});
  return r;
}

torch::Tensor LlamaAttentionImpl::forward_rows(const torch::Tensor& x, const torch::Tensor& cos,
                                               const torch::Tensor& sin, const WantedRows& rows,
                                               torch::Tensor* cache_k, torch::Tensor* cache_v) {
  // x (B,T,C), or (1,N,C) under a grid (the real tokens).
  const auto B = x.size(0), T = x.size(1), C = x.size(2), N = rows.flat.size(0);
  const auto kv = fused_linear(x, {k_proj.get(), v_proj.get()});
  auto q = q_proj(x.reshape({B * T, C}).index_select(0, rows.input)).view({N, heads, head_dim});
  auto k = kv[0].reshape({B, T, kv_heads, head_dim});
  auto v = kv[1].reshape({B, T, kv_heads, head_dim});
  const auto c = cos.to(q.scalar_type()), s = sin.to(q.scalar_type());
  // Keys: (T,D) tables broadcast as (T,1,D), per-row (B,T,D) ones as (B,T,1,D). Queries: the
  // tables at each one's own position, (N,1,D).
  k = k * c.unsqueeze(-2) + rotate_half(k) * s.unsqueeze(-2);
  if (rows.grid) k = on_grid(k, *rows.grid), v = on_grid(v, *rows.grid);  // the slots' grid
  k = k.transpose(1, 2), v = v.transpose(1, 2);                           // (B,KVH,T,D)
  auto at_rows = [&](const torch::Tensor& table) {
    return table.dim() == 2 ? table.index_select(0, rows.t)
                            : table.expand({B, T, table.size(-1)})
                                  .reshape({B * T, table.size(-1)})
                                  .index_select(0, rows.input);
  };
  const auto cq = at_rows(c).unsqueeze(1), sq = at_rows(s).unsqueeze(1);
  q = q * cq + rotate_half(q) * sq;
  if (cache_k && cache_v) {
    if (cache_k->defined()) {
      k = torch::cat({*cache_k, k}, 2);
      v = torch::cat({*cache_v, v}, 2);
    }
    *cache_k = k, *cache_v = v;
  }
  // Each row's wanted queries side by side, (B,H,Tq,D), the idle slots zero.
  const auto Bg = rows.rows, Tq = rows.per_row;
  const auto block = torch::zeros({Bg * Tq, heads, head_dim}, q.options())
                         .index_copy(0, rows.slot, q)
                         .view({Bg, Tq, heads, head_dim})
                         .transpose(1, 2);
  const auto y = attention(block, k, v, rows.mask, false);  // (B,H,Tq,D)
  return o_proj(y.transpose(1, 2).reshape({Bg * Tq, heads * head_dim}).index_select(0, rows.slot));
}

LlamaMlpImpl::LlamaMlpImpl(const LlmConfig& c) {
  auto lin = [](int64_t in, int64_t out) { return LoraLinear(in, out, false); };
  gate_proj = register_module("gate_proj", lin(c.hidden, c.intermediate));
  up_proj = register_module("up_proj", lin(c.hidden, c.intermediate));
  down_proj = register_module("down_proj", lin(c.intermediate, c.hidden));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  const auto gate_up = fused_linear(x, {gate_proj.get(), up_proj.get()});
  return down_proj(F::silu(gate_up[0]) * gate_up[1]);
}

MixtralExpertImpl::MixtralExpertImpl(const LlmConfig& c) {
  auto lin = [](int64_t in, int64_t out) { return LoraLinear(in, out, false); };
  w1 = register_module("w1", lin(c.hidden, c.intermediate));
  w2 = register_module("w2", lin(c.intermediate, c.hidden));
  w3 = register_module("w3", lin(c.hidden, c.intermediate));
}

torch::Tensor MixtralExpertImpl::forward(const torch::Tensor& x) {
  return w2(F::silu(w1(x)) * w3(x));
}

MixtralSparseMoeImpl::MixtralSparseMoeImpl(const LlmConfig& c) : top_k(c.experts_per_token) {
  gate = register_module("gate", LoraLinear(c.hidden, c.experts, false));
  experts = register_module("experts", torch::nn::ModuleList());
  for (int64_t e = 0; e < c.experts; ++e) experts->push_back(MixtralExpert(c));
}

torch::Tensor MixtralSparseMoeImpl::forward(const torch::Tensor& x, torch::Tensor& router_logits) {
  const auto C = x.size(-1);
  const auto flat = x.reshape({-1, C});
  router_logits = gate(flat);  // (N,E)
  auto probs = torch::softmax(router_logits, -1, torch::kFloat);
  auto [weights, chosen] = probs.topk(top_k, -1);  // (N,k)
  weights = (weights / weights.sum(-1, true)).to(x.scalar_type());
  auto out = torch::zeros_like(flat);
  for (int64_t e = 0; e < static_cast<int64_t>(experts->size()); ++e) {
    // Rows routed to e, and in which of their k slots.
    const auto hit = (chosen == e).nonzero();  // (n,2): token, slot
    if (hit.size(0) == 0) continue;
    const auto rows = hit.select(1, 0), slots = hit.select(1, 1);
    const auto w = weights.index({rows, slots}).unsqueeze(-1);
    const auto y =
        experts[static_cast<size_t>(e)]->as<MixtralExpert>()->forward(flat.index_select(0, rows));
    out = out.index_add(0, rows, y * w);
  }
  return out.view(x.sizes());
}

torch::Tensor load_balancing_loss(const std::vector<torch::Tensor>& router_logits,
                                  int64_t num_experts, int64_t top_k,
                                  const torch::Tensor& attention_mask) {
  const auto logits = torch::cat(router_logits, 0);  // (L*N,E)
  const auto probs = torch::softmax(logits, -1, torch::kFloat);
  const auto chosen = std::get<1>(probs.topk(top_k, -1));                      // (L*N,k)
  const auto expert_mask = F::one_hot(chosen, num_experts).to(torch::kFloat);  // (L*N,k,E)
  torch::Tensor tokens_per_expert, prob_per_expert;
  if (!attention_mask.defined()) {
    tokens_per_expert = expert_mask.mean(0);  // (k,E)
    prob_per_expert = probs.mean(0);          // (E)
  } else {
    const auto layers = static_cast<int64_t>(router_logits.size());
    const auto m = (attention_mask != 0)
                       .to(torch::kFloat)
                       .reshape({1, -1})
                       .expand({layers, -1})
                       .reshape({-1, 1});  // (L*N,1): layer-major, as the logits are concatenated
    tokens_per_expert = (expert_mask * m.unsqueeze(-1)).sum(0) / m.sum();
    prob_per_expert = (probs * m).sum(0) / m.sum();
  }
  return (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() *
         static_cast<double>(num_experts);
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlmConfig& c) {
  self_attn = register_module("self_attn", LlamaAttention(c));
  if (c.experts > 0)
    block_sparse_moe = register_module("block_sparse_moe", MixtralSparseMoe(c));
  else
    mlp = register_module("mlp", LlamaMlp(c));
  input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RmsNorm(c.hidden, c.rms_norm_eps));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                             const torch::Tensor& sin, const DecoderMask& mask,
                                             torch::Tensor& router_logits, torch::Tensor* cache_k,
                                             torch::Tensor* cache_v, const LayerExtras* extras) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, mask, cache_k, cache_v, extras);
  const auto n = post_attention_layernorm(h);
  if (extras && extras->expert_mlp) {
    if (block_sparse_moe)
      throw std::logic_error("a visual expert's MLP in a mixture-of-experts layer");
    return h + by_rows(
                   n, *extras, [this](const torch::Tensor& r) { return std::vector{mlp(r)}; },
                   [e = extras->expert_mlp](const torch::Tensor& r) {
                     return std::vector{e->forward(r)};
                   })[0];
  }
  return h + (block_sparse_moe ? block_sparse_moe->forward(n, router_logits) : mlp(n));
}

torch::Tensor LlamaDecoderLayerImpl::forward_rows(const torch::Tensor& x, const torch::Tensor& cos,
                                                  const torch::Tensor& sin, const WantedRows& rows,
                                                  torch::Tensor* cache_k, torch::Tensor* cache_v) {
  if (block_sparse_moe) throw std::logic_error("forward_rows on a mixture-of-experts layer");
  const auto h = x.reshape({-1, x.size(-1)}).index_select(0, rows.input) +
                 self_attn->forward_rows(input_layernorm(x), cos, sin, rows, cache_k, cache_v);
  return h + mlp(post_attention_layernorm(h));
}

DecoderMask decoder_mask(const torch::Tensor& attention_mask, int64_t T, int64_t S,
                         const torch::TensorOptions& options, bool padding_runs) {
  DecoderMask out;
  if (!attention_mask.defined()) return out;
  if (attention_mask.size(1) != S)
    throw std::invalid_argument("attention_mask has " + std::to_string(attention_mask.size(1)) +
                                " positions, expected " + std::to_string(S));
  const auto B = attention_mask.size(0);
  const auto [lowest, highest] = at::aminmax(attention_mask);  // one pass, read together
  const auto range = torch::stack({lowest, highest}).to(torch::kCPU, torch::kLong);
  const bool packed = range[1].item<int64_t>() > 1;
  if (!packed && range[0].item<int64_t>() != 0) return out;  // all real: plain causal
  if (!packed && padding_runs && T == S) {
    auto spans = row_spans(attention_mask != 0);
    if (!spans.empty()) {
      out.grid = DecoderMask::Grid{torch::Tensor(), B, T, std::move(spans)};
      return out;
    }
  }
  if (packed && T == S) {
    // Each sample's span: a run of one non-zero value along its row.
    const auto m = attention_mask.to(torch::kCPU, torch::kLong).contiguous();
    const auto a = m.accessor<int64_t, 2>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < S;) {
        int64_t e = t + 1;
        while (e < S && a[b][e] == a[b][t]) ++e;
        if (a[b][t] != 0) out.samples.push_back({b, t, e - t});
        t = e;
      }
    return out;
  }
  // Allowed: real keys (non-zero), of the query's own sample when the row is packed, not after
  // the query. Disallowed scores get -1e9 (finite: a padded query row stays a number).
  const auto keys = attention_mask.view({B, 1, 1, S});
  auto allowed = keys != 0;
  if (packed) allowed = allowed & (attention_mask.slice(1, S - T).view({B, 1, T, 1}) == keys);
  allowed = allowed & torch::ones({T, S}, options.dtype(torch::kBool)).tril(S - T);
  out.additive = torch::zeros(allowed.sizes(), options.dtype(torch::kFloat))
                     .masked_fill(allowed.logical_not(), -1e9);
  return out;
}

std::vector<DecoderMask::Span> row_spans(const torch::Tensor& is_real) {
  const auto B = is_real.size(0), T = is_real.size(1);
  if (T < 2 * kCausalQueryBlock) return {};
  const auto m = is_real.to(torch::kCPU, torch::kBool).contiguous();
  const auto a = m.accessor<bool, 2>();
  std::vector<DecoderMask::Span> spans;
  int64_t offset = 0;
  double squares = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t first = -1, last = -1, count = 0;
    for (int64_t t = 0; t < T; ++t)
      if (a[b][t]) {
        if (first < 0) first = t;
        last = t, ++count;
      }
    if (count == 0) continue;
    if (last - first + 1 != count) return {};  // a hole inside the row
    spans.push_back({0, offset, count});
    offset += count;
    squares += static_cast<double>(count) * static_cast<double>(count);
  }
  if (2 * squares > static_cast<double>(B) * static_cast<double>(T) * static_cast<double>(T))
    return {};
  return spans;
}

torch::Tensor packed_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v,
                               const std::vector<DecoderMask::Span>& samples) {
  const auto B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  // Each row cut at its samples' edges with one split (whose backward is one concatenation, not
  // a zero-filled copy per sample, as slicing's would be).
  std::vector<std::vector<int64_t>> sizes(static_cast<size_t>(B));
  std::vector<std::vector<bool>> is_sample(static_cast<size_t>(B));
  std::vector<int64_t> filled(static_cast<size_t>(B), 0);
  for (const auto& s : samples) {  // in row order, each row's spans by position
    const auto r = static_cast<size_t>(s.row);
    if (s.start > filled[r]) sizes[r].push_back(s.start - filled[r]), is_sample[r].push_back(false);
    sizes[r].push_back(s.length), is_sample[r].push_back(true);
    filled[r] = s.start + s.length;
  }
  const auto qs = q.unbind(0), ks = k.unbind(0), vs = v.unbind(0);  // (H,T,D), (KVH,T,D)
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    const auto r = static_cast<size_t>(b);
    if (filled[r] < T) sizes[r].push_back(T - filled[r]), is_sample[r].push_back(false);
    const auto qp = qs[r].split_with_sizes(sizes[r], 1), kp = ks[r].split_with_sizes(sizes[r], 1),
               vp = vs[r].split_with_sizes(sizes[r], 1);
    std::vector<torch::Tensor> pieces;
    for (size_t i = 0; i < sizes[r].size(); ++i)
      pieces.push_back(is_sample[r][i] ? attention(qp[i].unsqueeze(0), kp[i].unsqueeze(0),
                                                   vp[i].unsqueeze(0), c10::nullopt, true)
                                             .squeeze(0)
                                       : torch::zeros({H, sizes[r][i], D}, q.options()));
    rows.push_back(pieces.size() == 1 ? pieces[0] : torch::cat(pieces, 1));
  }
  return torch::stack(rows, 0);
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
                                      const torch::Tensor& attention_mask,
                                      const torch::Tensor& position_ids,
                                      std::vector<torch::Tensor>* hidden_states,
                                      DecoderExtension* extension, KvCache* cache,
                                      const torch::Tensor& wanted) {
  const auto B = inputs_embeds.size(0), T = inputs_embeds.size(1);
  const int64_t past = cache ? cache->length() : 0;
  const int64_t S = past + T;  // keys attended to
  if (cache && cache->k.empty()) {
    cache->k.resize(layers->size());
    cache->v.resize(layers->size());
  }
  auto positions = position_ids.defined()
                       ? position_ids
                       : torch::arange(past, S, inputs_embeds.options().dtype(torch::kLong));
  // Padding skipped: the layers run on the real tokens in one row, (1,N,C); attention alone puts
  // them on the (B,T) grid (DecoderMask::Grid), or runs per row's run of real tokens (its spans,
  // when decoder_mask finds them: then no (B,1,T,T) mask is built). Whole for what reads or
  // writes every position.
  const bool may_skip = !cache && !extension && !hidden_states && config_.experts == 0;
  auto mask = decoder_mask(attention_mask, T, S, inputs_embeds.options(), may_skip);
  auto h = inputs_embeds;
  auto want = wanted;
  if ((mask.additive || mask.grid) && !mask.packed() && may_skip) {
    const auto is_real = attention_mask.to(inputs_embeds.device()) != 0;
    const auto real = is_real.reshape({-1}).nonzero().squeeze(1);
    if (real.size(0) > 0) {
      auto spans = mask.grid ? std::move(mask.grid->spans) : std::vector<DecoderMask::Span>{};
      mask.grid = DecoderMask::Grid{real, B, T, std::move(spans)};
      h = inputs_embeds.reshape({B * T, -1}).index_select(0, real).unsqueeze(0);
      positions = positions.expand({B, T}).reshape({-1}).index_select(0, real).unsqueeze(0);
      if (want.defined()) want = want.to(is_real.device(), torch::kBool) & is_real;
    }
  }
  const double factor = config_.rope_scaling == "linear" ? config_.rope_scaling_factor : 1.0;
  auto [cos, sin] = rope_tables(positions, config_.attention_head_dim(), config_.rope_theta, factor,
                                inputs_embeds.options());
  router_logits.clear();
  if (hidden_states) hidden_states->assign(1, h);
  for (size_t i = 0; i < layers->size(); ++i) {
    const auto layer = layers->ptr<LlamaDecoderLayerImpl>(i);
    const auto index = static_cast<int64_t>(i);
    LayerExtras extras;
    if (extension) {
      h = extension->before_layer(index, h);
      extras = extension->in_layer(index, past, T);
    }
    const LayerExtras* ex = extras.empty() ? nullptr : &extras;
    if (shards_) shards_->before_layer(index);
    if (want.defined() && !hidden_states && config_.experts == 0 && !ex &&
        i + 1 == layers->size()) {
      const auto rows = wanted_rows(want, S, mask, inputs_embeds.options());
      if (rows.flat.size(0) > 0) {
        // The last layer at the wanted positions alone (not checkpointed: it keeps little).
        auto out = layer->forward_rows(h, cos, sin, rows, cache ? &cache->k[i] : nullptr,
                                       cache ? &cache->v[i] : nullptr);
        if (shards_) out = shards_->after_layer(index, out);
        out = norm(out);
        return torch::zeros({B * T, out.size(-1)}, out.options())
            .index_copy(0, rows.flat, out)
            .view({B, T, out.size(-1)});
      }
    }
    torch::Tensor logits;
    if (cache)
      h = layer->forward(h, cos, sin, mask, logits, &cache->k[i], &cache->v[i], ex);
    else if (gradient_checkpointing_ && wants_checkpoint(*layer, h, ex))
      h = checkpointed_layer_forward(layer, h, cos, sin, mask, logits, ex);
    else
      h = layer->forward(h, cos, sin, mask, logits, nullptr, nullptr, ex);
    if (shards_) h = shards_->after_layer(index, h);
    if (logits.defined()) router_logits.push_back(logits);
    if (hidden_states) hidden_states->push_back(h);
  }
  h = norm(h);
  if (hidden_states) hidden_states->back() = h;
  if (mask.grid)  // back on the grid, zeros at the padding
    h = torch::zeros({B * T, h.size(-1)}, h.options())
            .index_copy(0, mask.grid->real, h.squeeze(0))
            .view({B, T, h.size(-1)});
  return h;
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const LlmConfig& c) : config_(c) {
  model = register_module("model", LlamaModel(c));
  if (!c.tie_word_embeddings)
    lm_head = register_module("lm_head", LoraLinear(c.hidden, c.vocab, false));
}

torch::Tensor LlamaForCausalLMImpl::embed(const torch::Tensor& input_ids) {
  return model->embed_tokens(input_ids);
}

torch::Tensor LlamaForCausalLMImpl::forward(const torch::Tensor& inputs_embeds,
                                            const torch::Tensor& attention_mask,
                                            const torch::Tensor& position_ids,
                                            std::vector<torch::Tensor>* hidden_states,
                                            DecoderExtension* extension, KvCache* cache,
                                            const torch::Tensor& wanted) {
  return model->forward(inputs_embeds, attention_mask, position_ids, hidden_states, extension,
                        cache, wanted);
}

torch::Tensor LlamaForCausalLMImpl::aux_loss(const torch::Tensor& attention_mask) const {
  if (model->router_logits.empty()) return {};
  return load_balancing_loss(model->router_logits, config_.experts, config_.experts_per_token,
                             attention_mask);
}

torch::Tensor LlamaForCausalLMImpl::logits(const torch::Tensor& hidden) {
  return lm_head ? lm_head(hidden) : F::linear(hidden, model->embed_tokens->weight);
}

torch::Tensor LlamaForCausalLMImpl::target_logprobs(const torch::Tensor& hidden,
                                                    const torch::Tensor& targets) {
  if (lm_head && lm_head->has_adapter())
    return logits(hidden)
        .to(torch::kFloat)
        .log_softmax(-1)
        .gather(1, targets.unsqueeze(1))
        .squeeze(1);
  const auto& weight = lm_head ? lm_head->weight : model->embed_tokens->weight;
  return lm_head_target_logprobs(hidden, weight, targets, max_logits_);
}

void LlamaForCausalLMImpl::resize_vocab(int64_t vocab) {
  torch::NoGradGuard no_grad;
  auto grow = [vocab](torch::Tensor& w) {
    const int64_t old = w.size(0);
    if (vocab <= old) return;
    auto bigger = torch::empty({vocab, w.size(1)}, w.options());
    bigger.slice(0, 0, old).copy_(w);
    bigger.slice(0, old).copy_(w.to(torch::kFloat).mean(0, true).expand({vocab - old, w.size(1)}));
    w.set_data(bigger);
  };
  grow(model->embed_tokens->weight);
  if (lm_head) grow(lm_head->weight);
  model->embed_tokens->options.num_embeddings(vocab);
  config_.vocab = std::max(config_.vocab, vocab);
}

}  // namespace mllm
