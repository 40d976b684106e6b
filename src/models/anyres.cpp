#include "models/anyres.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace mllm {

Resolution select_best_resolution(Resolution image, const std::vector<Resolution>& pinpoints) {
  const auto [oh, ow] = image;
  if (oh <= 0 || ow <= 0 || pinpoints.empty())
    throw Error("[anyres] an image of " + std::to_string(oh) + "x" + std::to_string(ow) +
                " pixels, " + std::to_string(pinpoints.size()) + " pinpoints");
  Resolution best{0, 0};
  int64_t best_effective = 0;
  int64_t best_wasted = std::numeric_limits<int64_t>::max();
  for (const auto& [h, w] : pinpoints) {
    const double scale = std::min(static_cast<double>(w) / static_cast<double>(ow),
                                  static_cast<double>(h) / static_cast<double>(oh));
    const auto dw = static_cast<int64_t>(static_cast<double>(ow) * scale);
    const auto dh = static_cast<int64_t>(static_cast<double>(oh) * scale);
    const int64_t effective = std::min(dw * dh, ow * oh);
    const int64_t wasted = w * h - effective;
    if (effective > best_effective || (effective == best_effective && wasted < best_wasted)) {
      best = {h, w};
      best_effective = effective;
      best_wasted = wasted;
    }
  }
  return best;
}

Resolution anyres_grid_shape(Resolution image, const std::vector<Resolution>& pinpoints,
                             int64_t tile) {
  const auto [h, w] = select_best_resolution(image, pinpoints);
  return {h / tile, w / tile};
}

int64_t anyres_image_tokens(Resolution image, const std::vector<Resolution>& pinpoints,
                            int64_t tile, int64_t patch, int64_t extra) {
  const auto [oh, ow] = image;
  const auto [rows, cols] = anyres_grid_shape(image, pinpoints, tile);
  const int64_t side = tile / patch;
  int64_t height = side * rows, width = side * cols;
  // The padding the resize-and-pad added, in patches, comes off both sides of the long axis.
  if (static_cast<double>(ow) / static_cast<double>(oh) >
      static_cast<double>(width) / static_cast<double>(height)) {
    height -= 2 * ((height - oh * width / ow) / 2);
  } else {
    width -= 2 * ((width - ow * height / oh) / 2);
  }
  return height * width + height + side * side + extra;
}

}  // namespace mllm
