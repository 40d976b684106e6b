// `mllm data shapes`: generate the ShapesWorld dataset. `mllm data convert`: between the
// project's LLaVA layout and LLaMA-Factory's sharegpt / ms-swift's and TRL's messages layouts.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "data/datasets.h"
#include "data/formats.h"
#include "data/shapes_world.h"

namespace mllm::cli {

namespace {

// Converts every record of `in` (a JSON array, or JSONL by its extension) from layout `from` to
// layout `to`, writing `out` (JSONL when it ends .jsonl) atomically: a bad record is an error
// naming the file, line and record, and nothing is written. Preference records (those with
// chosen/rejected, or ms-swift's rejected_response) are converted as pairs.
int run_convert(const std::string& from, std::string to, const std::string& in,
                const std::string& out) {
  if (to == "llava_json" || to == "llava_jsonl") to = "llava";
  const std::string from_layout = from == "llava_json" || from == "llava_jsonl" ? "llava" : from;
  for (const auto& [flag, layout] : {std::pair{"--from", from_layout}, std::pair{"--to", to}}) {
    const auto& names = record_layouts();
    if (std::find(names.begin(), names.end(), layout) == names.end())
      throw ConfigError(std::string(flag) + " '" + layout +
                        "': one of llava (llava_json), sharegpt, messages");
  }
  std::error_code ec;
  if (std::filesystem::equivalent(in, out, ec))
    throw ConfigError("the output " + out + " is the input: write to another file");
  const auto jsonl = [](const std::string& p) {
    return std::filesystem::path(p).extension() == ".jsonl";
  };
  std::string text = jsonl(out) ? "" : "[\n";
  size_t n = 0, pairs = 0;
  const SharegptNames names = from_layout == "sharegpt" ? sharegpt_names(in) : SharegptNames{};
  for_each_json_record(in, jsonl(in), [&](const RawRecord& raw) {
    try {
      nlohmann::json rec;
      try {
        rec = nlohmann::json::parse(raw.text);
      } catch (const nlohmann::json::exception& e) {
        throw Error(std::string("malformed JSON: ") + json_error_message(e));
      }
      const bool preference =
          rec.is_object() && (rec.contains("chosen") || rec.contains("rejected_response"));
      const auto converted =
          from_llava_record(to, to_llava_record(from_layout, rec, preference, names), preference);
      if (!jsonl(out) && n > 0) text += ",\n";
      text += converted.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      if (jsonl(out)) text += "\n";
      ++n;
      pairs += preference;
    } catch (const nlohmann::json::exception& e) {
      throw Error(in + ":" + std::to_string(raw.line) + ": record " + std::to_string(raw.index) +
                  ": malformed record: " + json_error_message(e));
    } catch (const Error& e) {
      throw Error(in + ":" + std::to_string(raw.line) + ": record " + std::to_string(raw.index) +
                  ": " + e.what());
    }
    return true;
  });
  if (!jsonl(out)) text += "\n]\n";
  write_file_atomic(out, text);
  spdlog::info("{} ({}) -> {} ({}): {} records ({} preference pairs)", in, from_layout, out, to, n,
               pairs);
  return 0;
}

}  // namespace

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
  auto* convert = data->add_subcommand(
      "convert",
      "Convert a dataset between layouts: llava (llava_json), sharegpt (LLaMA-Factory), messages "
      "(ms-swift, TRL); conversations and preference pairs");
  struct ConvertArgs {
    std::string from, to, in, out;
  };
  auto convert_args = std::make_shared<ConvertArgs>();
  convert->add_option("--from", convert_args->from, "Layout of IN: llava, sharegpt, messages")
      ->required();
  convert->add_option("--to", convert_args->to, "Layout of OUT: llava_json, sharegpt, messages")
      ->required();
  convert->add_option("IN", convert_args->in, "Input (JSON array, or .jsonl)")->required();
  convert->add_option("OUT", convert_args->out, "Output (JSON array, or .jsonl)")->required();
  return [args, check, check_args, convert, convert_args]() {
    if (check->parsed()) return run_data_check(check_args->config, check_args->overrides);
    if (convert->parsed())
      return run_convert(convert_args->from, convert_args->to, convert_args->in, convert_args->out);
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
