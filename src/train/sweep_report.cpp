#include "train/sweep_report.h"

#include <cstdio>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/logging.h"
#include "core/plot.h"

namespace mllm {

namespace {

template <class T>
std::optional<T> field(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number()) return std::nullopt;
  return j[key].get<T>();
}

std::string fixed(const std::optional<double>& v, int decimals) {
  if (!v) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, *v);
  return buf;
}

// "0.042s" below a second, "4.2s" below a minute, else "3m05s": a fast run never reads as 0.0s.
std::string duration(const std::optional<double>& seconds) {
  if (!seconds) return "";
  if (*seconds >= 59.95) return format_duration(*seconds);
  char buf[32];
  std::snprintf(buf, sizeof buf, *seconds < 0.95 ? "%.3fs" : "%.1fs", *seconds);
  return buf;
}

std::string integer(const std::optional<int64_t>& v) {
  return v ? std::to_string(*v) : "";
}

std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// A Markdown table cell: pipes escaped, line breaks flattened.
std::string md_cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n' || c == '\r')
      out += ' ';
    else
      out += c;
  }
  return out;
}

}  // namespace

void read_run_outputs(const std::filesystem::path& run_dir, RunReport& report) {
  std::map<int64_t, double> curve;
  std::optional<double> eval_loss, tps_sum;
  int tps_count = 0;
  std::ifstream metrics(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;  // a line cut short by a crash
    const auto step = field<int64_t>(j, "step");
    if (!step) continue;
    if (const auto loss = field<double>(j, "loss")) curve[*step] = *loss;
    if (const auto e = field<double>(j, "eval_loss")) eval_loss = e;
    if (const auto t = field<double>(j, "tokens_per_s"))
      tps_sum = tps_sum.value_or(0) + *t, ++tps_count;
  }
  report.loss_curve.assign(curve.begin(), curve.end());
  report.final_loss = curve.empty() ? std::nullopt : std::optional<double>(curve.rbegin()->second);
  report.eval_loss = eval_loss;
  report.tokens_per_s = tps_count ? std::optional<double>(*tps_sum / tps_count) : std::nullopt;

  // A finished run's own figures win.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(run_dir / "summary.json", ec)) return;
  const auto s = nlohmann::json::parse(read_file(run_dir / "summary.json"), nullptr, false);
  if (s.is_discarded() || !s.is_object()) return;
  report.trainable_params = field<int64_t>(s, "trainable_params");
  report.image_tokens = field<int64_t>(s, "image_tokens");
  if (auto v = field<double>(s, "final_loss")) report.final_loss = v;
  if (auto v = field<double>(s, "final_eval_loss")) report.eval_loss = v;
  if (auto v = field<double>(s, "tokens_per_s")) report.tokens_per_s = v;
  report.wall_seconds = field<double>(s, "wall_seconds");
}

std::string summary_markdown(const std::vector<std::string>& keys,
                             const std::vector<RunReport>& runs) {
  std::vector<std::string> head = {"run"};
  head.insert(head.end(), keys.begin(), keys.end());
  for (const char* h : {"status", "trainable params", "visual tokens", "train loss", "eval loss",
                        "tokens/s", "wall", "note"})
    head.push_back(h);
  std::string out = "|";
  for (const auto& h : head) out += " " + md_cell(h) + " |";
  out += "\n|";
  // Text columns left, figures right.
  for (size_t i = 0; i < head.size(); ++i)
    out += i <= keys.size() + 1 || i + 1 == head.size() ? " --- |" : " ---: |";
  out += "\n";
  for (const auto& r : runs) {
    std::vector<std::string> row = {r.name};
    for (size_t k = 0; k < keys.size(); ++k) row.push_back(k < r.values.size() ? r.values[k] : "");
    row.push_back(r.status);
    row.push_back(integer(r.trainable_params));
    row.push_back(integer(r.image_tokens));
    row.push_back(fixed(r.final_loss, 4));
    row.push_back(fixed(r.eval_loss, 4));
    row.push_back(fixed(r.tokens_per_s, 0));
    row.push_back(duration(r.wall_seconds));
    row.push_back(r.note);
    out += "|";
    for (const auto& c : row) out += " " + md_cell(c) + " |";
    out += "\n";
  }
  return out;
}

std::string summary_csv(const std::vector<std::string>& keys, const std::vector<RunReport>& runs) {
  std::vector<std::string> head = {"run"};
  head.insert(head.end(), keys.begin(), keys.end());
  for (const char* h : {"status", "trainable_params", "visual_tokens", "final_train_loss",
                        "eval_loss", "tokens_per_s", "wall_s", "note"})
    head.push_back(h);
  std::string out;
  auto line = [&out](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) out += (i ? "," : "") + csv_cell(cells[i]);
    out += "\n";
  };
  line(head);
  for (const auto& r : runs) {
    std::vector<std::string> row = {r.name};
    for (size_t k = 0; k < keys.size(); ++k) row.push_back(k < r.values.size() ? r.values[k] : "");
    row.push_back(r.status);
    row.push_back(integer(r.trainable_params));
    row.push_back(integer(r.image_tokens));
    row.push_back(fixed(r.final_loss, 6));
    row.push_back(fixed(r.eval_loss, 6));
    row.push_back(fixed(r.tokens_per_s, 1));
    row.push_back(fixed(r.wall_seconds, 3));  // milliseconds: short runs are not 0
    row.push_back(r.note);
    line(row);
  }
  return out;
}

void write_sweep_summary(const std::filesystem::path& sweep_dir,
                         const std::vector<std::string>& keys, const std::vector<RunReport>& runs) {
  write_file_atomic(sweep_dir / "summary.md", summary_markdown(keys, runs));
  write_file_atomic(sweep_dir / "summary.csv", summary_csv(keys, runs));
  std::vector<PlotSeries> curves;
  for (const auto& r : runs)
    if (!r.loss_curve.empty()) curves.push_back({r.name, r.loss_curve});
  PlotOptions o;
  o.title = "train loss: " + sweep_dir.filename().string();
  o.x_label = "step";
  o.y_label = "train loss";
  write_line_plot_png(sweep_dir / "loss_curves.png", curves, o);
}

}  // namespace mllm
