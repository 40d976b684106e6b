#include "core/anyres.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

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

Resolution anyres_unpadded(Resolution image, Resolution grid) {
  const auto [oh, ow] = image;
  auto [height, width] = grid;
  // The processor's integer arithmetic; the model's unpad_image rounds the same quotient to 7
  // decimals before truncating, which gives the same integer.
  if (static_cast<double>(ow) / static_cast<double>(oh) >
      static_cast<double>(width) / static_cast<double>(height)) {
    height -= 2 * ((height - oh * width / ow) / 2);
  } else {
    width -= 2 * ((width - ow * height / oh) / 2);
  }
  return {height, width};
}

namespace {

int64_t feature_tokens(Resolution image, const std::vector<Resolution>& pinpoints, int64_t tile,
                       int64_t side) {
  const auto [rows, cols] = anyres_grid_shape(image, pinpoints, tile);
  const auto [height, width] = anyres_unpadded(image, {side * rows, side * cols});
  return height * width + height + side * side;
}

}  // namespace

int64_t anyres_image_tokens(Resolution image, const std::vector<Resolution>& pinpoints,
                            int64_t tile, int64_t patch, int64_t extra) {
  return feature_tokens(image, pinpoints, tile, tile / patch) + extra;
}

std::vector<Resolution> anyres_pinpoints(const AnyResConfig& config, int64_t tile) {
  std::vector<Resolution> out;
  for (const auto& p : config.grid_pinpoints)
    if (p.size() == 2) out.emplace_back(p[0], p[1]);
  for (int64_t rows = 1; rows <= config.max_tiles; ++rows)
    for (int64_t cols = 1; rows * cols <= config.max_tiles; ++cols)
      out.emplace_back(rows * tile, cols * tile);
  return out;
}

int64_t ImageTokens::side() const {
  return static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(per_image))));
}

int64_t ImageTokens::of_image(Resolution size) const {
  if (!anyres()) return per_image;
  return feature_tokens(size, pinpoints, tile, side());
}

int64_t ImageTokens::crops(Resolution size) const {
  if (!anyres()) return 1;
  const auto [rows, cols] = anyres_grid_shape(size, pinpoints, tile);
  return 1 + rows * cols;
}

std::string anyres_side_problem(int64_t q) {
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(q))));
  if (q > 0 && side * side == q) return "";
  return "AnyRes puts each tile's tokens back on a square grid; the connector gives " +
         std::to_string(q) + " tokens per image";
}

}  // namespace mllm
