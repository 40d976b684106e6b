// `mllm data shapes`: generate the ShapesWorld dataset.
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"
#include "data/shapes_world.h"

namespace mllm::cli {

Action add_data_command(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Generate or convert datasets");
  data->require_subcommand(1);
  auto* shapes = data->add_subcommand("shapes",
                                      "Generate ShapesWorld: images of shapes with captions, "
                                      "questions, preference pairs and a tokenizer.json");
  struct Args {
    std::string out;
    data::ShapesWorldOptions options;
  };
  auto args = std::make_shared<Args>();
  shapes->add_option("--out", args->out, "Output directory")->required();
  shapes->add_option("--seed", args->options.seed, "Random seed (same seed, same bytes)")
      ->capture_default_str();
  shapes->add_option("--train", args->options.train, "Number of training images")
      ->capture_default_str();
  shapes->add_option("--val", args->options.val, "Number of validation images")
      ->capture_default_str();
  shapes->add_option("--image-size", args->options.image_size, "Image side in pixels")
      ->capture_default_str();
  shapes
      ->add_option("--jitter", args->options.jitter,
                   "How far a shape may sit off its cell's centre, 0 (centred) to 1 (anywhere "
                   "in its cell)")
      ->capture_default_str();
  shapes
      ->add_option("--visual", args->options.visual,
                   "Visual-question records (high resolution, two images, motion) in the train "
                   "split; -1: train / 8")
      ->capture_default_str();
  auto* check = data->add_subcommand("check",
                                     "Stream the datasets of a recipe and report records, images, "
                                     "lengths and bad records, without training");
  struct CheckArgs {
    std::string config;
    std::vector<std::string> overrides;
  };
  auto check_args = std::make_shared<CheckArgs>();
  check->add_option("--config,-c", check_args->config, "YAML recipe")->required();
  check->add_option("--set", check_args->overrides, "Override a config value (repeatable)")
      ->allow_extra_args(false);
  return [args, check, check_args]() {
    if (check->parsed()) return run_data_check(check_args->config, check_args->overrides);
    try {
      const auto s = data::generate_shapes_world(args->out, args->options);
      spdlog::info(
          "ShapesWorld -> {}: {} train / {} val images, {} instruction records, {} preference "
          "pairs",
          args->out, s.train_images, s.val_images, s.instruct_records, s.preference_records);
    } catch (const Error& e) {
      // Bad options are usage errors.
      const std::string what = e.what();
      if (what.rfind("shapes: --", 0) == 0) throw ConfigError(what);
      throw;
    }
    return 0;
  };
}

}  // namespace mllm::cli
