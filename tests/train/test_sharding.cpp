// Sharded training (train/sharding.h) in one process: its AdamW on flat slices against LibTorch's
// torch::optim::AdamW on the same gradients (weight decay, clipping, micro-batches), and, at level
// parameters, that a decoder layer's weights are whole only around its own forward and backward.
// Several ranks (Gloo on 127.0.0.1) are tested through `mllm train` in
// tests/integration/test_sharding.cpp.
#include <catch2/catch.hpp>

#include "core/config.h"
#include "models/llm/llama.h"
#include "train/optim.h"
#include "train/sharding.h"

using namespace mllm;

namespace {

LlmConfig tiny_llm() {
  LlmConfig c;
  c.hidden = 32;
  c.layers = 3;
  c.heads = 4;
  c.kv_heads = 2;
  c.intermediate = 48;
  c.vocab = 40;
  return c;
}

torch::Tensor loss_of(LlamaForCausalLM& m, const torch::Tensor& ids) {
  const auto h = m->forward(m->embed(ids));
  const auto logits = m->logits(h).slice(1, 0, -1);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              ids.slice(1, 1).reshape({-1}));
}

std::vector<ShardedParam> sharded_params(LlamaForCausalLM& m, const TrainConfig& t) {
  std::vector<ShardedParam> out;
  const std::string layers = "model.layers.";
  for (const auto& item : m->named_parameters(true)) {
    ShardedParam p{item.key(), item.value(), weight_decay_of(item.key(), item.value(), t), -1};
    if (item.key().rfind(layers, 0) == 0) p.layer = std::stoll(item.key().substr(layers.size()));
    out.push_back(p);
  }
  return out;
}

// Whether each decoder layer's q_proj weight is whole now.
std::vector<bool> whole_layers(LlamaForCausalLM& m) {
  std::vector<bool> out;
  for (const auto& item : m->named_parameters(true))
    if (item.key().find("self_attn.q_proj.weight") != std::string::npos)
      out.push_back(item.value().numel() > 0);
  return out;
}

// Records, before each layer's forward, which layers are whole.
struct Spy final : LayerShards {
  Spy(ShardedTraining& e, LlamaForCausalLM& m) : engine(e), model(m) {}
  void before_layer(int64_t i) override {
    engine.before_layer(i);
    seen.push_back(whole_layers(model));
  }
  at::Tensor after_layer(int64_t i, at::Tensor out) override {
    return engine.after_layer(i, std::move(out));
  }
  ShardedTraining& engine;
  LlamaForCausalLM& model;
  std::vector<std::vector<bool>> seen;
};

}  // namespace

TEST_CASE("sharding: each level's AdamW on flat slices equals torch::optim::AdamW") {
  const auto level = GENERATE(ShardLevel::optimizer, ShardLevel::gradients, ShardLevel::parameters);
  const bool checkpointing = GENERATE(false, true);
  INFO(shard_level_name(level) << (checkpointing ? " with gradient checkpointing" : ""));
  torch::manual_seed(3);
  LlamaForCausalLM ref(tiny_llm()), sh(tiny_llm());
  {
    torch::NoGradGuard no_grad;
    auto a = ref->parameters(), b = sh->parameters();
    for (size_t i = 0; i < a.size(); ++i) b[i].copy_(a[i]);
  }
  ref->model->set_gradient_checkpointing(checkpointing);
  sh->model->set_gradient_checkpointing(checkpointing);
  TrainConfig t;
  t.weight_decay = 0.1;
  t.weight_decay_embeddings = false;
  t.betas = {0.8, 0.95};
  t.adam_eps = 1e-6;
  auto opt = make_optimizer(*ref, t);
  SingleProcess group;
  // 0.01 MB buckets: several, so that parameters straddle bucket boundaries and padding.
  Spy* spy = nullptr;
  ShardedTraining engine(group, level, sharded_params(sh, t), {0.8, 0.95, 1e-6}, 0.01);
  CHECK(engine.buckets() >= (level == ShardLevel::parameters ? 4u : 3u));
  std::unique_ptr<Spy> owned;
  if (level == ShardLevel::parameters) {
    owned = std::make_unique<Spy>(engine, sh);
    spy = owned.get();
    sh->model->set_layer_shards(spy);
    // At rest a rank holds slices only.
    for (const auto& p : sh->parameters()) CHECK(p.numel() == 0);
  }
  const auto ids = torch::randint(0, 40, {6, 2, 9}, torch::kLong);
  for (int step = 0; step < 3; ++step) {
    const double lr = 1e-2 * (step + 1);
    opt->zero_grad();
    engine.zero_grad();
    for (int m = 0; m < 2; ++m) {
      (loss_of(ref, ids[step * 2 + m]) / 2).backward();
      engine.begin_micro_batch(m == 1);
      if (spy) spy->seen.clear();
      (loss_of(sh, ids[step * 2 + m]) / 2).backward();
      engine.end_micro_batch();
      if (spy) {
        // Layer i is whole for its forward; the layers before it are released again.
        REQUIRE(spy->seen.size() == 3);
        for (size_t i = 0; i < 3; ++i) {
          CHECK(spy->seen[i][i]);
          for (size_t j = 0; j < i; ++j) CHECK_FALSE(spy->seen[i][j]);
        }
        for (bool w : whole_layers(sh)) CHECK_FALSE(w);
      }
    }
    // A bound the gradients exceed: clipping scales them.
    const double ref_norm = torch::nn::utils::clip_grad_norm_(ref->parameters(), 0.5);
    const double norm = engine.clip_grad_norm(0.5);
    CHECK(norm == Approx(ref_norm).epsilon(1e-5));
    CHECK(norm > 0.5);
    set_lr(*opt, lr);
    opt->step();
    engine.step(lr);
  }
  engine.gather_all();
  double worst = 0;
  auto a = ref->named_parameters(true);
  auto b = sh->named_parameters(true);
  for (const auto& item : a) {
    const auto& other = b[item.key()];
    REQUIRE(other.sizes() == item.value().sizes());
    worst = std::max(worst, (other - item.value()).abs().max().item<double>());
  }
  CHECK(worst <= 1e-6);
  // The weights did move (the comparison is not of untouched copies).
  CHECK((ref->model->norm->weight - 1).abs().max().item<double>() > 1e-3);
  engine.release_all();
  if (level == ShardLevel::parameters) {
    for (const auto& p : sh->parameters()) CHECK(p.numel() == 0);
    sh->model->set_layer_shards(nullptr);
  }
}

TEST_CASE("sharding: the bytes a rank holds, by level") {
  SingleProcess group;
  torch::manual_seed(0);
  for (const auto level : {ShardLevel::optimizer, ShardLevel::gradients, ShardLevel::parameters}) {
    LlamaForCausalLM m(tiny_llm());
    int64_t n = 0;
    for (const auto& p : m->parameters()) n += p.numel();
    ShardedTraining engine(group, level, sharded_params(m, TrainConfig{}), {}, 25);
    const auto b = engine.bytes();
    CHECK(engine.unsharded_optimizer_bytes() == 8 * n);
    CHECK(b.optimizer == 8 * n);  // one rank owns everything
    CHECK(b.weights == (level == ShardLevel::parameters ? 0 : 4 * n));
    CHECK(b.master == (level == ShardLevel::parameters ? 4 * n : 0));
    CHECK(b.gradients == (level == ShardLevel::optimizer ? 8 * n : 4 * n));
    if (level == ShardLevel::parameters) m->model->set_layer_shards(nullptr);
  }
}

TEST_CASE("sharding: train.sharding names a level") {
  CHECK(parse_shard_level("gradients") == ShardLevel::gradients);
  CHECK_THROWS_WITH(parse_shard_level("zero3"), Catch::Contains("train.sharding"));
  CHECK(std::string(zero_stage_name(ShardLevel::parameters)) == "ZeRO-3");
}
