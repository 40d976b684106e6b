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
#include <vector>

namespace mllm::eval {

struct RunReportOptions {
  std::vector<std::filesystem::path> runs;
  std::filesystem::path out;  // the folder for report.html and the PNGs
  int samples_per_task = 4;   // held-out samples shown per eval task
};

// Writes the report; returns the path of report.html. Throws Error naming a run directory that
// has nothing to report (no metrics.jsonl, no runs below it).
std::filesystem::path write_run_report(const RunReportOptions& options);

}  // namespace mllm::eval
