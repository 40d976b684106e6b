#include "data/image_transform.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/error.h"

namespace mllm {

ImageTransform::ImageTransform(int64_t size, const ImageConfig& config)
    : size_(size), config_(config) {}

torch::Tensor ImageTransform::operator()(const cv::Mat& bgr) const {
  cv::Mat img = bgr;
  if (config_.aspect == "pad" && img.cols != img.rows) {
    // expand2square: centre the image on a square canvas filled with the mean colour.
    const int side = std::max(img.cols, img.rows);
    const cv::Scalar fill(config_.mean[2] * 255, config_.mean[1] * 255, config_.mean[0] * 255);
    cv::Mat square(side, side, img.type(), fill);
    img.copyTo(square(cv::Rect((side - img.cols) / 2, (side - img.rows) / 2, img.cols, img.rows)));
    img = square;
  }
  if (img.cols != size_ || img.rows != size_) {
    cv::Mat resized;
    cv::resize(img, resized, cv::Size(static_cast<int>(size_), static_cast<int>(size_)), 0, 0,
               cv::INTER_CUBIC);
    img = resized;
  }
  cv::Mat rgb;
  cv::cvtColor(img, rgb, cv::COLOR_BGR2RGB);
  auto t = torch::from_blob(rgb.data, {size_, size_, 3}, torch::kUInt8).clone();  // (S,S,3)
  auto x = t.permute({2, 0, 1}).to(torch::kFloat).div_(255.0);
  auto mean = torch::tensor(config_.mean, torch::kDouble).to(torch::kFloat).view({3, 1, 1});
  auto std = torch::tensor(config_.std, torch::kDouble).to(torch::kFloat).view({3, 1, 1});
  return (x - mean) / std;
}

torch::Tensor ImageTransform::load(const std::filesystem::path& path) const {
  if (!std::filesystem::exists(path)) throw Error(path.string() + ": image not found");
  cv::Mat img = cv::imread(path.string(), cv::IMREAD_COLOR);
  if (img.empty())
    throw Error(path.string() + ": cannot decode image (corrupt or unsupported format)");
  return (*this)(img);
}

}  // namespace mllm
