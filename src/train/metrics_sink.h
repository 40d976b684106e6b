// metrics.jsonl: one JSON object per line, flushed as written, appended across resumes.
#pragma once

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace mllm {

class MetricsSink {
 public:
  explicit MetricsSink(const std::filesystem::path& file) : out_(file, std::ios::app) {}
  void write(const nlohmann::json& record) {
    out_ << record.dump() << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
};

}  // namespace mllm
