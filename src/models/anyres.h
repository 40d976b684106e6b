// LLaVA-NeXT's dynamic high resolution ("AnyRes") arithmetic: which of the grid pinpoints an image
// is resized and padded to, the grid of encoder-sized tiles that makes, and how many feature
// tokens the image becomes — the tiles' patch grid with the padding's rows or columns removed, a
// learned newline after each row, plus the downscaled base image. As transformers' LlavaNext
// (image_processing_utils.select_best_resolution; LlavaNextProcessor._get_number_of_features and
// _get_unpadded_features, commit 81bb907c), tested against vectors made from that code
// (tests/reference/anyres_reference.py).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace mllm {

// (height, width) pairs.
using Resolution = std::pair<int64_t, int64_t>;

// The pinpoint that keeps most of the image's pixels once it is scaled to fit (aspect kept), the
// least padding on a tie; the first such pinpoint in order.
Resolution select_best_resolution(Resolution image, const std::vector<Resolution>& pinpoints);

// (rows, columns) of tile x tile crops of the best resolution.
Resolution anyres_grid_shape(Resolution image, const std::vector<Resolution>& pinpoints,
                             int64_t tile);

// Feature tokens of one image: the unpadded patch grid of its tiles (tile / patch patches a side
// per tile), one newline per remaining row, and the base image's patches (+ `extra`: 1 when the
// CLS feature is kept).
int64_t anyres_image_tokens(Resolution image, const std::vector<Resolution>& pinpoints,
                            int64_t tile, int64_t patch, int64_t extra = 0);

}  // namespace mllm
