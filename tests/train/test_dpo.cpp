// DPO loss and metrics against vectors computed from TRL's published formulas by an independent
// implementation (tests/reference/dpo_reference.py -> tests/fixtures/dpo/vectors.json).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "train/dpo.h"

using namespace mllm;

TEST_CASE("dpo: response log-probs, loss and metrics equal the TRL-formula reference") {
  const auto j = nlohmann::json::parse(
      test::read_text(std::string(MLLM_SOURCE_DIR) + "/tests/fixtures/dpo/vectors.json"));
  REQUIRE(j["cases"].size() == 6);
  for (const auto& c : j["cases"]) {
    const std::string type = c["loss_type"];
    INFO(type << " beta " << c["beta"].get<double>());
    const int64_t B = c["B"], T = c["T"], V = c["V"];
    auto tensor = [&](const char* key, torch::ScalarType t) {
      return torch::tensor(c[key].get<std::vector<double>>(), torch::kDouble).to(t);
    };
    // fp32 logits, as a model produces them (the reference is fp64).
    const auto policy = tensor("policy_logits", torch::kFloat).view({2 * B, T, V});
    const auto ref = tensor("ref_logits", torch::kFloat).view({2 * B, T, V});
    const auto labels = tensor("labels", torch::kLong).view({2 * B, T});
    const bool average = type == "ipo";
    const auto pl = response_logps(policy, labels, average);
    const auto rl = response_logps(ref, labels, average);
    const auto want_pl = torch::tensor(c["policy_logps"].get<std::vector<double>>());
    CHECK((pl.to(torch::kDouble) - want_pl).abs().max().item<double>() < 1e-4);
    DpoOptions o;
    o.loss_type = type;
    o.beta = c["beta"];
    o.label_smoothing = c["label_smoothing"];
    const auto out =
        dpo_loss(pl.slice(0, 0, B), pl.slice(0, B), rl.slice(0, 0, B), rl.slice(0, B), o);
    const auto& e = c["expected"];
    CHECK(out.loss.item<double>() == Approx(e["loss"].get<double>()).epsilon(1e-5).margin(1e-6));
    for (const char* m : {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                          "rewards/margins", "logps/chosen", "logps/rejected"}) {
      INFO(m);
      CHECK(out.metrics.at(m) == Approx(e[m].get<double>()).epsilon(1e-5).margin(1e-5));
    }
  }
}

TEST_CASE("dpo: the gradient reaches the policy only, and pushes chosen up and rejected down") {
  auto pc = torch::tensor({-5.0, -3.0}, torch::requires_grad());
  auto pr = torch::tensor({-4.0, -6.0}, torch::requires_grad());
  auto rc = torch::tensor({-5.0, -4.0}, torch::requires_grad());
  auto rr = torch::tensor({-4.5, -5.0}, torch::requires_grad());
  dpo_loss(pc, pr, rc, rr, DpoOptions{}).loss.backward();
  CHECK((pc.grad() < 0).all().item<bool>());  // raising log π(c) lowers the loss
  CHECK((pr.grad() > 0).all().item<bool>());
  CHECK(!rc.grad().defined());
  CHECK(!rr.grad().defined());
  DpoOptions bad;
  bad.loss_type = "kto";
  CHECK_THROWS_WITH(dpo_loss(pc, pr, rc, rr, bad), Catch::Contains("'kto'"));
}
