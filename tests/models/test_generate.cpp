// Generation with a KV cache: the same tokens as recomputing the whole sequence each step, the
// same tokens batched (left-padded) as alone, seeded sampling, stop ids and strings.
#include <catch2/catch.hpp>

#include "models/generate.h"
#include "models/multimodal_model.h"

using namespace mllm;

namespace {

constexpr int64_t kImage = 4;

ModelConfig tiny(const std::string& connector = "mlp2x_gelu") {
  ModelConfig m;
  auto& v = m.vision;
  v.image_size = 32, v.patch_size = 8, v.hidden = 32, v.layers = 2, v.heads = 2,
  v.intermediate = 64;
  auto& l = m.llm;
  l.hidden = 32, l.layers = 2, l.heads = 4, l.kv_heads = 2, l.intermediate = 64, l.vocab = 50;
  m.connector.type = connector;
  return m;
}

// A prompt: BOS-like id, the image's placeholders, some text.
std::vector<int64_t> prompt(const MultimodalModelImpl& m, std::vector<int64_t> text) {
  std::vector<int64_t> p = {1};
  p.insert(p.end(), static_cast<size_t>(m.image_tokens()), kImage);
  p.insert(p.end(), text.begin(), text.end());
  return p;
}

// Greedy decoding the slow way: the whole sequence through the model at every step.
std::vector<int64_t> greedy_no_cache(MultimodalModelImpl& m, std::vector<int64_t> ids,
                                     const torch::Tensor& pixels, int64_t n) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const auto t = torch::tensor(ids, torch::kLong).unsqueeze(0);
    const auto h = m.forward(t, pixels, {});
    const int64_t next = m.logits(h.select(1, h.size(1) - 1)).argmax(-1).item<int64_t>();
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

}  // namespace

TEST_CASE(
    "generate: the KV cache gives the tokens of full recomputation (token- and feature-level)") {
  for (const std::string connector :
       {"mlp2x_gelu", "gated_xattn", "visual_expert", "adapter_prompt"}) {
    INFO(connector);
    torch::manual_seed(7);
    MultimodalModel m(tiny(connector), kImage);
    m->eval();
    {
      // Past their equivalence at initialisation: experts of their own, gates open.
      torch::NoGradGuard no_grad;
      for (auto& kv : m->connector->named_parameters()) {
        if (kv.key().find("experts.") == 0) kv.value().add_(torch::randn_like(kv.value()) * 0.3);
        if (kv.key().find("gate") != std::string::npos) kv.value().fill_(0.5);
      }
    }
    const auto pixels = torch::randn({1, 3, 32, 32});
    const auto p = prompt(*m, {7, 8, 9});
    GenerationOptions o;
    o.max_new_tokens = 12;
    const auto r = generate(*m, {p}, pixels, o);
    REQUIRE(r.tokens.size() == 1);
    CHECK(r.tokens[0] == greedy_no_cache(*m, p, pixels, 12));
    CHECK(r.stopped_by[0] == "length");
  }
}

TEST_CASE("generate: prompts of different lengths batched with left padding match each alone") {
  torch::manual_seed(8);
  MultimodalModel m(tiny(), kImage);
  const auto pixels = torch::randn({2, 3, 32, 32});
  const auto a = prompt(*m, {7, 8, 9, 10, 11, 12}), b = prompt(*m, {13});
  GenerationOptions o;
  o.max_new_tokens = 8;
  const auto both = generate(*m, {a, b}, pixels, o);
  CHECK(both.tokens[0] == generate(*m, {a}, pixels.slice(0, 0, 1), o).tokens[0]);
  CHECK(both.tokens[1] == generate(*m, {b}, pixels.slice(0, 1, 2), o).tokens[0]);
}

TEST_CASE("generate: stop ids and stop strings end a row; the other rows go on") {
  torch::manual_seed(9);
  MultimodalModel m(tiny(), kImage);
  const auto pixels = torch::randn({2, 3, 32, 32});
  const auto a = prompt(*m, {7, 8}), b = prompt(*m, {20, 21, 22});
  GenerationOptions o;
  o.max_new_tokens = 6;
  const auto free_run = generate(*m, {a, b}, pixels, o);
  REQUIRE(free_run.tokens[0].size() == 6);
  // Stop at a's second token: a ends there (the stop id included), b is unaffected unless it
  // says the same token.
  o.stop_ids = {free_run.tokens[0][1]};
  const auto stopped = generate(*m, {a, b}, pixels, o);
  CHECK(stopped.stopped_by[0] == "stop_id");
  CHECK(stopped.tokens[0].size() <= 2);
  const auto& fb = free_run.tokens[1];
  const auto first_stop = std::find(fb.begin(), fb.end(), o.stop_ids[0]);
  CHECK(stopped.tokens[1] ==
        std::vector<int64_t>(fb.begin(), first_stop == fb.end() ? fb.end() : first_stop + 1));

  // A stop string, matched in the decoded text.
  o.stop_ids.clear();
  o.stop_strings = {"<" + std::to_string(free_run.tokens[0][2]) + ">"};
  auto decode = [](const std::vector<int64_t>& ids) {
    std::string s;
    for (auto id : ids) s += "<" + std::to_string(id) + ">";
    return s;
  };
  std::vector<std::pair<int64_t, int64_t>> streamed;
  const auto by_string = generate(*m, {a}, pixels.slice(0, 0, 1), o, decode,
                                  [&](int64_t row, int64_t id) { streamed.emplace_back(row, id); });
  CHECK(by_string.stopped_by[0] == "stop_string");
  CHECK(by_string.tokens[0].size() <= 3);
  REQUIRE(streamed.size() == by_string.tokens[0].size());
  for (size_t i = 0; i < streamed.size(); ++i) CHECK(streamed[i].second == by_string.tokens[0][i]);
}

TEST_CASE("sampling: temperature, top-k and top-p as transformers' warpers; seeded draws") {
  const auto logits =
      torch::tensor({{std::log(0.5), std::log(0.3), std::log(0.15), std::log(0.05)}});
  auto p = sampling_probs(logits, 1.0, 0, 1.0);
  CHECK(torch::allclose(p, torch::tensor({{0.5, 0.3, 0.15, 0.05}}).to(torch::kFloat), 1e-6, 1e-6));
  // top-k 3: the smallest goes, the rest renormalised.
  p = sampling_probs(logits, 1.0, 3, 1.0);
  CHECK(torch::allclose(p, torch::tensor({{0.5, 0.3, 0.15, 0.0}}).to(torch::kFloat) / 0.95, 1e-6,
                        1e-6));
  // top-p 0.75: tokens whose ascending cumulative probability is <= 0.25 go (0.05, 0.15).
  p = sampling_probs(logits, 1.0, 0, 0.75);
  CHECK(torch::allclose(p, torch::tensor({{0.5, 0.3, 0.0, 0.0}}).to(torch::kFloat) / 0.8, 1e-6,
                        1e-6));
  // A tiny top-p still keeps the most likely token.
  p = sampling_probs(logits, 1.0, 0, 0.01);
  CHECK(p[0][0].item<float>() == Approx(1.0));
  // Temperature 2 flattens: probabilities proportional to sqrt(p).
  p = sampling_probs(logits, 2.0, 0, 1.0);
  const auto s = torch::tensor({{0.5, 0.3, 0.15, 0.05}}).sqrt();
  CHECK(torch::allclose(p, (s / s.sum()).to(torch::kFloat), 1e-6, 1e-6));

  torch::manual_seed(10);
  MultimodalModel m(tiny(), kImage);
  const auto pixels = torch::randn({1, 3, 32, 32});
  const auto a = prompt(*m, {7, 8});
  GenerationOptions o;
  o.max_new_tokens = 10;
  const auto greedy = generate(*m, {a}, pixels, o).tokens[0];
  o.sample = true;
  o.temperature = 1.5;
  o.seed = 1;
  const auto s1 = generate(*m, {a}, pixels, o).tokens[0];
  CHECK(generate(*m, {a}, pixels, o).tokens[0] == s1);  // same seed, same draws
  o.seed = 2;
  CHECK(generate(*m, {a}, pixels, o).tokens[0] != s1);
  o.top_k = 1;  // only the argmax is left
  CHECK(generate(*m, {a}, pixels, o).tokens[0] == greedy);
  // Ids beyond the tokenizer's (a padded vocabulary) are never chosen.
  o.top_k = 0;
  o.temperature = 50;  // nearly uniform
  o.vocab_limit = 20;
  o.max_new_tokens = 30;
  const auto limited = generate(*m, {a}, pixels, o);
  REQUIRE(limited.tokens[0].size() == 30);
  for (int64_t id : limited.tokens[0]) CHECK(id < 20);
}
