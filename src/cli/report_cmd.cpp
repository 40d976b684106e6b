// `mllm report RUN [--compare RUN2 ...] [--out DIR]`: report.html and the PNGs of a run's curves,
// final figures and held-out samples (src/eval/run_report.h).
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "eval/run_report.h"

namespace mllm::cli {

Action add_report_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "report",
      "Write report.html (self-contained) and PNGs: loss, held-out loss, lr, grad norm, "
      "throughput, data wait, eval scores and rewards over steps, final figures, held-out samples");
  struct Args {
    std::string run, out;
    std::vector<std::string> compare;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("RUN", args->run,
                  "Run directory (or a folder of runs, such as the demo's runs/demo-*)")
      ->required();
  cmd->add_option("--compare", args->compare,
                  "Another run directory to plot beside it (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--out", args->out, "Output folder (default: RUN/report)");
  return [args]() {
    eval::RunReportOptions o;
    o.runs.push_back(args->run);
    for (const auto& c : args->compare) o.runs.push_back(c);
    o.out = args->out.empty() ? std::filesystem::path(args->run) / "report"
                              : std::filesystem::path(args->out);
    const auto page = eval::write_run_report(o);
    spdlog::info("report: {}", page.string());
    return 0;
  };
}

}  // namespace mllm::cli
