#include "data/image_transform.h"

#include <opencv2/videoio.hpp>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <spdlog/fmt/fmt.h>

#include <cctype>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "core/error.h"
#include "core/fs.h"

namespace mllm {

namespace {

// PIL's bicubic kernel (a = -0.5).
double bicubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

struct Taps {
  std::vector<int> first;              // first input index per output index
  std::vector<std::vector<double>> w;  // normalised weights per output index
};

// Per-output-pixel taps along one axis, as PIL's precompute_coeffs.
Taps taps(int in, int out) {
  const double scale = static_cast<double>(in) / out;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  Taps t;
  for (int o = 0; o < out; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in);
    std::vector<double> w;
    double sum = 0;
    for (int x = lo; x < hi; ++x) {
      w.push_back(bicubic((x - center + 0.5) / filterscale));
      sum += w.back();
    }
    if (sum != 0)
      for (auto& v : w) v /= sum;
    t.first.push_back(lo);
    t.w.push_back(std::move(w));
  }
  return t;
}

uchar to_u8(double v) {
  return static_cast<uchar>(std::min(255.0, std::max(0.0, std::round(v))));
}

}  // namespace

cv::Mat resize_bicubic_pil(const cv::Mat& src, int out_w, int out_h) {
  CV_Assert(src.depth() == CV_8U);
  const int C = src.channels();
  // Horizontal pass, then vertical; each rounded to 8 bits like PIL.
  const Taps th = taps(src.cols, out_w);
  cv::Mat mid(src.rows, out_w, src.type());
  for (int y = 0; y < src.rows; ++y) {
    const uchar* in = src.ptr<uchar>(y);
    uchar* o = mid.ptr<uchar>(y);
    for (int x = 0; x < out_w; ++x)
      for (int c = 0; c < C; ++c) {
        double acc = 0;
        const auto& w = th.w[static_cast<size_t>(x)];
        for (size_t k = 0; k < w.size(); ++k)
          acc += w[k] * in[(th.first[static_cast<size_t>(x)] + static_cast<int>(k)) * C + c];
        o[x * C + c] = to_u8(acc);
      }
  }
  const Taps tv = taps(src.rows, out_h);
  cv::Mat dst(out_h, out_w, src.type());
  for (int y = 0; y < out_h; ++y) {
    uchar* o = dst.ptr<uchar>(y);
    const auto& w = tv.w[static_cast<size_t>(y)];
    for (int x = 0; x < out_w * C; ++x) {
      double acc = 0;
      for (size_t k = 0; k < w.size(); ++k)
        acc += w[k] * mid.ptr<uchar>(tv.first[static_cast<size_t>(y)] + static_cast<int>(k))[x];
      o[x] = to_u8(acc);
    }
  }
  return dst;
}

ImageTransform::ImageTransform(const ImageConfig& config, int64_t vision_image_size,
                               std::vector<Resolution> pinpoints)
    : size_(config.side(vision_image_size)), config_(config), pinpoints_(std::move(pinpoints)) {}

torch::Tensor ImageTransform::normalize(const cv::Mat& bgr) const {
  const int S = static_cast<int>(size_);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  auto t = torch::from_blob(rgb.data, {S, S, 3}, torch::kUInt8).clone();  // (S,S,3)
  auto x = t.permute({2, 0, 1}).to(torch::kFloat).div_(255.0);
  auto mean = torch::tensor(config_.mean, torch::kDouble).to(torch::kFloat).view({3, 1, 1});
  auto std = torch::tensor(config_.std, torch::kDouble).to(torch::kFloat).view({3, 1, 1});
  return ((x - mean) / std).contiguous();
}

// As transformers' LlavaNextImageProcessor (commit 81bb907c): select_best_resolution, then
// resize_for_patching (the side that limits the scale to the pinpoint exactly, the other
// ceil(side * scale), PIL bicubic) and _pad_for_patching (centred on black, the odd pixel after),
// divide_to_patches row by row; the base image is the whole image resized straight to S x S.
// Every crop is then S x S, so the processor's own resize and centre crop leave it as it is.
torch::Tensor ImageTransform::anyres(const cv::Mat& bgr) const {
  const int S = static_cast<int>(size_);
  const int64_t w = bgr.cols, h = bgr.rows;
  const auto [th, tw] = select_best_resolution({h, w}, pinpoints_);
  if (config_.max_pixels > 0 && std::max(h * w, th * tw) > config_.max_pixels)
    throw Error(
        fmt::format("cannot transform image ({}x{} at AnyRes {}x{}, over "
                    "data.image.max_pixels = {})",
                    w, h, tw, th, config_.max_pixels));
  const double scale_w = static_cast<double>(tw) / static_cast<double>(w);
  const double scale_h = static_cast<double>(th) / static_cast<double>(h);
  int64_t nw = tw, nh = th;
  if (scale_w < scale_h)
    nh = std::min(static_cast<int64_t>(std::ceil(static_cast<double>(h) * scale_w)), th);
  else
    nw = std::min(static_cast<int64_t>(std::ceil(static_cast<double>(w) * scale_h)), tw);
  const cv::Mat resized = nw == w && nh == h
                              ? bgr
                              : resize_bicubic_pil(bgr, static_cast<int>(nw), static_cast<int>(nh));
  cv::Mat canvas(static_cast<int>(th), static_cast<int>(tw), bgr.type(), cv::Scalar(0, 0, 0));
  resized.copyTo(canvas(cv::Rect(static_cast<int>((tw - nw) / 2), static_cast<int>((th - nh) / 2),
                                 static_cast<int>(nw), static_cast<int>(nh))));
  std::vector<torch::Tensor> crops;
  crops.push_back(normalize(w == S && h == S ? bgr : resize_bicubic_pil(bgr, S, S)));
  for (int y = 0; y + S <= th; y += S)
    for (int x = 0; x + S <= tw; x += S)
      crops.push_back(normalize(canvas(cv::Rect(x, y, S, S)).clone()));
  return torch::stack(crops);
}

torch::Tensor ImageTransform::operator()(const cv::Mat& bgr) const {
  const int S = static_cast<int>(size_);
  if (config_.max_pixels > 0) {
    // The largest image made on the way to S x S: the padded square, or the image with its
    // shortest side resized to S (a 1 x 100000 strip would become 10^10 pixels either way).
    const double w = bgr.cols, h = bgr.rows, side = std::max(w, h);
    double made = std::max(w * h, double(S) * S);
    if (config_.aspect == "pad") made = std::max(made, side * side);
    if (config_.aspect == "crop" && std::min(w, h) > 0)
      made = std::max(made, double(S) * S * side / std::min(w, h));
    if (made > static_cast<double>(config_.max_pixels))
      throw Error(fmt::format(
          "cannot transform image ({}x{} would become {:.0f} pixels with aspect {}, over "
          "data.image.max_pixels = {})",
          bgr.cols, bgr.rows, made, config_.aspect, config_.max_pixels));
  }
  cv::Mat img = bgr;
  if (config_.aspect == "pad" && img.cols != img.rows) {
    // expand2square: centre the image on a square canvas filled with the mean colour.
    const int side = std::max(img.cols, img.rows);
    auto m = [&](int c) { return static_cast<int>(config_.mean[static_cast<size_t>(c)] * 255); };
    cv::Mat square(side, side, img.type(), cv::Scalar(m(2), m(1), m(0)));
    img.copyTo(square(cv::Rect((side - img.cols) / 2, (side - img.rows) / 2, img.cols, img.rows)));
    img = square;
  }
  if (config_.aspect == "resize") {
    if (img.cols != S || img.rows != S) img = resize_bicubic_pil(img, S, S);
  } else {
    // Shortest side to S (torchvision Resize(int)), then centre crop (torchvision CenterCrop).
    const int w = img.cols, h = img.rows;
    if (std::min(w, h) != S) {
      const int nw = w <= h ? S : static_cast<int>(static_cast<int64_t>(S) * w / h);
      const int nh = w <= h ? static_cast<int>(static_cast<int64_t>(S) * h / w) : S;
      img = resize_bicubic_pil(img, nw, nh);
    }
    const int top = static_cast<int>(std::lround((img.rows - S) / 2.0));
    const int left = static_cast<int>(std::lround((img.cols - S) / 2.0));
    img = img(cv::Rect(left, top, S, S)).clone();
  }
  return normalize(img);
}

cv::Mat ImageTransform::decode(const std::filesystem::path& path, int64_t max_pixels) {
  if (!std::filesystem::exists(path)) throw Error(path.string() + ": image not found");
  const std::string bytes = read_file(path);
  // libjpeg decodes a truncated JPEG with a grey tail and only a warning; PIL refuses it. Refuse
  // too: a JPEG must end with the EOI marker (FF D9), give or take trailing padding.
  if (bytes.size() >= 2 && static_cast<uchar>(bytes[0]) == 0xFF &&
      static_cast<uchar>(bytes[1]) == 0xD8) {
    size_t end = bytes.size();
    while (end > 2 && bytes[end - 1] == '\0') --end;
    if (end < 4 || static_cast<uchar>(bytes[end - 2]) != 0xFF ||
        static_cast<uchar>(bytes[end - 1]) != 0xD9)
      throw Error(path.string() + ": cannot decode image (truncated JPEG)");
  }
  if (bytes.empty()) throw Error(path.string() + ": cannot decode image (empty file)");
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
    throw Error(path.string() + ": cannot decode image (over 2 GiB)");
  if (const auto wh = image_header_size(bytes);
      wh && max_pixels > 0 &&
      static_cast<double>(wh->first) * static_cast<double>(wh->second) >
          static_cast<double>(max_pixels))  // in double: 32-bit sides overflow an int64 product
    throw Error(path.string() + ": cannot decode image (its header says " +
                std::to_string(wh->first) + "x" + std::to_string(wh->second) +
                ", over data.image.max_pixels = " + std::to_string(max_pixels) + ")");
  const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
  cv::Mat img;
  try {
    // OpenCV asserts on what it cannot handle (a header claiming 100000x100000 pixels is over
    // its OPENCV_IO_MAX_IMAGE_PIXELS limit): a bad image like any other, named.
    img = cv::imdecode(buf, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    throw Error(path.string() + ": cannot decode image (" + e.err + ")");
  } catch (const std::bad_alloc&) {
    throw Error(path.string() + ": cannot decode image (its size does not fit in memory)");
  }
  if (img.empty())
    throw Error(path.string() + ": cannot decode image (corrupt or unsupported format)");
  if (max_pixels > 0 && static_cast<int64_t>(img.cols) * img.rows > max_pixels)
    throw Error(path.string() + ": cannot decode image (" + std::to_string(img.cols) + "x" +
                std::to_string(img.rows) +
                " is over data.image.max_pixels = " + std::to_string(max_pixels) + ")");
  if (img.depth() == CV_16U)
    img.convertTo(img, CV_8U, 1.0 / 257.0);
  else if (img.depth() != CV_8U)
    throw Error(path.string() + ": unsupported pixel depth");
  if (img.channels() == 1)
    cv::cvtColor(img, img, cv::COLOR_GRAY2BGR);
  else if (img.channels() == 4)
    cv::cvtColor(img, img, cv::COLOR_BGRA2BGR);
  else if (img.channels() != 3)
    throw Error(path.string() + ": unsupported channel count " + std::to_string(img.channels()));
  return img;
}

namespace {

// `transform(img)` for an image decoded from `path`, with whatever it throws named by the file.
template <class F>
torch::Tensor transformed(const std::filesystem::path& path, const cv::Mat& img, F&& transform) {
  try {
    return transform(img);
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  } catch (const cv::Exception& e) {
    throw Error(path.string() + ": cannot transform image " + std::to_string(img.cols) + "x" +
                std::to_string(img.rows) + " (" + e.err + ")");
  } catch (const std::bad_alloc&) {
    throw Error(path.string() + ": cannot transform image (out of memory)");
  }
}

}  // namespace

torch::Tensor ImageTransform::load(const std::filesystem::path& path) const {
  return transformed(path, decode(path, config_.max_pixels),
                     [this](const cv::Mat& img) { return (*this)(img); });
}

torch::Tensor ImageTransform::load_anyres(const std::filesystem::path& path,
                                          Resolution expect) const {
  const cv::Mat img = decode(path, config_.max_pixels);
  if (expect.first > 0 && (img.rows != expect.first || img.cols != expect.second))
    throw Error(path.string() + ": its header says " + std::to_string(expect.second) + "x" +
                std::to_string(expect.first) + " but it decodes to " + std::to_string(img.cols) +
                "x" + std::to_string(img.rows));
  return transformed(path, img, [this](const cv::Mat& m) { return anyres(m); });
}

torch::Tensor ImageTransform::load_video(const std::filesystem::path& path, int64_t frames) const {
  const std::string where = path.string() + ": cannot decode video";
  if (!std::filesystem::is_regular_file(path)) throw Error(path.string() + ": video not found");
  std::vector<cv::Mat> picked;
  try {
    // FFmpeg, else OpenCV's own MJPEG reader; not every backend OpenCV has (GStreamer, image
    // sequences), which log their own failures on a file that is not a video.
    cv::VideoCapture cap;
    for (const int api : {cv::CAP_FFMPEG, cv::CAP_OPENCV_MJPEG})
      if (cap.open(path.string(), api) && cap.isOpened()) break;
    if (!cap.isOpened()) throw Error(where + " (neither FFmpeg nor the MJPEG reader opens it)");
    auto n = static_cast<int64_t>(cap.get(cv::CAP_PROP_FRAME_COUNT));
    std::vector<cv::Mat> all;  // when the container does not say how many frames it has
    if (n <= 0) {
      for (cv::Mat f; cap.read(f);) all.push_back(f.clone());
      n = static_cast<int64_t>(all.size());
    }
    if (n <= 0) throw Error(where + " (no frames)");
    std::vector<int64_t> want;
    for (int64_t k = 0; k < frames; ++k)
      want.push_back(
          frames == 1 ? 0
                      : static_cast<int64_t>(static_cast<double>(n - 1) * static_cast<double>(k) /
                                             static_cast<double>(frames - 1)));
    if (!all.empty()) {
      for (int64_t w : want) picked.push_back(all[static_cast<size_t>(w)]);
    } else {
      // Frames in order: grab each, decode only those wanted (a frame may be wanted twice).
      cv::Mat frame;
      int64_t at = -1;
      for (int64_t w : want) {
        while (at < w) {
          if (!cap.grab())
            throw Error(where + " (frame " + std::to_string(at + 1) + " of the " +
                        std::to_string(n) + " it declares is unreadable)");
          ++at;
          if (at == w && !cap.retrieve(frame))
            throw Error(where + " (frame " + std::to_string(at) + " cannot be decoded)");
        }
        if (frame.empty()) throw Error(where + " (frame " + std::to_string(w) + " is empty)");
        picked.push_back(frame.clone());
      }
    }
  } catch (const cv::Exception& e) {
    throw Error(where + " (" + e.err + ")");
  }
  std::vector<torch::Tensor> out;
  for (auto& f : picked) {
    if (f.channels() == 4) cv::cvtColor(f, f, cv::COLOR_BGRA2BGR);
    if (f.channels() == 1) cv::cvtColor(f, f, cv::COLOR_GRAY2BGR);
    if (f.depth() != CV_8U || f.channels() != 3)
      throw Error(where + " (frames are not 8-bit colour images)");
    try {
      out.push_back((*this)(f));
    } catch (const cv::Exception& e) {
      throw Error(where + " (" + e.err + ")");
    }
  }
  return torch::stack(out);
}

}  // namespace mllm
