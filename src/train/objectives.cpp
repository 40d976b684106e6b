#include "train/objectives.h"

#include "core/error.h"

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
  return {loss, n};
}

namespace {
class LmObjective : public Objective {
 public:
  ObjectiveOutput forward(MultimodalModelImpl& model, const Batch& batch) override {
    return lm_loss(model, batch);
  }
  int64_t weight(const Batch& batch) const override { return batch.supervised_tokens; }
};
}  // namespace

std::unique_ptr<Objective> make_objective(const TrainConfig& train) {
  if (train.stage == "pretrain") return std::make_unique<LmObjective>();
  throw ConfigError("train.stage: '" + train.stage + "' has no objective yet");
}

}  // namespace mllm
