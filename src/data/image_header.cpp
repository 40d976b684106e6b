#include "data/image_header.h"

#include <cctype>
#include <fstream>

#include "core/error.h"
#include "core/fs.h"

namespace mllm {

namespace {

using uchar = unsigned char;

uint32_t be16(const std::string& b, size_t i) {
  return (uint32_t(uchar(b[i])) << 8) | uchar(b[i + 1]);
}
uint32_t be32(const std::string& b, size_t i) {
  return (be16(b, i) << 16) | be16(b, i + 2);
}
uint32_t le16(const std::string& b, size_t i) {
  return uint32_t(uchar(b[i])) | (uint32_t(uchar(b[i + 1])) << 8);
}
uint32_t le24(const std::string& b, size_t i) {
  return le16(b, i) | (uint32_t(uchar(b[i + 2])) << 16);
}
uint32_t le32(const std::string& b, size_t i) {
  return le16(b, i) | (le16(b, i + 2) << 16);
}

// PNM: "P1".."P6", then width and height in ASCII, with '#' comments between the fields.
std::optional<std::pair<int64_t, int64_t>> pnm_size(const std::string& b) {
  size_t i = 2;
  int64_t v[2] = {0, 0};
  for (int64_t& x : v) {
    while (i < b.size() && (std::isspace(uchar(b[i])) || b[i] == '#')) {
      if (b[i] == '#')
        while (i < b.size() && b[i] != '\n') ++i;
      else
        ++i;
    }
    if (i >= b.size() || !std::isdigit(uchar(b[i]))) return std::nullopt;
    for (; i < b.size() && std::isdigit(uchar(b[i])) && x < (int64_t{1} << 40); ++i)
      x = x * 10 + (b[i] - '0');
  }
  return std::make_pair(v[0], v[1]);
}

// TIFF (TIFF 6.0, sections 2 and 8): "II" (little-endian) or "MM" (big-endian), 42, the first
// IFD's offset; the IFD's entries (tag, type, count, value) hold ImageWidth (256) and ImageLength
// (257) as a SHORT or a LONG in the value field.
bool tiff_big_endian(const std::string& b) {
  return b[0] == 'M';
}
bool is_tiff(const std::string& b) {
  return b.size() >= 8 && (b.compare(0, 4, "II*\0", 4) == 0 || b.compare(0, 4, "MM\0*", 4) == 0);
}
uint32_t tiff16(const std::string& b, size_t i, bool be) {
  return be ? be16(b, i) : le16(b, i);
}
uint32_t tiff32(const std::string& b, size_t i, bool be) {
  return be ? be32(b, i) : le32(b, i);
}

// The sizes from the IFD at offset `ifd` of `b`; nullopt when it lies past `b` or lacks them.
std::optional<std::pair<int64_t, int64_t>> tiff_ifd_size(const std::string& b, size_t ifd,
                                                         bool be) {
  if (ifd + 2 > b.size()) return std::nullopt;
  const size_t entries = tiff16(b, ifd, be);
  int64_t w = -1, h = -1;
  for (size_t e = 0; e < entries; ++e) {
    const size_t at = ifd + 2 + 12 * e;
    if (at + 12 > b.size()) return std::nullopt;
    const uint32_t tag = tiff16(b, at, be), type = tiff16(b, at + 2, be);
    if ((tag != 256 && tag != 257) || tiff32(b, at + 4, be) < 1) continue;
    int64_t v = -1;
    if (type == 3) v = tiff16(b, at + 8, be);  // SHORT
    if (type == 4) v = tiff32(b, at + 8, be);  // LONG
    (tag == 256 ? w : h) = v;
  }
  if (w < 0 || h < 0) return std::nullopt;
  return std::make_pair(w, h);
}

}  // namespace

// Width and height from the header of a PNG, JPEG, WebP, BMP, PNM or TIFF file, read before
// decoding so that a header claiming a huge image is refused before anything is allocated for it
// (as PIL checks Image.size on open). Other formats, or a header it cannot follow: nullopt (they
// are checked after decoding). Layouts: PNG's IHDR; JPEG's SOFn segment (ITU T.81 B.2.2); WebP's
// VP8 / VP8L / VP8X chunks (RFC 9649); BMP's BITMAPINFOHEADER / BITMAPCOREHEADER; Netpbm's header;
// TIFF's first IFD, when it lies within `b`.
std::optional<std::pair<int64_t, int64_t>> image_header_size(const std::string& b) {
  const size_t n = b.size();
  if (n >= 24 && b.compare(0, 8, "\x89PNG\r\n\x1a\n", 8) == 0 && b.compare(12, 4, "IHDR") == 0)
    return std::make_pair<int64_t, int64_t>(be32(b, 16), be32(b, 20));
  if (n >= 4 && uchar(b[0]) == 0xFF && uchar(b[1]) == 0xD8) {
    for (size_t i = 2; i + 4 <= n;) {
      if (uchar(b[i]) != 0xFF) return std::nullopt;
      const unsigned char m = uchar(b[i + 1]);
      if (m == 0xFF) {  // fill byte
        ++i;
        continue;
      }
      if (m == 0x01 || (m >= 0xD0 && m <= 0xD8)) {  // markers without a segment
        i += 2;
        continue;
      }
      if (m == 0xDA || m == 0xD9) return std::nullopt;  // scan data before any frame header
      const size_t len = be16(b, i + 2);
      const bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
      if (sof && len >= 7 && i + 9 <= n)
        return std::make_pair<int64_t, int64_t>(be16(b, i + 7), be16(b, i + 5));
      if (len < 2) return std::nullopt;
      i += 2 + len;
    }
    return std::nullopt;
  }
  if (n >= 30 && b.compare(0, 4, "RIFF") == 0 && b.compare(8, 4, "WEBP") == 0) {
    const std::string chunk = b.substr(12, 4);
    if (chunk == "VP8 " && uchar(b[23]) == 0x9D && uchar(b[24]) == 0x01 && uchar(b[25]) == 0x2A)
      return std::make_pair<int64_t, int64_t>(le16(b, 26) & 0x3FFF, le16(b, 28) & 0x3FFF);
    if (chunk == "VP8L" && uchar(b[20]) == 0x2F) {
      const uint32_t bits = le32(b, 21);
      return std::make_pair<int64_t, int64_t>((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1);
    }
    if (chunk == "VP8X") return std::make_pair<int64_t, int64_t>(le24(b, 24) + 1, le24(b, 27) + 1);
    return std::nullopt;
  }
  if (n >= 26 && b[0] == 'B' && b[1] == 'M') {
    const uint32_t header = le32(b, 14);
    if (header == 12) return std::make_pair<int64_t, int64_t>(le16(b, 18), le16(b, 20));
    const auto w = static_cast<int32_t>(le32(b, 18)), h = static_cast<int32_t>(le32(b, 22));
    return std::make_pair<int64_t, int64_t>(std::abs(int64_t{w}), std::abs(int64_t{h}));
  }
  if (n >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6') return pnm_size(b);
  if (is_tiff(b)) {
    const bool be = tiff_big_endian(b);
    return tiff_ifd_size(b, tiff32(b, 4, be), be);
  }
  return std::nullopt;
}

Resolution image_file_size(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path)) throw Error(path.string() + ": image not found");
  // A header is near the start (a JPEG's SOF after its EXIF segments, at most 64 KiB each).
  const std::string head = read_file_prefix(path, 1 << 20);
  if (const auto wh = image_header_size(head)) return {wh->second, wh->first};
  if (is_tiff(head)) {  // a TIFF's IFD may follow its image data: read it where it is
    const bool be = tiff_big_endian(head);
    const uint64_t ifd = tiff32(head, 4, be);
    std::ifstream f(path, std::ios::binary);
    std::string count(2, '\0'), entries;
    if (f.seekg(static_cast<std::streamoff>(ifd)) && f.read(count.data(), 2)) {
      entries.resize(12 * size_t{tiff16(count, 0, be)});
      if (f.read(entries.data(), static_cast<std::streamsize>(entries.size())))
        if (const auto wh = tiff_ifd_size(count + entries, 0, be)) return {wh->second, wh->first};
    }
  }
  throw Error(path.string() +
              ": cannot read the image's size from its header (PNG, JPEG, WebP, BMP, PNM or TIFF; "
              "AnyRes counts its tokens by it)");
}

}  // namespace mllm
