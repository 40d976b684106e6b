// LLaVA-NeXT's dynamic high resolution ("AnyRes") arithmetic: which of the grid pinpoints an image
// is resized and padded to, the grid of encoder-sized tiles that makes, and how many feature
// tokens the image becomes — the tiles' patch grid with the padding's rows or columns removed, a
// learned newline after each row, plus the downscaled base image. As transformers' LlavaNext
// (image_processing_utils.select_best_resolution; LlavaNextProcessor._get_number_of_features and
// _get_unpadded_features; modeling_llava_next.unpad_image, commit 81bb907c), tested against
// vectors made from that code (tests/reference/anyres_reference.py).
//
// Shared by data (how many placeholders an image takes, how it is cut into tiles) and models (how
// the tiles' features are put back together), so both count the same way.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/config.h"

namespace mllm {

// (height, width) pairs.
using Resolution = std::pair<int64_t, int64_t>;

// The pinpoint that keeps most of the image's pixels once it is scaled to fit (aspect kept), the
// least padding on a tie; the first such pinpoint in order.
Resolution select_best_resolution(Resolution image, const std::vector<Resolution>& pinpoints);

// (rows, columns) of tile x tile crops of the best resolution.
Resolution anyres_grid_shape(Resolution image, const std::vector<Resolution>& pinpoints,
                             int64_t tile);

// The (height, width) in features that remain of a `grid` (the tiles' features side by side)
// once the padding the resize-and-pad added is taken off both sides of the long axis.
Resolution anyres_unpadded(Resolution image, Resolution grid);

// Feature tokens of one image: the unpadded patch grid of its tiles (tile / patch patches a side
// per tile), one newline per remaining row, and the base image's patches (+ `extra`: 1 when the
// CLS feature is kept).
int64_t anyres_image_tokens(Resolution image, const std::vector<Resolution>& pinpoints,
                            int64_t tile, int64_t patch, int64_t extra = 0);

// The pinpoints model.vision.anyres describes: its grid_pinpoints, or for max_tiles every
// rows x cols grid of `tile` pixel tiles with rows * cols <= max_tiles (rows-major order, as
// LLaVA-OneVision's "(1x1),...,(RxC)" grids). Empty when AnyRes is off.
std::vector<Resolution> anyres_pinpoints(const AnyResConfig& config, int64_t tile);

// How many placeholder tokens an image takes and how many encoder crops it is cut into: a fixed
// `per_image` (the connector's tokens for one crop), or with AnyRes a count that depends on the
// image's size. Converts from a plain count, so code without AnyRes passes one.
struct ImageTokens {
  int64_t per_image = 0;              // Q: the connector's tokens for one crop
  std::vector<Resolution> pinpoints;  // AnyRes on when not empty
  int64_t tile = 0;                   // the encoder's input side, pixels

  ImageTokens(int64_t q = 0) : per_image(q) {}  // NOLINT: a plain count converts
  ImageTokens(int64_t q, std::vector<Resolution> p, int64_t t)
      : per_image(q), pinpoints(std::move(p)), tile(t) {}

  bool anyres() const { return !pinpoints.empty(); }
  // sqrt(Q): a crop's tokens a side (AnyRes needs a square grid; anyres_side_problem).
  int64_t side() const;
  // Placeholders for an image of `size` (height, width) pixels.
  int64_t of_image(Resolution size) const;
  // Encoder crops of an image of `size`: 1, or with AnyRes the base image plus rows x cols tiles.
  int64_t crops(Resolution size) const;
};

// Why a connector producing `q` tokens per crop cannot be used with AnyRes ("" when it can): the
// unpadding needs them as a square grid.
std::string anyres_side_problem(int64_t q);

}  // namespace mllm
