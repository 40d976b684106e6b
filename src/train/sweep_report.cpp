#include "train/sweep_report.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <set>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "core/fs.h"
#include "core/logging.h"
#include "core/plot.h"
#include "eval/run_report.h"

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

// One column of the summary: its heading in summary.md and in summary.csv, whether it holds
// figures (right-aligned in Markdown), and its cell of a run in either file.
struct Column {
  std::string md, csv;
  bool figure;
  std::function<std::string(const RunReport&, bool csv)> cell;
};

std::string text_of(const std::optional<double>& v, bool csv, int md_decimals, int csv_decimals) {
  return fixed(v, csv ? csv_decimals : md_decimals);
}

std::optional<double> score_of(const RunFigures& f, const std::string& name) {
  for (const auto& [k, v] : f.scores)
    if (k == name) return v;
  return std::nullopt;
}

// "qa/accuracy" -> "qa accuracy": the Markdown heading of a task score.
std::string spaced(std::string s) {
  for (char& c : s)
    if (c == '/') c = ' ';
  return s;
}

// Every task score some run's figures have, sorted by name.
template <class Get>
std::vector<std::string> score_names(const std::vector<RunReport>& runs, Get figures_of) {
  std::set<std::string> names;
  for (const auto& r : runs)
    if (const RunFigures* f = figures_of(r))
      for (const auto& [k, v] : f->scores) names.insert(k);
  return {names.begin(), names.end()};
}

// The stage labels of a multi-stage sweep's reports (the first run's), else none.
std::vector<std::string> stage_labels_of(const std::vector<RunReport>& runs) {
  std::vector<std::string> labels;
  if (!runs.empty())
    for (const auto& s : runs.front().stages) labels.push_back(s.label);
  return labels;
}

const StageReport* stage_of(const RunReport& r, size_t k) {
  return k < r.stages.size() ? &r.stages[k] : nullptr;
}

std::vector<Column> columns(const std::vector<std::string>& keys,
                            const std::vector<RunReport>& runs) {
  std::vector<Column> cols;
  cols.push_back({"run", "run", false, [](const RunReport& r, bool) { return r.name; }});
  for (size_t k = 0; k < keys.size(); ++k)
    cols.push_back({keys[k], keys[k], false, [k](const RunReport& r, bool) {
                      return k < r.values.size() ? r.values[k] : std::string();
                    }});
  cols.push_back({"status", "status", false, [](const RunReport& r, bool) { return r.status; }});
  cols.push_back({"trainable params", "trainable_params", true,
                  [](const RunReport& r, bool) { return integer(r.trainable_params); }});
  cols.push_back({"visual tokens", "visual_tokens", true,
                  [](const RunReport& r, bool) { return integer(r.image_tokens); }});
  const auto labels = stage_labels_of(runs);
  if (labels.empty()) {
    cols.push_back({"train loss", "final_train_loss", true,
                    [](const RunReport& r, bool csv) { return text_of(r.final_loss, csv, 4, 6); }});
    cols.push_back({"eval loss", "eval_loss", true,
                    [](const RunReport& r, bool csv) { return text_of(r.eval_loss, csv, 4, 6); }});
    for (const auto& name : score_names(runs, [](const RunReport& r) { return &r; }))
      cols.push_back({spaced(name), name, true, [name](const RunReport& r, bool csv) {
                        return text_of(score_of(r, name), csv, 4, 6);
                      }});
    cols.push_back({"tokens/s", "tokens_per_s", true, [](const RunReport& r, bool csv) {
                      return text_of(r.tokens_per_s, csv, 0, 1);
                    }});
  } else {
    cols.push_back({labels.back() + " train loss", labels.back() + "/final_train_loss", true,
                    [](const RunReport& r, bool csv) { return text_of(r.final_loss, csv, 4, 6); }});
    for (size_t k = 0; k < labels.size(); ++k) {
      const std::string& s = labels[k];
      cols.push_back({s + " eval loss", s + "/eval_loss", true, [k](const RunReport& r, bool csv) {
                        const StageReport* st = stage_of(r, k);
                        return st ? text_of(st->eval_loss, csv, 4, 6) : std::string();
                      }});
      const auto names = score_names(
          runs, [k](const RunReport& r) -> const RunFigures* { return stage_of(r, k); });
      for (const auto& name : names)
        cols.push_back(
            {s + " " + spaced(name), s + "/" + name, true, [k, name](const RunReport& r, bool csv) {
               const StageReport* st = stage_of(r, k);
               return st ? text_of(score_of(*st, name), csv, 4, 6) : std::string();
             }});
      cols.push_back(
          {s + " tokens/s", s + "/tokens_per_s", true, [k](const RunReport& r, bool csv) {
             const StageReport* st = stage_of(r, k);
             return st ? text_of(st->tokens_per_s, csv, 0, 1) : std::string();
           }});
    }
  }
  // Milliseconds in the CSV: short runs are not 0.
  cols.push_back({"wall", "wall_s", true, [](const RunReport& r, bool csv) {
                    return csv ? fixed(r.wall_seconds, 3) : duration(r.wall_seconds);
                  }});
  cols.push_back({"note", "note", false, [](const RunReport& r, bool) { return r.note; }});
  return cols;
}

}  // namespace

void read_run_outputs(const std::filesystem::path& run_dir, RunFigures& figures) {
  const auto metrics = eval::read_metrics_jsonl(run_dir / "metrics.jsonl").series;
  auto series = [&metrics](const char* name) -> const std::vector<std::pair<double, double>>& {
    static const std::vector<std::pair<double, double>> none;
    const auto it = metrics.find(name);
    return it == metrics.end() ? none : it->second;
  };
  std::map<double, double> curve;  // a step logged twice keeps its last value
  for (const auto& [step, loss] : series("loss")) curve[step] = loss;
  figures.loss_curve.assign(curve.begin(), curve.end());
  figures.final_loss = curve.empty() ? std::nullopt : std::optional<double>(curve.rbegin()->second);
  const auto& eval_loss = series("eval_loss");
  figures.eval_loss =
      eval_loss.empty() ? std::nullopt : std::optional<double>(eval_loss.back().second);
  const auto& tps = series("tokens_per_s");
  double tps_sum = 0;
  for (const auto& p : tps) tps_sum += p.second;
  figures.tokens_per_s =
      tps.empty() ? std::nullopt : std::optional<double>(tps_sum / static_cast<double>(tps.size()));
  // Eval task scores: "eval/<task>/<score>" (the per-type "eval/<task>/<type>/<score>" would make
  // the table too wide; `mllm report` shows them).
  figures.scores.clear();
  for (const auto& [name, points] : metrics)
    if (name.rfind("eval/", 0) == 0 && std::count(name.begin(), name.end(), '/') == 2 &&
        !points.empty())
      figures.scores.emplace_back(name.substr(5), points.back().second);

  // A finished run's own figures win.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(run_dir / "summary.json", ec)) return;
  const auto s = nlohmann::json::parse(read_file(run_dir / "summary.json"), nullptr, false);
  if (s.is_discarded() || !s.is_object()) return;
  figures.trainable_params = field<int64_t>(s, "trainable_params");
  figures.image_tokens = field<int64_t>(s, "image_tokens");
  figures.steps = field<int64_t>(s, "steps");
  if (auto v = field<double>(s, "final_loss")) figures.final_loss = v;
  if (auto v = field<double>(s, "final_eval_loss")) figures.eval_loss = v;
  if (auto v = field<double>(s, "tokens_per_s")) figures.tokens_per_s = v;
  figures.wall_seconds = field<double>(s, "wall_seconds");
}

void combine_stages(RunReport& report) {
  if (report.stages.empty()) return;
  const StageReport& first = report.stages.front();
  const StageReport& last = report.stages.back();
  report.trainable_params = first.trainable_params;
  report.image_tokens = first.image_tokens;
  report.final_loss = last.final_loss;
  report.eval_loss = last.eval_loss;
  report.scores = last.scores;
  report.tokens_per_s.reset();
  report.steps.reset();
  report.loss_curve.clear();
  report.wall_seconds.reset();
  for (const auto& s : report.stages)
    if (s.wall_seconds) report.wall_seconds = report.wall_seconds.value_or(0) + *s.wall_seconds;
}

std::string summary_markdown(const std::vector<std::string>& keys,
                             const std::vector<RunReport>& runs) {
  const auto cols = columns(keys, runs);
  std::string out = "|";
  for (const auto& c : cols) out += " " + md_cell(c.md) + " |";
  out += "\n|";
  // Text columns left, figures right.
  for (const auto& c : cols) out += c.figure ? " ---: |" : " --- |";
  out += "\n";
  for (const auto& r : runs) {
    out += "|";
    for (const auto& c : cols) out += " " + md_cell(c.cell(r, false)) + " |";
    out += "\n";
  }
  return out;
}

std::string summary_csv(const std::vector<std::string>& keys, const std::vector<RunReport>& runs) {
  const auto cols = columns(keys, runs);
  std::string out;
  for (size_t i = 0; i < cols.size(); ++i) out += (i ? "," : "") + csv_cell(cols[i].csv);
  out += "\n";
  for (const auto& r : runs) {
    for (size_t i = 0; i < cols.size(); ++i)
      out += (i ? "," : "") + csv_cell(cols[i].cell(r, true));
    out += "\n";
  }
  return out;
}

void write_sweep_summary(const std::filesystem::path& sweep_dir,
                         const std::vector<std::string>& keys, const std::vector<RunReport>& runs) {
  write_file_atomic(sweep_dir / "summary.md", summary_markdown(keys, runs));
  write_file_atomic(sweep_dir / "summary.csv", summary_csv(keys, runs));
  PlotOptions o;
  o.x_label = "step";
  o.y_label = "train loss";
  const auto labels = stage_labels_of(runs);
  if (labels.empty()) {
    std::vector<PlotSeries> curves;
    for (const auto& r : runs)
      if (!r.loss_curve.empty()) curves.push_back({r.name, r.loss_curve});
    o.title = "train loss: " + sweep_dir.filename().string();
    write_line_plot_png(sweep_dir / "loss_curves.png", curves, o);
    return;
  }
  // A panel per stage, stacked: the stages' step counts and losses differ too much to share axes.
  // Every panel lists the same runs (an empty series where a stage has no curve yet), so a run
  // keeps its colour from panel to panel.
  std::vector<const RunReport*> shown;
  for (const auto& r : runs)
    for (const auto& s : r.stages)
      if (!s.loss_curve.empty()) {
        shown.push_back(&r);
        break;
      }
  std::vector<cv::Mat> panels;
  for (size_t k = 0; k < labels.size(); ++k) {
    std::vector<PlotSeries> curves;
    for (const RunReport* r : shown) {
      const StageReport* s = stage_of(*r, k);
      curves.push_back({r->name, s ? s->loss_curve : std::vector<std::pair<double, double>>{}});
    }
    o.title = "train loss: " + sweep_dir.filename().string() + ", stage " + labels[k];
    panels.push_back(draw_line_plot(curves, o));
  }
  cv::Mat image;
  cv::vconcat(panels, image);
  write_png(sweep_dir / "loss_curves.png", image);
}

}  // namespace mllm
