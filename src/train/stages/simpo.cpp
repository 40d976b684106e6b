// Stage 3 without a reference: SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization
// with a Reference-Free Reward"), as TRL v0.21.0 defines it in trl/trainer/cpo_trainer.py
// (CPOTrainer.cpo_loss with loss_type "simpo", concatenated_forward, get_batch_loss_metrics).
// With the policy's per-token mean log-probabilities c, r of the chosen and rejected replies:
//   z    = (c - r) - gamma / beta
//   loss = mean(-(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z)) + cpo_alpha * NLL
// where NLL is the mean over the chosen replies' tokens (CPO's behaviour-cloning term; TRL's
// SimPO recipe sets cpo_alpha 0, the default here). Logged as TRL does: rewards/* with rewards
// beta*c and beta*r, logps/*, and nll_loss when cpo_alpha > 0.
#include "train/stage.h"

namespace mllm {

Stage simpo_stage() {
  Stage s;
  s.name = "simpo";
  s.summary = "SimPO on preference pairs: a length-normalised reward margin, no reference";
  s.metrics = {"nll_loss"};
  s.headline = {"rewards/accuracies", "rewards/margins"};
  auto spec = std::make_shared<PreferenceSpec>();
  spec->average_logps = [](const TrainConfig&) { return true; };
  spec->nll = [](const TrainConfig& t) {
    return t.simpo.cpo_alpha > 0 ? PreferenceSpec::Nll::response : PreferenceSpec::Nll::none;
  };
  spec->loss = [](const PreferenceLogps& in, const TrainConfig& t) {
    namespace F = torch::nn::functional;
    const auto& c = t.simpo;
    const auto z = (in.chosen - in.rejected) - c.gamma / c.beta;
    const auto losses = -F::logsigmoid(c.beta * z) * (1 - c.label_smoothing) -
                        F::logsigmoid(-c.beta * z) * c.label_smoothing;
    PreferenceLoss out;
    out.loss = losses.mean();
    out.metrics = reward_metrics(c.beta * in.chosen.detach(), c.beta * in.rejected.detach(), in);
    if (in.nll.defined()) {
      out.loss = out.loss + c.cpo_alpha * in.nll;
      out.metrics["nll_loss"] = in.nll.item<double>();
    }
    return out;
  };
  make_preference_stage(s, spec);
  return s;
}

}  // namespace mllm
