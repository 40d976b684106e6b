#include "train/objectives.h"

#include "core/error.h"

namespace mllm {

torch::Tensor predicting_positions(const torch::Tensor& labels) {
  const auto supervised = labels.slice(1, 1) != kIgnoreIndex;  // (B,T-1)
  return torch::cat({supervised, torch::zeros({labels.size(0), 1}, supervised.options())}, 1);
}

ObjectiveOutput lm_loss(MultimodalModelImpl& model, const Batch& batch) {
  auto hidden = model.forward(batch.input_ids, batch.pixel_values, batch.attention_mask,
                              batch.position_ids, ImageLayout{batch.image_pool, batch.image_sizes},
                              predicting_positions(batch.labels));
  auto targets = batch.labels.slice(1, 1);  // (B,T-1)
  auto keep = targets != kIgnoreIndex;
  auto h = hidden.slice(1, 0, -1).index({keep});  // (N,C)
  auto loss = -model.target_logprobs(h, targets.index({keep})).sum();
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

torch::Tensor response_logps_from_hidden(MultimodalModelImpl& model, const torch::Tensor& hidden,
                                         const torch::Tensor& labels, bool average) {
  auto targets = labels.slice(1, 1);  // (B,T-1)
  auto keep = targets != kIgnoreIndex;
  auto token_logps =
      model.target_logprobs(hidden.slice(1, 0, -1).index({keep}), targets.index({keep}));  // (N)
  const int64_t B = labels.size(0);
  auto rows = torch::arange(B, labels.options()).unsqueeze(1).expand_as(keep);
  auto total =
      torch::zeros({B}, token_logps.options()).index_add(0, rows.index({keep}), token_logps);
  if (!average) return total;
  return total / keep.sum(1).clamp_min(1).to(total.scalar_type());
}

torch::Tensor sequence_logps(MultimodalModelImpl& model, const Batch& batch, bool average) {
  return response_logps_from_hidden(
      model,
      model.forward(batch.input_ids, batch.pixel_values, batch.attention_mask, {},
                    ImageLayout{batch.image_pool, batch.image_sizes},
                    predicting_positions(batch.labels)),
      batch.labels, average);
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

std::unique_ptr<Objective> make_lm_objective() {
  return std::make_unique<LmObjective>();
}

}  // namespace mllm
