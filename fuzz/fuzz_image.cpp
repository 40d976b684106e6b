// Fuzz target: image decoding through the training transform (src/data/image_transform.h). The
// first input byte chooses the transform: aspect {pad, crop, resize}[b % 3], size 1 + (b / 3) % 64;
// the rest is the image file (any format OpenCV decodes). An image that decodes must be 8-bit BGR
// and come out of the transform as a finite (3, size, size) tensor.
#include <opencv2/core.hpp>

#include "data/image_transform.h"
#include "fuzz_common.h"

using namespace mllm;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init("image");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* const kAspects[] = {"pad", "crop", "resize"};
  ImageConfig config;
  config.aspect = kAspects[data[0] % 3];
  // Images over 2^24 pixels, decoded or on the way to S x S, are refused (data.image.max_pixels),
  // which keeps an execution within the timeout under the sanitizers.
  config.max_pixels = int64_t{1} << 24;
  const int64_t S = 1 + (data[0] / 3) % 64;
  const auto path = fuzz::write_scratch("image", data + 1, size - 1);
  fuzz::read([&] {
    const cv::Mat img = ImageTransform::decode(path, config.max_pixels);
    fuzz::check(img.type() == CV_8UC3 && !img.empty(), "decode: not a non-empty 8-bit BGR image");
    const torch::Tensor x = ImageTransform(config, S)(img);
    fuzz::check(x.sizes() == torch::IntArrayRef({3, S, S}), "transform: wrong shape");
    fuzz::check(x.isfinite().all().item<bool>(), "transform: a value is not finite");
  });
  return 0;
}
