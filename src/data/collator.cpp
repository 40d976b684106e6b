#include "data/collator.h"

#include <spdlog/spdlog.h>

#include "core/error.h"

namespace mllm {

Batch Batch::to(const torch::Device& device) const {
  Batch b = *this;
  b.input_ids = input_ids.to(device);
  b.labels = labels.to(device);
  b.attention_mask = attention_mask.to(device);
  if (pixel_values.defined()) b.pixel_values = pixel_values.to(device);
  return b;
}

Batch collate(const std::vector<const Sample*>& samples, const ImageTransform& transform,
              int64_t pad_id, bool skip_bad_images, int64_t* dropped) {
  std::vector<const Sample*> kept;
  std::vector<torch::Tensor> images;
  for (const Sample* s : samples) {
    if (!s->image.empty()) {
      try {
        images.push_back(transform.load(s->image));
      } catch (const Error& e) {
        if (!skip_bad_images) throw Error(std::string(e.what()) + " (record id " + s->id + ")");
        spdlog::warn("skipping record {}: {}", s->id, e.what());
        if (dropped) ++*dropped;
        continue;
      }
    }
    kept.push_back(s);
  }
  if (kept.empty()) throw Error("[collate] every sample of the batch was dropped");
  size_t T = 0;
  for (const Sample* s : kept) T = std::max(T, s->input_ids.size());
  const auto B = static_cast<int64_t>(kept.size());
  Batch b;
  b.input_ids = torch::full({B, static_cast<int64_t>(T)}, pad_id, torch::kLong);
  b.labels = torch::full({B, static_cast<int64_t>(T)}, kIgnoreIndex, torch::kLong);
  b.attention_mask = torch::zeros({B, static_cast<int64_t>(T)}, torch::kLong);
  auto ids = b.input_ids.accessor<int64_t, 2>();
  auto labels = b.labels.accessor<int64_t, 2>();
  auto mask = b.attention_mask.accessor<int64_t, 2>();
  for (int64_t i = 0; i < B; ++i) {
    const Sample& s = *kept[static_cast<size_t>(i)];
    for (size_t t = 0; t < s.input_ids.size(); ++t) {
      ids[i][static_cast<int64_t>(t)] = s.input_ids[t];
      labels[i][static_cast<int64_t>(t)] = s.labels[t];
      mask[i][static_cast<int64_t>(t)] = 1;
      if (t > 0 && s.labels[t] != kIgnoreIndex) ++b.supervised_tokens;
    }
    b.tokens += static_cast<int64_t>(s.input_ids.size());
    b.ids.push_back(s.id);
    b.has_image.push_back(!s.image.empty());
  }
  if (!images.empty()) b.pixel_values = torch::stack(images);
  return b;
}

}  // namespace mllm
