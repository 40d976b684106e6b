// See run_report.h.
#include "eval/run_report.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <optional>

#include "core/error.h"
#include "core/fs.h"
#include "core/plot.h"
#include "core/strings.h"

namespace mllm::eval {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// One run: its name in the report and what it logged.
struct Run {
  std::string label;
  fs::path dir;
  // metric -> (step, value), in file order
  std::map<std::string, std::vector<std::pair<double, double>>> series;
  Json summary;  // summary.json, or null
  Json results;  // eval/results.json, or null
};

// A JSON file, or null when it is missing or unreadable (warned: the report goes on without it).
Json read_json(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return Json();
  try {
    return Json::parse(read_file(p));
  } catch (const Json::exception& e) {
    spdlog::warn("{}: not valid JSON ({}), left out of the report", p.string(),
                 json_error_message(e));
    return Json();
  }
}

Run read_run(const fs::path& dir, const std::string& label) {
  Run r;
  r.label = label;
  r.dir = dir;
  MetricsSeries m = read_metrics_jsonl(dir / "metrics.jsonl");
  r.series = std::move(m.series);
  if (m.unreadable > 0)
    spdlog::warn("{}: {} unreadable line(s) left out", (dir / "metrics.jsonl").string(),
                 m.unreadable);
  r.summary = read_json(dir / "summary.json");
  r.results = read_json(dir / "eval/results.json");
  return r;
}

// The runs a directory stands for: itself, or its sub-directories that hold metrics.jsonl.
std::vector<Run> expand(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir / "metrics.jsonl", ec))
    return {read_run(dir, dir.filename().string())};
  std::vector<fs::path> subs;
  if (fs::is_directory(dir, ec))
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.is_directory() && fs::is_regular_file(e.path() / "metrics.jsonl", ec))
        subs.push_back(e.path());
  if (subs.empty())
    throw Error(dir.string() +
                ": no metrics.jsonl here or in its sub-directories (is it a run "
                "directory?)");
  std::sort(subs.begin(), subs.end());
  std::vector<Run> runs;
  for (const auto& s : subs) runs.push_back(read_run(s, s.filename().string()));
  return runs;
}

const char* kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64(const std::string& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const auto a = static_cast<unsigned char>(bytes[i]),
               b = static_cast<unsigned char>(bytes[i + 1]),
               c = static_cast<unsigned char>(bytes[i + 2]);
    out += kBase64[a >> 2];
    out += kBase64[((a & 3) << 4) | (b >> 4)];
    out += kBase64[((b & 15) << 2) | (c >> 6)];
    out += kBase64[c & 63];
  }
  if (i < bytes.size()) {
    const auto a = static_cast<unsigned char>(bytes[i]);
    const auto b = i + 1 < bytes.size() ? static_cast<unsigned char>(bytes[i + 1]) : 0;
    out += kBase64[a >> 2];
    out += kBase64[((a & 3) << 4) | (b >> 4)];
    out += i + 1 < bytes.size() ? kBase64[(b & 15) << 2] : '=';
    out += '=';
  }
  return out;
}

std::string fmt(double v) {
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);  // counts: steps, parameters
    return buf;
  }
  if (v != 0 && (std::fabs(v) >= 1e6 || std::fabs(v) < 1e-3))
    std::snprintf(buf, sizeof buf, "%.3g", v);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// A plot of the runs' series: one line per run and metric that has points.
struct Figure {
  std::string file, title, y_label;
  std::vector<std::string> metrics;  // exact names, or a prefix ending in '/'
  bool log_y = false;
};

bool matches(const std::string& metric, const std::string& name) {
  if (!metric.empty() && metric.back() == '/') return name.rfind(metric, 0) == 0;
  return name == metric;
}

std::string png_tag(const std::string& png_bytes, const std::string& alt) {
  return "<img alt=\"" + html_escape(alt) + "\" src=\"data:image/png;base64," + base64(png_bytes) +
         "\">";
}

// A held-out image as an <img>, scaled up for small images; empty when it cannot be read.
std::string image_tag(const fs::path& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec || size > (8u << 20)) return "";
  const cv::Mat img = cv::imread(path.string(), cv::IMREAD_COLOR);
  if (img.empty()) return "";
  std::vector<uchar> png;
  if (!cv::imencode(".png", img, png)) return "";
  const int side = std::max(img.cols, img.rows);
  const int shown = side < 160 ? 160 : std::min(side, 320);
  return "<img class=\"sample\" style=\"width:" + std::to_string(shown * img.cols / side) +
         "px;image-rendering:pixelated\" alt=\"" + html_escape(path.filename().string()) +
         "\" src=\"data:image/png;base64," + base64(std::string(png.begin(), png.end())) + "\">";
}

// The headline number of one metric's result: the value named like the metric, else the first.
std::optional<double> headline(const Json& scores) {
  if (!scores.is_object()) return std::nullopt;
  const std::string metric = scores.value("metric", "");
  if (scores.contains(metric) && scores[metric].is_number()) return scores[metric].get<double>();
  for (const char* k : {"bleu_4", "accuracy", "acc"})
    if (scores.contains(k) && scores[k].is_number()) return scores[k].get<double>();
  for (const auto& [k, v] : scores.items())
    if (k != "n" && v.is_number()) return v.get<double>();
  return std::nullopt;
}

}  // namespace

MetricsSeries read_metrics_jsonl(const fs::path& file) {
  MetricsSeries m;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      ++m.unreadable;
      continue;
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    const double step = j["step"].get<double>();
    for (const auto& [k, v] : j.items())
      if (k != "step" && v.is_number()) m.series[k].emplace_back(step, v.get<double>());
  }
  return m;
}

fs::path write_run_report(const RunReportOptions& options) {
  if (options.runs.empty()) throw Error("report: no run directory given");
  std::vector<Run> runs;
  for (const auto& d : options.runs)
    for (auto& r : expand(d)) runs.push_back(std::move(r));
  // Labels must tell runs apart: add the parent's name where two coincide.
  for (auto& r : runs)
    if (std::count_if(runs.begin(), runs.end(), [&](const Run& o) { return o.label == r.label; }) >
        1)
      r.label = r.dir.parent_path().filename().string() + "/" + r.label;
  fs::create_directories(options.out);

  const std::vector<Figure> figures = {
      // Log scale: the runs' losses differ in kind (a CLIP encoder's InfoNCE, an LLM's per-token
      // loss, DPO's) and fall by orders of magnitude; on a linear axis the first steps flatten the
      // rest (the demo's stage-2v eval starts at 7.7, its stage 2 ends near 0.1).
      {"loss.png", "Training and held-out loss (log scale)", "loss", {"loss", "eval_loss"}, true},
      {"lr.png", "Learning rate", "lr", {"lr"}},
      {"grad_norm.png", "Gradient norm", "grad norm", {"grad_norm"}},
      {"throughput.png", "Throughput", "tokens/s", {"tokens_per_s"}},
      {"data_wait.png", "Time waiting for data", "share of step time", {"data_wait"}},
      {"eval_scores.png", "Evaluation scores during training", "score", {"eval/"}},
      {"rewards.png",
       "Preference rewards",
       "reward",
       {"rewards/accuracies", "rewards/margins", "eval_rewards/accuracies",
        "eval_rewards/margins"}},
  };
  std::string plots_html;
  int plots = 0;
  for (const auto& f : figures) {
    std::vector<PlotSeries> series;
    for (const auto& r : runs)
      for (const auto& metric : f.metrics)
        for (const auto& [name, points] : r.series) {
          if (!matches(metric, name) || points.empty()) continue;
          std::string label = name;
          if (name == "loss") label = "train";
          if (name == "eval_loss") label = "held-out";
          series.push_back({runs.size() > 1 ? r.label + " " + label : label, points});
        }
    if (series.empty()) continue;
    PlotOptions po;
    po.width = 900;
    po.height = 420;
    po.title = f.title;
    po.x_label = "step";
    po.y_label = f.y_label;
    po.log_y = f.log_y;
    const std::string bytes = encode_png(draw_line_plot(series, po), "report: " + f.file);
    write_file_atomic(options.out / f.file, bytes);
    plots_html += "<figure>" + png_tag(bytes, f.title) + "<figcaption>" + html_escape(f.title) +
                  " (" + f.file + ")</figcaption></figure>\n";
    ++plots;
  }

  // Final figures: summary.json and the eval scores with their chance baselines.
  std::string table =
      "<table><tr><th>run</th><th>steps</th><th>final loss</th><th>held-out loss</th>"
      "<th>tokens/s</th><th>trainable / total params</th><th>wall</th></tr>\n";
  for (const auto& r : runs) {
    const Json& s = r.summary;
    const auto num = [&](const char* k) -> std::string {
      return s.is_object() && s.contains(k) && s[k].is_number() ? fmt(s[k].get<double>()) : "–";
    };
    table += "<tr><td>" + html_escape(r.label) + "</td><td>" + num("steps") + "</td><td>" +
             num("final_loss") + "</td><td>" + num("final_eval_loss") + "</td><td>" +
             num("tokens_per_s") + "</td><td>" + num("trainable_params") + " / " +
             num("total_params") + "</td><td>" +
             (s.is_object() && s.contains("wall_seconds") && s["wall_seconds"].is_number()
                  ? fmt(s["wall_seconds"].get<double>()) + " s"
                  : "–") +
             "</td></tr>\n";
  }
  table += "</table>\n";
  std::string scores;
  for (const auto& r : runs) {
    if (!r.results.is_object() || !r.results.contains("tasks")) continue;
    scores += "<h3>" + html_escape(r.label) +
              "</h3><table><tr><th>task</th><th>metric</th>"
              "<th>score</th><th>chance</th><th>n</th></tr>\n";
    for (const auto& [task, t] : r.results["tasks"].items()) {
      if (!t.is_object() || !t.contains("scores")) continue;
      for (const auto& [metric, v] : t["scores"].items()) {
        const auto score = headline(v);
        std::optional<double> chance;
        if (t.contains("chance") && t["chance"].contains(metric))
          chance = headline(t["chance"][metric]);
        scores += "<tr><td>" + html_escape(task) + "</td><td>" + html_escape(metric) + "</td><td>" +
                  (score ? fmt(*score) : "–") + "</td><td>" + (chance ? fmt(*chance) : "–") +
                  "</td><td>" + (t.contains("n") ? t["n"].dump() : "–") + "</td></tr>\n";
      }
    }
    scores += "</table>\n";
  }

  // Held-out samples from eval/predictions.
  std::string samples;
  for (const auto& r : runs) {
    std::error_code ec;
    const fs::path pred = r.dir / "eval/predictions";
    if (!fs::is_directory(pred, ec)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(pred, ec))
      if (e.path().extension() == ".jsonl") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f);
      std::string line;
      std::string rows;
      int shown = 0;
      while (shown < options.samples_per_task && std::getline(in, line)) {
        Json j;
        try {
          j = Json::parse(line);
        } catch (const Json::exception&) {
          continue;
        }
        if (!j.is_object()) continue;
        std::string refs;
        if (j.contains("answers") && j["answers"].is_array())
          for (const auto& a : j["answers"])
            if (a.is_string()) refs += "<li>" + html_escape(a.get<std::string>()) + "</li>";
        std::string img;
        if (j.contains("image") && j["image"].is_string())
          img = image_tag(j["image"].get<std::string>());
        rows += "<tr><td>" + img + "</td><td>" + html_escape(j.value("id", "")) + "</td><td>" +
                html_escape(j.value("prompt", "")) + "</td><td class=\"reply\">" +
                html_escape(j.value("text", "")) + "</td><td><ul>" + refs + "</ul></td></tr>\n";
        ++shown;
      }
      if (shown == 0) continue;
      samples += "<h3>" + html_escape(r.label) + ": " + html_escape(f.stem().string()) +
                 "</h3><table><tr><th>image</th><th>id</th><th>prompt</th><th>generated</th>"
                 "<th>references</th></tr>\n" +
                 rows + "</table>\n";
    }
  }

  std::string labels;
  for (const auto& r : runs) labels += (labels.empty() ? "" : ", ") + r.label;
  std::string html =
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>report</title>\n<style>\n"
      "body{font-family:sans-serif;margin:24px;color:#222;max-width:1900px}"
      "figure{display:inline-block;margin:8px;vertical-align:top}"
      "figure img{width:640px;border:1px solid #ddd}"
      "table{border-collapse:collapse;margin:8px 0}"
      "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
      "th{background:#f3f3f3}td.reply{font-weight:bold}ul{margin:0;padding-left:18px}\n"
      "</style></head><body>\n<h1>Run report</h1>\n<p>" +
      html_escape(labels) + "</p>\n<h2>Curves</h2>\n" + plots_html +
      (plots == 0 ? "<p>No metrics logged.</p>\n" : "") + "<h2>Final figures</h2>\n" + table +
      (scores.empty() ? "" : "<h2>Evaluation</h2>\n" + scores) +
      (samples.empty() ? "" : "<h2>Held-out samples</h2>\n" + samples) +
      "<script>\nwindow.addEventListener('load', function () {\n"
      "  var all = Array.prototype.slice.call(document.images);\n"
      "  var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; });\n"
      "  document.title = 'report: ' + ok.length + ' of ' + all.length + ' images rendered';\n"
      "});\n</script>\n</body></html>\n";
  const fs::path page = options.out / "report.html";
  write_file_atomic(page, html);
  return page;
}

}  // namespace mllm::eval
