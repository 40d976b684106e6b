#include "train/objectives.h"

#include "core/error.h"
#include "train/dpo.h"

namespace mllm {

ObjectiveOutput lm_loss(MultimodalModelImpl& model, const Batch& batch) {
  auto hidden =
      model.forward(batch.input_ids, batch.pixel_values, batch.attention_mask);  // (B,T,C)
  auto targets = batch.labels.slice(1, 1);                                       // (B,T-1)
  auto keep = targets != kIgnoreIndex;
  auto h = hidden.slice(1, 0, -1).index({keep});    // (N,C)
  auto logits = model.logits(h).to(torch::kFloat);  // (N,V)
  auto loss = torch::nn::functional::cross_entropy(
      logits, targets.index({keep}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  const int64_t n = keep.sum().item<int64_t>();
  // A mixture-of-experts LLM adds its load-balancing loss, coef * aux, to the mean token loss (as
  // transformers' MixtralForCausalLM does); here scaled by the tokens so the step's division by
  // its total weight yields it.
  const auto& llm = model.config().llm;
  if (llm.experts > 0 && llm.router_aux_loss_coef > 0) {
    const auto aux = model.language_model->aux_loss(batch.attention_mask);
    if (aux.defined()) loss = loss + llm.router_aux_loss_coef * static_cast<double>(n) * aux;
  }
  return {loss, n, {}};
}

torch::Tensor sequence_logps(MultimodalModelImpl& model, const Batch& batch, bool average) {
  auto hidden = model.forward(batch.input_ids, batch.pixel_values, batch.attention_mask);
  auto targets = batch.labels.slice(1, 1);  // (B,T-1)
  auto keep = targets != kIgnoreIndex;
  auto logits = model.logits(hidden.slice(1, 0, -1).index({keep})).to(torch::kFloat);  // (N,V)
  auto token_logps =
      logits.log_softmax(-1).gather(1, targets.index({keep}).unsqueeze(1)).squeeze(1);  // (N)
  const int64_t B = batch.input_ids.size(0);
  auto rows = torch::arange(B, batch.input_ids.options()).unsqueeze(1).expand_as(keep);
  auto total =
      torch::zeros({B}, token_logps.options()).index_add(0, rows.index({keep}), token_logps);
  if (!average) return total;
  return total / keep.sum(1).clamp_min(1).to(total.scalar_type());
}

namespace {
class LmObjective : public Objective {
 public:
  ObjectiveOutput forward(MultimodalModelImpl& model, const Batch& batch) override {
    return lm_loss(model, batch);
  }
  int64_t weight(const Batch& batch) const override { return batch.supervised_tokens; }
};

// DPO as TRL's DPOTrainer: one forward over the 2P rows (chosen then rejected) for the policy and,
// without autograd, for the reference; ipo averages the log-probs per token, the others sum them.
class DpoObjective : public Objective {
 public:
  DpoObjective(const DpoConfig& c, MultimodalModel reference) : reference_(std::move(reference)) {
    options_.loss_type = c.loss_type;
    options_.beta = c.beta;
    options_.label_smoothing = c.label_smoothing;
    rpo_alpha_ = c.rpo_alpha;
  }

  ObjectiveOutput forward(MultimodalModelImpl& model, const Batch& batch) override {
    const int64_t P = batch.pairs;
    if (P <= 0) throw Error("[dpo] the batch holds no preference pairs");
    const bool average = options_.loss_type == "ipo";
    const auto policy = sequence_logps(model, batch, average);
    torch::Tensor ref;
    {
      torch::NoGradGuard no_grad;
      ref = sequence_logps(*reference_, batch, average);
    }
    const auto out = dpo_loss(policy.slice(0, 0, P), policy.slice(0, P), ref.slice(0, 0, P),
                              ref.slice(0, P), options_);
    ObjectiveOutput o;
    o.loss_sum = out.loss * static_cast<double>(P);  // dpo_loss is the mean over the pairs
    // A mixture-of-experts policy adds coef x its load-balancing loss, as TRL's DPOTrainer does.
    const auto& llm = model.config().llm;
    if (llm.experts > 0 && llm.router_aux_loss_coef > 0) {
      const auto aux = model.language_model->aux_loss(batch.attention_mask);
      if (aux.defined())
        o.loss_sum = o.loss_sum + llm.router_aux_loss_coef * static_cast<double>(P) * aux;
    }
    o.weight = P;
    for (const auto& [k, v] : out.metrics) o.metric_sums[k] = v * static_cast<double>(P);
    if (rpo_alpha_ > 0) {
      // TRL (DPOTrainer, rpo_alpha): + alpha x cross-entropy over the chosen rows' response
      // tokens, averaged over those tokens; as the rest, scaled by P for the step's division.
      const auto chosen = batch.labels.slice(0, 0, P).slice(1, 1) != kIgnoreIndex;
      const auto counts = chosen.sum(1).to(policy.scalar_type());
      const auto sums = average ? policy.slice(0, 0, P) * counts : policy.slice(0, 0, P);
      const auto nll = -sums.sum() / counts.sum().clamp_min(1);
      o.loss_sum = o.loss_sum + rpo_alpha_ * static_cast<double>(P) * nll;
      o.metric_sums["nll_loss"] = nll.item<double>() * static_cast<double>(P);
    }
    return o;
  }
  int64_t weight(const Batch& batch) const override { return batch.pairs; }

 private:
  MultimodalModel reference_;
  DpoOptions options_;
  double rpo_alpha_ = 0.0;
};

}  // namespace

std::unique_ptr<Objective> make_objective(const TrainConfig& train, MultimodalModel reference) {
  if (train.stage == "pretrain" || train.stage == "instruct")
    return std::make_unique<LmObjective>();
  if (train.stage == "dpo") {
    if (!reference) throw Error("[dpo] the objective needs a reference model");
    return std::make_unique<DpoObjective>(train.dpo, std::move(reference));
  }
  throw ConfigError("train.stage: '" + train.stage + "' has no objective");
}

}  // namespace mllm
