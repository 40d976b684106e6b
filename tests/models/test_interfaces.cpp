// The survey's two interfaces that work inside the LLM's layers: CogVLM's visual experts and
// LLaMA-Adapter's zero-init gated prompts. Each starts as the model it extends (equivalence at
// initialisation), then brings the image in where it should and nowhere else.
#include <catch2/catch.hpp>

#include "core/error.h"
#include "models/factory.h"
#include "models/hf/weights.h"
#include "models/multimodal_model.h"

using namespace mllm;

namespace {

constexpr int64_t kImage = 4;

ModelConfig tiny(const std::string& connector) {
  ModelConfig m;
  auto& v = m.vision;
  v.image_size = 32, v.patch_size = 8, v.hidden = 32, v.layers = 2, v.heads = 2,
  v.intermediate = 64;
  auto& l = m.llm;
  l.hidden = 32, l.layers = 3, l.heads = 4, l.kv_heads = 2, l.intermediate = 64, l.vocab = 50;
  m.connector.type = connector;
  return m;
}

std::map<std::string, torch::Tensor> params_of(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, t] : named_parameters(m)) out[name] = t;
  return out;
}

// Copies every parameter of `from` whose name `to` also has.
void copy_shared(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  const auto src = params_of(from);
  for (auto& [name, t] : named_parameters(to))
    if (src.count(name)) t.copy_(src.at(name));
}

// Adds noise to the connector's parameters whose name contains `part`.
void perturb(MultimodalModel& m, const std::string& part, double scale = 0.3) {
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : named_parameters(*m->connector))
    if (name.find(part) != std::string::npos) t.add_(torch::randn_like(t) * scale);
}

void fill(MultimodalModel& m, const std::string& name, double value) {
  torch::NoGradGuard no_grad;
  params_of(*m->connector).at(name).fill_(value);
}

// Stage 1's split: the connector trains, the vision tower and the LLM are frozen.
void train_connector_only(MultimodalModel& m) {
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  for (auto& p : m->connector->parameters()) p.set_requires_grad(true);
}

// Two rows: row 0 text, an image, text; row 1 text only, left-padded.
std::pair<torch::Tensor, torch::Tensor> batch(int64_t Q) {
  std::vector<int64_t> row0{1, 7};
  row0.insert(row0.end(), static_cast<size_t>(Q), kImage);
  row0.insert(row0.end(), {10, 11, 12});
  const auto T = static_cast<int64_t>(row0.size());
  auto ids = torch::full({2, T}, 0, torch::kLong);
  ids[0].copy_(torch::tensor(row0));
  ids[1].slice(0, 2).copy_(torch::randint(5, 50, {T - 2}));
  auto mask = torch::ones({2, T}, torch::kLong);
  mask[1].slice(0, 0, 2).fill_(0);
  return {ids, mask};
}

}  // namespace

TEST_CASE("visual_expert: at initialisation the model is the token-level mlp2x_gelu model") {
  torch::manual_seed(0);
  auto cfg = tiny("visual_expert");
  cfg.connector.expert_every = 2;  // layers 0 and 2 of 3
  MultimodalModel expert(cfg, kImage);
  MultimodalModel plain(tiny("mlp2x_gelu"), kImage);
  // The same vision tower, projector and LLM (the LLM's weights after the expert model's were
  // made: the experts must have been copied from the LLM it has, not be equal by chance).
  copy_shared(*expert, *plain);
  const auto names = params_of(*expert->connector);
  CHECK(names.count("experts.0.self_attn.q_proj.weight"));
  CHECK(names.count("experts.1.mlp.down_proj.weight"));
  CHECK(!names.count("experts.2.mlp.down_proj.weight"));
  CHECK(torch::equal(names.at("experts.1.self_attn.o_proj.weight"),
                     expert->language_model->model->layers->ptr<LlamaDecoderLayerImpl>(2)
                         ->self_attn->o_proj->weight));
  CHECK(expert->image_tokens() == 16);
  CHECK_FALSE(expert->connector->feature_level());

  expert->to(torch::kDouble), plain->to(torch::kDouble);
  expert->eval(), plain->eval();
  torch::NoGradGuard no_grad;
  const auto [ids, mask] = batch(16);
  const auto pixels = torch::randn({1, 3, 32, 32}, torch::kDouble);
  const auto a = plain->forward(ids, pixels, mask), b = expert->forward(ids, pixels, mask);
  // The real tokens (row 1 starts with two pads, whose outputs mean nothing: the plain model
  // skips them and returns zeros there).
  const auto real = mask.unsqueeze(-1).to(torch::kDouble);
  CHECK(((a - b) * real).abs().max().item<double>() < 1e-12);

  // Experts of their own: the image positions change, and the text after them (it attends to
  // the experts' keys and values); the text before the image and the text-only row do not.
  perturb(expert, "experts.");
  const auto c = expert->forward(ids, pixels, mask);
  CHECK((c[0].slice(0, 0, 2) - a[0].slice(0, 0, 2)).abs().max().item<double>() < 1e-12);
  CHECK((c[0].slice(0, 2, 18) - a[0].slice(0, 2, 18)).abs().max().item<double>() > 1e-3);
  CHECK((c[0].slice(0, 18) - a[0].slice(0, 18)).abs().max().item<double>() > 1e-3);
  CHECK((c[1].slice(0, 2) - a[1].slice(0, 2)).abs().max().item<double>() < 1e-12);
}

TEST_CASE("visual_expert over a resampler: the resampler model at initialisation, its few tokens") {
  torch::manual_seed(3);
  auto cfg = tiny("visual_expert");
  auto& cc = cfg.connector;
  cc.projector = "resampler";
  cc.num_queries = 4, cc.heads = 2, cc.hidden = 16, cc.value_positions = true;
  auto plain_cfg = cfg;
  plain_cfg.connector.type = "resampler";
  MultimodalModel expert(cfg, kImage);
  MultimodalModel plain(plain_cfg, kImage);
  copy_shared(*expert, *plain);
  // The resampler's parts under its own names, next to the experts; no mlp2x_gelu left.
  const auto names = params_of(*expert->connector);
  for (const auto& [name, t] : params_of(*plain->connector)) {
    INFO(name);
    CHECK(names.count(name));
  }
  CHECK(names.count("query"));
  CHECK(names.count("experts.2.mlp.down_proj.weight"));
  CHECK(!names.count("linear_1.weight"));
  CHECK(expert->image_tokens() == 4);

  // In fp64 (the resampler's own tensors follow the connector's dtype: they are its parameters
  // and buffers), equal to the plain resampler model until the experts differ from the LLM.
  expert->to(torch::kDouble), plain->to(torch::kDouble);
  expert->eval(), plain->eval();
  const auto [ids, mask] = batch(4);
  const auto pixels = torch::randn({1, 3, 32, 32}, torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    const auto a = plain->forward(ids, pixels, mask), b = expert->forward(ids, pixels, mask);
    const auto real = mask.unsqueeze(-1).to(torch::kDouble);  // row 1's two pads left out
    CHECK(((a - b) * real).abs().max().item<double>() < 1e-12);
    perturb(expert, "experts.");
    const auto c = expert->forward(ids, pixels, mask);
    CHECK((c[0].slice(0, 2, 6) - a[0].slice(0, 2, 6)).abs().max().item<double>() > 1e-3);
    CHECK((c[1].slice(0, 2) - a[1].slice(0, 2)).abs().max().item<double>() < 1e-12);
  }
  // Stage 1: gradients reach the resampler and the experts.
  train_connector_only(expert);
  expert->logits(expert->forward(ids, pixels, mask)).pow(2).sum().backward();
  for (const auto& [name, p] : named_parameters(*expert->connector)) {
    INFO(name);
    REQUIRE(p.grad().defined());
    CHECK(p.grad().abs().sum().item<double>() > 0);
  }
  // Not every design can sit under the experts.
  for (const char* bad : {"gated_xattn", "visual_expert"}) {
    auto c = cfg;
    c.connector.projector = bad;
    CHECK_THROWS_AS(MultimodalModel(c, kImage), ConfigError);
  }
}

TEST_CASE("visual_expert: stage 1 trains the projector and the experts, not the LLM") {
  torch::manual_seed(1);
  MultimodalModel m(tiny("visual_expert"), kImage);
  train_connector_only(m);
  const auto [ids, mask] = batch(16);
  m->logits(m->forward(ids, torch::randn({1, 3, 32, 32}), mask)).pow(2).sum().backward();
  for (const auto& [name, p] : named_parameters(*m->connector)) {
    INFO(name);
    REQUIRE(p.grad().defined());
    CHECK(p.grad().abs().sum().item<double>() > 0);
  }
  for (const auto& [name, p] : named_parameters(*m->language_model)) CHECK(!p.grad().defined());
  // A text-only batch still reaches every connector parameter (zero gradients): data-parallel
  // gradient sync expects each trainable parameter in each step.
  m->zero_grad();
  m->logits(m->forward(torch::randint(5, 50, {2, 6}), {})).sum().backward();
  for (const auto& p : m->connector->parameters()) CHECK(p.grad().defined());
  // A mixture-of-experts LLM has no single MLP to copy.
  auto moe = tiny("visual_expert");
  moe.llm.experts = 4;
  CHECK_THROWS_WITH(MultimodalModel(moe, kImage), Catch::Contains("use a dense LLM"));
}

TEST_CASE("adapter_prompt: zero gates leave the LLM unchanged; open ones bring in the image") {
  for (const int64_t K : {4, 3}) {  // 2x2 regions of the 4x4 patch grid; the global feature
    INFO("prompt_length " << K);
    torch::manual_seed(2);
    auto cfg = tiny("adapter_prompt");
    cfg.connector.prompt_length = K;
    cfg.connector.prompt_layers = 2;  // layers 1 and 2 of 3
    MultimodalModel m(cfg, kImage);
    m->eval();
    CHECK(m->image_tokens() == 1);
    CHECK(m->connector->feature_level());
    const auto names = params_of(*m->connector);
    CHECK(names.at("prompts").sizes() == torch::IntArrayRef({2, K, 32}));
    CHECK(names.at("gates").sizes() == torch::IntArrayRef({2, 4}));
    CHECK(names.at("gates").abs().sum().item<double>() == 0);

    torch::NoGradGuard no_grad;
    const auto [ids, mask] = batch(1);
    const auto pixels = torch::randn({1, 3, 32, 32});
    auto& llm = *m->language_model;
    std::vector<torch::Tensor> alone_h;
    const auto alone = llm.forward(llm.embed(ids), mask, {}, &alone_h);
    CHECK(torch::equal(m->forward(ids, pixels, mask), alone));

    fill(m, "gates", 0.5);
    const auto [embeds, ext] = m->prepare(ids, pixels, mask);
    std::vector<torch::Tensor> open_h;
    const auto open = llm.forward(embeds, mask, {}, &open_h, ext.get());
    // Layer 0 is not adapted; layer 1 is.
    CHECK(torch::equal(open_h[1], alone_h[1]));
    CHECK(!torch::allclose(open_h[2], alone_h[2], 1e-4, 1e-4));
    // Row 0 depends on its image; the text-only row sees the prompts but no image.
    const auto other = m->forward(ids, torch::randn({1, 3, 32, 32}), mask);
    CHECK(!torch::allclose(other[0], open[0], 1e-5, 1e-5));
    CHECK(torch::allclose(other[1], open[1], 1e-6, 1e-6));
    CHECK(!torch::allclose(open[1], alone[1], 1e-4, 1e-4));
  }
}

TEST_CASE("adapter_prompt: gradients reach the gates at zero, then prompts and projection") {
  torch::manual_seed(3);
  MultimodalModel m(tiny("adapter_prompt"), kImage);
  train_connector_only(m);
  const auto [ids, mask] = batch(1);
  const auto pixels = torch::randn({1, 3, 32, 32});
  auto grads = [&] {
    m->zero_grad();
    m->logits(m->forward(ids, pixels, mask)).pow(2).sum().backward();
    std::map<std::string, double> g;
    for (const auto& [name, p] : named_parameters(*m->connector))
      g[name] = p.grad().defined() ? p.grad().abs().sum().item<double>() : -1.0;
    for (const auto& p : m->language_model->parameters()) CHECK(!p.grad().defined());
    return g;
  };
  auto g = grads();
  CHECK(g.at("gates") > 0);
  CHECK(g.at("prompts") == 0);  // tanh(0) = 0: the prompts cannot matter yet
  CHECK(g.at("visual_proj.weight") == 0);
  fill(m, "gates", 0.1);
  g = grads();
  for (const auto& [name, v] : g) {
    INFO(name);
    CHECK(v > 0);
  }
  // More adapted layers than the LLM has.
  auto bad = tiny("adapter_prompt");
  bad.connector.prompt_layers = 4;
  CHECK_THROWS_AS(MultimodalModel(bad, kImage), ConfigError);
}

TEST_CASE("interfaces: packed rows restrict each sample to its own image's prompts") {
  // Two samples in one row (sample 1 with the image, sample 2 text only) give, position by
  // position, what each gives alone.
  torch::manual_seed(4);
  MultimodalModel m(tiny("adapter_prompt"), kImage);
  fill(m, "gates", 0.5);
  m->eval();
  torch::NoGradGuard no_grad;
  const std::vector<int64_t> s1{1, kImage, 10, 11}, s2{1, 20, 21};
  std::vector<int64_t> row = s1;
  row.insert(row.end(), s2.begin(), s2.end());
  const auto ids = torch::tensor(row).unsqueeze(0);
  const auto samples = torch::tensor(std::vector<int64_t>{1, 1, 1, 1, 2, 2, 2}).unsqueeze(0);
  const auto positions = torch::tensor(std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2}).unsqueeze(0);
  const auto pixels = torch::randn({1, 3, 32, 32});
  const auto packed = m->forward(ids, pixels, samples, positions);
  const auto a = m->forward(torch::tensor(s1).unsqueeze(0), pixels);
  const auto b = m->forward(torch::tensor(s2).unsqueeze(0), {});
  CHECK(torch::allclose(packed[0].slice(0, 0, 4), a[0], 1e-5, 1e-5));
  CHECK(torch::allclose(packed[0].slice(0, 4), b[0], 1e-5, 1e-5));
}
