// metrics.jsonl: one JSON object per line, flushed as written, appended across resumes; and, with
// run.tensorboard, the same numbers as TensorBoard scalars (core/tensorboard.h) under
// <run>/tensorboard/: every number of a record at its "step", nested objects as "a/b" tags.
#pragma once

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensorboard.h"

namespace mllm {

// The numbers of a metrics record, flattened to TensorBoard tags ("source_items": {"a.json": 3}
// -> "source_items/a.json"); "step" itself, strings and booleans are not scalars.
std::vector<std::pair<std::string, double>> metric_scalars(const nlohmann::json& record);

class MetricsSink {
 public:
  // `tensorboard`: the folder of the event files; empty for none.
  explicit MetricsSink(const std::filesystem::path& file,
                       const std::filesystem::path& tensorboard = {});
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
  std::unique_ptr<EventFileWriter> events_;  // dropped (with a warning) if a write fails
};

}  // namespace mllm
