// Stage 3, direct preference optimisation against a frozen reference (the policy as the stage
// starts): TRL's DPOTrainer losses sigmoid / hinge / ipo (train/dpo.h) and its rpo_alpha NLL term.
#include "train/dpo.h"
#include "train/stage.h"

namespace mllm {

Stage dpo_stage() {
  Stage s;
  s.name = "dpo";
  s.summary = "DPO (sigmoid, hinge, ipo) on preference pairs against a frozen reference";
  s.needs_reference = true;
  s.metrics = {"nll_loss"};
  s.headline = {"rewards/accuracies", "rewards/margins"};
  auto spec = std::make_shared<PreferenceSpec>();
  // ipo compares per-token means (TRL's DPOTrainer), the others summed log-probabilities.
  spec->average_logps = [](const TrainConfig& t) { return t.dpo.loss_type == "ipo"; };
  spec->nll = [](const TrainConfig& t) {
    return t.dpo.rpo_alpha > 0 ? PreferenceSpec::Nll::response : PreferenceSpec::Nll::none;
  };
  spec->loss = [](const PreferenceLogps& in, const TrainConfig& t) {
    DpoOptions o;
    o.loss_type = t.dpo.loss_type;
    o.beta = t.dpo.beta;
    o.label_smoothing = t.dpo.label_smoothing;
    const auto out = dpo_loss(in.chosen, in.rejected, in.ref_chosen, in.ref_rejected, o);
    PreferenceLoss r{out.loss, out.metrics};
    if (in.nll.defined()) {
      // TRL (DPOTrainer, rpo_alpha): + alpha x the chosen replies' mean NLL.
      r.loss = r.loss + t.dpo.rpo_alpha * in.nll;
      r.metrics["nll_loss"] = in.nll.item<double>();
    }
    return r;
  };
  make_preference_stage(s, spec);
  s.check = [](const TrainConfig& t) -> std::pair<std::string, std::string> {
    if (t.dpo.label_smoothing > 0 && t.dpo.loss_type != "sigmoid")
      return {"train.dpo.label_smoothing", "applies to loss_type sigmoid only"};
    return {};
  };
  return s;
}

}  // namespace mllm
