// Datasets of LLaVA-format records (`[{"id", "image", "conversations": [{"from", "value"}...]}]`),
// tokenized once at load through a conversation template. Each <image> in the text becomes Q
// placeholder ids (Q = the connector's tokens per image, as transformers' LlavaProcessor does), so
// sequence lengths and label masks are known before the model runs. Images are decoded per batch.
#pragma once

#include <filesystem>
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

class ConversationDataset {
 public:
  // `key` names the config section ("data.train") for error messages.
  ConversationDataset(const DataSourceConfig& source, const DataConfig& data,
                      const Tokenizer& tokenizer, int64_t image_tokens, const std::string& key);

  size_t size() const { return samples_.size(); }
  const Sample& operator[](size_t i) const { return samples_[i]; }
  int64_t skipped() const { return skipped_; }
  int64_t supervised_tokens() const;

 private:
  std::vector<Sample> samples_;
  int64_t skipped_ = 0;
};

}  // namespace mllm
