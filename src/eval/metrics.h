// Evaluation metrics, computed as the published reference code computes them, so that numbers
// compare with papers and other tools:
//   cider_d, bleu, rouge_l  coco-caption / pycocoevalcap (cider/cider_scorer.py, bleu/
//                           bleu_scorer.py, rouge/rouge.py) on PTB-tokenized text
//   vqa                     VQAv2's vqaEval.py: answer normalisation, min(1, matches/3) averaged
//                           over the leave-one-out subsets of the human answers
//   exact                   exact match after the same normalisation (synthetic data, one answer)
//   mc                      multiple-choice letters as LLaVA's eval_science_qa.py extracts them
//   pope                    POPE's evaluate.py: yes/no parsing, accuracy, precision, recall, F1,
//                           yes-ratio; plus the hallucination rate (the share of "no" questions,
//                           absent objects, answered yes)
//   mme                     MME's eval_tool/calculation.py: acc, acc+ (both questions of an image
//                           right) and score = 100 (acc + acc+) per category, summed
// No LibTorch here.
#pragma once

#include <array>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mllm::eval {

// pycocoevalcap's PTBTokenizer: Stanford's PTBTokenizer with -preserveLines -lowerCase, then the
// tokens of its PUNCTUATIONS list removed; the tokens joined by single spaces.
std::string ptb_tokenize(const std::string& text);

// Corpus CIDEr-D (x10, sigma 6) and the per-item scores, over tokenized text: refs[i] are the
// references of item i, cands[i] its candidate. Document frequencies come from the references.
double cider_d(const std::vector<std::vector<std::string>>& refs,
               const std::vector<std::string>& cands, std::vector<double>* per_item = nullptr);

// Corpus BLEU-1..4 with the closest reference length (ties: the shorter), counts summed over the
// corpus, over tokenized text.
std::array<double, 4> bleu(const std::vector<std::vector<std::string>>& refs,
                           const std::vector<std::string>& cands);

// Mean ROUGE-L (beta 1.2; precision and recall each maximised over the references).
double rouge_l(const std::vector<std::vector<std::string>>& refs,
               const std::vector<std::string>& cands);

// vqaEval.py's processPunctuation then processDigitArticle.
std::string vqa_normalize(const std::string& answer);
// VQA accuracy of one prediction against the human answers (normalised only when they differ, as
// vqaEval.py does).
double vqa_accuracy(const std::string& prediction, const std::vector<std::string>& answers);

// The answer letter of a multiple-choice reply (eval_science_qa.py: the reply is a letter, or
// starts with "X. ", or says "The answer is X."), matched case-insensitively and also accepting a
// reply that is just "x." or "x ." ; returned upper-case. nullopt when there is none.
std::optional<char> extract_choice_letter(const std::string& reply);

// POPE's yes/no reading: the text before the first '.', commas removed; "no", "No" or "not" among
// its space-separated words means no, anything else yes.
bool pope_says_yes(const std::string& reply);

// MME's reading: "yes" / "no" as is, else "yes" or "no" inside the first 4 characters (yes
// first), else "other". Lower-cases first.
std::string mme_parse(const std::string& reply);

struct Prediction {
  std::string id;
  std::string text;
};
struct Reference {
  std::string id;
  std::vector<std::string> answers;  // captions, VQA answers, "yes"/"no", the correct letter
  std::string group;                 // MME: the image (acc+ pairs its two questions)
  std::string category;              // per-category breakdown (question type, MME task)
};

// Scores predictions against references by id. metric: cider_d, bleu, rouge_l, vqa, exact, mc,
// pope, mme. Returns {"metric", "n", <scores>...} plus "by_category" when references have a
// category. Throws ConfigError for an unknown metric and Error naming the id for a prediction
// without reference or a reference without prediction.
nlohmann::json score(const std::string& metric, const std::vector<Prediction>& predictions,
                     const std::vector<Reference>& references);

// The metric names score() accepts.
const std::vector<std::string>& metric_names();

// JSONL: predictions {"id", "text"}; references {"id", "answers": [...]} or {"id", "answer"},
// with optional "group" (or "image") and "category" (or "type"). Errors name file:line and key.
std::vector<Prediction> read_predictions(const std::filesystem::path& jsonl);
std::vector<Reference> read_references(const std::filesystem::path& jsonl);

}  // namespace mllm::eval
