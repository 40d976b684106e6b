// Reading and writing the safetensors format, the interchange format for Hugging Face weights and
// our own checkpoints: an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the raw little-endian data.
// Spec: https://github.com/huggingface/safetensors#format
//
// Reading is a read-only mmap validated up front, so a corrupt file fails at open with one message
// naming the file, never later inside a model. This is not a general serializer: no pickles, no
// complex or fp8 dtypes. Sharded HF checkpoints (model.safetensors.index.json) are read through
// SafetensorsCheckpoint.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mllm {

// Ordered so files are reproducible and match the model's parameter order.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes `tensors` in the order given, followed by `metadata` in the header's "__metadata__" block
// (omitted when empty), atomically: temporary sibling, fsync, rename. Tensors may be non-contiguous
// or on any device; they are copied to CPU one at a time, so peak extra memory is one tensor. A
// file of 512 MiB or more shows a progress line (core/progress.h) while it is written. Throws Error
// on duplicate names, a tensor named "__metadata__", or an unsupported dtype.
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A read-only, memory-mapped view of one safetensors file. The constructor validates the whole
// header (types, dtypes, shapes, offsets in bounds, sizes matching, no overlaps) and throws one
// Error starting with the path on the first problem.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::vector<std::string>& names() const { return names_; }  // file order (by data offset)
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  std::vector<int64_t> shape(const std::string& name) const;
  std::string dtype(const std::string& name) const;  // "F32", "BF16", ...
  // A CPU tensor over the mapping (zero copy; a copy only if the file's data is misaligned for the
  // dtype). It keeps the mapping alive after this object is gone. The memory is read-only: clone()
  // before any in-place op. Throws Error naming the file and tensor if absent.
  at::Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // relative to the data buffer after the header
  };
  const Entry& entry(const std::string& name) const;

  std::filesystem::path path_;
  std::shared_ptr<void> mapping_;  // munmap when the last tensor over it goes
  const char* data_ = nullptr;     // start of the data buffer inside the mapping
  std::vector<std::string> names_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a Hugging Face folder or file: one .safetensors file, or the shards a
// model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file}}) names.
// Every shard is opened (and so validated) up front; the index must name existing shards that hold
// the tensors it maps to them. Errors name the index or shard file.
class SafetensorsCheckpoint {
 public:
  // `path`: a .safetensors file, an index .json, or a folder holding model.safetensors or
  // model.safetensors.index.json (other *.safetensors files in the folder are not read).
  explicit SafetensorsCheckpoint(const std::filesystem::path& path);

  const std::vector<std::string>& names() const { return names_; }  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const { return file_of(name).shape(name); }
  std::string dtype(const std::string& name) const { return file_of(name).dtype(name); }
  at::Tensor get(const std::string& name) const { return file_of(name).get(name); }
  // The file the checkpoint was opened from (the .safetensors or the index).
  const std::filesystem::path& path() const { return path_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::filesystem::path path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor -> index into files_
  std::vector<std::string> names_;
};

// All tensors of a file, cloned (independent of the mapping), in file order.
NamedTensors load_safetensors(const std::filesystem::path& path);

}  // namespace mllm
