// The fast paths of the step against their plain forms: fused projections against the split
// layers, attention with grouped-query heads (no repeat_kv copies) against the repeated-heads
// math, the chunked LM head against full logits, and the decoder's packed-row mask against each
// sample run alone.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/config.h"
#include "core/torch_compat.h"
#include "models/llm/llama.h"
#include "models/llm/lm_head_logprobs.h"

using namespace mllm;

namespace {

// transformers' eager attention, written out: repeat_kv, scores, additive mask, fp32 softmax.
torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const torch::Tensor& mask) {
  const auto G = q.size(1) / k.size(1);
  const auto kr = k.repeat_interleave(G, 1), vr = v.repeat_interleave(G, 1);
  auto scores = torch::matmul(q, kr.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
  if (mask.defined()) scores = scores + mask;
  return torch::matmul(torch::softmax(scores, -1), vr);
}

torch::Tensor causal(int64_t T, int64_t S) {
  return torch::zeros({T, S}, torch::kDouble)
      .masked_fill(torch::ones({T, S}, torch::kBool).triu(S - T + 1), -1e9);
}

// attention() (causal without a mask, else under `mask`, which hides the future) against
// reference_attention with `ref_mask`: outputs and q/k/v gradients where `read` is 1 (it
// broadcasts over (B,H,T,D)), the gradients of a loss on those outputs alone.
void check_like_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const c10::optional<torch::Tensor>& mask, const torch::Tensor& ref_mask,
                          const torch::Tensor& read) {
  auto q1 = q.clone().requires_grad_(), k1 = k.clone().requires_grad_(),
       v1 = v.clone().requires_grad_();
  auto q2 = q.clone().requires_grad_(), k2 = k.clone().requires_grad_(),
       v2 = v.clone().requires_grad_();
  const auto w = torch::randn(q.sizes(), q.options()) * read;
  const auto y = attention(q1, k1, v1, mask, !mask.has_value(), mask.has_value());
  const auto ref = reference_attention(q2, k2, v2, ref_mask);
  CHECK(torch::allclose(y * read, ref * read, 1e-10, 1e-12));
  (y * w).sum().backward();
  (ref * w).sum().backward();
  CHECK(torch::allclose(q1.grad(), q2.grad(), 1e-10, 1e-12));
  CHECK(torch::allclose(k1.grad(), k2.grad(), 1e-10, 1e-12));
  CHECK(torch::allclose(v1.grad(), v2.grad(), 1e-10, 1e-12));
}

}  // namespace

TEST_CASE("kernels: grouped-query attention reads shared kv heads without copies, as repeat_kv") {
  torch::manual_seed(0);
  const int64_t B = 2, H = 6, KVH = 2, T = 5, D = 8;
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto q = torch::randn({B, H, T, D}, opts);
  const auto k = torch::randn({B, KVH, T, D}, opts), v = torch::randn({B, KVH, T, D}, opts);

  SECTION("causal, no mask") {
    CHECK(torch::allclose(attention(q, k, v, c10::nullopt, true),
                          reference_attention(q, k, v, causal(T, T)), 1e-10, 1e-12));
  }
  SECTION("without causality (a connector's cross-attention)") {
    CHECK(torch::allclose(attention(q, k, v, c10::nullopt, false), reference_attention(q, k, v, {}),
                          1e-10, 1e-12));
  }
  SECTION("a padding mask (B,1,1,S) with causality") {
    auto pad = torch::zeros({B, 1, 1, T}, opts);
    pad.index_put_({1, 0, 0, torch::indexing::Slice(3)}, -1e9);  // row 1: last two keys padding
    CHECK(torch::allclose(attention(q, k, v, pad, true),
                          reference_attention(q, k, v, pad + causal(T, T)), 1e-10, 1e-12));
  }
  SECTION("a whole mask (B,1,T,S), causality included") {
    auto m = causal(T, T).view({1, 1, T, T}).repeat({B, 1, 1, 1});
    m.index_put_({0, 0, 4, 0}, -1e9);  // a block-diagonal-like hole
    CHECK(torch::allclose(attention(q, k, v, m, false), reference_attention(q, k, v, m), 1e-10,
                          1e-12));
  }
  SECTION("queries that are the last T of S positions (a KV cache): causality aligned to the end") {
    const auto q2 = q.slice(2, 3);  // the last 2 queries
    const auto full = reference_attention(q, k, v, causal(T, T)).slice(2, 3);
    CHECK(torch::allclose(attention(q2, k, v, c10::nullopt, true), full, 1e-10, 1e-12));
  }
  SECTION("gradients reach q, k and v as through the repeated heads") {
    auto q1 = q.clone().requires_grad_(), k1 = k.clone().requires_grad_(),
         v1 = v.clone().requires_grad_();
    auto q2 = q.clone().requires_grad_(), k2 = k.clone().requires_grad_(),
         v2 = v.clone().requires_grad_();
    const auto w = torch::randn({B, H, T, D}, opts);
    (attention(q1, k1, v1, c10::nullopt, true) * w).sum().backward();
    (reference_attention(q2, k2, v2, causal(T, T)) * w).sum().backward();
    CHECK(torch::allclose(q1.grad(), q2.grad(), 1e-10, 1e-12));
    CHECK(torch::allclose(k1.grad(), k2.grad(), 1e-10, 1e-12));
    CHECK(torch::allclose(v1.grad(), v2.grad(), 1e-10, 1e-12));
  }
}

TEST_CASE("kernels: causal attention over many queries, in blocks of queries, as the whole") {
  // Long enough for attention()'s blocks of queries (without a fused kernel) and not a multiple
  // of the block; the same math as the whole scores with the causal mask, values and gradients.
  torch::manual_seed(1);
  const int64_t B = 2, H = 4, KVH = 2, T = 2 * kCausalQueryBlock + 37, D = 4;
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto q = torch::randn({B, H, T, D}, opts);
  const auto k = torch::randn({B, KVH, T, D}, opts), v = torch::randn({B, KVH, T, D}, opts);
  SECTION("all queries, with gradients") {
    check_like_reference(q, k, v, c10::nullopt, causal(T, T), torch::ones({1, 1, T, 1}, opts));
  }
  SECTION("the decoder's padding masks, which hide the future themselves") {
    // Right padding in row 0, left padding in row 1; the real queries' outputs and the gradients
    // that flow from them (a padding query that sees nothing is no one's concern).
    auto am = torch::ones({B, T}, torch::kLong);
    am.index_put_({0, torch::indexing::Slice(T - 40)}, 0);
    am.index_put_({1, torch::indexing::Slice(0, 150)}, 0);
    const auto m = *decoder_mask(am, T, T, opts).additive;  // (B,1,T,T)
    check_like_reference(q, k, v, m, m.to(torch::kDouble),
                         am.to(torch::kDouble).view({B, 1, T, 1}));
  }
  SECTION("the last queries of more keys (a cached prefix): causality aligned to the end") {
    const int64_t past = 11;
    const auto q2 = q.slice(2, past);
    const auto full = reference_attention(q, k, v, causal(T, T)).slice(2, past);
    CHECK(torch::allclose(attention(q2, k, v, c10::nullopt, true), full, 1e-10, 1e-12));
  }
}

TEST_CASE("kernels: the chunked LM head gives the full logits' log-probabilities and gradients") {
  torch::manual_seed(1);
  const int64_t N = 10, C = 16, V = 37;
  const auto h0 = torch::randn({N, C}), w0 = torch::randn({V, C}) * 0.3;
  const auto targets = torch::randint(0, V, {N}, torch::kLong);
  const auto upstream = torch::randn({N});

  auto h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
  const auto ref = torch::log_softmax(torch::matmul(h1, w1.t()).to(torch::kFloat), -1)
                       .gather(1, targets.unsqueeze(1))
                       .squeeze(1);
  (ref * upstream).sum().backward();

  // 3 rows per chunk (the last chunk has one row), one row per chunk, one chunk.
  for (const int64_t max_logits : {3 * V, V, int64_t{0}}) {
    CAPTURE(max_logits);
    auto h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
    const auto out = lm_head_target_logprobs(h2, w2, targets, max_logits);
    REQUIRE(out.sizes() == ref.sizes());
    CHECK(out.scalar_type() == torch::kFloat);
    CHECK(torch::allclose(out, ref, 1e-6, 1e-6));
    (out * upstream).sum().backward();
    CHECK(torch::allclose(h2.grad(), h1.grad(), 1e-6, 1e-6));
    CHECK(torch::allclose(w2.grad(), w1.grad(), 1e-6, 1e-6));
  }

  SECTION("only the inputs that require gradients get them") {
    auto h3 = h0.clone().requires_grad_();
    lm_head_target_logprobs(h3, w0, targets, V).sum().backward();
    CHECK(h3.grad().defined());
  }
  SECTION("the LLM's target_logprobs: tied embeddings and a separate head") {
    for (const bool tied : {false, true}) {
      LlmConfig c;
      c.hidden = C, c.layers = 1, c.heads = 2, c.kv_heads = 1, c.intermediate = 32, c.vocab = V;
      c.tie_word_embeddings = tied;
      LlamaForCausalLM llm(c);
      llm->set_max_logits(2 * V);
      const auto lp = llm->target_logprobs(h0, targets);
      const auto full = llm->logits(h0).log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1);
      CHECK(torch::allclose(lp, full, 1e-6, 1e-6));
    }
  }
}

TEST_CASE("kernels: a packed row attends within each sample, as the samples alone") {
  torch::manual_seed(2);
  LlmConfig c;
  c.hidden = 32, c.layers = 2, c.heads = 4, c.kv_heads = 2, c.intermediate = 64, c.vocab = 40;
  LlamaModel llm(c);
  llm->eval();
  const auto a = torch::randn({1, 4, 32}), b = torch::randn({1, 3, 32});
  const auto alone_a = llm->forward(a), alone_b = llm->forward(b);
  // One row: a (sample 1), b (sample 2), two pads; positions restart per sample.
  const auto pad = torch::randn({1, 2, 32});
  const auto packed = torch::cat({a, b, pad}, 1);
  const auto mask = torch::tensor({1, 1, 1, 1, 2, 2, 2, 0, 0}, torch::kLong).view({1, 9});
  const auto pos = torch::tensor({0, 1, 2, 3, 0, 1, 2, 0, 0}, torch::kLong).view({1, 9});
  const auto out = llm->forward(packed, mask, pos);
  CHECK(torch::allclose(out.slice(1, 0, 4), alone_a, 1e-5, 1e-6));
  CHECK(torch::allclose(out.slice(1, 4, 7), alone_b, 1e-5, 1e-6));
  CHECK(torch::isfinite(out).all().item<bool>());

  SECTION("without the sample numbers the second sample would see the first") {
    const auto leaky = llm->forward(packed, (mask != 0).to(torch::kLong), pos);
    CHECK_FALSE(torch::allclose(leaky.slice(1, 4, 7), alone_b, 1e-3, 1e-4));
  }
  SECTION("the mask itself: the samples' spans; as an additive mask when queries are fewer") {
    const auto m = decoder_mask(mask, 9, 9, torch::TensorOptions());
    REQUIRE(m.samples.size() == 2);
    CHECK(m.samples[0].row == 0);
    CHECK(m.samples[0].start == 0);
    CHECK(m.samples[0].length == 4);
    CHECK(m.samples[1].start == 4);
    CHECK(m.samples[1].length == 3);
    CHECK_FALSE(m.additive.has_value());
    // The last 5 of 9 positions as queries (a KV cache): block-diagonal, causal, pads excluded.
    const auto d = decoder_mask(mask, 5, 9, torch::TensorOptions());
    REQUIRE(d.additive.has_value());
    const auto allowed = (*d.additive == 0).squeeze();  // (5,9): query i is position 4+i
    CHECK(allowed[0][3].item<bool>() == false);         // b's first token does not see a's last
    CHECK(allowed[1][4].item<bool>() == true);
    CHECK(allowed[1][6].item<bool>() == false);  // nor the future
    CHECK(allowed[2][7].item<bool>() == false);  // nor a pad
    const auto plain = decoder_mask(torch::ones({2, 5}, torch::kLong), 5, 5, {});
    CHECK_FALSE(plain.additive.has_value());
    CHECK_FALSE(plain.packed());
  }
  SECTION("several packed rows in one batch") {
    const auto two = torch::cat({packed, torch::cat({b, a, pad}, 1)}, 0);
    const auto mask2 =
        torch::tensor({1, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 0}, torch::kLong)
            .view({2, 9});
    const auto pos2 =
        torch::tensor({0, 1, 2, 3, 0, 1, 2, 0, 0, 0, 1, 2, 0, 1, 2, 3, 0, 0}, torch::kLong)
            .view({2, 9});
    const auto out2 = llm->forward(two, mask2, pos2);
    CHECK(torch::allclose(out2[1].slice(0, 0, 3), alone_b[0], 1e-5, 1e-6));
    CHECK(torch::allclose(out2[1].slice(0, 3, 7), alone_a[0], 1e-5, 1e-6));
  }
}

TEST_CASE("kernels: fused q/k/v and gate/up projections equal the split layers, with LoRA") {
  torch::manual_seed(3);
  LoraLinear q(16, 16, true), k(16, 8, true), v(16, 8, true);
  v->add_adapter(4, 8.0, 0.0);
  {
    torch::NoGradGuard no_grad;
    v->lora_B->weight.normal_();  // a non-zero update, so the adapter's part shows
  }
  const auto x0 = torch::randn({3, 5, 16});
  const std::vector<torch::Tensor> ups = {torch::randn({3, 5, 16}), torch::randn({3, 5, 8}),
                                          torch::randn({3, 5, 8})};
  auto params = [&] {
    std::vector<torch::Tensor> p;
    for (auto* l : {q.get(), k.get(), v.get()})
      for (const auto& t : l->parameters()) p.push_back(t);
    return p;
  };
  auto grads = [&](const std::vector<torch::Tensor>& outs, const torch::Tensor& x) {
    for (auto& p : params()) p.mutable_grad() = torch::Tensor();
    torch::Tensor loss = torch::zeros({});
    for (size_t i = 0; i < outs.size(); ++i) loss = loss + (outs[i] * ups[i]).sum();
    loss.backward();
    std::vector<torch::Tensor> g{x.grad().clone()};
    for (auto& p : params()) g.push_back(p.grad().clone());
    return g;
  };
  auto x1 = x0.clone().requires_grad_(), x2 = x0.clone().requires_grad_();
  const auto fused = fused_linear(x1, {q.get(), k.get(), v.get()});
  const std::vector<torch::Tensor> split = {q(x2), k(x2), v(x2)};
  for (size_t i = 0; i < 3; ++i) CHECK(torch::allclose(fused[i], split[i], 1e-5, 1e-6));
  const auto g1 = grads(fused, x1), g2 = grads(split, x2);
  REQUIRE(g1.size() == g2.size());
  for (size_t i = 0; i < g1.size(); ++i) CHECK(torch::allclose(g1[i], g2[i], 1e-5, 1e-6));
}

TEST_CASE("kernels: a decoder layer computes the same with gradients (fused) as without (split)") {
  torch::manual_seed(4);
  for (const std::string type : {"llama", "qwen2"}) {
    LlmConfig c;
    c.type = type;
    c.hidden = 32, c.layers = 1, c.heads = 4, c.kv_heads = 2, c.intermediate = 48, c.vocab = 20;
    LlamaModel llm(c);
    const auto x = torch::randn({2, 6, 32});
    const auto with_grad = llm->forward(x);
    REQUIRE(with_grad.requires_grad());
    torch::Tensor without;
    {
      torch::NoGradGuard no_grad;
      without = llm->forward(x);
    }
    CHECK(torch::allclose(with_grad, without, 1e-5, 1e-6));
  }
}

namespace {

// Each parameter's gradient and the input's, after backward of sum(out[wanted] * up).
std::vector<torch::Tensor> wanted_grads(torch::nn::Module& m, const torch::Tensor& x,
                                        const torch::Tensor& out, const torch::Tensor& wanted,
                                        const torch::Tensor& up) {
  for (auto& p : m.parameters()) p.mutable_grad() = torch::Tensor();
  if (x.grad().defined()) x.mutable_grad() = torch::Tensor();
  (out.index({wanted}) * up).sum().backward();
  std::vector<torch::Tensor> g{x.grad().clone()};
  for (auto& p : m.parameters())
    g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  return g;
}

// A small decoder (width 32, 4 heads over 2 kv heads) in double precision.
LlamaModel double_llm(const std::string& type, int64_t layers) {
  LlmConfig c;
  c.type = type;
  c.hidden = 32, c.layers = layers, c.heads = 4, c.kv_heads = 2, c.intermediate = 48, c.vocab = 20;
  LlamaModel llm(c);
  llm->to(torch::kDouble);
  return llm;
}

// A shortened forward (`fast`, from x_fast) against the whole one (`ref`, from x_ref) of the same
// module: equal states at `read` and zeros elsewhere (so the short path ran), and equal gradients
// of the input and every parameter for a loss on the states at `read`.
void check_same_where_read(torch::nn::Module& m, const torch::Tensor& x_ref,
                           const torch::Tensor& ref, const torch::Tensor& x_fast,
                           const torch::Tensor& fast, const torch::Tensor& read) {
  CHECK(torch::allclose(fast.index({read}), ref.index({read}), 1e-10, 1e-12));
  CHECK(fast.index({read.logical_not()}).abs().max().item<double>() == 0.0);
  const auto up = torch::randn({read.sum().item<int64_t>(), ref.size(-1)}, ref.options());
  const auto g_ref = wanted_grads(m, x_ref, ref, read, up);
  const auto g_fast = wanted_grads(m, x_fast, fast, read, up);
  REQUIRE(g_ref.size() == g_fast.size());
  for (size_t i = 0; i < g_ref.size(); ++i)
    CHECK(torch::allclose(g_fast[i], g_ref[i], 1e-10, 1e-12));
}

}  // namespace

TEST_CASE(
    "kernels: the last layer run at the wanted positions alone gives their states and grads") {
  torch::manual_seed(5);
  const int64_t B = 3, T = 9, C = 32;
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  // Row 0: a few positions; row 1: none; row 2: most of them.
  const auto wanted = torch::tensor({0, 1, 0, 0, 1, 1, 0, 0, 0,  //
                                     0, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                     1, 0, 1, 1, 1, 0, 1, 1, 1},
                                    torch::kBool)
                          .view({B, T});
  struct Case {
    std::string name, type;
    torch::Tensor mask, positions;
  };
  const auto padded = torch::ones({B, T}, torch::kLong);
  padded[0].slice(0, 7).fill_(0), padded[2].slice(0, 8).fill_(0);  // right padding
  const auto packed = torch::tensor({1, 1, 1, 2, 2, 2, 2, 0, 0,    //
                                     1, 1, 1, 1, 1, 1, 1, 1, 1,    //
                                     1, 1, 2, 2, 2, 3, 3, 3, 3},
                                    torch::kLong)
                          .view({B, T});
  const auto packed_pos = torch::tensor({0, 1, 2, 0, 1, 2, 3, 0, 0,  //
                                         0, 1, 2, 3, 4, 5, 6, 7, 8,  //
                                         0, 1, 0, 1, 2, 0, 1, 2, 3},
                                        torch::kLong)
                              .view({B, T});
  for (const auto& k : std::vector<Case>{{"causal", "llama", {}, {}},
                                         {"causal qwen2", "qwen2", {}, {}},
                                         {"padded", "llama", padded, {}},
                                         {"packed", "qwen2", packed, packed_pos}}) {
    DYNAMIC_SECTION(k.name) {
      auto llm = double_llm(k.type, 2);
      // A LoRA adapter on the last layer's q_proj, with a non-zero update.
      auto& q = llm->layers->ptr<LlamaDecoderLayerImpl>(1)->self_attn->q_proj;
      q->add_adapter(4, 8.0, 0.0);
      q->to(torch::kDouble);
      {
        torch::NoGradGuard no_grad;
        q->lora_B->weight.normal_();
      }
      const auto x0 = torch::randn({B, T, C}, opts);
      auto x1 = x0.clone().requires_grad_(), x2 = x0.clone().requires_grad_();
      // The reference: every position through every layer (collecting hidden_states turns both
      // the short last layer and the skipping of padding off).
      std::vector<torch::Tensor> states;
      const auto full = llm->forward(x1, k.mask, k.positions, &states);
      const auto rows = llm->forward(x2, k.mask, k.positions, nullptr, nullptr, nullptr, wanted);
      // What a caller reads: the wanted real tokens (a wanted pad, row 2's last, comes back zero).
      const auto read = k.mask.defined() ? wanted & (k.mask != 0) : wanted;
      check_same_where_read(*llm, x1, full, x2, rows, read);
    }
  }
  SECTION("generation: the prefill's last position, and the cache it fills, as the full prefill") {
    LlmConfig c;
    c.hidden = C, c.layers = 2, c.heads = 4, c.kv_heads = 1, c.intermediate = 48, c.vocab = 20;
    LlamaModel llm(c);
    llm->to(torch::kDouble);
    torch::NoGradGuard no_grad;
    const auto x = torch::randn({B, T, C}, opts), next = torch::randn({B, 1, C}, opts);
    auto mask = torch::ones({B, T}, torch::kLong);
    mask[1].slice(0, 0, 3).fill_(0);  // left padding
    const auto pos = (mask.cumsum(1) - 1).clamp_min(0);
    auto last = torch::zeros({B, T}, torch::kBool);
    last.select(1, T - 1).fill_(true);
    KvCache full_cache, rows_cache;
    const auto full = llm->forward(x, mask, pos, nullptr, nullptr, &full_cache);
    const auto rows = llm->forward(x, mask, pos, nullptr, nullptr, &rows_cache, last);
    CHECK(torch::allclose(rows.select(1, T - 1), full.select(1, T - 1), 1e-10, 1e-12));
    for (size_t i = 0; i < 2; ++i) CHECK(torch::allclose(rows_cache.k[i], full_cache.k[i]));
    const auto step_mask = torch::cat({mask, torch::ones({B, 1}, torch::kLong)}, 1);
    const auto step_pos = pos.select(1, T - 1).view({B, 1}) + 1;
    const auto a = llm->forward(next, step_mask, step_pos, nullptr, nullptr, &full_cache);
    const auto b = llm->forward(next, step_mask, step_pos, nullptr, nullptr, &rows_cache);
    CHECK(torch::allclose(a, b, 1e-10, 1e-12));
  }
  SECTION("a mixture of experts runs every position (its auxiliary loss counts them all)") {
    LlmConfig c;
    c.hidden = C, c.layers = 1, c.heads = 4, c.kv_heads = 2, c.intermediate = 48, c.vocab = 20;
    c.experts = 4, c.experts_per_token = 2;
    LlamaModel llm(c);
    const auto x = torch::randn({B, T, C});
    const auto full = llm->forward(x);
    const auto rows = llm->forward(x, {}, {}, nullptr, nullptr, nullptr, wanted);
    CHECK(torch::allclose(rows, full));
    CHECK(llm->router_logits[0].size(0) == B * T);
  }
}

TEST_CASE("kernels: padding skipped, the real tokens' states and gradients as on the padded grid") {
  // Short rows (attention on the grid) and long ones (256+ tokens, mostly padding: attention per
  // run of real tokens, row_spans), each right-padded, left-padded and checkpointed.
  torch::manual_seed(6);
  const int64_t B = 3, C = 32, L = 2 * kCausalQueryBlock + 4;
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto right = torch::ones({B, 8}, torch::kLong);
  right[0].slice(0, 5).fill_(0), right[2].slice(0, 2).fill_(0);
  auto left = torch::ones({B, 8}, torch::kLong);
  left[1].slice(0, 0, 3).fill_(0);
  auto long_right = torch::ones({B, L}, torch::kLong);
  long_right[1].slice(0, 40).fill_(0), long_right[2].slice(0, 90).fill_(0);
  auto long_left = torch::ones({B, L}, torch::kLong);
  long_left[0].slice(0, 0, L - 60).fill_(0), long_left[2].slice(0, 0, L - 100).fill_(0);
  REQUIRE(row_spans(right != 0).empty());
  REQUIRE(!row_spans(long_right != 0).empty());
  REQUIRE(!row_spans(long_left != 0).empty());
  const auto positions = [](const torch::Tensor& m) { return (m.cumsum(1) - 1).clamp_min(0); };
  const auto wanted_at = [](int64_t T, std::vector<std::pair<int64_t, int64_t>> at) {
    auto w = torch::zeros({B, T}, torch::kBool);
    for (const auto& [b, t] : at) w[b][t] = true;
    return w;
  };
  const auto short_wanted = wanted_at(8, {{0, 1}, {0, 4}, {1, 6}, {2, 7}});
  const auto long_wanted = wanted_at(L, {{0, L - 1}, {1, 30}, {2, L - 1}, {2, 95}});
  struct Case {
    std::string name, type;
    torch::Tensor mask, positions;
    bool checkpoint, lora;
    torch::Tensor wanted;
  };
  for (const auto& k : std::vector<Case>{
           {"right padding", "llama", right, {}, false, false, short_wanted},
           {"left padding, positions", "qwen2", left, positions(left), false, true, short_wanted},
           {"checkpointed layers", "llama", right, {}, true, false, short_wanted},
           {"long rows, right padding", "llama", long_right, {}, false, false, long_wanted},
           {"long rows, left padding, positions", "qwen2", long_left, positions(long_left), false,
            false, long_wanted},
           {"long rows, checkpointed layers", "llama", long_right, {}, true, false, long_wanted}}) {
    DYNAMIC_SECTION(k.name) {
      const auto T = k.mask.size(1);
      auto llm = double_llm(k.type, T > 8 ? 2 : 3);
      if (k.lora) {  // an adapter: the unfused projections' path
        auto& v = llm->layers->ptr<LlamaDecoderLayerImpl>(0)->self_attn->v_proj;
        v->add_adapter(4, 8.0, 0.0);
        v->to(torch::kDouble);
        torch::NoGradGuard no_grad;
        v->lora_B->weight.normal_();
      }
      llm->set_gradient_checkpointing(k.checkpoint);
      const auto x0 = torch::randn({B, T, C}, opts);
      auto x1 = x0.clone().requires_grad_(), x2 = x0.clone().requires_grad_();
      std::vector<torch::Tensor> states;  // the reference runs the padded grid whole
      const auto grid = llm->forward(x1, k.mask, k.positions, &states);
      const auto unpadded = llm->forward(x2, k.mask, k.positions);
      const auto real = k.mask != 0;
      // The padding was skipped: zeros there, where the grid computed something.
      CHECK(grid.index({real.logical_not()}).abs().max().item<double>() > 0.0);
      check_same_where_read(*llm, x1, grid, x2, unpadded, real);
      SECTION("with the last layer at a few wanted positions too") {
        const auto both =
            llm->forward(x0, k.mask, k.positions, nullptr, nullptr, nullptr, k.wanted);
        const auto read = k.wanted & real;  // a wanted pad comes back zero
        REQUIRE(read.sum().item<int64_t>() >= 2);
        CHECK(torch::allclose(both.index({read}), grid.index({read}), 1e-10, 1e-12));
        CHECK(both.index({read.logical_not()}).abs().max().item<double>() == 0.0);
      }
    }
  }
}

TEST_CASE("kernels: row_spans lays each row's run of real tokens out in one row, when it pays") {
  const int64_t T = 2 * kCausalQueryBlock + 4;
  auto is_real = torch::zeros({3, T}, torch::kBool);
  is_real[0].fill_(true);                // whole
  is_real[1].slice(0, 0, 40).fill_(1);   // right padding
  is_real[2].slice(0, T - 90).fill_(1);  // left padding
  const auto spans = row_spans(is_real);
  REQUIRE(spans.size() == 3);
  CHECK((spans[0].row == 0 && spans[0].start == 0 && spans[0].length == T));
  CHECK((spans[1].row == 0 && spans[1].start == T && spans[1].length == 40));
  CHECK((spans[2].row == 0 && spans[2].start == T + 40 && spans[2].length == 90));
  SECTION("decoder_mask asked for the runs: a grid with them, and no (B,1,T,T) mask built") {
    const auto m = decoder_mask(is_real.to(torch::kLong), T, T, {}, true);
    CHECK_FALSE(m.additive.has_value());
    REQUIRE(m.grid.has_value());
    CHECK(m.grid->spans.size() == 3);
    CHECK(decoder_mask(is_real.to(torch::kLong), T, T, {}).additive.has_value());
  }
  SECTION("a row with a hole stays on the grid") {
    is_real[1][20] = false;
    CHECK(row_spans(is_real).empty());
    CHECK(decoder_mask(is_real.to(torch::kLong), T, T, {}, true).additive.has_value());
  }
  SECTION("little padding: the grid, one call for all rows") {
    is_real[1].fill_(true);
    CHECK(row_spans(is_real).empty());
  }
  SECTION("short rows: the grid") {
    CHECK(row_spans(is_real.slice(1, 0, 2 * kCausalQueryBlock - 1)).empty());
  }
  SECTION("a row with no real token has no run") {
    is_real[1].fill_(false);
    const auto two = row_spans(is_real);
    REQUIRE(two.size() == 2);
    CHECK((two[1].start == T && two[1].length == 90));
  }
}
