// Datasets of LLaVA-format records, tokenized once at load through a conversation template
// (chat_template.h). Each <image> in the text becomes Q placeholder ids (Q = the connector's tokens
// per image, as transformers' LlavaProcessor does), so sequence lengths and label masks are known
// before the model runs. Images are only checked to exist here; the collator decodes them per
// batch.
//
// Files: a JSON array of records or JSONL (one record per line), chosen by a ".jsonl" extension or
// data.*.format = llava_jsonl / preference_jsonl. Both are read record by record (an array is split
// into its top-level elements by a small scanner), so a multi-GB file is never held as one JSON
// value; only the token ids are kept.
//
// Conversation records (llava_json; the layout of LLaVA-1.5's llava_v1_5_mix665k.json):
//   {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
//    "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
//                      {"from": "gpt", "value": "The bus in the image is white and red."}, ...]}
//   "image" is optional (text-only records use no image tokens) and relative to image_root. The
//   single <image> may be anywhere in a human turn: as LLaVA's preprocess_multimodal does, it is
//   moved to the front ("<image>\n" + the rest). Turns may also be {"role", "content"}.
//
// Preference records (preference_json), each a prompt with a chosen and a rejected reply:
//   ShapesWorld / RLAIF-V style:  {"id", "image", "prompt": "<image>\nQ", "chosen": "A",
//                                  "rejected": "B"}
//   LLaVA conversation prompt:    {"id", "image", "conversations": [human, gpt, ..., human],
//                                  "chosen": "A", "rejected": "B"}
//   TRL conversational:           {"prompt": [{"role": "user", "content": ...}, ...],
//                                  "chosen": [{"role": "assistant", "content": ...}],
//                                  "rejected": [...], "images": ["x.jpg"]}
//                                 or without "prompt", chosen/rejected being whole conversations
//                                 that share all but their last message (TRL's implicit prompt).
//   "content" may be a string or TRL's list of {"type": "image"} / {"type": "text", "text"} parts.
//
// Bad records (malformed JSON, missing image file, <image> without an image or an image without
// <image>, no reply, too long to truncate without cutting the image or every supervised token)
// raise an Error naming the file, line (JSONL), record index, id and reason; with
// data.on_bad_record=skip they are counted in skipped() instead.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/config.h"
#include "data/tokenizer/tokenizer.h"

namespace mllm {

constexpr int64_t kIgnoreIndex = -100;

struct Sample {
  std::string id;
  std::vector<int64_t> input_ids;  // (T)
  std::vector<int64_t> labels;     // (T), kIgnoreIndex where there is no loss
  std::filesystem::path image;     // empty for text-only samples
};

// Counters shared by the dataset kinds, for logs and metrics.jsonl.
struct DatasetStats {
  int64_t records = 0;                          // records read (kept + skipped)
  int64_t skipped = 0;                          // bad records skipped under on_bad_record=skip
  int64_t truncated = 0;                        // kept samples cut to data.max_length
  std::map<std::string, int64_t> skip_reasons;  // reason (text before the first ':') -> count
};

// Which tokens of an encoding carry the loss: those whose bytes overlap a supervised byte span
// (a SentencePiece "▁The" that starts at the space before a reply belongs to the reply, as in
// LLaVA). `spans` are sorted and non-overlapping.
std::vector<bool> supervised_token_mask(const std::vector<std::pair<size_t, size_t>>& offsets,
                                        const std::vector<std::pair<size_t, size_t>>& spans);

class ConversationDataset {
 public:
  // `key` names the config section ("data.train") for error messages.
  ConversationDataset(const DataSourceConfig& source, const DataConfig& data,
                      const Tokenizer& tokenizer, int64_t image_tokens, const std::string& key);

  size_t size() const { return samples_.size(); }
  const Sample& operator[](size_t i) const { return samples_[i]; }
  int64_t skipped() const { return stats_.skipped; }
  int64_t truncated() const { return stats_.truncated; }
  const DatasetStats& stats() const { return stats_; }
  int64_t supervised_tokens() const;

 private:
  std::vector<Sample> samples_;
  DatasetStats stats_;
};

// One preference pair. Both samples hold the same prompt tokens followed by their own reply; the
// labels supervise the reply (and its end-of-turn marker) only. Both carry the record's id/image.
struct PreferenceSample {
  Sample chosen;
  Sample rejected;
};

class PreferenceDataset {
 public:
  PreferenceDataset(const DataSourceConfig& source, const DataConfig& data,
                    const Tokenizer& tokenizer, int64_t image_tokens, const std::string& key);

  size_t size() const { return samples_.size(); }
  const PreferenceSample& operator[](size_t i) const { return samples_[i]; }
  int64_t skipped() const { return stats_.skipped; }
  int64_t truncated() const { return stats_.truncated; }
  const DatasetStats& stats() const { return stats_; }

 private:
  std::vector<PreferenceSample> samples_;
  DatasetStats stats_;
};

// Whether `source` is read as JSONL: format llava_jsonl / preference_jsonl or a .jsonl path.
bool is_jsonl_source(const DataSourceConfig& source);

}  // namespace mllm
