#include <catch2/catch.hpp>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/torch_compat.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "models/factory.h"
#include "models/hf/weights.h"
#include "train/checkpoint.h"
#include "train/freeze.h"
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
}  // namespace

TEST_CASE("freeze: glob matching") {
  CHECK(glob_match("multi_modal_projector.*", "multi_modal_projector.linear_1.weight"));
  CHECK(glob_match("*.bias", "a.b.c.bias"));
  CHECK(glob_match("language_model.model.layers.?.mlp.*",
                   "language_model.model.layers.3.mlp.up_proj.weight"));
  CHECK(!glob_match("language_model.model.layers.?.mlp.*",
                    "language_model.model.layers.13.mlp.up_proj.weight"));
  CHECK(!glob_match("vision_tower.*", "multi_modal_projector.linear_1.weight"));
  CHECK(glob_match("*", ""));
}

TEST_CASE("schedule: warmup then cosine / linear decay, as transformers' schedulers") {
  TrainConfig t;
  t.lr = 1.0;
  t.warmup_ratio = 0.1;  // 10 of 100 steps
  t.schedule = "cosine";
  CHECK(lr_at(t, 0, 100) == 0.0);
  CHECK(lr_at(t, 5, 100) == Approx(0.5));
  CHECK(lr_at(t, 10, 100) == Approx(1.0));
  CHECK(lr_at(t, 55, 100) == Approx(0.5));  // half-way through the decay
  CHECK(lr_at(t, 100, 100) == Approx(0.0).margin(1e-12));
  t.schedule = "linear";
  CHECK(lr_at(t, 55, 100) == Approx(0.5));
  CHECK(lr_at(t, 82, 100) == Approx(0.2));
  t.schedule = "constant";
  CHECK(lr_at(t, 82, 100) == Approx(1.0));
  t.schedule = "cosine";
  t.min_lr_ratio = 0.1;
  CHECK(lr_at(t, 100, 100) == Approx(0.1));
}

TEST_CASE("freeze: an unmatched glob is a config error naming train.trainable") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  auto tok = load_tokenizer(c.model.tokenizer);
  auto model = build_model(c, tok->vocabulary());
  c.train.trainable = {"multi_modal_projector.*", "multi_modal_projecter.*"};
  CHECK_THROWS_WITH(apply_trainable(*model, c),
                    Catch::Contains("train.trainable[1]: 'multi_modal_projecter.*' "
                                    "matches no parameter"));
}

TEST_CASE(
    "stage 1 leaves frozen encoder and LLM weights unchanged, trains the connector, and writes "
    "summary.json") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 32, 8);
  Config c = test::tiny_config(data.path(), data / "run");
  c.train.max_steps = 3;
  // Build the same initial model the trainer builds (same seed) to compare against.
  auto tok = load_tokenizer(c.model.tokenizer);
  const auto before = snapshot(*build_model(c, tok->vocabulary()));
  const TrainSummary s = train(c);
  REQUIRE(s.steps == 3);
  SafetensorsFile after(s.final_dir / "model.safetensors");
  int64_t changed_connector = 0;
  for (const auto& [name, t] : before) {
    const auto now = after.get(name);
    if (name.rfind("multi_modal_projector.", 0) == 0) {
      changed_connector += !torch::equal(now, t);
    } else {
      INFO(name);
      CHECK(torch::equal(now, t));
    }
  }
  CHECK(changed_connector == 4);  // both weights and both biases of the MLP

  // summary.json: the figures a sweep tabulates.
  const auto j = nlohmann::json::parse(test::read_text(s.output_dir / "summary.json"));
  CHECK(j["steps"] == 3);
  CHECK(j["trainable_params"] == 2 * (32 * 32 + 32));  // mlp2x_gelu, 32 -> 32 -> 32
  CHECK(j["total_params"].get<int64_t>() > j["trainable_params"].get<int64_t>());
  CHECK(j["image_tokens"] == 16);  // (32 / 8)^2 patches
  CHECK(j["final_loss"].get<double>() == Approx(s.losses.back().second));
  CHECK(j["final_eval_loss"].get<double>() == Approx(*s.last_eval_loss));
  CHECK(j["tokens_per_s"].get<double>() > 0);
  CHECK(j["blas"].is_string());  // "OpenBLAS Zen", ...: the core the figures were made with
  CHECK(j["wall_seconds"].get<double>() >= s.train_seconds);
}

TEST_CASE("frozen parameters get no gradient; trainable ones do") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  auto tok = load_tokenizer(c.model.tokenizer);
  auto model = build_model(c, tok->vocabulary());
  apply_trainable(*model, c);
  CHECK(!model->vision_trainable());
  std::vector<int64_t> seq{1};
  seq.insert(seq.end(), static_cast<size_t>(model->image_tokens()), tok->image_id());
  seq.insert(seq.end(), {10, 11, 2});
  auto input = torch::tensor(seq).unsqueeze(0);
  auto h = model->forward(input, torch::randn({1, 3, 32, 32}));
  model->logits(h).sum().backward();
  for (const auto& [name, p] : named_parameters(*model)) {
    INFO(name);
    if (name.rfind("multi_modal_projector.", 0) == 0)
      CHECK(p.grad().defined());
    else
      CHECK(!p.grad().defined());
  }
}

TEST_CASE("loss falls on a small fixed batch") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 8, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  c.train.trainable = {"multi_modal_projector.*", "language_model.*"};
  c.train.max_steps = 40;
  c.train.lr = 1e-2;
  const TrainSummary s = train(c);
  REQUIRE(s.losses.size() == 40);
  const double first = s.losses.front().second, last = s.losses.back().second;
  INFO("first " << first << " last " << last);
  CHECK(last < 0.5 * first);
}

TEST_CASE("a mixture-of-experts LLM trains, with coef x its load-balancing loss in the objective") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 8, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  c.model.llm.type = "mixtral";
  c.model.llm.experts = 4;
  c.model.llm.experts_per_token = 2;
  c.model.llm.router_aux_loss_coef = 0.5;
  auto tok = load_tokenizer(c.model.tokenizer);
  auto model = build_model(c, tok->vocabulary());
  std::vector<int64_t> seq{1};
  seq.insert(seq.end(), static_cast<size_t>(model->image_tokens()), tok->image_id());
  seq.insert(seq.end(), {10, 11, 12, 2});
  Batch b;
  b.input_ids = torch::tensor(seq).unsqueeze(0);
  b.labels = b.input_ids.clone();
  b.labels.slice(1, 0, 1 + model->image_tokens()).fill_(kIgnoreIndex);
  b.attention_mask = torch::ones_like(b.input_ids);
  b.pixel_values = torch::randn({1, 3, 32, 32});
  const auto with_aux = lm_loss(*model, b);
  const double aux = model->language_model->aux_loss(b.attention_mask).item<double>();
  CHECK(aux >= 2.0 - 1e-6);  // top-2: 2 when balanced, more when not
  model->config_mutable().llm.router_aux_loss_coef = 0;
  const auto without = lm_loss(*model, b);
  REQUIRE(with_aux.weight == 4);
  CHECK(with_aux.loss_sum.item<double>() - without.loss_sum.item<double>() ==
        Approx(0.5 * 4 * aux).epsilon(1e-4));

  c.train.trainable = {"multi_modal_projector.*", "language_model.*"};
  c.train.max_steps = 30;
  c.train.lr = 1e-2;
  const TrainSummary s = train(c);
  const double first = s.losses.front().second, last = s.losses.back().second;
  INFO("first " << first << " last " << last);
  CHECK(last < 0.6 * first);
  SafetensorsFile f(s.final_dir / "model.safetensors");
  CHECK(f.contains("language_model.model.layers.1.block_sparse_moe.experts.3.w2.weight"));
  CHECK(f.contains("language_model.model.layers.0.block_sparse_moe.gate.weight"));
}

TEST_CASE("stage 1 with Flamingo's gated cross-attention: only the connector trains, loss falls") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 8, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  c.model.connector.type = "gated_xattn";
  c.train.max_steps = 40;
  c.train.lr = 1e-2;
  const TrainSummary s = train(c);
  const double first = s.losses.front().second, last = s.losses.back().second;
  INFO("first " << first << " last " << last);
  CHECK(last < 0.8 * first);
  SafetensorsFile f(s.final_dir / "model.safetensors");
  CHECK(f.get("multi_modal_projector.blocks.0.attn_gate").abs().item<float>() > 0);
}

TEST_CASE("NaN guard: non-finite steps are skipped and counted; too many in a row abort") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 8, 4);
  Config c = test::tiny_config(data.path(), data / "run0");
  c.train.max_steps = 1;
  const TrainSummary base = train(c);
  // The LLM from that run, with one weight poisoned: every forward gives NaN.
  NamedTensors tensors = load_safetensors(base.final_dir / "model.safetensors");
  for (auto& [name, t] : tensors)
    if (name == "language_model.model.norm.weight") t[0] = std::nan("");
  save_safetensors(base.final_dir / "model.safetensors", tensors);
  Config poisoned = test::tiny_config(data.path(), data / "run1");
  poisoned.model.llm.pretrained = base.final_dir.string();
  poisoned.train.max_steps = 10;
  poisoned.train.max_bad_steps = 2;
  CHECK_THROWS_WITH(train(poisoned), Catch::Contains("3 steps in a row up to step 3") &&
                                         Catch::Contains("train.max_bad_steps=2"));
  CHECK(!std::filesystem::exists(data / "run1" / "final"));
  const std::string metrics = test::read_text(data / "run1" / "metrics.jsonl");
  size_t skipped = 0;
  for (size_t p = 0; (p = metrics.find("\"skipped_step\":true", p)) != std::string::npos; ++p)
    ++skipped;
  CHECK(skipped == 3);
}

TEST_CASE("checkpoint round trip restores weights, optimizer moments and trainer state") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  auto tok = load_tokenizer(c.model.tokenizer);
  auto model = build_model(c, tok->vocabulary());
  apply_trainable(*model, c);
  auto opt = make_optimizer(*model, c.train);
  // One real update so the optimizer has state.
  std::vector<int64_t> seq(static_cast<size_t>(model->image_tokens()), tok->image_id());
  seq.insert(seq.end(), {10, 11, 2});
  model->logits(model->forward(torch::tensor(seq).unsqueeze(0), torch::randn({1, 3, 32, 32})))
      .pow(2)
      .mean()
      .backward();
  opt->step();
  TrainerState st;
  st.step = 7, st.epoch = 2, st.position = 40, st.total_steps = 99, st.lr = 0.25;
  const auto dir = save_checkpoint(data / "ckpt", *model, *opt, st, 2);
  CHECK(dir.filename() == "step-000007");
  CHECK(find_latest_checkpoint(data / "ckpt") == dir);

  c.run.seed = 99;  // different init: everything must come from the checkpoint
  auto model2 = build_model(c, tok->vocabulary());
  apply_trainable(*model2, c);
  auto opt2 = make_optimizer(*model2, c.train);
  const TrainerState st2 = load_checkpoint(dir, *model2, *opt2);
  CHECK(st2.step == 7);
  CHECK(st2.epoch == 2);
  CHECK(st2.position == 40);
  CHECK(st2.lr == 0.25);
  const auto a = snapshot(*model), b = snapshot(*model2);
  for (const auto& [name, t] : a)
    if (name.rfind("multi_modal_projector.", 0) == 0) CHECK(torch::equal(t, b.at(name)));
  // Optimizer moments: compare by parameter position.
  REQUIRE(opt->state().size() == opt2->state().size());
  const auto p1 = opt->param_groups()[0].params(), p2 = opt2->param_groups()[0].params();
  REQUIRE(!p1.empty());
  for (size_t i = 0; i < p1.size(); ++i) {
    auto* s1 = optimizer_param_state(*opt, p1[i]);
    auto* s2 = optimizer_param_state(*opt2, p2[i]);
    REQUIRE(s1);
    REQUIRE(s2);
    auto& a1 = static_cast<torch::optim::AdamWParamState&>(*s1);
    auto& a2 = static_cast<torch::optim::AdamWParamState&>(*s2);
    CHECK(torch::equal(a1.exp_avg(), a2.exp_avg()));
    CHECK(torch::equal(a1.exp_avg_sq(), a2.exp_avg_sq()));
    CHECK(a1.step() == a2.step());
  }
}

TEST_CASE("checkpoints: keep_last prunes the oldest; half-written ones are never picked") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "run");
  auto tok = load_tokenizer(c.model.tokenizer);
  auto model = build_model(c, tok->vocabulary());
  apply_trainable(*model, c);
  auto opt = make_optimizer(*model, c.train);
  TrainerState st;
  for (int64_t step : {1, 2, 3}) {
    st.step = step;
    save_checkpoint(data / "ckpt", *model, *opt, st, 2);
  }
  CHECK(!std::filesystem::exists(data / "ckpt" / "step-000001"));
  CHECK(std::filesystem::exists(data / "ckpt" / "step-000002"));
  // A crash mid-write leaves a temp dir and maybe a stale `latest`: the newest complete one wins.
  std::filesystem::create_directories(data / "ckpt" / "step-000009");
  test::write_text(data / "ckpt" / "latest", "step-000009\n");
  CHECK(find_latest_checkpoint(data / "ckpt") == data / "ckpt" / "step-000003");
}

TEST_CASE("a run stopped after k steps and resumed gives the same losses as an uninterrupted run") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 24, 4);
  Config c = test::tiny_config(data.path(), data / "full");
  c.train.max_steps = 6;
  c.train.batch_size = 4;
  c.train.grad_accum = 2;  // 3 steps per epoch: the resume crosses an epoch boundary
  c.train.warmup_ratio = 0.3;
  const TrainSummary full = train(c);
  REQUIRE(full.losses.size() == 6);

  Config r = c;
  r.run.output_dir = (data / "resumed").string();
  r.train.save_every = 2;
  TrainOptions stop;
  stop.stop_after = 4;
  const TrainSummary first = train(r, stop);
  CHECK(first.steps == 4);
  CHECK(first.final_dir.empty());
  // A fresh start over it is refused: that would overwrite its checkpoints.
  CHECK_THROWS_AS(train(r), ConfigError);
  // The checkpoint carries the wall time so far; make it large to see it carried into the end.
  const auto state_file = data / "resumed" / "checkpoints" / "step-000004" / "trainer_state.json";
  auto state = nlohmann::json::parse(test::read_text(state_file));
  CHECK(state["extra"]["wall_seconds"].get<double>() > 0);
  state["extra"]["wall_seconds"] = 1000.0;
  test::write_text(state_file, state.dump());
  // A hand-edited file no longer matches the checksum in the manifest: drop its entry, or the
  // resume (rightly) passes over this checkpoint as damaged.
  const auto manifest_file = state_file.parent_path() / "manifest.json";
  auto manifest = nlohmann::json::parse(test::read_text(manifest_file));
  REQUIRE(manifest["files"].erase("trainer_state.json") == 1);
  test::write_text(manifest_file, manifest.dump());
  TrainOptions resume;
  resume.resume = "auto";
  const TrainSummary second = train(r, resume);
  REQUIRE(second.losses.size() == 2);
  CHECK(second.steps == 6);
  // Bit-identical on CPU: same losses, same final weights.
  for (size_t i = 0; i < 4; ++i) CHECK(first.losses[i].second == full.losses[i].second);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(second.losses[i].first == full.losses[4 + i].first);
    CHECK(second.losses[i].second == full.losses[4 + i].second);
  }
  CHECK(*second.last_eval_loss == *full.last_eval_loss);
  const auto wf = load_safetensors(full.final_dir / "model.safetensors");
  const auto wr = load_safetensors(second.final_dir / "model.safetensors");
  REQUIRE(wf.size() == wr.size());
  for (size_t i = 0; i < wf.size(); ++i) {
    INFO(wf[i].first);
    CHECK(wf[i].first == wr[i].first);
    CHECK(torch::equal(wf[i].second, wr[i].second));
  }
  // summary.json's wall time adds this process's to the checkpoint's.
  const auto j = nlohmann::json::parse(test::read_text(second.output_dir / "summary.json"));
  CHECK(j["steps"] == 6);
  CHECK(j["final_loss"].get<double>() == Approx(full.losses.back().second).epsilon(1e-6));
  CHECK(j["wall_seconds"].get<double>() >= 1000 + second.train_seconds);
  CHECK(j["wall_seconds"].get<double>() < 1100);
}

TEST_CASE("bf16 autocast trains and stays close to fp32 on the first step") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "fp32");
  c.train.max_steps = 3;
  const TrainSummary fp32 = train(c);
  c.run.output_dir = (data / "bf16").string();
  c.train.precision = "bf16";
  const TrainSummary bf16 = train(c);
  REQUIRE(bf16.losses.size() == 3);
  CHECK(bf16.losses[0].second == Approx(fp32.losses[0].second).epsilon(0.02));
  CHECK(bf16.losses[0].second != fp32.losses[0].second);  // it really ran in bf16
  // Parameters and optimizer state stay fp32 (autocast only lowers the matmuls).
  SafetensorsFile f(bf16.final_dir / "model.safetensors");
  CHECK(f.dtype("multi_modal_projector.linear_1.weight") == "F32");
}

TEST_CASE("AdamW groups: decay on matrices, none on norms and biases; embeddings configurable") {
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 4, 1);
  Config c = test::tiny_config(data.path(), data / "run");
  c.model.llm.type = "qwen2";  // q/k/v biases
  c.train.trainable = {"language_model.*", "multi_modal_projector.*"};
  c.train.weight_decay = 0.1;
  auto tok = load_tokenizer(c.model.tokenizer);
  MultimodalModel model = build_model(c, tok->vocabulary());
  apply_trainable(*model, c);
  std::map<const void*, std::string> name_of;
  for (const auto& item : model->named_parameters(true))
    name_of[item.value().unsafeGetTensorImpl()] = item.key();
  auto groups_of = [&](const TrainConfig& t) {
    auto opt = make_optimizer(*model, t);
    std::map<std::string, double> decay;  // name -> weight decay of its group
    for (auto& g : opt->param_groups()) {
      const double wd = static_cast<torch::optim::AdamWOptions&>(g.options()).weight_decay();
      for (const auto& p : g.params()) decay[name_of.at(p.unsafeGetTensorImpl())] = wd;
    }
    return decay;
  };
  auto decay = groups_of(c.train);
  const std::string L = "language_model.model.";
  CHECK(decay.at(L + "layers.0.self_attn.q_proj.weight") == 0.1);
  CHECK(decay.at(L + "layers.0.self_attn.q_proj.bias") == 0.0);
  CHECK(decay.at(L + "layers.0.input_layernorm.weight") == 0.0);
  CHECK(decay.at(L + "norm.weight") == 0.0);
  CHECK(decay.at("multi_modal_projector.linear_1.weight") == 0.1);
  CHECK(decay.at("multi_modal_projector.linear_1.bias") == 0.0);
  CHECK(decay.at(L + "embed_tokens.weight") == 0.1);  // as HF Trainer, by default
  CHECK(decay.count("vision_tower.vision_model.post_layernorm.weight") == 0);  // frozen: absent
  c.train.weight_decay_embeddings = false;
  decay = groups_of(c.train);
  CHECK(decay.at(L + "embed_tokens.weight") == 0.0);
  CHECK(decay.at("language_model.lm_head.weight") == 0.1);
}
