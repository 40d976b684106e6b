// The reference-free preference stages, orpo and simpo: their losses and metrics against vectors
// computed from TRL v0.21.0's published formulas by an independent implementation
// (tests/reference/preference_reference.py -> tests/fixtures/preference/vectors.json), and their
// objectives through a model against the same quantities computed the slow way.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/collator.h"
#include "data/datasets.h"
#include "data/image_transform.h"
#include "data/loader.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "models/factory.h"
#include "test_util.h"
#include "train/dpo.h"
#include "train/recipe.h"
#include "train/stage.h"
#include "train/trainer.h"

using namespace mllm;

namespace {

TrainConfig train_config(const nlohmann::json& c) {
  TrainConfig t;
  t.stage = c["stage"];
  const auto& cfg = c["config"];
  if (t.stage == "orpo") t.orpo.beta = cfg["beta"];
  if (t.stage == "simpo") {
    t.simpo.beta = cfg["beta"];
    t.simpo.gamma = cfg["gamma"];
    t.simpo.cpo_alpha = cfg["cpo_alpha"];
    t.simpo.label_smoothing = cfg["label_smoothing"];
  }
  return t;
}

}  // namespace

TEST_CASE("orpo and simpo: log-probs, NLL, loss and metrics equal the TRL-formula reference") {
  const auto j = nlohmann::json::parse(
      test::read_text(std::string(MLLM_SOURCE_DIR) + "/tests/fixtures/preference/vectors.json"));
  REQUIRE(j["cases"].size() == 5);
  for (const auto& c : j["cases"]) {
    const TrainConfig t = train_config(c);
    INFO(t.stage << " " << c["config"].dump());
    const int64_t P = c["P"], T = c["T"], V = c["V"];
    auto tensor = [&](const char* key, torch::ScalarType type) {
      return torch::tensor(c[key].get<std::vector<double>>(), torch::kDouble).to(type);
    };
    const auto logits = tensor("logits", torch::kDouble).view({2 * P, T, V});
    const auto labels = tensor("labels", torch::kLong).view({2 * P, T});
    const auto ids = tensor("input_ids", torch::kLong).view({2 * P, T});
    const auto attention = tensor("attention_mask", torch::kLong).view({2 * P, T});
    const Stage& stage = find_stage(t.stage);
    REQUIRE(stage.preference);
    CHECK_FALSE(stage.needs_reference);
    const bool average = stage.preference->average_logps(t);
    CHECK(average);  // both compare per-token means
    const auto logps = response_logps(logits, labels, average);
    const auto want = torch::tensor(c["logps"].get<std::vector<double>>(), torch::kDouble);
    CHECK((logps - want).abs().max().item<double>() < 1e-10);

    PreferenceLogps in;
    in.chosen = logps.slice(0, 0, P);
    in.rejected = logps.slice(0, P);
    const auto nll_kind = stage.preference->nll(t);
    if (t.stage == "orpo") {
      REQUIRE(nll_kind == PreferenceSpec::Nll::sequence);
      const auto s = sequence_targets(ids, attention, c["image_token_id"].get<int64_t>(), P);
      in.nll = torch::nn::functional::cross_entropy(
          logits.slice(0, 0, P).slice(1, 0, -1).index({s.keep}), s.targets.index({s.keep}));
    } else if (t.simpo.cpo_alpha > 0) {
      REQUIRE(nll_kind == PreferenceSpec::Nll::response);
      in.nll = torch::nn::functional::cross_entropy(
          logits.slice(0, 0, P).slice(1, 0, -1).reshape({-1, V}),
          labels.slice(0, 0, P).slice(1, 1).reshape({-1}),
          torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    } else {
      CHECK(nll_kind == PreferenceSpec::Nll::none);
    }
    if (in.nll.defined())
      CHECK(in.nll.item<double>() == Approx(c["nll"].get<double>()).epsilon(1e-12));

    const auto out = stage.preference->loss(in, t);
    const auto& e = c["expected"];
    CHECK(out.loss.item<double>() == Approx(e["loss"].get<double>()).epsilon(1e-10));
    for (const auto& [name, value] : e.items()) {
      if (name == "loss") continue;
      INFO(name);
      REQUIRE(out.metrics.count(name));
      CHECK(out.metrics.at(name) == Approx(value.get<double>()).epsilon(1e-10).margin(1e-12));
    }
    // Every figure the loss reports is one the stage declares (what the trainer logs).
    for (const auto& [name, value] : out.metrics) {
      INFO(name);
      CHECK(std::find(stage.metrics.begin(), stage.metrics.end(), name) != stage.metrics.end());
    }
  }
}

TEST_CASE("orpo: the gradient pushes the chosen reply up and the rejected one down") {
  const Stage& orpo = find_stage("orpo");
  TrainConfig t;
  t.stage = "orpo";
  t.orpo.beta = 0.5;
  PreferenceLogps in;
  in.chosen = torch::tensor({-2.0, -1.5}, torch::kDouble).requires_grad_();
  in.rejected = torch::tensor({-1.0, -3.0}, torch::kDouble).requires_grad_();
  in.nll = torch::tensor(2.0, torch::kDouble);
  orpo.preference->loss(in, t).loss.backward();
  CHECK((in.chosen.grad() < 0).all().item<bool>());
  CHECK((in.rejected.grad() > 0).all().item<bool>());
  // Near log p = 0 the odds stay finite and so does the gradient (log(1 - e^x) computed stably).
  in.chosen = torch::tensor({-1e-9, -0.3}, torch::kDouble).requires_grad_();
  in.rejected = torch::tensor({-5.0, -40.0}, torch::kDouble).requires_grad_();
  const auto out = orpo.preference->loss(in, t);
  out.loss.backward();
  CHECK(std::isfinite(out.loss.item<double>()));
  CHECK(torch::isfinite(in.chosen.grad()).all().item<bool>());
  CHECK(torch::isfinite(in.rejected.grad()).all().item<bool>());
}

TEST_CASE("orpo and simpo through a model: the objective equals the slow computation") {
  test::TempDir data("mllm-pref");
  test::make_shapes(data.path(), 16, 4);
  Config c = test::tiny_config(data.path(), data / "out");
  test::use_preference_data(c, data.path());
  const auto tok = load_tokenizer(c.model.tokenizer);
  torch::manual_seed(1);
  MultimodalModel model = build_model(c, tok->vocabulary());
  PreferenceDataset ds(c.data.train, c.data, *tok, model->image_tokens(), "data.train");
  const ImageTransform transform(c.data.image, 32);
  const Batch b = collate_items(ds, {0, 3, 5}, transform, 0, false, nullptr, nullptr);
  REQUIRE(b.pairs == 3);
  torch::NoGradGuard no_grad;
  model->eval();
  const auto logits = model->logits(model->forward(b.input_ids, b.pixel_values, b.attention_mask))
                          .to(torch::kDouble);
  const auto logps = response_logps(logits, b.labels, true);
  for (const std::string name : {"orpo", "simpo"}) {
    INFO(name);
    c.train.stage = name;
    c.train.simpo.cpo_alpha = 0.25;
    check_registered_names(c);  // the recipe accepts preference data for both
    const auto o = make_objective(c.train)->forward(*model, b);
    CHECK(o.weight == 3);
    PreferenceLogps in;
    in.chosen = logps.slice(0, 0, 3);
    in.rejected = logps.slice(0, 3);
    if (name == "orpo") {
      // The whole chosen rows, prompt included, but no image placeholders and no padding.
      const auto ids = b.input_ids.slice(0, 0, 3).slice(1, 1);
      const auto keep =
          (b.attention_mask.slice(0, 0, 3).slice(1, 1) > 0) & (ids != model->image_token_id());
      CHECK(keep.sum().item<int64_t>() < b.attention_mask.slice(0, 0, 3).sum().item<int64_t>() - 3);
      in.nll = torch::nn::functional::cross_entropy(
          logits.slice(0, 0, 3).slice(1, 0, -1).index({keep}), ids.index({keep}));
    } else {
      in.nll = torch::nn::functional::cross_entropy(
          logits.slice(0, 0, 3).slice(1, 0, -1).reshape({-1, logits.size(-1)}),
          b.labels.slice(0, 0, 3).slice(1, 1).reshape({-1}),
          torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
    }
    const auto want = find_stage(name).preference->loss(in, c.train);
    CHECK(o.loss_sum.item<double>() / 3 == Approx(want.loss.item<double>()).epsilon(1e-5));
    CHECK(o.metric_sums.at("nll_loss") / 3 == Approx(want.metrics.at("nll_loss")).epsilon(1e-5));
    CHECK(o.metric_sums.at("rewards/margins") / 3 ==
          Approx(want.metrics.at("rewards/margins")).epsilon(1e-4).margin(1e-6));
  }
}

TEST_CASE("orpo and simpo through the trainer: no reference, TRL's figures, the pairs separate") {
  test::TempDir data("mllm-pref");
  test::make_shapes(data.path(), 48, 16);
  Config s1 = test::tiny_config(data.path(), data / "s1");
  s1.train.max_steps = 2;
  const TrainSummary r1 = train(s1);
  for (const std::string name : {"orpo", "simpo"}) {
    INFO(name);
    Config c = test::tiny_config(data.path(), data / name);
    test::use_preference_data(c, data.path());
    c.train.stage = name;
    c.train.init_from = r1.final_dir.string();
    c.train.trainable = {"multi_modal_projector.*", "language_model.*"};
    c.train.batch_size = 8;
    c.train.max_steps = 18;  // 3 epochs of 6 steps
    c.train.lr = 1e-3;
    c.train.orpo.beta = 1.0;
    const TrainSummary r = train(c);
    REQUIRE(r.losses.size() == 18);
    std::vector<nlohmann::json> steps, evals;
    std::istringstream in(test::read_text(r.output_dir / "metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      (j.contains("eval_loss") ? evals : steps).push_back(j);
    }
    REQUIRE(steps.size() == 18);
    REQUIRE(evals.size() == 2);
    for (const auto& k : find_stage(name).metrics) {
      if (k == "nll_loss" && name == "simpo") continue;  // only with cpo_alpha > 0
      INFO(k);
      CHECK(steps.front().contains(k));
      CHECK(evals.back().contains("eval_" + k));
    }
    double margins_first = 0, margins_last = 0, accuracies_last = 0;
    for (size_t i = 0; i < 6; ++i) margins_first += steps[i]["rewards/margins"].get<double>() / 6;
    for (size_t i = 12; i < 18; ++i) {
      margins_last += steps[i]["rewards/margins"].get<double>() / 6;
      accuracies_last += steps[i]["rewards/accuracies"].get<double>() / 6;
    }
    WARN(name << ": margins " << margins_first << " -> " << margins_last << ", accuracies "
              << accuracies_last << "; held-out accuracies "
              << evals.front()["eval_rewards/accuracies"].get<double>() << " -> "
              << evals.back()["eval_rewards/accuracies"].get<double>());
    CHECK(margins_last > margins_first);
    CHECK(accuracies_last > 0.6);
  }
}
