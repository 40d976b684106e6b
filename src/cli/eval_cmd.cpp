// `mllm eval --config eval.yaml --checkpoint DIR`: the tasks of an evaluation recipe (an `eval:`
// section, as in a training recipe, and optionally `run:` for threads/device/seed) on a trained
// model. DIR is a llava folder (a run's final/, an export) or a run directory. Writes
// results.json, results.md and predictions/<task>.jsonl to --output (default: <run>/eval for a
// run, else DIR/eval) and prints the Markdown table. `mllm eval --compare stage1=DIR ...` prints
// earlier results side by side (the ShapesWorld report card); `mllm eval --card DIR` the demo's
// table of what each stage did (eval/report_card.h).
#include <spdlog/spdlog.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/blas.h"
#include "core/config.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threads.h"
#include "data/tokenizer/tokenizer.h"
#include "eval/evaluate.h"
#include "eval/report_card.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"
#include "train/recipe.h"

namespace mllm::cli {

Action add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Evaluate a trained model on the tasks of an eval recipe");
  struct Args {
    std::string config, checkpoint, output, card;
    std::vector<std::string> overrides, compare;
    int64_t threads = -1;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--config", args->config, "evaluation recipe (YAML with an eval: section)");
  cmd->add_option("--checkpoint", args->checkpoint, "llava folder (final/, export) or run dir");
  cmd->add_option("--compare", args->compare,
                  "instead: print earlier results side by side, LABEL=DIR (DIR holding "
                  "results.json; repeatable)");
  cmd->add_option("--card", args->card,
                  "instead: the ShapesWorld demo's report card of the runs in DIR (encoder/, "
                  "stage0/..stage3/), printed and written to DIR/report.md");
  cmd->add_option("--output", args->output, "results folder (default: <run>/eval or DIR/eval)");
  cmd->add_option("--set", args->overrides, "override a recipe key: key.path=value (repeatable)");
  cmd->add_option("--threads", args->threads, "intra-op threads (default: run.threads)");
  return [args]() {
    warn_if_slow_blas();
    namespace fs = std::filesystem;
    if (!args->card.empty()) {
      const fs::path dir = args->card;
      if (!fs::is_directory(dir)) throw ConfigError("--card " + args->card + ": not a directory");
      const std::string md = eval::report_card_markdown(eval::report_card(dir));
      write_file_atomic(dir / "report.md", md);
      std::fputs(md.c_str(), stdout);
      return 0;
    }
    if (!args->compare.empty()) {
      std::vector<std::pair<std::string, nlohmann::json>> labelled;
      for (const auto& c : args->compare) {
        const auto eq = c.find('=');
        const std::string label = eq == std::string::npos ? c : c.substr(0, eq);
        fs::path file = eq == std::string::npos ? fs::path(c) : fs::path(c.substr(eq + 1));
        if (fs::is_directory(file)) file /= "results.json";
        if (!fs::is_regular_file(file))
          throw ConfigError("--compare " + c + ": no " + file.string());
        try {
          labelled.emplace_back(label, nlohmann::json::parse(read_file(file)));
        } catch (const nlohmann::json::exception& e) {
          throw Error(file.string() + ": malformed JSON (" + e.what() + ")");
        }
      }
      std::fputs(eval::compare_markdown(labelled).c_str(), stdout);
      return 0;
    }
    if (args->config.empty() || args->checkpoint.empty())
      throw ConfigError("eval: --config and --checkpoint are required (or --compare)");
    const EvalFile recipe = load_eval_config(args->config, args->overrides);
    const fs::path folder = resolve_llava_folder(args->checkpoint, "--checkpoint", true);
    fs::path out = args->output;
    if (out.empty()) {
      const fs::path run = folder.filename() == "final" ? folder.parent_path() : fs::path();
      out = !run.empty() && fs::exists(run / "config.yaml") ? run / "eval" : folder / "eval";
    }
    configure_threads(args->threads >= 0 ? args->threads : recipe.run.threads);
    const torch::Device device = select_device(recipe.run.device);

    eval::FolderModel loaded = eval::load_folder_model(folder);
    loaded.model->to(device);
    const eval::EvalModel m = loaded.view();
    spdlog::info("eval {} ({} tasks) on {} (template {})", args->config, recipe.eval.tasks.size(),
                 folder.string(), m.default_template);

    const auto results = eval::run_eval(recipe.eval, m, static_cast<uint64_t>(recipe.run.seed));
    eval::write_results(out, results, {{"checkpoint", folder.string()}, {"config", args->config}});
    std::fputs(eval::results_markdown(results).c_str(), stdout);
    std::fflush(stdout);
    spdlog::info("results: {}", (out / "results.json").string());
    return 0;
  };
}

}  // namespace mllm::cli
