// Stages 2 and 3 end to end on a tiny ShapesWorld, and the machinery around them: init_from,
// the preference batch layout, DPO through the trainer, gradient accumulation, RNG in checkpoints.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>

#include "core/error.h"
#include "data/collator.h"
#include "data/datasets.h"
#include "data/loader.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "jsonl.h"
#include "models/factory.h"
#include "models/hf/weights.h"
#include "train/checkpoint.h"
#include "train/dpo.h"
#include "train/freeze.h"
#include "train/objectives.h"
#include "train/optim.h"
#include "train/stage.h"
#include "train/trainer.h"

using namespace mllm;
using mllm::test::read_jsonl;
using mllm::test::TempDir;

namespace {

void use(Config& c, const std::filesystem::path& data, const std::string& kind) {
  const bool pref = kind == "preference";
  for (auto* s : {&c.data.train, &c.data.eval}) {
    s->format = pref ? "preference_json" : "llava_json";
    s->image_root = (data / "images").string();
  }
  c.data.train.path = (data / (kind + "_train.json")).string();
  c.data.eval.path = (data / (kind + "_val.json")).string();
}

Config stage2(const std::filesystem::path& data, const std::filesystem::path& out,
              const std::filesystem::path& from) {
  Config c = test::tiny_config(data, out);
  use(c, data, "instruct");
  c.data.template_name = "vicuna_v1";
  c.data.max_length = 96;
  c.train.stage = "instruct";
  c.train.init_from = from.string();
  c.train.trainable = {"multi_modal_projector.*", "language_model.*"};
  c.train.max_steps = 4;
  return c;
}

std::map<std::string, torch::Tensor> final_weights(const std::filesystem::path& final_dir) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, t] : load_safetensors(final_dir / "model.safetensors")) out[name] = t;
  return out;
}

}  // namespace

TEST_CASE("stage 2 starts from stage 1's final/ (init_from) and trains on assistant replies") {
  TempDir data("mllm-stages");
  test::make_shapes(data.path(), 32, 8);
  Config s1 = test::tiny_config(data.path(), data / "s1");
  s1.train.max_steps = 3;
  const TrainSummary r1 = train(s1);
  REQUIRE(!r1.final_dir.empty());

  // What init_from loads: every tensor of final/, the connector included, bit for bit.
  Config s2 = stage2(data.path(), data / "s2", r1.final_dir);
  {
    Config copy = s2;
    const auto tok = load_tokenizer(copy.model.tokenizer);
    MultimodalModel fresh = build_model(copy, tok->vocabulary());
    const auto [file, parts] = load_init_weights(*fresh, r1.final_dir);
    CHECK(file == r1.final_dir / "model.safetensors");
    CHECK(parts.at("multi_modal_projector") == 4);
    CHECK(parts.at("language_model") > 0);
    CHECK(parts.at("vision_tower") > 0);
    const auto saved = final_weights(r1.final_dir);
    for (const auto& [name, t] : named_parameters(*fresh)) {
      INFO(name);
      REQUIRE(saved.count(name));
      CHECK(torch::equal(saved.at(name), t));
    }
    // A run directory stands for its final/.
    CHECK(load_init_weights(*fresh, data / "s1").first == file);
  }
  const TrainSummary r2 = train(s2);
  REQUIRE(r2.losses.size() == 4);
  for (const auto& [step, loss] : r2.losses) CHECK(std::isfinite(loss));
  // The LLM trained (it was frozen in stage 1): its final weights moved away from stage 1's.
  const auto w1 = final_weights(r1.final_dir), w2 = final_weights(r2.final_dir);
  CHECK_FALSE(torch::equal(w1.at("language_model.model.layers.0.mlp.up_proj.weight"),
                           w2.at("language_model.model.layers.0.mlp.up_proj.weight")));
  CHECK(torch::equal(w1.at("vision_tower.vision_model.post_layernorm.weight"),
                     w2.at("vision_tower.vision_model.post_layernorm.weight")));
}

TEST_CASE("init_from: a checkpoint of another architecture is one clear error naming the key") {
  TempDir data("mllm-stages");
  test::make_shapes(data.path(), 16, 4);
  Config s1 = test::tiny_config(data.path(), data / "s1");
  s1.train.max_steps = 1;
  const TrainSummary r1 = train(s1);
  Config other = stage2(data.path(), data / "s2", r1.final_dir);
  other.model.connector.type = "linear";
  CHECK_THROWS_WITH(train(other), Catch::Contains("train.init_from") &&
                                      Catch::Contains("holds multi_modal_projector.") &&
                                      Catch::Contains("does not have"));
  other.model.connector.type = "mlp2x_gelu";
  other.run.output_dir = (data / "s2b").string();
  other.train.init_from = (data / "nowhere").string();
  CHECK_THROWS_WITH(train(other), Catch::Contains("holds no model.safetensors"));
}

TEST_CASE("preference batches: chosen rows then rejected rows; sequence log-probs as TRL's") {
  TempDir data("mllm-stages");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "out");
  use(c, data.path(), "preference");
  c.train.stage = "dpo";
  c.data.template_name = "vicuna_v1";
  c.data.max_length = 96;
  const auto tok = load_tokenizer(c.model.tokenizer);
  MultimodalModel model = build_model(c, tok->vocabulary());
  PreferenceDataset ds(c.data.train, c.data, *tok, model->image_tokens(), "data.train");
  const ImageTransform transform(c.data.image, 32);
  const Batch b = collate_items(ds, {3, 5, 7}, transform, 0, false, nullptr, nullptr);
  REQUIRE(b.pairs == 3);
  REQUIRE(b.input_ids.size(0) == 6);
  REQUIRE(b.pixel_values.size(0) == 6);
  for (int64_t i = 0; i < 3; ++i) {
    const auto p = ds.sample(static_cast<size_t>(3 + 2 * i));
    const auto row = [&](int64_t r, const Sample& s) {
      const auto n = static_cast<int64_t>(s.input_ids.size());
      CHECK(torch::equal(b.input_ids[r].slice(0, 0, n), torch::tensor(s.input_ids)));
      CHECK(torch::equal(b.labels[r].slice(0, 0, n), torch::tensor(s.labels)));
    };
    row(i, p.chosen);
    row(3 + i, p.rejected);
    // The same image for both rows of a pair.
    CHECK(torch::equal(b.pixel_values[i], b.pixel_values[3 + i]));
  }
  torch::NoGradGuard no_grad;
  model->eval();
  const auto hidden = model->forward(b.input_ids, b.pixel_values, b.attention_mask);
  const auto logits = model->logits(hidden);
  for (bool average : {false, true}) {
    const auto ours = sequence_logps(*model, b, average);
    const auto full = response_logps(logits, b.labels, average);
    CHECK(torch::allclose(ours, full, 1e-5, 1e-5));
  }
}

TEST_CASE("stage 3: DPO against a frozen reference; loss ln 2 at the start, margins grow") {
  TempDir data("mllm-stages");
  test::make_shapes(data.path(), 48, 16);
  Config s1 = test::tiny_config(data.path(), data / "s1");
  s1.train.max_steps = 2;
  const TrainSummary r1 = train(s1);

  Config c = test::tiny_config(data.path(), data / "s3");
  use(c, data.path(), "preference");
  c.train.stage = "dpo";
  c.train.init_from = r1.final_dir.string();
  c.data.template_name = "vicuna_v1";
  c.data.max_length = 96;
  c.train.trainable = {"multi_modal_projector.*", "language_model.*"};
  c.train.batch_size = 8;
  c.train.max_steps = 18;  // 3 epochs of 6 steps
  c.train.lr = 1e-3;
  const TrainSummary r = train(c);
  REQUIRE(r.losses.size() == 18);
  // Policy == reference at the first step: h = 0, so the sigmoid loss is -log sigma(0) = ln 2.
  CHECK(r.losses.front().second == Approx(std::log(2.0)).epsilon(1e-6));
  const auto records = read_jsonl(r.output_dir / "metrics.jsonl");
  std::vector<nlohmann::json> steps, evals;
  for (const auto& j : records) (j.contains("eval_loss") ? evals : steps).push_back(j);
  REQUIRE(steps.size() == 18);
  for (const char* k : {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                        "rewards/margins", "logps/chosen", "logps/rejected"}) {
    INFO(k);
    REQUIRE(steps.front().contains(k));
    REQUIRE(evals.back().contains(std::string("eval_") + k));
  }
  CHECK(steps.front()["rewards/margins"].get<double>() == Approx(0).margin(1e-6));
  CHECK(steps.front()["rewards/chosen"].get<double>() == Approx(0).margin(1e-6));
  // The reference is not trained: at the start of evaluation the rewards are zero too.
  CHECK(evals.front()["eval_rewards/margins"].get<double>() == Approx(0).margin(1e-6));
  // Training separates chosen from rejected: over the last epoch, on the training pairs.
  double margins = 0, accuracies = 0, loss = 0;
  for (size_t i = 12; i < 18; ++i) {
    margins += steps[i]["rewards/margins"].get<double>() / 6;
    accuracies += steps[i]["rewards/accuracies"].get<double>() / 6;
    loss += steps[i]["loss"].get<double>() / 6;
  }
  WARN("last epoch: margins " << margins << " accuracies " << accuracies << " loss " << loss
                              << "; held-out margins "
                              << evals.back()["eval_rewards/margins"].get<double>()
                              << " accuracies "
                              << evals.back()["eval_rewards/accuracies"].get<double>());
  CHECK(margins > 0.05);
  CHECK(accuracies > 0.6);  // 0 at the first step (equal rewards)
  CHECK(loss < std::log(2.0));
}

TEST_CASE("k accumulated micro-batches give the update of one k-times batch") {
  TempDir data("mllm-stages");
  test::make_shapes(data.path(), 32, 4);
  Config big = test::tiny_config(data.path(), data / "big");
  big.data.template_name = "vicuna_v1";  // replies of different lengths: per-token normalising
  use(big, data.path(), "instruct");
  big.data.max_length = 96;
  big.train.stage = "instruct";
  big.train.trainable = {"multi_modal_projector.*", "language_model.*"};
  big.train.batch_size = 8;
  big.train.grad_accum = 1;
  big.train.max_steps = 3;
  big.data.eval.path.clear();
  Config small = big;
  small.run.output_dir = (data / "small").string();
  small.train.batch_size = 2;
  small.train.grad_accum = 4;
  const TrainSummary a = train(big), b = train(small);
  REQUIRE(a.losses.size() == 3);
  REQUIRE(b.losses.size() == 3);
  for (size_t i = 0; i < 3; ++i)
    CHECK(b.losses[i].second == Approx(a.losses[i].second).epsilon(1e-5));
  const auto wa = final_weights(a.final_dir), wb = final_weights(b.final_dir);
  for (const auto& [name, t] : wa) {
    INFO(name);
    CHECK(torch::allclose(t, wb.at(name), 1e-4, 1e-5));
  }
}

TEST_CASE("a checkpoint restores the RNG: draws after resuming equal the uninterrupted ones") {
  TempDir dir("mllm-rng");
  torch::manual_seed(11);
  torch::rand({3});
  const auto saved = rng_states();
  const auto expected = torch::rand({5});
  torch::rand({7});  // the generator moves on
  set_rng_states(saved);
  CHECK(torch::equal(torch::rand({5}), expected));
  // Through a checkpoint on disk.
  torch::nn::Linear lin(2, 2);
  torch::optim::AdamW opt(lin->parameters(), torch::optim::AdamWOptions(1e-3));
  TrainerState st;
  st.step = 1;
  set_rng_states(saved);
  const auto ckpt = save_checkpoint(dir.path(), *lin, opt, st, 0);
  CHECK(std::filesystem::exists(ckpt / "rng_state.pt"));
  torch::rand({9});
  load_checkpoint(ckpt, *lin, opt);
  CHECK(torch::equal(torch::rand({5}), expected));
}

TEST_CASE("stage 3 with a mixture-of-experts LLM adds coef x the load-balancing loss") {
  TempDir data("mllm-stages");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "moe");
  use(c, data.path(), "preference");
  c.train.stage = "dpo";
  c.data.template_name = "vicuna_v1";
  c.data.max_length = 96;
  c.data.eval.path.clear();
  c.model.llm.experts = 4;
  c.model.llm.router_aux_loss_coef = 0.5;
  c.train.trainable = {"language_model.*"};
  c.train.max_steps = 1;
  const double with_aux = train(c).losses.front().second;
  c.model.llm.router_aux_loss_coef = 0;
  c.run.output_dir = (data / "moe0").string();
  const double without = train(c).losses.front().second;
  CHECK(without == Approx(std::log(2.0)).epsilon(1e-6));
  // Near-uniform routing at init puts the load-balancing loss near top_k = 2: about 0.5 x 2 on top.
  CHECK(with_aux - without > 0.5);
  CHECK(with_aux - without < 1.5);
}

TEST_CASE("dpo rpo_alpha adds alpha x the mean NLL of the chosen replies (TRL's RPO)") {
  TempDir data("mllm-stages");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "out");
  use(c, data.path(), "preference");
  c.train.stage = "dpo";
  c.data.template_name = "vicuna_v1";
  c.data.max_length = 96;
  const auto tok = load_tokenizer(c.model.tokenizer);
  torch::manual_seed(1);
  MultimodalModel model = build_model(c, tok->vocabulary());
  torch::manual_seed(2);
  MultimodalModel reference = build_model(c, tok->vocabulary());
  PreferenceDataset ds(c.data.train, c.data, *tok, model->image_tokens(), "data.train");
  const ImageTransform transform(c.data.image, 32);
  const Batch b = collate_items(ds, {1, 2, 4}, transform, 0, false, nullptr, nullptr);
  torch::NoGradGuard no_grad;
  model->eval();
  // The NLL the slow way: cross-entropy of the chosen rows (the first 3) over their reply tokens.
  const auto logits = model->logits(model->forward(b.input_ids, b.pixel_values, b.attention_mask));
  const auto chosen_logits = logits.slice(0, 0, 3).slice(1, 0, -1).reshape({-1, logits.size(-1)});
  const auto chosen_labels = b.labels.slice(0, 0, 3).slice(1, 1).reshape({-1});
  const double nll =
      torch::nn::functional::cross_entropy(
          chosen_logits, chosen_labels,
          torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex))
          .item<double>();
  for (const std::string loss_type : {"sigmoid", "ipo"}) {
    INFO(loss_type);
    c.train.dpo.loss_type = loss_type;
    c.train.dpo.rpo_alpha = 0;
    const auto plain = make_objective(c.train, reference)->forward(*model, b);
    c.train.dpo.rpo_alpha = 0.7;
    const auto rpo = make_objective(c.train, reference)->forward(*model, b);
    // loss_sum is the pairs' sum: (dpo + alpha * nll) x 3.
    CHECK((rpo.loss_sum.item<double>() - plain.loss_sum.item<double>()) / 3 ==
          Approx(0.7 * nll).epsilon(1e-5));
    CHECK(rpo.metric_sums.at("nll_loss") / 3 == Approx(nll).epsilon(1e-5));
  }
}
