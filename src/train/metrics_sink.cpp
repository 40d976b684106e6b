#include "train/metrics_sink.h"

#include <spdlog/spdlog.h>

#include "core/error.h"

namespace mllm {

namespace {

void flatten(const nlohmann::json& j, const std::string& prefix,
             std::vector<std::pair<std::string, double>>& out) {
  for (const auto& [k, v] : j.items()) {
    const std::string tag = prefix.empty() ? k : prefix + "/" + k;
    if (v.is_object())
      flatten(v, tag, out);
    else if (v.is_number() && tag != "step")
      out.emplace_back(tag, v.get<double>());
  }
}

}  // namespace

std::vector<std::pair<std::string, double>> metric_scalars(const nlohmann::json& record) {
  std::vector<std::pair<std::string, double>> out;
  if (record.is_object()) flatten(record, "", out);
  return out;
}

MetricsSink::MetricsSink(const std::filesystem::path& file,
                         const std::filesystem::path& tensorboard)
    : out_(file, std::ios::app) {
  if (!tensorboard.empty()) events_ = std::make_unique<EventFileWriter>(tensorboard);
}

void MetricsSink::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
  if (!events_) return;
  const auto scalars = metric_scalars(record);
  if (scalars.empty()) return;
  const int64_t step = record.contains("step") && record["step"].is_number_integer()
                           ? record["step"].get<int64_t>()
                           : 0;
  try {
    events_->add_scalars(step, scalars);
  } catch (const Error& e) {
    // TensorBoard is a view of metrics.jsonl: losing it must not end a run.
    spdlog::warn("{}; TensorBoard events stop here (metrics.jsonl goes on)", e.what());
    events_.reset();
  }
}

}  // namespace mllm
