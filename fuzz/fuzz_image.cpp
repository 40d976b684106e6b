// Fuzz target: image decoding through the training transform (src/data/image_transform.h). The
// first input byte chooses the transform: aspect {pad, crop, resize}[b % 3], size 1 + (b / 3) % 64;
// the rest is the image file (any format OpenCV decodes). An image that decodes must be 8-bit BGR
// and come out of the transform as a finite (3, size, size) tensor.
#include <opencv2/core.hpp>

#include "data/image_transform.h"
#include "fuzz_common.h"

using namespace mllm;

namespace {

constexpr double kMaxPixels = double(1 << 24);

// The largest image the transform reads or makes on its way to S x S: the decoded image, the
// padded square (pad), or the image resized with its shortest side at S (crop).
double transform_pixels(int w, int h, int64_t S, const std::string& aspect) {
  const double side = std::max(w, h), shortest = std::min(w, h), decoded = double(w) * h;
  if (aspect == "pad") return std::max(decoded, side * side);
  if (aspect == "crop") return std::max(decoded, double(S) * double(S) * side / shortest);
  return decoded;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init("image");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* const kAspects[] = {"pad", "crop", "resize"};
  ImageConfig config;
  config.aspect = kAspects[data[0] % 3];
  const int64_t S = 1 + (data[0] / 3) % 64;
  const auto path = fuzz::write_scratch("image", data + 1, size - 1);
  fuzz::read([&] {
    try {
      const cv::Mat img = ImageTransform::decode(path);
      fuzz::check(img.type() == CV_8UC3 && !img.empty(), "decode: not a non-empty 8-bit BGR image");
      // known, being fixed on main: huge sizes reaching the allocator. A thin image (1 x 100000)
      // padded to a square, or resized with its aspect kept, asks for gigabytes; a 1056 x 64288
      // JPEG takes the resampler past the timeout under the sanitizers.
      if (transform_pixels(img.cols, img.rows, S, config.aspect) > kMaxPixels)
        return fuzz::known("huge image for the transform (over 2^24 pixels decoded or made)");
      const torch::Tensor x = ImageTransform(S, config)(img);
      fuzz::check(x.sizes() == torch::IntArrayRef({3, S, S}), "transform: wrong shape");
      fuzz::check(x.isfinite().all().item<bool>(), "transform: a value is not finite");
    }
    // known, being fixed on main: OpenCV's exceptions escaping the reader, and huge sizes reaching
    // the allocator (LibTorch's allocator failing under scripts/fuzz's cap on ASan allocations).
    catch (const cv::Exception&) {
      fuzz::known("cv::Exception");
    } catch (const c10::Error& e) {
      if (std::string(e.what()).find("can't allocate memory") == std::string::npos) throw;
      fuzz::known("c10::Error (allocation failed)");
    }
  });
  return 0;
}
