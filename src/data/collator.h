// Collates samples into a padded batch (right padding: pad id in input_ids, -100 in labels, 0 in
// attention_mask) and decodes the batch's images. With packing, several samples share a row.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "data/datasets.h"
#include "data/image_transform.h"

namespace mllm {

struct Batch {
  torch::Tensor input_ids;  // (B,T) int64
  torch::Tensor labels;     // (B,T) int64, -100 = no loss
  // (B,T) int64: 1 = real token, 0 = padding; in packed rows the number (1, 2, ...) of the sample
  // each token belongs to (models/llm/llama.h: decoder_mask).
  torch::Tensor attention_mask;
  torch::Tensor
      position_ids;  // (B,T) int64 for packed rows (restarting per sample), else undefined
  // (M,3,S,S) float: the crops of the batch's N images in order (undefined if none); M = N but
  // with AnyRes, where image i has 1 + rows x cols crops (the base image, then the tiles).
  torch::Tensor pixel_values;
  // (N) int64: how each image's token grid is pooled (1: not; p: a video frame, p x p average
  // pooling: data.video.pool); undefined when no image is pooled. Stays on the CPU (Batch::to),
  // where the model reads it.
  torch::Tensor image_pool;
  // (N,2) int64: with AnyRes, each image's original (height, width) ((0,0) for a video frame,
  // one crop); undefined without AnyRes. On the CPU, like image_pool.
  torch::Tensor image_sizes;
  int64_t supervised_tokens = 0;   // labels != -100 after the shift (what the loss averages over)
  int64_t tokens = 0;              // real (non-pad) tokens
  int64_t samples = 0;             // samples in the batch (rows unless packed)
  int64_t positions = 0;           // B x T: padding fraction = 1 - tokens / positions
  int64_t unpacked_positions = 0;  // samples x the longest: the same batch's positions unpacked
  int64_t pairs = 0;  // preference batches: rows [0,pairs) chosen, [pairs,2*pairs) rejected
  std::vector<std::string> ids;  // each row's record id(s, joined by '+' when packed), for errors
  std::vector<bool> has_image;   // each row: whether a sample of it has an image
  // A mixture's batches (data/mixture.h): the items each source gave (empty for one source).
  std::vector<int64_t> source_items;

  Batch to(const torch::Device& device) const;
};

// Images (and videos: each sampled frame is an image) that fail to decode throw Error naming the
// file and the record, unless `skip_bad_images`, in which case the sample is dropped from the
// batch (and `dropped` counts it). pixel_values hold every sample's images in its placeholder
// order, sample after sample.
//
// Packing (data.packing): with `pack_length` > 0 the samples go into rows of at most pack_length
// tokens, first-fit in order of decreasing length, each sample whole (a sample never exceeds
// data.max_length, and truncation never cuts an image, so no image is split or cut). Within a
// row the samples keep their batch order; attention_mask numbers them 1, 2, ... and position_ids
// restart at 0 for each; pixel_values follow the order of the image placeholders, row by row, as
// unpacked. T is the longest row. The loss over the batch is the same as unpacked.
Batch collate(const std::vector<const Sample*>& samples, const ImageTransform& transform,
              int64_t pad_id, bool skip_bad_images = false, int64_t* dropped = nullptr,
              int64_t pack_length = 0);

// The rows of a packed batch: groups of sample indices (into `lengths`), first-fit in order of
// decreasing length into rows of `capacity` tokens; each row's indices ascending. Samples longer
// than the capacity get a row of their own.
std::vector<std::vector<size_t>> pack_rows(const std::vector<int64_t>& lengths, int64_t capacity);

}  // namespace mllm
