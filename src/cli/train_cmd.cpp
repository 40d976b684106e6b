// `mllm train --config recipe.yaml [--set key.path=value ...] [--resume auto|none|DIR]`
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/blas.h"
#include "core/config.h"
#include "core/logging.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace mllm::cli {

Action add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Run a training recipe (any stage)");
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    std::string resume = "none";
    int64_t stop_after = 0;
    bool allow_data_change = false;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--config,-c", args->config, "YAML recipe")->required();
  cmd->add_option("--set", args->overrides,
                  "Override a config value: --set train.lr=2e-5 (repeatable)")
      ->take_all()
      ->allow_extra_args(false);
  cmd->add_option(
         "--resume", args->resume,
         "auto (newest complete checkpoint, if any), none (fresh run), or a checkpoint directory")
      ->capture_default_str();
  cmd->add_flag("--resume-allow-data-change", args->allow_data_change,
                "Resume although the training data changed since the checkpoint");
  cmd->add_option("--stop-after", args->stop_after,
                  "Stop after N steps of this process (simulated preemption)");
  return [args]() {
    warn_if_slow_blas();
    Config config = load_config(args->config, args->overrides);
    spdlog::set_level(spdlog::level::from_str(config.run.log_level));
    TrainOptions options;
    options.resume = args->resume;
    options.stop_after = args->stop_after;
    options.allow_data_change = args->allow_data_change;
    const TrainSummary s = train(config, options);
    if (s.first_eval_loss && s.last_eval_loss)
      spdlog::info("held-out loss: {:.4f} at the start, {:.4f} at the end", *s.first_eval_loss,
                   *s.last_eval_loss);
    spdlog::info("run directory: {}", s.output_dir.string());
    // Stopped by SIGTERM/SIGINT after saving: a clean exit, so the scheduler's requeue resumes.
    return 0;
  };
}

}  // namespace mllm::cli
