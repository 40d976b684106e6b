// `mllm report`: a page a person opens to see how runs went. For each run directory it reads
// metrics.jsonl, summary.json and eval/ (results.json, predictions/), and writes into one folder
// report.html — self-contained: the plots and images are inside it, no network — and the plots as
// PNGs beside it:
//   loss.png          training loss and held-out loss over steps
//   lr.png            learning rate
//   grad_norm.png     gradient norm
//   throughput.png    tokens/s
//   data_wait.png     the share of step time spent waiting for data
//   eval_scores.png   eval/<task>/<score> logged during training
//   rewards.png       DPO-family reward accuracy and margins (train and held-out)
// (a plot is written only when some run logged its metrics), a table of final figures
// (summary.json and the eval scores next to their chance baselines), and a few held-out samples
// per eval task: the image, the generated reply and the references.
//
// Several runs (--compare) share every plot, a series each. A directory without metrics.jsonl
// whose sub-directories have one (the demo's runs/demo-*/) stands for those runs, in name order.
// The page sets its title to "report: N of M images rendered" once loaded, so a headless browser
// can tell that every plot and image decoded. No LibTorch here.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mllm::eval {

struct RunReportOptions {
  std::vector<std::filesystem::path> runs;
  std::filesystem::path out;  // the folder for report.html and the PNGs
  int samples_per_task = 4;   // held-out samples shown per eval task
};

// A run's metrics.jsonl as series: every numeric field of every record that has a numeric "step",
// as (step, value) in file order (a resumed run logs some steps twice). Lines that are not JSON (a
// run killed mid-write leaves a partial last line) are counted in `unreadable` and left out; a
// missing file gives no series. The report and a sweep's summary (train/sweep_report.h) both read
// runs through this.
struct MetricsSeries {
  std::map<std::string, std::vector<std::pair<double, double>>> series;
  int unreadable = 0;
};
MetricsSeries read_metrics_jsonl(const std::filesystem::path& file);

// Writes the report; returns the path of report.html. Throws Error naming a run directory that
// has nothing to report (no metrics.jsonl, no runs below it).
std::filesystem::path write_run_report(const RunReportOptions& options);

}  // namespace mllm::eval
