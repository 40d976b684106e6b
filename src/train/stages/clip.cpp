// The encoder's own pretraining, made the way CLIP is (Radford et al. 2021, Figure 3): the vision
// tower and a small text tower (model.text) learn from image-caption pairs with the symmetric
// InfoNCE loss and a learned temperature. The stage adds the text tower, the projections and the
// temperature to the model as "clip.*" (ClipHead, models/clip_model.h), so train.trainable, the
// optimizer, checkpoints and the gradient reduction treat them as any parameter; the LLM and the
// connector are built but take no part. final/ is a CLIPModel folder that a later stage loads as
// model.vision.pretrained, as it would load openai/clip-vit-large-patch14-336.
//
// The captions come from the collator's rows: the supervised tokens of the plain template (the
// caption and its EOS) after a BOS. Negatives are the other pairs of the micro-batch on this rank
// (no gather across ranks) and, when the data are preference pairs (the image, its caption as
// the chosen reply, a caption that is wrong about one detail as the rejected one), those hard
// negatives too, as NegCLIP adds them. The logged figures are the in-batch image->caption
// retrieval recall at 1 and 5 with their chance levels, the temperature's scale and, with hard
// negatives, how often an image scores its caption above its negative (chance 0.5).
#include <algorithm>
#include <cmath>
#include <map>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "data/datasets.h"
#include "models/clip_model.h"
#include "train/stage.h"

namespace mllm {

namespace {

constexpr const char* kHead = "clip";
// open_clip keeps the learned scale at most 100 (CLIP's paper: "clipped to prevent scaling the
// logits by more than 100").
const double kMaxLogScale = std::log(100.0);

ClipHeadImpl& head_of(MultimodalModelImpl& model) {
  for (const auto& item : model.named_children())
    if (item.key() == kHead)
      if (auto* head = dynamic_cast<ClipHeadImpl*>(item.value().get())) return *head;
  throw Error("[clip] the model has no contrastive head (clip.*)");
}

struct CaptionRows {
  torch::Tensor ids, mask;                  // (B,L) on the batch's device
  std::vector<std::vector<int64_t>> texts;  // each row's caption ids, for duplicate detection
};

// A row's record id for an error, or its row number if the batch has none.
std::string record_id(const Batch& batch, int64_t row) {
  const auto r = static_cast<size_t>(row);
  return r < batch.ids.size() ? batch.ids[r] : "in batch row " + std::to_string(row);
}

// Each row's caption as the text tower reads it: BOS, the supervised tokens, EOS (the caption is
// cut to fit max_position).
CaptionRows caption_rows(const Batch& batch, const ClipTextConfig& text) {
  const auto labels = batch.labels.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t B = labels.size(0), T = labels.size(1);
  const auto* l = labels.data_ptr<int64_t>();
  CaptionRows r;
  size_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> caption;
    for (int64_t t = 0; t < T; ++t)
      if (l[b * T + t] != kIgnoreIndex) caption.push_back(l[b * T + t]);
    if (!caption.empty() && caption.back() == text.eos_token_id) caption.pop_back();
    if (caption.empty())
      throw Error("[clip] record " + record_id(batch, b) +
                  " has no caption (no supervised tokens for the text tower)");
    caption.resize(std::min<size_t>(caption.size(), static_cast<size_t>(text.max_position - 2)));
    longest = std::max(longest, caption.size() + 2);
    r.texts.push_back(std::move(caption));
  }
  const auto L = static_cast<int64_t>(longest);
  auto ids = torch::full({B, L}, text.pad_token_id, torch::kLong);
  auto mask = torch::zeros({B, L}, torch::kLong);
  auto* id = ids.data_ptr<int64_t>();
  auto* m = mask.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& c = r.texts[static_cast<size_t>(b)];
    const auto n = static_cast<int64_t>(c.size());
    id[b * L] = text.bos_token_id;
    std::copy(c.begin(), c.end(), id + b * L + 1);
    id[b * L + n + 1] = text.eos_token_id;
    std::fill(m + b * L, m + b * L + n + 2, 1);
  }
  const auto device = batch.input_ids.device();
  r.ids = ids.to(device);
  r.mask = mask.to(device);
  return r;
}

class ClipObjective : public Objective {
 public:
  ObjectiveOutput forward(MultimodalModelImpl& model, const Batch& batch) override {
    auto& head = head_of(model);
    const int64_t B = batch.input_ids.size(0);
    const int64_t N = batch.pixel_values.defined() ? batch.pixel_values.size(0) : 0;
    if (N != B) {
      const auto row = std::find(batch.has_image.begin(), batch.has_image.end(), false) -
                       batch.has_image.begin();
      throw Error("[clip] record " + record_id(batch, row) +
                  " has no image (each caption is paired with one image; the batch has " +
                  std::to_string(N) + " images for " + std::to_string(B) + " samples)");
    }
    // Preference pairs: rows [0,P) the images' captions, [P,2P) a hard negative of each (the
    // same image, its rejected caption); the images are the first P.
    const int64_t P = batch.pairs > 0 ? batch.pairs : B;
    if (P < 2) throw Error("[clip] a contrastive batch needs at least 2 image-caption pairs");
    const auto rows = caption_rows(batch, head.text_model->config());
    const auto images =
        head.image_features(*model.vision_tower->vision_model, batch.pixel_values.slice(0, 0, P));
    const auto texts = head.text_features(rows.ids, rows.mask);
    // (texts, images): P captions, then the P hard negatives when there are.
    const auto logits = head.logits_per_text(texts, images, kMaxLogScale).to(torch::kFloat);
    const auto positives = logits.slice(0, 0, P);
    ObjectiveOutput o;
    if (batch.pairs > 0) {
      // NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like
      // bags-of-words"): each image ranks its caption against every caption and every hard
      // negative of the batch; each caption ranks the images as in CLIP.
      namespace F = torch::nn::functional;
      const auto target = torch::arange(P, logits.options().dtype(torch::kLong));
      o.loss_sum = (F::cross_entropy(logits.t(), target) + F::cross_entropy(positives, target)) /
                   2.0 * static_cast<double>(P);
      const auto own = positives.diagonal(), negative = logits.slice(0, P).diagonal();
      o.metric_sums["hard_negative_accuracy"] =
          (own > negative).to(torch::kDouble).sum().item<double>();
    } else {
      o.loss_sum = clip_loss(logits) * static_cast<double>(P);
    }
    o.weight = P;
    const std::vector<std::vector<int64_t>> captions(rows.texts.begin(), rows.texts.begin() + P);
    for (const auto& [k, v] : clip_retrieval(positives, captions))
      o.metric_sums[k] = v * static_cast<double>(P);
    o.metric_sums["scale"] =
        std::exp(std::min(head.logit_scale.item<double>(), kMaxLogScale)) * static_cast<double>(P);
    return o;
  }
  int64_t weight(const Batch& batch) const override {
    return batch.pairs > 0 ? batch.pairs : batch.input_ids.size(0);
  }
};

}  // namespace

std::map<std::string, double> clip_retrieval(const torch::Tensor& logits_per_text,
                                             const std::vector<std::vector<int64_t>>& texts) {
  const auto scores = logits_per_text.detach().to(torch::kCPU, torch::kDouble).t().contiguous();
  const int64_t B = scores.size(0);
  std::map<std::string, double> out;
  for (const int64_t k : {1, 5}) {
    const int64_t kk = std::min(k, B);
    const auto top = std::get<1>(scores.topk(kk, 1)).contiguous();
    const auto* idx = top.data_ptr<int64_t>();
    double hits = 0, chance = 0;
    for (int64_t j = 0; j < B; ++j) {
      const auto& mine = texts[static_cast<size_t>(j)];
      for (int64_t r = 0; r < kk; ++r)
        if (texts[static_cast<size_t>(idx[j * kk + r])] == mine) {
          hits += 1;
          break;
        }
      const auto m = std::count(texts.begin(), texts.end(), mine);
      double miss = 1;  // all k drawn from the B-m other captions
      for (int64_t r = 0; r < kk; ++r)
        miss *= std::max<double>(0, static_cast<double>(B - m - r)) / static_cast<double>(B - r);
      chance += 1 - miss;
    }
    const std::string at = "@" + std::to_string(k);
    out["recall" + at] = hits / static_cast<double>(B);
    out["recall" + at + "_chance"] = chance / static_cast<double>(B);
  }
  return out;
}

Stage clip_stage() {
  Stage s;
  s.name = "clip";
  s.summary =
      "CLIP's contrastive pretraining of the vision tower with a text tower (model.text) on "
      "image-caption pairs; final/ is a CLIPModel folder";
  s.data = StageData::conversations;
  // Image-caption pairs, or preference pairs whose rejected reply is a hard negative caption.
  s.formats = {"llava_json", "llava_jsonl", "preference_json", "preference_jsonl"};
  s.metrics = {"recall@1",        "recall@1_chance", "recall@5",
               "recall@5_chance", "scale",           "hard_negative_accuracy"};
  s.headline = {"recall@1", "scale"};
  s.objective = [](const TrainConfig&, MultimodalModel) {
    return std::make_unique<ClipObjective>();
  };
  s.extend = [](MultimodalModelImpl& model, const Config& config, const Tokenizer& tokenizer) {
    ClipTextConfig text = config.model.text;
    text.vocab = tokenizer.vocab_size();
    text.bos_token_id = tokenizer.bos_id();
    text.eos_token_id = tokenizer.eos_id();
    text.pad_token_id = std::max<int64_t>(tokenizer.pad_id(), 0);
    if (text.bos_token_id < 0 || text.eos_token_id < 0)
      throw ConfigError(config.where("model.tokenizer") + ": " + config.model.tokenizer +
                        " has no BOS or EOS token, which the clip stage's text tower needs");
    if (text.hidden % text.heads != 0)
      throw ConfigError(config.where("model.text.hidden") + ": " + std::to_string(text.hidden) +
                        " is not a multiple of model.text.heads " + std::to_string(text.heads));
    model.register_module(kHead, ClipHead(model.config().vision, text));
    spdlog::info("clip: text tower of {} layers, hidden {}, projection {} (vocab {}, EOS id {})",
                 text.layers, text.hidden, text.projection_dim, text.vocab, text.eos_token_id);
  };
  s.write_final = [](const std::filesystem::path& dir, MultimodalModelImpl& model, const Config&,
                     const Tokenizer&, const LlavaFolderExtras& extras) {
    write_clip_folder(dir, model, head_of(model), extras);
  };
  return s;
}

}  // namespace mllm
