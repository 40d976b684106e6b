// Image preprocessing with OpenCV, matching LLaVA's: decode, pad to a square with the mean colour
// (LLaVA's expand2square) or resize directly, resize to `size` (bicubic), scale to [0,1],
// normalize with mean/std, HWC BGR -> CHW RGB.
#pragma once

#include <filesystem>

#include <torch/torch.h>
#include <opencv2/core.hpp>

#include "core/config.h"

namespace mllm {

class ImageTransform {
 public:
  ImageTransform(int64_t size, const ImageConfig& config);
  // BGR 8-bit image -> (3,S,S) float tensor.
  torch::Tensor operator()(const cv::Mat& bgr) const;
  // Reads and transforms an image file; throws Error("<path>: cannot decode image") on failure.
  torch::Tensor load(const std::filesystem::path& path) const;
  int64_t size() const { return size_; }

 private:
  int64_t size_;
  ImageConfig config_;
};

}  // namespace mllm
