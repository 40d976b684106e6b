// Stage 3 without a reference: ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization
// without Reference Model"), as TRL v0.21.0 defines it in trl/trainer/orpo_trainer.py
// (ORPOTrainer.odds_ratio_loss, concatenated_forward, get_batch_loss_metrics). With the policy's
// per-token mean log-probabilities c, r of the chosen and rejected replies:
//   log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r))        (the paper's eqs. 4 and 7)
//   loss     = NLL(chosen sequence) - beta * mean(log sigmoid(log_odds))
// where the NLL is the mean over every text token of the chosen rows, prompt included (TRL takes
// the whole chosen sequence; image placeholders are not text and are left out). Logged as TRL
// does: rewards/* with rewards beta*c and beta*r, logps/*, nll_loss, log_odds_ratio = mean(log
// sigmoid(log_odds)), log_odds_chosen = mean(log_odds). TRL's logits/* (mean of the full logits)
// are not logged: the full logits are never materialised here.
#include <cmath>

#include "train/stage.h"

namespace mllm {

namespace {

// log(1 - e^x) for x < 0, without cancellation near 0 or underflow far below (Maechler 2012,
// "Accurately computing log(1 - exp(-|a|))"); each branch sees only the inputs it is exact for,
// so neither puts a NaN into the other's gradient.
torch::Tensor log1mexp(const torch::Tensor& x) {
  const double ln_half = -std::log(2.0);
  const auto near = torch::log(-torch::expm1(x.clamp_min(ln_half)));
  const auto far = torch::log1p(-torch::exp(x.clamp_max(ln_half)));
  return torch::where(x > ln_half, near, far);
}

}  // namespace

Stage orpo_stage() {
  Stage s;
  s.name = "orpo";
  s.summary = "ORPO on preference pairs: chosen NLL plus an odds-ratio penalty, no reference";
  s.metrics = {"nll_loss", "log_odds_ratio", "log_odds_chosen"};
  s.headline = {"rewards/accuracies", "log_odds_ratio"};
  auto spec = std::make_shared<PreferenceSpec>();
  spec->average_logps = [](const TrainConfig&) { return true; };
  spec->nll = [](const TrainConfig&) { return PreferenceSpec::Nll::sequence; };
  spec->loss = [](const PreferenceLogps& in, const TrainConfig& t) {
    const double beta = t.orpo.beta;
    const auto log_odds = (in.chosen - in.rejected) - (log1mexp(in.chosen) - log1mexp(in.rejected));
    const auto ratio = torch::nn::functional::logsigmoid(log_odds);
    PreferenceLoss out;
    out.loss = in.nll - beta * ratio.mean();
    out.metrics = reward_metrics(beta * in.chosen.detach(), beta * in.rejected.detach(), in);
    torch::NoGradGuard no_grad;
    out.metrics["nll_loss"] = in.nll.item<double>();
    out.metrics["log_odds_ratio"] = ratio.to(torch::kDouble).mean().item<double>();
    out.metrics["log_odds_chosen"] = log_odds.to(torch::kDouble).mean().item<double>();
    return out;
  };
  make_preference_stage(s, spec);
  return s;
}

}  // namespace mllm
