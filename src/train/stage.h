// The stage registry. A stage is what `train.stage` names: the objective a run optimises, the
// kind of data it reads, whether it needs a frozen reference model, and the figures it logs. Each
// stage is one file under src/train/stages/ that returns its Stage; stage.cpp lists them. Adding a
// stage = its file + one line in that list + its tests; nothing else compares stage names.
//
// Preference stages (dpo, orpo, simpo) share one objective (make_preference_objective): one
// forward of the policy (and the reference, when the stage has one) over a batch's chosen and
// rejected rows, then the stage's loss formula over the per-pair log-probabilities — a pure
// function each stage exposes as Stage::preference, so tests can hold it against reference vectors.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "core/config.h"
#include "data/tokenizer/tokenizer.h"
#include "models/hf/llava_folder.h"
#include "models/multimodal_model.h"
#include "train/objectives.h"

namespace mllm {

// What a stage reads: LLaVA conversations (data/datasets.h ConversationDataset) or preference
// pairs (PreferenceDataset).
enum class StageData { conversations, preference_pairs };

// The per-pair inputs of a preference loss, each (P) in fp32 or wider.
struct PreferenceLogps {
  torch::Tensor chosen, rejected;          // the policy's response log-probabilities
  torch::Tensor ref_chosen, ref_rejected;  // the reference's, when the stage has one
  torch::Tensor nll;  // scalar: the chosen rows' mean NLL, when the stage asks for one
};

struct PreferenceLoss {
  torch::Tensor loss;                     // scalar: the mean over the pairs
  std::map<std::string, double> metrics;  // batch means, named as TRL logs them
};

// How a preference stage scores a batch, given its train config.
struct PreferenceSpec {
  // Response log-probabilities averaged per token (true) or summed.
  std::function<bool(const TrainConfig&)> average_logps;
  // Which tokens of the chosen rows the NLL term covers: none (no term), the response, or the
  // whole sequence (every text token the row attends to, prompt included; not image positions).
  enum class Nll { none, response, sequence };
  std::function<Nll(const TrainConfig&)> nll;
  std::function<PreferenceLoss(const PreferenceLogps&, const TrainConfig&)> loss;
};

struct Stage {
  std::string name;
  std::string summary;  // one line, for docs and --help
  StageData data = StageData::conversations;
  bool needs_reference = false;  // a frozen copy of the initial policy (built by the trainer)
  // Whether data.packing may put several of its samples in one row: the next-token stages, whose
  // loss is per token. Preference pairs are scored per row (chosen against rejected), and the
  // contrastive stage per image-caption row: those reject packing.
  bool packs = false;
  std::vector<std::string> formats;   // the data.train / data.eval formats it accepts
  std::vector<std::string> metrics;   // what its objective logs besides the loss
  std::vector<std::string> headline;  // of which the step's log line shows
  // The objective, given the run's train config and (when needs_reference) the reference model.
  std::function<std::unique_ptr<Objective>(const TrainConfig&, MultimodalModel reference)>
      objective;
  // Checks of the stage's own settings: {key path, message} of the first problem, or {"", ""}.
  std::function<std::pair<std::string, std::string>(const TrainConfig&)> check;
  std::shared_ptr<const PreferenceSpec> preference;  // preference stages only
  // Modules the stage adds to the model (clip: its text tower), registered on it before
  // train.trainable applies, so that the optimizer, checkpoints and the gradient reduction
  // cover them as any other parameter. Empty: none.
  std::function<void(MultimodalModelImpl&, const Config&, const Tokenizer&)> extend;
  // Writes final/ at `dir` when the stage's result is not a llava folder (clip: a CLIPModel
  // folder). Empty: the llava folder.
  std::function<void(const std::filesystem::path& dir, MultimodalModelImpl&, const Config&,
                     const Tokenizer&, const LlavaFolderExtras&)>
      write_final;
};

// Every stage, in the order of stage.cpp's list.
const std::vector<Stage>& stages();
std::vector<std::string> stage_names();
// The stage named `name`; a ConfigError listing the names (with a did-you-mean) otherwise.
const Stage& find_stage(const std::string& name);

// The objective of train.stage (with `reference` when the stage needs one).
std::unique_ptr<Objective> make_objective(const TrainConfig& train,
                                          MultimodalModel reference = nullptr);

// The objective every preference stage uses: rows 0..P-1 of a batch are the chosen replies,
// P..2P-1 the rejected ones (the collator's layout); weighted by pairs.
std::unique_ptr<Objective> make_preference_objective(std::shared_ptr<const PreferenceSpec> spec,
                                                     const TrainConfig& train,
                                                     MultimodalModel reference);

// The chosen rows' targets of a whole-sequence NLL (orpo): `keep` (P,T-1) is true where position
// t predicts a text token t+1 that the row attends to (image placeholders are not text), and
// `targets` (P,T-1) are those tokens.
struct SequenceTargets {
  torch::Tensor keep, targets;
};
SequenceTargets sequence_targets(const torch::Tensor& input_ids,
                                 const torch::Tensor& attention_mask, int64_t image_token_id,
                                 int64_t P);

// Makes `stage` a preference stage scored by `spec`: preference pairs (JSON or JSONL), the
// shared objective, and the reward metrics (reward_metric_names()) among its logged figures.
void make_preference_stage(Stage& stage, std::shared_ptr<const PreferenceSpec> spec);
const std::vector<std::string>& reward_metric_names();

// The clip stage's retrieval figures over one batch (train/stages/clip.cpp): for each image j
// (column j of logits_per_text, texts x images), captions ranked by score; a hit at k when one of
// the top k is identical to caption j (two scenes may read alike). recall@{1,5} are the hit rates,
// recall@{1,5}_chance the same with the captions in random order: 1 - C(B-m,k)/C(B,k) for a caption
// that occurs m times. Means over the batch's images.
std::map<std::string, double> clip_retrieval(const torch::Tensor& logits_per_text,
                                             const std::vector<std::vector<int64_t>>& captions);

// The reward metrics TRL logs for every preference loss, from rewards r_c, r_r (P) and the
// policy's log-probabilities: rewards/{chosen,rejected,accuracies,margins},
// logps/{chosen,rejected}.
std::map<std::string, double> reward_metrics(const torch::Tensor& chosen_rewards,
                                             const torch::Tensor& rejected_rewards,
                                             const PreferenceLogps& logps);

}  // namespace mllm
