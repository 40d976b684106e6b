#include "eval/report_card.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace mllm::eval {

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// The records of a metrics.jsonl that hold `key` (the evaluations), in order; none when the file
// is missing.
std::vector<Json> records_with(const fs::path& file, const std::string& key) {
  std::vector<Json> out;
  if (!fs::is_regular_file(file)) return out;
  std::istringstream in(read_file(file));
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Json::exception& e) {
      throw Error(file.string() + ":" + std::to_string(line_no) + ": malformed JSON (" + e.what() +
                  ")");
    }
    if (j.is_object() && j.contains(key) && j[key].is_number()) out.push_back(std::move(j));
  }
  return out;
}

std::optional<double> number(const Json& j, const std::string& key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return std::nullopt;
  return j[key].get<double>();
}

std::optional<double> last_eval(const fs::path& run, const std::string& key) {
  const auto r = records_with(run / "metrics.jsonl", key);
  return r.empty() ? std::nullopt : number(r.back(), key);
}

std::optional<double> first_eval(const fs::path& run, const std::string& key) {
  const auto r = records_with(run / "metrics.jsonl", key);
  return r.empty() ? std::nullopt : number(r.front(), key);
}

// results.json of a run's `mllm eval` (null when there is none).
Json results(const fs::path& run) {
  const fs::path file = run / "eval" / "results.json";
  if (!fs::is_regular_file(file)) return nullptr;
  try {
    return Json::parse(read_file(file));
  } catch (const Json::exception& e) {
    throw Error(file.string() + ": malformed JSON (" + e.what() + ")");
  }
}

// tasks.<task>.<which>.<metric>[.by_category.<type>].<key>, which = "scores", "chance" or
// "prior".
std::optional<double> score(const Json& r, const std::string& task, const std::string& which,
                            const std::string& metric, const std::string& key,
                            const std::string& type = "") {
  if (!r.is_object() || !r.contains("tasks") || !r["tasks"].contains(task)) return std::nullopt;
  const Json& t = r["tasks"][task];
  if (!t.contains(which) || !t[which].contains(metric)) return std::nullopt;
  const Json* j = &t[which][metric];
  if (!type.empty()) {
    if (!j->contains("by_category") || !(*j)["by_category"].contains(type)) return std::nullopt;
    j = &(*j)["by_category"][type];
  }
  return number(*j, key);
}

std::string show(const std::optional<double>& v) {
  return v ? fmt::format("{:.3f}", *v) : std::string("-");
}

}  // namespace

std::vector<CardRow> report_card(const fs::path& dir) {
  std::vector<CardRow> rows;
  auto add = [&](CardRow r, bool (*test)(double value, double baseline)) {
    if (test && r.value && r.baseline) r.met = test(*r.value, *r.baseline);
    rows.push_back(std::move(r));
  };

  const fs::path enc = dir / "encoder";
  add({"encoder",
       "image->caption recall@1 (among 50)",
       last_eval(enc, "eval_recall@1"),
       last_eval(enc, "eval_recall@1_chance"),
       "chance",
       ">= 5x chance",
       {}},
      [](double v, double b) { return v >= 5 * b; });
  add({"encoder",
       "image->caption recall@5 (among 50)",
       last_eval(enc, "eval_recall@5"),
       last_eval(enc, "eval_recall@5_chance"),
       "chance",
       "",
       {}},
      nullptr);

  const auto text_only = last_eval(dir / "stage0", "eval_loss");
  add({"0", "caption loss per token, text only", text_only, {}, "", "", {}}, nullptr);

  const fs::path s1 = dir / "stage1";
  add({"1",
       "caption loss per token, with the image",
       last_eval(s1, "eval_loss"),
       text_only,
       "stage 0 (text only)",
       "<= 0.7x stage 0",
       {}},
      [](double v, double b) { return v <= 0.7 * b; });
  const Json r1 = results(s1);
  add({"1",
       "caption CIDEr-D",
       score(r1, "caption", "scores", "cider_d", "cider_d"),
       score(r1, "caption", "chance", "cider_d", "cider_d"),
       "chance",
       ">= 2x chance",
       {}},
      [](double v, double b) { return v >= 2 * b; });

  const Json r2 = results(dir / "stage2");
  // The target is against chance; the per-type prior (the type's most frequent answer, which a
  // model blind to the image can learn) is shown with it.
  const auto chance_and_prior = [&](const std::string& type) {
    const auto prior = score(r2, "qa", "prior", "exact", "accuracy", type);
    return prior ? "chance (prior " + show(prior) + ")" : std::string("chance");
  };
  add({"2",
       "answers, all open questions",
       score(r2, "qa", "scores", "exact", "accuracy"),
       score(r2, "qa", "chance", "exact", "accuracy"),
       chance_and_prior(""),
       ">= 0.7",
       {}},
      [](double v, double) { return v >= 0.7; });
  for (const char* type : {"color", "shape", "size", "count", "position", "what_at"})
    add({"2",
         std::string("answers, ") + type,
         score(r2, "qa", "scores", "exact", "accuracy", type),
         score(r2, "qa", "chance", "exact", "accuracy", type),
         chance_and_prior(type),
         ">= 2x chance (or 0.9)",
         {}},
        [](double v, double b) { return v >= std::min(2 * b, 0.9); });

  const Json r3 = results(dir / "stage3");
  add({"3",
       "POPE: says yes to an absent object",
       score(r3, "pope", "scores", "pope", "hallucination_rate"),
       score(r2, "pope", "scores", "pope", "hallucination_rate"),
       "stage 2",
       "below stage 2",
       {}},
      [](double v, double b) { return v < b; });
  // Shown, not judged: a lower rate that comes from saying "no" to everything leaves this at 0.5.
  add({"3",
       "POPE accuracy, present and absent objects",
       score(r3, "pope", "scores", "pope", "accuracy"),
       score(r2, "pope", "scores", "pope", "accuracy"),
       "stage 2",
       "",
       {}},
      nullptr);
  const fs::path s3 = dir / "stage3";
  add({"3",
       "reward accuracy, preference pairs",
       last_eval(s3, "eval_rewards/accuracies"),
       first_eval(s3, "eval_rewards/accuracies"),
       "at the start (policy = reference)",
       ">= 0.8",
       {}},
      [](double v, double) { return v >= 0.8; });

  // Stage 2 continued on the visual questions (stage2_visual.yaml, eval_visual.yaml), when run.
  const fs::path s2v = dir / "stage2v";
  if (fs::exists(s2v)) {
    const Json rv = results(s2v);
    const auto above_chance = [](double v, double b) { return v > b; };
    const auto task_row = [&](const char* task, const std::string& figure, bool judged) {
      add({"2v",
           figure,
           score(rv, task, "scores", "exact", "accuracy"),
           score(rv, task, "chance", "exact", "accuracy"),
           "chance",
           judged ? "above chance" : "",
           {}},
          judged ? +above_chance : nullptr);
    };
    task_row("hires", "shape of a small object in a 144-px image, AnyRes tiles", true);
    task_row("hires_base", "the same, the 72-px base image only", false);
    task_row("two_image", "which of two images has more shapes", true);
    task_row("motion", "which way a shape moves, 3 frames", true);
  }
  return rows;
}

std::string report_card_markdown(const std::vector<CardRow>& rows) {
  std::string md =
      "| stage | held-out figure | result | baseline | target | met |\n"
      "|---|---|---:|---|---|:-:|\n";
  int64_t targets = 0, met = 0;
  for (const auto& r : rows) {
    const std::string baseline =
        r.baseline ? show(r.baseline) + " " + r.baseline_name : std::string("-");
    std::string ok;
    if (!r.target.empty()) {
      ++targets;
      ok = !r.met ? "?" : *r.met ? "yes" : "no";
      met += r.met.value_or(false);
    }
    md += "| " + r.stage + " | " + r.figure + " | " + show(r.value) + " | " + baseline + " | " +
          r.target + " | " + ok + " |\n";
  }
  md += fmt::format("\ntargets met: {} of {}\n", met, targets);
  return md;
}

}  // namespace mllm::eval
