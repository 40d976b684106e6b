// Image preprocessing against the reference (torchvision's CLIP preprocessing on PIL images, run by
// tests/reference/image_reference.py with Debian's python3) on real photographs shipped by Debian's
// python3-skimage.
#include <catch2/catch.hpp>

#include <cstdio>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "data/image_transform.h"
#include "test_util.h"

using namespace mllm;
using mllm::test::TempDir;

namespace {

const std::filesystem::path kImages = "/usr/lib/python3/dist-packages/skimage/data";

torch::Tensor reference(const std::filesystem::path& image, int size, const std::string& aspect,
                        const TempDir& dir) {
  const auto out = dir / "ref.bin";
  const std::string cmd = "/usr/bin/python3 " + std::string(MLLM_SOURCE_DIR) +
                          "/tests/reference/image_reference.py " + image.string() + " " +
                          std::to_string(size) + " " + aspect + " " + out.string() + " 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO("reference failed: " << cmd
                            << " (scripts/setup installs python3-torchvision and python3-skimage)");
  REQUIRE(rc == 0);
  const std::string bytes = test::read_text(out);
  REQUIRE(bytes.size() == static_cast<size_t>(3 * size * size) * sizeof(float));
  return torch::from_blob(const_cast<char*>(bytes.data()), {3, size, size}, torch::kFloat).clone();
}

// Back to [0,1] pixel units, where "1/255 per pixel" is measured.
torch::Tensor to_pixels(const torch::Tensor& x, const ImageConfig& c) {
  auto mean = torch::tensor(c.mean, torch::kDouble).to(torch::kFloat).view({3, 1, 1});
  auto std = torch::tensor(c.std, torch::kDouble).to(torch::kFloat).view({3, 1, 1});
  return x * std + mean;
}

}  // namespace

TEST_CASE(
    "image parity: CLIP preprocessing matches torchvision within 1/255 per pixel on average") {
  REQUIRE(std::filesystem::exists(kImages / "astronaut.png"));
  TempDir dir;
  struct Case {
    const char* file;
    int size;
    const char* aspect;
  };
  for (const Case& c :
       {Case{"astronaut.png", 224, "crop"}, Case{"chelsea.png", 224, "crop"},
        Case{"coffee.png", 336, "pad"}, Case{"chelsea.png", 336, "pad"},
        Case{"coffee.png", 224, "resize"}, Case{"camera.png", 224, "crop"},
        Case{"hubble_deep_field.jpg", 224, "crop"}, Case{"astronaut.png", 600, "crop"}}) {
    ImageConfig ic;
    ic.aspect = c.aspect;
    ImageTransform t(ic, c.size);
    const auto ours = t.load(kImages / c.file);
    const auto ref = reference(kImages / c.file, c.size, c.aspect, dir);
    const auto diff = (to_pixels(ours, ic) - to_pixels(ref, ic)).abs();
    const double mean = diff.mean().item<double>(), max = diff.max().item<double>();
    INFO(c.file << " " << c.size << " " << c.aspect << ": mean |diff| " << mean * 255
                << "/255, max " << max * 255 << "/255");
    CHECK(ours.sizes() == ref.sizes());
    CHECK(mean < 1.0 / 255);
  }
}

TEST_CASE(
    "image decode: grayscale becomes 3 equal channels, alpha is dropped, truncated JPEG refused") {
  const cv::Mat gray = ImageTransform::decode(kImages / "camera.png");
  REQUIRE(gray.channels() == 3);
  cv::Mat ch[3];
  cv::split(gray, ch);
  CHECK(cv::countNonZero(ch[0] != ch[2]) == 0);

  TempDir dir;
  cv::Mat rgba(4, 4, CV_8UC4, cv::Scalar(10, 20, 30, 0));  // fully transparent
  cv::imwrite((dir / "a.png").string(), rgba);
  const cv::Mat bgr = ImageTransform::decode(dir / "a.png");
  REQUIRE(bgr.channels() == 3);
  CHECK(bgr.at<cv::Vec3b>(0, 0) == cv::Vec3b(10, 20, 30));  // PIL's convert("RGB") keeps the colour

  CHECK_THROWS_WITH(ImageTransform::decode(kImages / "truncated.jpg"),
                    Catch::Contains("truncated.jpg: cannot decode"));

  // WebP (lossless, so the pixels must come back exactly).
  cv::Mat img(6, 8, CV_8UC3, cv::Scalar(1, 2, 3));
  img.at<cv::Vec3b>(2, 5) = cv::Vec3b(200, 150, 100);
  REQUIRE(cv::imwrite((dir / "x.webp").string(), img, {cv::IMWRITE_WEBP_QUALITY, 101}));
  const cv::Mat webp = ImageTransform::decode(dir / "x.webp");
  CHECK(cv::countNonZero(webp.reshape(1) != img.reshape(1)) == 0);
}

TEST_CASE("resize_bicubic_pil: a constant image stays constant; identity size is a copy") {
  cv::Mat flat(37, 53, CV_8UC3, cv::Scalar(200, 100, 7));
  const cv::Mat small = resize_bicubic_pil(flat, 11, 9);
  const cv::Mat expected(9, 11, CV_8UC3, cv::Scalar(200, 100, 7));
  CHECK(cv::countNonZero(small.reshape(1) != expected.reshape(1)) == 0);
  const cv::Mat big = resize_bicubic_pil(flat, 120, 80);
  CHECK(big.at<cv::Vec3b>(40, 60) == cv::Vec3b(200, 100, 7));
}

TEST_CASE(
    "data.image.max_pixels: an image over it, decoded or on its way to the square, is refused") {
  TempDir dir;
  cv::Mat strip(2, 300, CV_8UC3, cv::Scalar(9, 9, 9));  // 600 pixels; padded: 300 x 300
  REQUIRE(cv::imwrite((dir / "strip.png").string(), strip));
  CHECK(ImageTransform::decode(dir / "strip.png", 600).cols == 300);
  CHECK_THROWS_WITH(ImageTransform::decode(dir / "strip.png", 599),
                    Catch::Contains("strip.png: cannot decode image (its header says 300x2, over "
                                    "data.image.max_pixels = 599)"));
  REQUIRE(cv::imwrite((dir / "strip.tiff").string(), strip));
  CHECK_THROWS_WITH(ImageTransform::decode(dir / "strip.tiff", 599),
                    Catch::Contains("strip.tiff: cannot decode image (its header says 300x2"));
  // A format whose header is not read before decoding (Sun raster) is checked once decoded.
  REQUIRE(cv::imwrite((dir / "strip.ras").string(), strip));
  CHECK_THROWS_WITH(ImageTransform::decode(dir / "strip.ras", 599),
                    Catch::Contains("strip.ras: cannot decode image (300x2 is over "
                                    "data.image.max_pixels = 599)"));
  ImageConfig ic;
  ic.max_pixels = 90000;  // the 300 x 300 square fits
  CHECK(ImageTransform(ic, 8).load(dir / "strip.png").size(1) == 8);
  ic.max_pixels = 89999;
  CHECK_THROWS_WITH(ImageTransform(ic, 8).load(dir / "strip.png"),
                    Catch::Contains("strip.png: cannot transform image (300x2 would become 90000 "
                                    "pixels with aspect pad"));
  ic.aspect = "crop";  // shortest side 2 -> 8: 1200 x 8 = 9600 pixels
  ic.max_pixels = 9600;
  CHECK(ImageTransform(ic, 8).load(dir / "strip.png").size(2) == 8);
  ic.max_pixels = 9599;
  CHECK_THROWS(ImageTransform(ic, 8).load(dir / "strip.png"));
  ic.aspect = "resize";  // never larger than the image itself
  CHECK(ImageTransform(ic, 8).load(dir / "strip.png").size(2) == 8);
  ic.max_pixels = 0;  // no limit
  ic.aspect = "pad";
  CHECK(ImageTransform(ic, 8).load(dir / "strip.png").size(2) == 8);
}

TEST_CASE(
    "image_header_size: the size in PNG, JPEG, WebP, BMP, PNM and TIFF headers, before decoding") {
  TempDir dir;
  cv::Mat img(37, 53, CV_8UC3, cv::Scalar(1, 2, 3));
  struct Format {
    const char* file;
    std::vector<int> params;
  };
  for (const Format& f : std::vector<Format>{{"a.png", {}},
                                             {"a.jpg", {}},
                                             {"a.webp", {cv::IMWRITE_WEBP_QUALITY, 101}},
                                             {"lossy.webp", {cv::IMWRITE_WEBP_QUALITY, 50}},
                                             {"a.bmp", {}},
                                             {"a.ppm", {}},
                                             {"a.pgm", {}},
                                             {"a.tiff", {}},
                                             {"raw.tiff", {cv::IMWRITE_TIFF_COMPRESSION, 1}}}) {
    INFO(f.file);
    cv::Mat gray;
    cv::cvtColor(img, gray, cv::COLOR_BGR2GRAY);
    const bool is_gray = std::string(f.file) == "a.pgm";
    REQUIRE(cv::imwrite((dir / f.file).string(), is_gray ? gray : img, f.params));
    const auto wh = image_header_size(read_file(dir / f.file));
    REQUIRE(wh.has_value());
    CHECK(wh->first == 53);
    CHECK(wh->second == 37);
  }
  CHECK_FALSE(image_header_size("not an image").has_value());
  SECTION("TIFF: either byte order, SHORT or LONG sizes, the IFD wherever it lies") {
    // Written out by hand from TIFF 6.0's layout: header, then one IFD of two 12-byte entries.
    const auto tiff = [](bool be, uint16_t w_type, uint32_t w, uint16_t h_type, uint32_t h) {
      std::string b = be ? std::string("MM\0*", 4) : std::string("II*\0", 4);
      const auto put = [&](uint32_t v, int bytes) {
        for (int i = 0; i < bytes; ++i)
          b += static_cast<char>(be ? (v >> (8 * (bytes - 1 - i))) & 0xFF : (v >> (8 * i)) & 0xFF);
      };
      const auto value = [&](uint16_t type, uint32_t v) {  // left-justified in its 4 bytes
        if (type == 3)
          put(v, 2), put(0, 2);
        else
          put(v, 4);
      };
      put(8, 4);                                     // the IFD's offset
      put(3, 2);                                     // entries
      put(254, 2), put(4, 2), put(1, 4), put(0, 4);  // NewSubfileType, skipped
      put(256, 2), put(w_type, 2), put(1, 4), value(w_type, w);
      put(257, 2), put(h_type, 2), put(1, 4), value(h_type, h);
      return b;
    };
    for (const bool be : {false, true}) {
      INFO("big-endian " << be);
      const auto a = image_header_size(tiff(be, 3, 291, 4, 70000));
      REQUIRE(a.has_value());
      CHECK((a->first == 291 && a->second == 70000));
      const auto b = image_header_size(tiff(be, 4, 100000, 3, 7));
      REQUIRE(b.has_value());
      CHECK((b->first == 100000 && b->second == 7));
      CHECK_FALSE(image_header_size(tiff(be, 5, 1, 3, 7)).has_value());  // a RATIONAL width
      CHECK_FALSE(image_header_size(tiff(be, 3, 1, 3, 7).substr(0, 40)).has_value());  // cut
    }
    // OpenCV's uncompressed TIFF of 1.4 MB keeps its IFD after the pixels, past the 1 MiB that
    // image_file_size reads first: it reads the IFD where the header says.
    cv::Mat wide(600, 800, CV_8UC3, cv::Scalar(1, 2, 3));
    REQUIRE(cv::imwrite((dir / "wide.tiff").string(), wide, {cv::IMWRITE_TIFF_COMPRESSION, 1}));
    const std::string bytes = read_file(dir / "wide.tiff");
    REQUIRE(bytes.compare(0, 4, "II*\0", 4) == 0);
    const uint32_t ifd = uint32_t(uint8_t(bytes[4])) | uint32_t(uint8_t(bytes[5])) << 8 |
                         uint32_t(uint8_t(bytes[6])) << 16 | uint32_t(uint8_t(bytes[7])) << 24;
    REQUIRE(ifd > (1u << 20));
    CHECK_FALSE(image_header_size(bytes.substr(0, 1 << 20)).has_value());
    const auto size = image_file_size(dir / "wide.tiff");
    CHECK((size.first == 600 && size.second == 800));
  }
  // A 30000 x 30000 PNG header over a few bytes of data: refused before OpenCV allocates 2.7 GB.
  std::string png = read_file(dir / "a.png");
  const char big[8] = {0, 0, 0x75, 0x30, 0, 0, 0x75, 0x30};
  png.replace(16, 8, big, 8);
  test::write_text(dir / "big.png", png);
  CHECK_THROWS_WITH(ImageTransform::decode(dir / "big.png"),
                    Catch::Contains("big.png: cannot decode image (its header says 30000x30000, "
                                    "over data.image.max_pixels = 178956970)"));
  // Sides near 2^32 (a product past int64; found by fuzz_image): refused, not overflowed.
  const char huge[8] = {'\xf1', '\x00', '\x00', '\x15', '\xff', '\x00', '\x00', '\x00'};
  png.replace(16, 8, huge, 8);
  test::write_text(dir / "huge.png", png);
  CHECK_THROWS_WITH(ImageTransform::decode(dir / "huge.png"),
                    Catch::Contains("its header says 4043309077x4278190080"));
}

TEST_CASE("image parity: AnyRes tiles match LLaVA-NeXT's processor (PIL) within 1/255 per pixel") {
  TempDir dir;
  const std::vector<Resolution> pinpoints = {
      {64, 128}, {128, 64}, {128, 128}, {192, 64}, {64, 192}};
  const std::string json = "[[64,128],[128,64],[128,128],[192,64],[64,192]]";
  for (const char* file : {"chelsea.png", "coffee.png", "astronaut.png", "camera.png"}) {
    ImageConfig ic;
    ImageTransform t(ic, 64, pinpoints);
    REQUIRE(t.anyres());
    const auto size = image_file_size(kImages / file);
    const auto ours = t.load_anyres(kImages / file, size);
    const auto [rows, cols] = anyres_grid_shape(size, pinpoints, 64);
    REQUIRE(ours.sizes() == torch::IntArrayRef({1 + rows * cols, 3, 64, 64}));
    const auto out = dir / "anyres.bin";
    const std::string cmd = "/usr/bin/python3 " + std::string(MLLM_SOURCE_DIR) +
                            "/tests/reference/image_reference.py " + (kImages / file).string() +
                            " 64 anyres " + out.string() + " '" + json + "' 2>&1";
    REQUIRE(std::system(cmd.c_str()) == 0);
    const std::string bytes = test::read_text(out);
    REQUIRE(bytes.size() == static_cast<size_t>(ours.numel()) * sizeof(float));
    const auto ref =
        torch::from_blob(const_cast<char*>(bytes.data()), ours.sizes(), torch::kFloat).clone();
    for (int64_t k = 0; k < ours.size(0); ++k) {
      const auto diff = (to_pixels(ours[k], ic) - to_pixels(ref[k], ic)).abs();
      INFO(file << " crop " << k << ": mean |diff| " << diff.mean().item<double>() * 255
                << "/255, max " << diff.max().item<double>() * 255 << "/255");
      CHECK(diff.mean().item<double>() < 1.0 / 255);
    }
  }
  // The header's size is what the file decodes to; a file that decodes to another is named.
  CHECK_THROWS_WITH(
      ImageTransform(ImageConfig(), 64, pinpoints).load_anyres(kImages / "chelsea.png", {10, 10}),
      Catch::Contains("chelsea.png: its header says 10x10 but it decodes to 451x300"));
}
