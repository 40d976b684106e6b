// The ShapesWorld demo's report card: one table of what each stage of the pipeline did, read from
// the runs scripts/demo leaves in one folder — encoder/ (the clip stage), stage0/ .. stage3/,
// each with metrics.jsonl, and stages 1-3 with eval/results.json (mllm eval). Each row is one
// held-out figure of one stage, next to its baseline (chance, the text-only stage-0 model, or the
// model the stage started from) and the demo's target for it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace mllm::eval {

struct CardRow {
  std::string stage;   // "encoder", "0".."3", "2v" (the visual questions, when run)
  std::string figure;  // what is measured, held out
  std::optional<double> value, baseline;
  std::string baseline_name;  // "chance", "stage 0 (text only)", ...
  std::string target;         // the demo's target, in words ("" when none)
  std::optional<bool> met;    // unset: no target, or a run is missing
};

// The rows from the runs under `dir` (missing runs give rows without values). A malformed
// metrics.jsonl line or results.json is an Error naming the file (and line).
std::vector<CardRow> report_card(const std::filesystem::path& dir);

// The table in Markdown, then a line "targets met: k of n".
std::string report_card_markdown(const std::vector<CardRow>& rows);

}  // namespace mllm::eval
