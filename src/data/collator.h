// Collates samples into a padded batch (right padding: pad id in input_ids, -100 in labels, 0 in
// attention_mask) and decodes the batch's images.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "data/datasets.h"
#include "data/image_transform.h"

namespace mllm {

struct Batch {
  torch::Tensor input_ids;        // (B,T) int64
  torch::Tensor labels;           // (B,T) int64, -100 = no loss
  torch::Tensor attention_mask;   // (B,T) int64, 1 = real token
  torch::Tensor pixel_values;     // (N,3,S,S) float, N = images in the batch (undefined if none)
  int64_t supervised_tokens = 0;  // labels != -100 after the shift (what the loss averages over)
  int64_t tokens = 0;             // real (non-pad) tokens
  int64_t pairs = 0;  // preference batches: rows [0,pairs) chosen, [pairs,2*pairs) rejected
  std::vector<std::string> ids;  // each row's record id, for errors that name the record
  std::vector<bool> has_image;   // each row: whether its sample has an image

  Batch to(const torch::Device& device) const;
};

// Images that fail to decode throw Error naming the file and the record, unless `skip_bad_images`,
// in which case the sample is dropped from the batch (and `dropped` counts it).
Batch collate(const std::vector<const Sample*>& samples, const ImageTransform& transform,
              int64_t pad_id, bool skip_bad_images = false, int64_t* dropped = nullptr);

}  // namespace mllm
