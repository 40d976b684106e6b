// safetensors reader and writer: header parsing and validation with nlohmann::json, a read-only
// mmap shared by every tensor handed out, and a streaming atomic writer.
// Spec: https://github.com/huggingface/safetensors#format
// The writer follows the reference implementation's layout: compact JSON with "__metadata__" first
// and each entry as {"dtype","shape","data_offsets"}, header padded with spaces to a multiple of 8
// bytes, data in the order given. Both sides assume a little-endian host, as the format does.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <tuple>

#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes little-endian");

namespace mllm {
namespace {

using Json = nlohmann::ordered_json;  // keeps header order: tie-breaks zero-size tensors on read

struct DType {
  const char* name;
  at::ScalarType type;
  uint64_t size;
};
constexpr DType kDTypes[] = {
    {"F64", at::kDouble, 8},    {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},
    {"BF16", at::kBFloat16, 2}, {"I64", at::kLong, 8},  {"I32", at::kInt, 4},
    {"I16", at::kShort, 2},     {"I8", at::kChar, 1},   {"U8", at::kByte, 1},
    {"BOOL", at::kBool, 1},
};
constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's cap

const DType* find_dtype(const std::string& name) {
  for (const DType& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}
const DType* find_dtype(at::ScalarType type) {
  for (const DType& d : kDTypes)
    if (type == d.type) return &d;
  return nullptr;
}

[[noreturn]] void fail(const fs::path& path, const std::string& what) {
  throw Error(path.string() + ": " + what);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

void write_all(int fd, const void* data, size_t n, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) fail(path, std::string("write failed (") + std::strerror(errno) + ")");
    p += k;
    n -= static_cast<size_t>(k);
  }
}

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------- writing

// Files from this size on show a progress line while they are written.
constexpr uint64_t kProgressBytes = uint64_t{512} << 20;

void save_safetensors(const fs::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json& m = header["__metadata__"] = Json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__")
      fail(path, "cannot save a tensor named \"__metadata__\" (reserved)");
    if (header.contains(name)) fail(path, "duplicate tensor name '" + name + "'");
    if (!t.defined()) fail(path, "tensor '" + name + "' is undefined");
    const DType* d = find_dtype(t.scalar_type());
    if (!d) {
      fail(path, "tensor '" + name + "' has unsupported dtype " + c10::toString(t.scalar_type()));
    }
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * d->size;
    header[name] = {{"dtype", d->name},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& e) {
    fail(path, std::string("cannot encode header (") + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(text.size() >> (8 * i));

  // Streamed rather than built in memory: a checkpoint can be larger than spare RAM.
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  try {
    Fd fd{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    if (fd.fd < 0) fail(tmp, std::string("cannot create file (") + std::strerror(errno) + ")");
    write_all(fd.fd, prefix, sizeof prefix, path);
    write_all(fd.fd, text.data(), text.size(), path);
    // Large files (a checkpoint or export of a big model) show a progress line, in MiB.
    std::optional<Progress> progress;
    if (offset >= kProgressBytes)
      progress.emplace("saving " + path.filename().string(), static_cast<int64_t>(offset >> 20),
                       "MiB");
    uint64_t written = 0;
    for (const auto& [name, t] : tensors) {
      if (t.numel() == 0) continue;
      const at::Tensor c = t.detach().to(at::kCPU).contiguous();
      write_all(fd.fd, c.data_ptr(), c.nbytes(), path);
      written += c.nbytes();
      if (progress) progress->update(static_cast<int64_t>(written >> 20));
    }
    if (progress) progress->finish();
    if (::fsync(fd.fd) != 0) fail(path, std::string("fsync failed (") + std::strerror(errno) + ")");
    const int rc = ::close(fd.fd);
    fd.fd = -1;
    if (rc != 0) fail(path, std::string("close failed (") + std::strerror(errno) + ")");
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  rename_durable(tmp, path);
}

// ---------------------------------------------------------------------------------------- reading

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path) {
  uint64_t size = 0;
  {
    Fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (fd.fd < 0) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
    struct stat st;
    if (::fstat(fd.fd, &st) != 0)
      fail(path, std::string("cannot stat (") + std::strerror(errno) + ")");
    if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
    size = static_cast<uint64_t>(st.st_size);
    if (size < 8) {
      fail(path, "file too short for a safetensors header (" + std::to_string(size) +
                     " bytes, need at least 8)");
    }
    void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
    if (addr == MAP_FAILED) fail(path, std::string("cannot mmap (") + std::strerror(errno) + ")");
    mapping_ = std::shared_ptr<void>(addr, [size](void* p) { ::munmap(p, size); });
  }  // the mapping outlives the descriptor
  const auto* bytes = static_cast<const unsigned char*>(mapping_.get());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeaderBytes) {
    fail(path, "header length " + std::to_string(n) + " exceeds the cap of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (n > size - 8) {
    fail(path, "header length " + std::to_string(n) + " exceeds the file size (" +
                   std::to_string(size) + " bytes)");
  }
  data_ = reinterpret_cast<const char*>(bytes) + 8 + n;
  const uint64_t data_size = size - 8 - n;

  Json header;
  try {
    header = Json::parse(data_ - n, data_);
  } catch (const Json::exception& e) {
    fail(path, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");

  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path, "__metadata__ must be an object of strings");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string()) fail(path, "__metadata__ value of '" + k + "' is not a string");
        metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!v.is_object()) fail(path, where + "header entry is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(key)) fail(path, where + "missing \"" + key + "\"");
    }
    Entry e;
    const Json& dt = v.at("dtype");
    if (!dt.is_string()) fail(path, where + "dtype is not a string");
    e.dtype = dt.get<std::string>();
    const DType* d = find_dtype(e.dtype);
    if (!d) {
      fail(path, where + "unknown dtype \"" + e.dtype +
                     "\" (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
    }
    const Json& sh = v.at("shape");
    if (!sh.is_array()) fail(path, where + "shape is not an array of integers");
    uint64_t nbytes = d->size;
    bool overflow = false;
    for (const Json& dim : sh) {
      if (!dim.is_number_integer()) fail(path, where + "shape is not an array of integers");
      if (!dim.is_number_unsigned()) fail(path, where + "shape has a negative dimension");
      const uint64_t x = dim.get<uint64_t>();
      if (x > static_cast<uint64_t>(INT64_MAX)) overflow = true;
      overflow = __builtin_mul_overflow(nbytes, x, &nbytes) || overflow;
      e.shape.push_back(static_cast<int64_t>(x));
    }
    const Json& off = v.at("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      fail(path, where + "data_offsets is not two non-negative integers");
    }
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    const std::string range = "[" + std::to_string(e.begin) + "," + std::to_string(e.end) + "]";
    if (e.begin > e.end) fail(path, where + "data_offsets " + range + " has begin > end");
    if (e.end > data_size) {
      fail(path, where + "data_offsets " + range + " extend beyond the data size (" +
                     std::to_string(data_size) + " bytes)");
    }
    if (overflow || e.end - e.begin != nbytes) {
      fail(path, where + "data_offsets " + range + " span " + std::to_string(e.end - e.begin) +
                     " bytes but " + e.dtype + " " + shape_str(e.shape) + " needs " +
                     (overflow ? "more than 2^64" : std::to_string(nbytes)));
    }
    entries_.emplace(name, std::move(e));
    names_.push_back(name);
  }

  // File order is data order; the header's order breaks ties between zero-size tensors.
  std::stable_sort(names_.begin(), names_.end(), [&](const std::string& a, const std::string& b) {
    const Entry &x = entries_.at(a), &y = entries_.at(b);
    return std::tie(x.begin, x.end) < std::tie(y.begin, y.end);
  });
  const std::string* last = nullptr;  // the non-empty tensor reaching furthest so far
  for (const std::string& name : names_) {
    const Entry& e = entries_.at(name);
    if (e.begin == e.end) continue;
    if (last && e.begin < entries_.at(*last).end) {
      fail(path, "tensors '" + *last + "' and '" + name + "' overlap (data_offsets)");
    }
    if (!last || e.end > entries_.at(*last).end) last = &name;
  }
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, "no tensor named '" + name + "'");
  return it->second;
}

std::vector<int64_t> SafetensorsFile::shape(const std::string& name) const {
  return entry(name).shape;
}

std::string SafetensorsFile::dtype(const std::string& name) const {
  return entry(name).dtype;
}

at::Tensor SafetensorsFile::get(const std::string& name) const {
  const Entry& e = entry(name);
  const DType* d = find_dtype(e.dtype);
  const auto options = at::TensorOptions().dtype(d->type);
  const char* ptr = data_ + e.begin;
  if (e.begin == e.end) return at::empty(e.shape, options);
  // Files from other writers may not align data to the element size; ATen kernels expect it.
  if (reinterpret_cast<uintptr_t>(ptr) % d->size != 0) {
    at::Tensor t = at::empty(e.shape, options);
    std::memcpy(t.data_ptr(), ptr, e.end - e.begin);
    return t;
  }
  std::shared_ptr<void> keep = mapping_;
  return at::from_blob(
      const_cast<char*>(ptr), e.shape, [keep](void*) {}, options);
}

NamedTensors load_safetensors(const fs::path& path) {
  const SafetensorsFile file(path);
  NamedTensors out;
  out.reserve(file.names().size());
  for (const std::string& name : file.names()) out.emplace_back(name, file.get(name).clone());
  return out;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::filesystem::path& path) : path_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "model.safetensors"))
      path_ = path / "model.safetensors";
    else if (fs::exists(path / "model.safetensors.index.json"))
      path_ = path / "model.safetensors.index.json";
    else
      throw Error(path.string() +
                  ": no model.safetensors or model.safetensors.index.json in the folder");
  }
  if (path_.extension() != ".json") {
    files_.push_back(std::make_unique<SafetensorsFile>(path_));
    for (const auto& n : files_[0]->names()) where_.emplace(n, 0);
  } else {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(path_));
    } catch (const nlohmann::json::exception& e) {
      throw Error(path_.string() + ": malformed JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(path_.string() + ": not a safetensors index (no \"weight_map\" object)");
    std::map<std::string, size_t> shard_index;
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      if (!shard.is_string())
        throw Error(path_.string() + ": weight_map[\"" + tensor + "\"] must be a file name");
      const std::string name = shard.get<std::string>();
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
        throw Error(path_.string() + ": weight_map[\"" + tensor + "\"]: \"" + name +
                    "\" is not a file name in the index's folder");
      auto it = shard_index.find(name);
      if (it == shard_index.end()) {
        const fs::path file = path_.parent_path() / name;
        if (!fs::is_regular_file(file, ec))
          throw Error(path_.string() + ": shard " + name + " (of " + tensor + ") is missing");
        files_.push_back(std::make_unique<SafetensorsFile>(file));
        it = shard_index.emplace(name, files_.size() - 1).first;
      }
      if (!files_[it->second]->contains(tensor))
        throw Error(path_.string() + ": " + tensor + " is mapped to " + name +
                    ", which does not hold it");
      where_.emplace(tensor, it->second);
    }
  }
  for (const auto& kv : where_) names_.push_back(kv.first);
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(path_.string() + ": no tensor named " + name);
  return *files_[it->second];
}

}  // namespace mllm
