// Generation-based evaluation: each task of an EvalConfig (core/config.h) prompts the model with
// the first human turn of every record, generates a reply, and scores the replies against the
// record's reference answers with eval/metrics.h. Used by `mllm eval` (results.json, results.md,
// predictions/<task>.jsonl) and by the trainer at every evaluation (train.eval_every).
//
// Task datasets:
//   llava_json[l]  LLaVA conversation records: the first human turn is the prompt (its <image>
//                  moved to the front, as in training), the gpt turn after it the reference.
//                  An optional "type" or "category" field groups the scores.
//   qa_json[l]     {"id", "image"?, "question", "answers": [...] | "answer": "...",
//                   "type"?, "group"?}: VQA-style questions with one or more reference answers;
//                  "type" groups the scores (and is what eval.tasks[].types filters), "group"
//                  pairs questions for MME's acc+ (default: the image).
//
// Next to each score, with eval.chance, the same metric for a chance-level baseline: every item
// answered with the reference of another item drawn at random from its type (or its task), a
// guesser that knows the answer distribution but not the image. And the prior: every item of a
// type answered with that type's most frequent reference (VQA's "per Q-type prior", Antol et al.
// 2015 §6), a constant a model that ignores the image can learn; where one answer dominates a
// type ("nothing" for an empty cell) it is the harder of the two.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "data/image_transform.h"
#include "data/tokenizer/tokenizer.h"
#include "eval/metrics.h"
#include "models/generate.h"
#include "models/multimodal_model.h"

namespace mllm::eval {

struct EvalItem {
  std::string id;
  std::filesystem::path image;  // the first image (empty: a text-only prompt)
  // Per <image> tag, in order: its files — one image, or a video's frames ("image": [a, b] gives
  // two tags of one file; "video": [f0, f1, ...] one tag of every frame).
  std::vector<std::vector<std::filesystem::path>> visuals;
  std::vector<bool> video;  // per tag: a video's frames (each one crop, as training takes them)
  std::string prompt;       // the human turn ("<image>\n..." when there is an image)
  Reference reference;
};

// Reads a task's records (types filter, then max_samples). Throws Error naming the file, line and
// record for a malformed one, and for a task left with no items.
std::vector<EvalItem> load_eval_items(const EvalTaskConfig& task);

// The token ids of a generation prompt: `human` as one human turn through the template (after
// `system` as its system prompt when set: data.system), ending in the assistant's generation
// prompt, with each <image> expanded to `image_tokens` placeholder ids.
std::vector<int64_t> prompt_ids(const Tokenizer& tok, const std::string& template_name,
                                const std::string& human, int64_t image_tokens,
                                const std::optional<std::string>& system = std::nullopt);
// As above, the i-th <image> expanded to image_tokens[i] ids (a tag without a count: an Error).
std::vector<int64_t> prompt_ids(const Tokenizer& tok, const std::string& template_name,
                                const std::string& human, const std::vector<int64_t>& image_tokens,
                                const std::optional<std::string>& system = std::nullopt);

// One prompt image as the model takes it: its crops (1, or with AnyRes the base image and the
// tiles), its (height, width) for AnyRes ((0,0) otherwise) and the placeholders it takes.
struct PromptImage {
  torch::Tensor crops;  // (k,3,S,S)
  Resolution size{0, 0};
  int64_t tokens = 0;
};
// `base_resolution`: one crop even when the model has AnyRes (video frames; eval tasks with
// base_resolution: true).
PromptImage load_prompt_image(const MultimodalModelImpl& model, const ImageTransform& transform,
                              const std::filesystem::path& path, bool base_resolution = false);
// The prompt images of a batch, in order, as generate() takes them.
ImageBatch prompt_image_batch(const std::vector<PromptImage>& images);

// GenerationOptions from a task's settings and the tokenizer (EOS and <|im_end|> stop; sampling
// only above temperature 0; never an id beyond the tokenizer).
GenerationOptions generation_options(const GenerationConfig& g, const Tokenizer& tok);

// What a task needs from the model side.
struct EvalModel {
  MultimodalModelImpl& model;
  const Tokenizer& tokenizer;
  const ImageTransform& transform;
  std::string default_template;  // for tasks without eval.tasks[].template
  // Its system prompt (data.system; tokenizer_config.json "mllm_system"), for the tasks that use
  // default_template; unset = the template's own.
  std::optional<std::string> system = std::nullopt;
};

// A llava folder as mllm eval and mllm generate use it: the model, its tokenizer.json, how its
// images were prepared (preprocessor_config.json, else the data.image defaults at the vision
// tower's size) and the template it was trained with (model_template).
struct FolderModel {
  MultimodalModel model;
  std::unique_ptr<Tokenizer> tokenizer;
  ImageTransform transform;
  std::string default_template;
  std::optional<std::string> system;
  EvalModel view() { return {*model, *tokenizer, transform, default_template, system}; }
};
// `folder` comes from resolve_llava_folder(..., need_tokenizer = true).
FolderModel load_folder_model(const std::filesystem::path& folder);

struct TaskResult {
  std::string name;
  std::string template_name;
  int64_t n = 0;
  nlohmann::json scores = nlohmann::json::object();  // metric -> eval::score() result
  nlohmann::json chance = nlohmann::json::object();  // metric -> the baseline's (eval.chance)
  nlohmann::json prior = nlohmann::json::object();   // metric -> the per-type prior's
  std::vector<Prediction> predictions;
  std::vector<EvalItem> items;
  double seconds = 0;
};

// The per-type prior's answers: for each item the most frequent first reference of its type
// (a tie goes to the answer that sorts first).
std::vector<Prediction> prior_predictions(const std::vector<EvalItem>& items);

// Runs one task: generation in batches of `batch_size` (left-padded), then every metric.
TaskResult run_task(const EvalTaskConfig& task, const EvalModel& m, int64_t batch_size, bool chance,
                    uint64_t seed);

// Every task of `config`, in order; `on_task` is called as each finishes (for logs).
std::vector<TaskResult> run_eval(const EvalConfig& config, const EvalModel& m, uint64_t seed);

// {"tasks": {name: {"n", "template", "seconds", "scores", "chance", "prior"}}}
nlohmann::json results_json(const std::vector<TaskResult>& results);

// A Markdown table: one row per task, metric and score (and per type), the chance baseline next
// to it.
std::string results_markdown(const std::vector<TaskResult>& results);

// The numbers of every task as flat keys for metrics.jsonl: "eval/<task>/<score>" and
// "eval/<task>/<type>/<score>".
std::map<std::string, double> flat_scores(const std::vector<TaskResult>& results);

// Several results.json side by side (one column per label, as the ShapesWorld report card shows
// the stages), with the chance baseline of the first that has one: a Markdown table with a row per
// task, type and score.
std::string compare_markdown(
    const std::vector<std::pair<std::string, nlohmann::json>>& labelled_results);

// Writes results.json, results.md and predictions/<task>.jsonl ({"id", "text", "answers"}) into
// `dir` (created), each file atomically.
void write_results(const std::filesystem::path& dir, const std::vector<TaskResult>& results,
                   const nlohmann::json& extra);

}  // namespace mllm::eval
