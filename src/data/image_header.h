// Image sizes read from file headers, without decoding and without OpenCV or LibTorch (the dataset
// readers count AnyRes tokens with them at load; the image transform refuses oversized images
// with them before decoding).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include "core/anyres.h"

namespace mllm {

// Width and height read from a PNG, JPEG, WebP, BMP, PNM or TIFF header without decoding; nullopt
// for other formats or a header it cannot follow.
std::optional<std::pair<int64_t, int64_t>> image_header_size(const std::string& bytes);

// (height, width) of an image file from its header. Throws Error naming the file when it is
// missing or its header is not one image_header_size reads (AnyRes counts tokens by it).
Resolution image_file_size(const std::filesystem::path& path);

}  // namespace mllm
