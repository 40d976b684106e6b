// `mllm score --metric M --predictions P.jsonl --references R.jsonl`: scores outputs made anywhere
// (eval/metrics.h) and prints the result as JSON, so numbers compare with other tools'.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "eval/metrics.h"

namespace mllm::cli {

Action add_score_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "score",
      "Score predictions against references (cider_d, bleu, rouge_l, vqa, exact, mc, "
      "pope, mme)");
  struct Args {
    std::string metric, predictions, references, output;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--metric", args->metric,
                  "cider_d | bleu | rouge_l | vqa | exact | mc | pope | mme")
      ->required();
  cmd->add_option("--predictions", args->predictions, "JSONL: {\"id\", \"text\"} per line")
      ->required();
  cmd->add_option("--references", args->references,
                  "JSONL: {\"id\", \"answers\": [...]} (or \"answer\"; optional \"type\", "
                  "\"group\") per line")
      ->required();
  cmd->add_option("--output", args->output, "also write the JSON here");
  return [args]() {
    const auto& names = eval::metric_names();
    if (std::find(names.begin(), names.end(), args->metric) == names.end())
      eval::score(args->metric, {}, {});  // throws the ConfigError listing the metrics
    const auto predictions = eval::read_predictions(args->predictions);
    const auto references = eval::read_references(args->references);
    nlohmann::json result;
    try {
      result = eval::score(args->metric, predictions, references);
    } catch (const ConfigError&) {
      throw;
    } catch (const Error& e) {
      throw Error(args->predictions + " / " + args->references + ": " + e.what());
    }
    const std::string text = result.dump(2) + "\n";
    if (!args->output.empty()) write_file_atomic(args->output, text);
    std::fputs(text.c_str(), stdout);
    return 0;
  };
}

}  // namespace mllm::cli
