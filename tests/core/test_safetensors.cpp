// Specification of src/core/safetensors: round trips, the exact byte layout of the reference format
// (https://github.com/huggingface/safetensors#format), files built by hand byte by byte, and one
// error per kind of corruption. Every file lives in a fresh temporary directory.
#include "core/safetensors.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/fs.h"

using namespace mllm;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("mllm_test_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string u64le(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a header string and raw data bytes, with no padding (as other writers
// may produce).
std::string st_bytes(const std::string& header, const std::string& data) {
  return u64le(header.size()) + header + data;
}

void write_raw(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s += static_cast<char>(x);
  return s;
}

// The message of the Error that opening `path` throws, or "<no error>".
std::string open_error(const fs::path& path) {
  try {
    SafetensorsFile f(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("safetensors round trip preserves names, order, dtypes, shapes, values and metadata") {
  TempDir dir;
  const fs::path p = dir.path / "model.safetensors";
  at::manual_seed(0);
  const NamedTensors in = {
      {"z.weight", at::randn({3, 4})},
      {"b.bf16", at::randn({5}).to(at::kBFloat16)},
      {"h.f16", at::randn({2, 2}).to(at::kHalf)},
      {"ids", at::arange(-3, 3, at::kLong)},
      {"mask", at::tensor({1, 0, 1}, at::kInt).to(at::kBool)},
      {"pixels", at::arange(0, 256, at::kInt).to(at::kByte).reshape({16, 16})},
      {"scalar", at::scalar_tensor(3.5)},
      {"empty", at::zeros({0, 3})},
      {"also_empty", at::zeros({0}, at::kLong)},
      {"transposed", at::arange(6, at::kFloat).reshape({2, 3}).t()},
      {"f64", at::randn({2}, at::kDouble)},
      {"i32", at::tensor({-7, 1 << 30}, at::kInt)},
      {"i16", at::tensor({-300, 300}, at::kInt).to(at::kShort)},
      {"i8", at::tensor({-128, 127}, at::kInt).to(at::kChar)},
  };
  REQUIRE_FALSE(in[9].second.is_contiguous());
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"step", "1200"}};
  save_safetensors(p, in, meta);

  const std::vector<std::string> dtypes = {"F32", "BF16", "F16", "I64", "BOOL", "U8",  "F32",
                                           "F32", "I64",  "F32", "F64", "I32",  "I16", "I8"};
  const SafetensorsFile f(p);
  REQUIRE(f.names().size() == in.size());
  CHECK(f.metadata() == meta);
  for (size_t i = 0; i < in.size(); ++i) {
    const auto& [name, t] = in[i];
    INFO(name);
    CHECK(f.names()[i] == name);
    CHECK(f.contains(name));
    CHECK(f.dtype(name) == dtypes[i]);
    CHECK(f.shape(name) == t.sizes().vec());
    const at::Tensor got = f.get(name);
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(got.sizes() == t.sizes());
    CHECK(at::equal(got, t));
  }
  const NamedTensors loaded = load_safetensors(p);
  REQUIRE(loaded.size() == in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    CHECK(loaded[i].first == in[i].first);
    CHECK(at::equal(loaded[i].second, in[i].second));
  }
  CHECK_FALSE(f.contains("nope"));
}

TEST_CASE("safetensors writer produces the reference byte layout") {
  TempDir dir;
  const fs::path p = dir.path / "a.safetensors";
  const std::string f32_1_2 = bytes({0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40});

  save_safetensors(p, {{"a", at::tensor({1.0f, 2.0f})}});
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 54);
  header += "  ";  // padded to 56, a multiple of 8
  CHECK(read_file(p) == u64le(56) + header + f32_1_2);

  save_safetensors(p, {{"a", at::tensor({1.0f, 2.0f})}}, {{"format", "pt"}});
  header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 85);
  header += "   ";  // padded to 88
  CHECK(read_file(p) == u64le(88) + header + f32_1_2);
  CHECK_FALSE(fs::exists(dir.path / ("a.safetensors.tmp." + std::to_string(::getpid()))));
}

TEST_CASE("safetensors reader parses a hand-built file with metadata") {
  TempDir dir;
  const fs::path p = dir.path / "hand.safetensors";
  // JSON order differs from data order; the header is unpadded so the data is misaligned.
  const std::string header = R"({"__metadata__":{"format":"pt","step":"10"},)"
                             R"("bias":{"dtype":"I32","shape":[3],"data_offsets":[16,28]},)"
                             R"("weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                             R"("half":{"dtype":"BF16","shape":[2],"data_offsets":[28,32]}})";
  const std::string data =
      bytes({0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0,              // 1.0, -2.0
             0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x40, 0x40}) +           // 0.5, 3.0
      bytes({0x07, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x00, 0x01, 0, 0}) +  // 7, -1, 256
      bytes({0x80, 0x3f, 0x00, 0xc0});                                    // bf16 1.0, -2.0
  write_raw(p, st_bytes(header, data));

  const SafetensorsFile f(p);
  CHECK(f.names() == std::vector<std::string>{"weight", "bias", "half"});
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"step", "10"}});
  CHECK(f.path() == p);
  CHECK(f.dtype("bias") == "I32");
  CHECK(f.shape("weight") == std::vector<int64_t>{2, 2});
  CHECK(at::equal(f.get("weight"), at::tensor({1.0f, -2.0f, 0.5f, 3.0f}).reshape({2, 2})));
  CHECK(at::equal(f.get("bias"), at::tensor({7, -1, 256}, at::kInt)));
  CHECK(at::equal(f.get("half"), at::tensor({1.0f, -2.0f}).to(at::kBFloat16)));

  write_raw(p, st_bytes("{}", ""));  // an empty file is valid
  CHECK(SafetensorsFile(p).names().empty());
  CHECK(load_safetensors(p).empty());
}

TEST_CASE("safetensors reader rejects each kind of malformed file with the path and the cause") {
  TempDir dir;
  const fs::path p = dir.path / "bad.safetensors";
  const auto entry = [](const std::string& body) { return R"({"a":{)" + body + "}}"; };
  const std::string ok = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  const std::string data8(8, '\0');
  write_raw(p, st_bytes(entry(ok), data8));
  REQUIRE(open_error(p) == "<no error>");  // the base of most cases below is valid

  struct Case {
    const char* what;
    std::string file;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {"shorter than 8 bytes", "abcd", {"too short"}},
      {"header longer than file", u64le(1000) + "{}", {"header length", "file size"}},
      {"header over the cap", u64le(200'000'000) + std::string(8, ' '), {"header length", "cap"}},
      {"header not JSON", st_bytes(R"({"a":)", ""), {"header", "JSON"}},
      {"header not an object", st_bytes("[1,2]", ""), {"header", "object"}},
      {"entry not an object", st_bytes(R"({"a":3})", ""), {"'a'", "object"}},
      {"missing dtype", st_bytes(entry(R"("shape":[2],"data_offsets":[0,8])"), data8), {"dtype"}},
      {"missing shape", st_bytes(entry(R"("dtype":"F32","data_offsets":[0,8])"), data8), {"shape"}},
      {"missing data_offsets",
       st_bytes(entry(R"("dtype":"F32","shape":[2])"), data8),
       {"missing", "data_offsets"}},
      {"dtype not a string",
       st_bytes(entry(R"("dtype":4,"shape":[2],"data_offsets":[0,8])"), data8),
       {"dtype"}},
      {"shape not an array",
       st_bytes(entry(R"("dtype":"F32","shape":"2","data_offsets":[0,8])"), data8),
       {"shape"}},
      {"shape of floats",
       st_bytes(entry(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), data8),
       {"shape"}},
      {"data_offsets of one",
       st_bytes(entry(R"("dtype":"F32","shape":[2],"data_offsets":[8])"), data8),
       {"data_offsets"}},
      {"negative data_offsets",
       st_bytes(entry(R"("dtype":"F32","shape":[2],"data_offsets":[-8,0])"), data8),
       {"data_offsets"}},
      {"unknown dtype",
       st_bytes(entry(R"("dtype":"C64","shape":[1],"data_offsets":[0,8])"), data8),
       {"dtype", "C64"}},
      {"negative dim",
       st_bytes(entry(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), data8),
       {"shape", "negative"}},
      {"begin > end",
       st_bytes(entry(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"), data8),
       {"data_offsets", "begin > end"}},
      {"end beyond data",
       st_bytes(entry(R"("dtype":"F32","shape":[4],"data_offsets":[0,16])"), data8),
       {"data_offsets", "beyond"}},
      {"size mismatch",
       st_bytes(entry(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), data8),
       {"data_offsets", "needs 12"}},
      {"size overflow",
       st_bytes(entry(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8])"),
                data8),
       {"data_offsets", "2^64"}},
      {"overlap",
       st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                std::string(12, '\0')),
       {"'a'", "'b'", "overlap"}},
      {"metadata value not a string",
       st_bytes(R"({"__metadata__":{"step":10},)" + entry(ok).substr(1), data8),
       {"__metadata__", "step"}},
      {"metadata not an object", st_bytes(R"({"__metadata__":["x"]})", ""), {"__metadata__"}},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    write_raw(p, c.file);
    const std::string msg = open_error(p);
    CHECK_THAT(msg, StartsWith(p.string() + ": "));
    for (const std::string& w : c.words) CHECK_THAT(msg, Contains(w));
  }

  const fs::path missing = dir.path / "missing.safetensors";
  CHECK(open_error(missing) == missing.string() + ": cannot open (No such file or directory)");
  CHECK_THROWS_WITH(load_safetensors(missing), StartsWith(missing.string()));
}

TEST_CASE("safetensors get() names a missing tensor, and tensors outlive the file object") {
  TempDir dir;
  const fs::path p = dir.path / "m.safetensors";
  const at::Tensor x = at::arange(10, at::kFloat);
  save_safetensors(p, {{"x", x}});
  at::Tensor view;
  {
    const SafetensorsFile f(p);
    CHECK_THROWS_WITH(f.get("y"), StartsWith(p.string()) && Contains("'y'"));
    CHECK_THROWS_AS(f.shape("y"), Error);
    view = f.get("x");
    CHECK(view.data_ptr() == f.get("x").data_ptr());  // zero copy: both views of the mapping
  }
  fs::remove(p);  // the mapping survives both the object and the directory entry
  CHECK(at::equal(view, x));
  CHECK(at::equal(view.clone().add_(1), x + 1));
}

TEST_CASE("safetensors save rejects duplicate and reserved names without writing a file") {
  TempDir dir;
  const fs::path p = dir.path / "dup.safetensors";
  CHECK_THROWS_WITH(save_safetensors(p, {{"w", at::ones({2})}, {"w", at::zeros({2})}}),
                    StartsWith(p.string()) && Contains("duplicate") && Contains("'w'"));
  CHECK_THROWS_AS(save_safetensors(p, {{"__metadata__", at::ones({2})}}), Error);
  CHECK_THROWS_AS(save_safetensors(p, {{"c", at::ones({2}, at::kComplexFloat)}}), Error);
  CHECK_FALSE(fs::exists(p));
  CHECK(fs::is_empty(dir.path));
}
