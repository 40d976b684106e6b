#include "train/stage.h"

#include "core/error.h"

namespace mllm {

// One line per stage; each is defined in src/train/stages/<name>.cpp.
Stage clip_stage();
Stage pretrain_stage();
Stage instruct_stage();
Stage dpo_stage();
Stage orpo_stage();
Stage simpo_stage();

const std::vector<Stage>& stages() {
  static const std::vector<Stage> all = {clip_stage(), pretrain_stage(), instruct_stage(),
                                         dpo_stage(),  orpo_stage(),     simpo_stage()};
  return all;
}

std::vector<std::string> stage_names() {
  std::vector<std::string> names;
  for (const auto& s : stages()) names.push_back(s.name);
  return names;
}

const Stage& find_stage(const std::string& name) {
  for (const auto& s : stages())
    if (s.name == name) return s;
  throw ConfigError("train.stage: " + choice_problem(name, stage_names()));
}

std::unique_ptr<Objective> make_objective(const TrainConfig& train, MultimodalModel reference) {
  const Stage& stage = find_stage(train.stage);
  if (stage.needs_reference && !reference)
    throw Error("[" + stage.name + "] the objective needs a reference model");
  return stage.objective(train, std::move(reference));
}

const std::vector<std::string>& reward_metric_names() {
  static const std::vector<std::string> names = {"rewards/chosen",     "rewards/rejected",
                                                 "rewards/accuracies", "rewards/margins",
                                                 "logps/chosen",       "logps/rejected"};
  return names;
}

void make_preference_stage(Stage& stage, std::shared_ptr<const PreferenceSpec> spec) {
  stage.data = StageData::preference_pairs;
  stage.formats = {"preference_json", "preference_jsonl", "sharegpt",
                   "sharegpt_jsonl",  "messages",         "messages_jsonl"};
  stage.metrics.insert(stage.metrics.begin(), reward_metric_names().begin(),
                       reward_metric_names().end());
  stage.preference = spec;
  stage.objective = [spec](const TrainConfig& t, MultimodalModel reference) {
    return make_preference_objective(spec, t, std::move(reference));
  };
}

std::map<std::string, double> reward_metrics(const torch::Tensor& chosen_rewards,
                                             const torch::Tensor& rejected_rewards,
                                             const PreferenceLogps& logps) {
  torch::NoGradGuard no_grad;
  auto mean = [](const torch::Tensor& t) { return t.to(torch::kDouble).mean().item<double>(); };
  return {{"rewards/chosen", mean(chosen_rewards)},
          {"rewards/rejected", mean(rejected_rewards)},
          {"rewards/accuracies", mean((chosen_rewards > rejected_rewards).to(torch::kDouble))},
          {"rewards/margins", mean(chosen_rewards - rejected_rewards)},
          {"logps/chosen", mean(logps.chosen)},
          {"logps/rejected", mean(logps.rejected)}};
}

SequenceTargets sequence_targets(const torch::Tensor& input_ids,
                                 const torch::Tensor& attention_mask, int64_t image_token_id,
                                 int64_t P) {
  SequenceTargets t;
  t.targets = input_ids.slice(0, 0, P).slice(1, 1);  // position t predicts token t+1
  t.keep = attention_mask.slice(0, 0, P).slice(1, 1) > 0;
  if (image_token_id >= 0) t.keep = t.keep & (t.targets != image_token_id);
  return t;
}

namespace {

// The chosen rows' mean NLL over every text token they attend to (prompt and reply), as TRL's
// ORPOTrainer takes it over the whole chosen sequence. `hidden` (B,T,C) is the policy's.
torch::Tensor sequence_nll(MultimodalModelImpl& model, const torch::Tensor& hidden,
                           const Batch& batch, int64_t P) {
  const auto t = sequence_targets(batch.input_ids, batch.attention_mask, model.image_token_id(), P);
  return -model
              .target_logprobs(hidden.slice(0, 0, P).slice(1, 0, -1).index({t.keep}),
                               t.targets.index({t.keep}))
              .mean();
}

// The chosen replies' mean NLL, from their log-probabilities (summed, or averaged per token).
torch::Tensor response_nll(const torch::Tensor& chosen_logps, const Batch& batch, int64_t P,
                           bool averaged) {
  const auto counts = (batch.labels.slice(0, 0, P).slice(1, 1) != kIgnoreIndex)
                          .sum(1)
                          .to(chosen_logps.scalar_type());
  const auto sums = averaged ? chosen_logps * counts : chosen_logps;
  return -sums.sum() / counts.sum().clamp_min(1);
}

class PreferenceObjective : public Objective {
 public:
  PreferenceObjective(std::shared_ptr<const PreferenceSpec> spec, const TrainConfig& train,
                      MultimodalModel reference)
      : spec_(std::move(spec)), train_(train), reference_(std::move(reference)) {}

  ObjectiveOutput forward(MultimodalModelImpl& model, const Batch& batch) override {
    const int64_t P = batch.pairs;
    if (P <= 0) throw Error("[" + train_.stage + "] the batch holds no preference pairs");
    const bool average = spec_->average_logps(train_);
    // The positions read: the responses' (every pair's), and, for a sequence NLL, every text
    // token of the chosen rows.
    auto wanted = predicting_positions(batch.labels);
    if (spec_->nll(train_) == PreferenceSpec::Nll::sequence) {
      const auto t =
          sequence_targets(batch.input_ids, batch.attention_mask, model.image_token_id(), P);
      wanted.slice(0, 0, P).slice(1, 0, -1).logical_or_(t.keep);
    }
    const auto hidden = model.forward(batch.input_ids, batch.pixel_values, batch.attention_mask, {},
                                      ImageLayout{batch.image_pool, batch.image_sizes}, wanted);
    const auto policy = response_logps_from_hidden(model, hidden, batch.labels, average);
    PreferenceLogps in;
    in.chosen = policy.slice(0, 0, P);
    in.rejected = policy.slice(0, P);
    if (reference_) {
      torch::NoGradGuard no_grad;
      const auto ref = sequence_logps(*reference_, batch, average);
      in.ref_chosen = ref.slice(0, 0, P);
      in.ref_rejected = ref.slice(0, P);
    }
    switch (spec_->nll(train_)) {
      case PreferenceSpec::Nll::none:
        break;
      case PreferenceSpec::Nll::response:
        in.nll = response_nll(in.chosen, batch, P, average);
        break;
      case PreferenceSpec::Nll::sequence:
        in.nll = sequence_nll(model, hidden, batch, P);
        break;
    }
    const auto out = spec_->loss(in, train_);
    ObjectiveOutput o;
    o.loss_sum = out.loss * static_cast<double>(P);  // the loss is the mean over the pairs
    // A mixture-of-experts policy adds coef x its load-balancing loss, as TRL's trainers do.
    const auto& llm = model.config().llm;
    if (llm.experts > 0 && llm.router_aux_loss_coef > 0) {
      const auto aux = model.language_model->aux_loss(batch.attention_mask);
      if (aux.defined())
        o.loss_sum = o.loss_sum + llm.router_aux_loss_coef * static_cast<double>(P) * aux;
    }
    o.weight = P;
    for (const auto& [k, v] : out.metrics) o.metric_sums[k] = v * static_cast<double>(P);
    return o;
  }
  int64_t weight(const Batch& batch) const override { return batch.pairs; }

 private:
  std::shared_ptr<const PreferenceSpec> spec_;
  TrainConfig train_;
  MultimodalModel reference_;
};

}  // namespace

std::unique_ptr<Objective> make_preference_objective(std::shared_ptr<const PreferenceSpec> spec,
                                                     const TrainConfig& train,
                                                     MultimodalModel reference) {
  return std::make_unique<PreferenceObjective>(std::move(spec), train, std::move(reference));
}

}  // namespace mllm
