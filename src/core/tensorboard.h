// TensorBoard event files, written without TensorFlow: `events.out.tfevents.<time>.<host>` holding
// TFRecord-framed Event protos (tensorflow/core/util/event.proto, summary.proto), a file_version
// event first, then one event per write with a simple_value per scalar — what TensorBoard's
// scalar dashboard reads, and what torch.utils.tensorboard's SummaryWriter writes for add_scalar.
//
// Framing (tensorflow/core/lib/io/record_writer.cc): uint64 length, uint32 masked CRC-32C of the
// length bytes, the data, uint32 masked CRC-32C of the data; all little-endian; mask(crc) =
// ((crc >> 15) | (crc << 17)) + 0xa282ead8 (tensorflow/core/lib/hash/crc32c.h).
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace mllm {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), and TFRecord's masking of it.
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

// One TFRecord: the framing around `data`.
std::string tfrecord(const std::string& data);

// An Event proto with wall_time, step and a Summary of simple_value scalars.
std::string scalar_event(double wall_time, int64_t step,
                         const std::vector<std::pair<std::string, double>>& scalars);

class EventFileWriter {
 public:
  // Creates `dir` and a new event file in it (a resumed run adds a file; TensorBoard reads the
  // directory's files in order). Throws Error naming the file when it cannot be written.
  explicit EventFileWriter(const std::filesystem::path& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  // One event at `step` with these scalars, flushed (a crash loses nothing written).
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  const std::filesystem::path& path() const { return path_; }

 private:
  void write(const std::string& event);
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace mllm
