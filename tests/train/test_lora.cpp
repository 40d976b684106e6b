#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/safetensors.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "models/factory.h"
#include "models/hf/weights.h"
#include "train/freeze.h"
#include "train/lora.h"
#include "train/objectives.h"
#include "train/optim.h"
#include "train/trainer.h"

using namespace mllm;
using mllm::test::TempDir;

namespace {

std::map<std::string, torch::Tensor> snapshot(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, t] : named_parameters(m)) out[name] = t.detach().clone();
  return out;
}

bool is_adapter(const std::string& name) {
  return name.find(".lora_") != std::string::npos;
}

// One caption-like sample: BOS, the image's placeholders, a few text tokens (loss on the text).
Batch sample_batch(const MultimodalModelImpl& model, const Tokenizer& tok) {
  std::vector<int64_t> seq{1};
  seq.insert(seq.end(), static_cast<size_t>(model.image_tokens()), tok.image_id());
  seq.insert(seq.end(), {10, 11, 12, 13, 2});
  Batch b;
  b.input_ids = torch::tensor(seq).unsqueeze(0);
  b.labels = b.input_ids.clone();
  b.labels.slice(1, 0, 1 + model.image_tokens()).fill_(kIgnoreIndex);
  b.attention_mask = torch::ones_like(b.input_ids);
  torch::manual_seed(9);
  b.pixel_values = torch::randn({1, 3, 32, 32});
  return b;
}

// Tiny model (hidden 32, 2 layers, 2 heads of 16, 1 kv head, MLP 64) with LoRA rank 4.
struct Fixture {
  TempDir data{"mllm-data"};
  Config config;
  std::unique_ptr<Tokenizer> tok;
  MultimodalModel model{nullptr};
  Fixture() {
    test::make_shapes(data.path(), 8, 4);
    config = test::tiny_config(data.path(), data / "run");
    config.train.lora.rank = 4;
    config.train.lora.alpha = 8;
    tok = load_tokenizer(config.model.tokenizer);
    model = build_model(config, tok->vocabulary());
  }
};

// Adapter parameters per layer, rank 4: r * (in + out).
constexpr int64_t kLayerAdapters = 4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) +  // q k v o
                                        3 * (32 + 64));  // gate, up, down
constexpr int64_t kConnector = 2 * (32 * 32 + 32);       // mlp2x_gelu 32 -> 32 -> 32

}  // namespace

TEST_CASE("lora: adapters on every linear layer of the decoder; they train, what they adapt not") {
  Fixture f;
  apply_trainable(*f.model, f.config);
  const auto adapted = apply_lora(*f.model, f.config);
  CHECK(adapted.size() == 2 * 7);  // q k v o gate up down, in 2 layers
  CHECK(std::count(adapted.begin(), adapted.end(), "language_model.model.layers.1.mlp.down_proj"));
  CHECK(!std::count(adapted.begin(), adapted.end(), "language_model.lm_head"));
  int64_t trainable = 0;
  std::set<std::string> names;
  for (const auto& [name, p] : named_parameters(*f.model)) {
    names.insert(name);
    INFO(name);
    const bool connector = name.rfind("multi_modal_projector.", 0) == 0;
    CHECK(p.requires_grad() == (connector || is_adapter(name)));
    if (p.requires_grad()) trainable += p.numel();
  }
  CHECK(trainable == kConnector + 2 * kLayerAdapters);
  CHECK(names.count("language_model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  CHECK(names.count("language_model.model.layers.0.self_attn.q_proj.lora_B.weight"));
  CHECK(names.count("language_model.model.layers.0.self_attn.q_proj.weight"));
  CHECK(!names.count("language_model.lm_head.lora_A.weight"));
  // A layer train.trainable named is frozen once adapted (PEFT trains the adapter instead).
  Fixture g;
  g.config.train.trainable = {"language_model.model.layers.0.*"};
  apply_trainable(*g.model, g.config);
  apply_lora(*g.model, g.config);
  for (const auto& [name, p] : named_parameters(*g.model)) {
    INFO(name);
    const bool norm = name.find("layernorm") != std::string::npos;
    CHECK(p.requires_grad() ==
          (is_adapter(name) || (norm && name.rfind("language_model.model.layers.0.", 0) == 0)));
  }
}

TEST_CASE("lora: fresh adapters (B = 0) leave the model's output exactly as it was") {
  Fixture f;
  const auto b = sample_batch(*f.model, *f.tok);
  torch::NoGradGuard no_grad;
  f.model->eval();
  const auto before = f.model->forward(b.input_ids, b.pixel_values);
  apply_trainable(*f.model, f.config);
  apply_lora(*f.model, f.config);
  CHECK(torch::equal(f.model->forward(b.input_ids, b.pixel_values), before));
  f.model->train();  // with dropout on the adapters' input
  CHECK(torch::equal(f.model->forward(b.input_ids, b.pixel_values), before));
}

TEST_CASE("lora: optimizer steps change the adapters and the connector; base weights stay") {
  Fixture f;
  apply_trainable(*f.model, f.config);
  apply_lora(*f.model, f.config);
  const auto before = snapshot(*f.model);
  auto optimizer = make_optimizer(*f.model, f.config.train);
  const auto b = sample_batch(*f.model, *f.tok);
  for (int step = 0; step < 2; ++step) {  // A's gradient is zero until B is not
    optimizer->zero_grad();
    lm_loss(*f.model, b).loss_sum.backward();
    optimizer->step();
  }
  int64_t changed = 0;
  for (const auto& [name, p] : named_parameters(*f.model)) {
    INFO(name);
    const bool trains = is_adapter(name) || name.rfind("multi_modal_projector.", 0) == 0;
    if (trains) {
      CHECK(!torch::equal(p, before.at(name)));
      ++changed;
    } else {
      CHECK(torch::equal(p, before.at(name)));  // bit-identical
    }
  }
  CHECK(changed == 4 + 2 * 7 * 2);
}

TEST_CASE("lora: targets that match no linear layer are config errors naming the glob") {
  Fixture f;
  f.config.train.lora.targets = {"language_model.model.layers.*",
                                 "language_model.model.layers.*.mlp.gate"};
  CHECK_THROWS_WITH(apply_lora(*f.model, f.config),
                    Catch::Contains("train.lora.targets[1]: 'language_model.model.layers.*.mlp."
                                    "gate' matches no linear layer of the LLM"));
  Fixture g;  // the vision tower's and connector's layers are not targets
  g.config.train.lora.targets = {"vision_tower.*"};
  CHECK_THROWS_WITH(apply_lora(*g.model, g.config),
                    Catch::Contains("train.lora.targets[0]: 'vision_tower.*'"));
  Fixture h;  // lm_head only when a glob spells it
  h.config.train.lora.targets = {"language_model.*head"};
  CHECK_THROWS_AS(apply_lora(*h.model, h.config), ConfigError);
  Fixture k;
  k.config.train.lora.targets = {"language_model.lm_head", "*.self_attn.v_proj"};
  const auto adapted = apply_lora(*k.model, k.config);
  CHECK(adapted == std::vector<std::string>{"language_model.model.layers.0.self_attn.v_proj",
                                            "language_model.model.layers.1.self_attn.v_proj",
                                            "language_model.lm_head"});
}

TEST_CASE("lora: rank 0 is off; with LoRA on, train.trainable may be empty") {
  Fixture f;
  f.config.train.lora.rank = 0;
  const auto names = snapshot(*f.model);
  CHECK(apply_lora(*f.model, f.config).empty());
  CHECK(snapshot(*f.model).size() == names.size());
  f.config.train.trainable = {};
  CHECK_THROWS_WITH(apply_trainable(*f.model, f.config),
                    Catch::Contains("no parameter is trainable"));
  Fixture g;
  g.config.train.trainable = {};
  CHECK(apply_trainable(*g.model, g.config).empty());
  apply_lora(*g.model, g.config);
  int64_t trainable = 0;
  for (const auto& [name, p] : named_parameters(*g.model, true)) {
    INFO(name);
    CHECK(is_adapter(name));
    trainable += p.numel();
  }
  CHECK(trainable == 2 * kLayerAdapters);
}

TEST_CASE("lora: merging folds the adapters into the weights: same outputs, no lora keys") {
  Fixture f;
  apply_trainable(*f.model, f.config);
  const auto plain_names = snapshot(*f.model);
  f.config.train.lora.targets.push_back("language_model.lm_head");
  const auto adapted = apply_lora(*f.model, f.config);
  REQUIRE(adapted.size() == 15);
  {
    torch::NoGradGuard no_grad;  // trained adapters: B no longer zero
    for (const auto& [name, p] : named_parameters(*f.model))
      if (is_adapter(name)) p.normal_(0, 0.2);
  }
  const auto b = sample_batch(*f.model, *f.tok);
  torch::NoGradGuard no_grad;
  f.model->eval();
  const auto h = f.model->forward(b.input_ids, b.pixel_values);
  const auto logits = f.model->logits(h);
  const auto q_before = f.model->language_model->model->layers[0]
                            ->as<LlamaDecoderLayer>()
                            ->self_attn->q_proj->weight.clone();
  CHECK(merge_lora(*f.model) == 15);
  CHECK(merge_lora(*f.model) == 0);
  std::set<std::string> names;
  for (const auto& [name, p] : named_parameters(*f.model)) {
    CHECK(!is_adapter(name));
    names.insert(name);
  }
  CHECK(names.size() == plain_names.size());
  CHECK(!torch::equal(
      f.model->language_model->model->layers[0]->as<LlamaDecoderLayer>()->self_attn->q_proj->weight,
      q_before));
  const auto h2 = f.model->forward(b.input_ids, b.pixel_values);
  CHECK((h2 - h).abs().max().item<double>() < 1e-5);
  CHECK((f.model->logits(h2) - logits).abs().max().item<double>() < 1e-5);
}

TEST_CASE("lora through the trainer: merged final/, adapter checkpoints, exact resume") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 24, 4);
  Config c = test::tiny_config(data.path(), data / "full");
  c.train.lora.rank = 4;
  c.train.lora.dropout = 0.2;  // resume must replay the dropout masks too
  c.train.max_steps = 6;
  c.train.batch_size = 4;
  c.train.lr = 1e-2;
  auto tok = load_tokenizer(c.model.tokenizer);
  const auto initial = snapshot(*build_model(c, tok->vocabulary()));
  const TrainSummary full = train(c);
  REQUIRE(full.losses.size() == 6);
  const auto j = nlohmann::json::parse(test::read_text(full.output_dir / "summary.json"));
  CHECK(j["trainable_params"] == kConnector + 2 * kLayerAdapters);

  // final/ is a plain model with the adapters merged: the adapted weights moved, nothing else
  // of the LLM did, and it has exactly the keys of a model without LoRA.
  SafetensorsFile fin(full.final_dir / "model.safetensors");
  CHECK(fin.names().size() == initial.size());
  for (const auto& [name, t] : initial) {
    INFO(name);
    REQUIRE(fin.contains(name));
    const bool adapted = name.rfind("language_model.model.layers.", 0) == 0 &&
                         name.find("_proj.weight") != std::string::npos;
    const bool connector = name.rfind("multi_modal_projector.", 0) == 0;
    CHECK(torch::equal(fin.get(name), t) == !(adapted || connector));
  }

  Config r = c;
  r.run.output_dir = (data / "resumed").string();
  r.train.save_every = 2;
  TrainOptions stop;
  stop.stop_after = 4;
  train(r, stop);
  SafetensorsFile ckpt(data / "resumed" / "checkpoints" / "step-000002" / "model.safetensors");
  CHECK(ckpt.contains("language_model.model.layers.1.mlp.up_proj.lora_B.weight"));
  CHECK(!ckpt.contains("language_model.model.layers.1.mlp.up_proj.weight"));
  TrainOptions resume;
  resume.resume = "auto";
  const TrainSummary second = train(r, resume);
  REQUIRE(second.losses.size() == 2);
  for (size_t i = 0; i < 2; ++i)
    CHECK(second.losses[i].second == Approx(full.losses[4 + i].second).epsilon(1e-6));
  SafetensorsFile fin2(second.final_dir / "model.safetensors");
  CHECK(torch::allclose(fin2.get("language_model.model.layers.0.self_attn.q_proj.weight"),
                        fin.get("language_model.model.layers.0.self_attn.q_proj.weight"), 1e-5,
                        1e-6));
}

TEST_CASE("gradient checkpointing through the trainer: the same losses as without") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "plain");
  c.train.trainable = {"multi_modal_projector.*", "language_model.model.layers.*"};
  c.train.lora.rank = 2;  // norms train in full, the linear layers through adapters with dropout
  c.train.max_steps = 3;
  const TrainSummary plain = train(c);
  c.run.output_dir = (data / "ckpt").string();
  c.train.gradient_checkpointing = true;
  const TrainSummary ckpt = train(c);
  REQUIRE(ckpt.losses.size() == plain.losses.size());
  for (size_t i = 0; i < plain.losses.size(); ++i)
    CHECK(ckpt.losses[i].second == Approx(plain.losses[i].second).epsilon(1e-6));
}

TEST_CASE("lora on a mixture of experts: every expert and the router adapted, trained, merged") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 8, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  c.model.llm.type = "mixtral";
  c.model.llm.experts = 4, c.model.llm.experts_per_token = 2;
  c.train.lora.rank = 4, c.train.lora.alpha = 8, c.train.lora.dropout = 0;
  const auto tok = load_tokenizer(c.model.tokenizer);
  MultimodalModel model = build_model(c, tok->vocabulary());
  apply_trainable(*model, c);
  const auto adapted = apply_lora(*model, c);
  // Per layer q k v o, the router and w1 w2 w3 of each of the 4 experts (PEFT's all-linear).
  CHECK(adapted.size() == 2 * (4 + 1 + 3 * 4));
  CHECK(std::count(adapted.begin(), adapted.end(),
                   "language_model.model.layers.1.block_sparse_moe.experts.3.w2"));
  CHECK(std::count(adapted.begin(), adapted.end(),
                   "language_model.model.layers.0.block_sparse_moe.gate"));
  const auto b = sample_batch(*model, *tok);
  const auto before = snapshot(*model);
  auto optimizer = make_optimizer(*model, c.train);
  for (int step = 0; step < 2; ++step) {  // A's gradient is zero until B is not
    optimizer->zero_grad();
    lm_loss(*model, b).loss_sum.backward();
    optimizer->step();
  }
  // Base weights bit-identical; the router's adapters train, and those of the experts the
  // sample's tokens were routed to (each token picks 2 of 4: some expert in every layer).
  int64_t experts_changed = 0;
  for (const auto& [name, p] : named_parameters(*model)) {
    INFO(name);
    if (!is_adapter(name)) {
      if (name.rfind("multi_modal_projector.", 0) != 0) CHECK(torch::equal(p, before.at(name)));
      continue;
    }
    const bool changed = !torch::equal(p, before.at(name));
    if (name.find(".gate.lora_") != std::string::npos) CHECK(changed);
    if (name.find(".experts.") != std::string::npos && changed) ++experts_changed;
  }
  CHECK(experts_changed >= 2 * 6);  // w1 w2 w3, A and B, of at least one expert per layer
  // Merged, the experts compute what they did with their adapters.
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, p] : named_parameters(*model))
      if (is_adapter(name)) p.normal_(0, 0.2);
  }
  torch::NoGradGuard no_grad;
  model->eval();
  const auto h = model->forward(b.input_ids, b.pixel_values);
  CHECK(merge_lora(*model) == static_cast<int64_t>(adapted.size()));
  CHECK((model->forward(b.input_ids, b.pixel_values) - h).abs().max().item<double>() < 1e-5);
}
