// Image preprocessing with OpenCV, matching the references users train with:
//   decode      any format OpenCV reads (PNG, JPEG, WebP, ...); grayscale -> 3 channels; alpha is
//               dropped (as PIL's Image.convert("RGB") does — no compositing); 16-bit -> 8-bit
//   aspect pad  LLaVA-1.5's expand2square: centre on a square of the mean colour (int(m*255)),
//               then as crop (a no-op crop once square)
//   aspect crop CLIP's: shortest side to `size` (bicubic, antialiased like PIL), centre crop
//   aspect resize  straight to size x size (bicubic, antialiased)
//   then /255, (x - mean) / std, HWC BGR -> CHW RGB float.
// The bicubic resampler follows PIL's Resample.c (separable, support scaled by the downscale
// factor, a = -0.5, each pass rounded to 8 bits), so outputs track torchvision's CLIP preprocessing
// (Resize(size, BICUBIC) + CenterCrop(size) on PIL images) within a fraction of 1/255.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include <torch/torch.h>
#include <opencv2/core.hpp>

#include "core/anyres.h"
#include "core/config.h"
#include "data/image_header.h"

namespace mllm {

// PIL-style antialiased bicubic resize of an 8-bit image (any channel count), out_w x out_h.
cv::Mat resize_bicubic_pil(const cv::Mat& src, int out_w, int out_h);

class ImageTransform {
 public:
  // Images of config.side(vision_image_size) pixels a side; with `pinpoints`, images (not video
  // frames) are cut AnyRes-style (core/anyres.h; model.vision.anyres).
  ImageTransform(const ImageConfig& config, int64_t vision_image_size,
                 std::vector<Resolution> pinpoints = {});
  // 8-bit BGR image -> (3,S,S) float tensor.
  torch::Tensor operator()(const cv::Mat& bgr) const;
  // AnyRes, as LLaVA-NeXT's processor: 8-bit BGR image -> (1 + rows*cols, 3, S, S), the image
  // resized straight to S x S first, then the tiles of its resize-and-pad to the best pinpoint,
  // row by row. data.image.aspect does not apply.
  torch::Tensor anyres(const cv::Mat& bgr) const;
  // Reads a file and cuts it AnyRes-style; `expect` (height, width), when given, is the size the
  // image was counted at when loaded (a file that decodes to another size is an Error).
  torch::Tensor load_anyres(const std::filesystem::path& path, Resolution expect = {0, 0}) const;
  bool anyres() const { return !pinpoints_.empty(); }
  // Reads and transforms an image file; throws Error("<path>: cannot decode image ...") on failure,
  // over config.max_pixels included.
  torch::Tensor load(const std::filesystem::path& path) const;
  // `frames` frames of a video file sampled uniformly (frame floor(k (n-1) / (frames-1)) of n, as
  // LLaVA-OneVision's np.linspace(0, n-1, frames)), each transformed: (frames,3,S,S). Decoded by
  // OpenCV's VideoCapture; a file it cannot open, with no frames, or a frame it cannot read throws
  // Error("<path>: cannot decode video ...").
  torch::Tensor load_video(const std::filesystem::path& path, int64_t frames) const;
  int64_t size() const { return size_; }

  // Decodes a file to 8-bit, 3-channel BGR with the conversions above; throws Error naming the
  // file, also when the image has over max_pixels pixels (0 = no limit; ImageConfig::max_pixels).
  static cv::Mat decode(const std::filesystem::path& path,
                        int64_t max_pixels = ImageConfig().max_pixels);

 private:
  torch::Tensor normalize(const cv::Mat& bgr) const;  // S x S BGR -> (3,S,S)

  int64_t size_;
  ImageConfig config_;
  std::vector<Resolution> pinpoints_;
};

}  // namespace mllm
