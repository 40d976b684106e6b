// The demo's report card (eval/report_card.h) from runs laid out as scripts/demo leaves them.
#include <catch2/catch.hpp>

#include "core/error.h"
#include "eval/report_card.h"
#include "test_util.h"

using namespace mllm;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

const eval::CardRow& row(const std::vector<eval::CardRow>& rows, const std::string& stage,
                         const std::string& figure) {
  for (const auto& r : rows)
    if (r.stage == stage && r.figure.find(figure) != std::string::npos) return r;
  FAIL("no row " << stage << " " << figure);
  return rows.front();
}

std::string results(double cider, double cider_chance, double qa, double color, double color_chance,
                    double hallucination, double pope_accuracy = 0.5) {
  return R"({"tasks": {"caption": {"scores": {"cider_d": {"n": 5, "cider_d": )" +
         std::to_string(cider) + R"(}}, "chance": {"cider_d": {"cider_d": )" +
         std::to_string(cider_chance) + R"(}}},
  "qa": {"scores": {"exact": {"accuracy": )" +
         std::to_string(qa) + R"(, "by_category": {"color": {"accuracy": )" +
         std::to_string(color) +
         R"(}}}}, "chance": {"exact": {"accuracy": 0.2, "by_category": {"color": {"accuracy": )" +
         std::to_string(color_chance) + R"(}}}},
         "prior": {"exact": {"accuracy": 0.4, "by_category": {"color": {"accuracy": 0.55}}}}},
  "pope": {"scores": {"pope": {"hallucination_rate": )" +
         std::to_string(hallucination) + R"(, "accuracy": )" + std::to_string(pope_accuracy) +
         "}}}}}";
}

}  // namespace

TEST_CASE("report card: each stage's held-out figure next to its baseline and target") {
  TempDir dir("mllm-card");
  const auto d = dir.path();
  write_text(
      d / "encoder/metrics.jsonl",
      R"({"step": 10, "loss": 3.0})"
      "\n"
      R"({"step": 10, "eval_loss": 2.0, "eval_recall@1": 0.05, "eval_recall@1_chance": 0.02})"
      "\n"
      R"({"step": 20, "eval_loss": 1.0, "eval_recall@1": 0.4, "eval_recall@1_chance": 0.02,)"
      R"( "eval_recall@5": 0.8, "eval_recall@5_chance": 0.1})"
      "\n");
  write_text(d / "stage0/metrics.jsonl", R"({"step": 5, "eval_loss": 0.8})"
                                         "\n");
  write_text(d / "stage1/metrics.jsonl", R"({"step": 5, "eval_loss": 0.7})"
                                         "\n"
                                         R"({"step": 9, "eval_loss": 0.5})"
                                         "\n");
  write_text(d / "stage1/eval/results.json", results(1.5, 0.7, 0.1, 0.1, 0.1, 0.5));
  write_text(d / "stage2/eval/results.json", results(2.0, 0.7, 0.75, 0.3, 0.2, 0.4, 0.55));
  write_text(d / "stage3/eval/results.json", results(2.0, 0.7, 0.75, 0.5, 0.2, 0.3, 0.6));
  write_text(d / "stage3/metrics.jsonl",
             R"({"step": 0, "eval_loss": 0.69, "eval_rewards/accuracies": 0.6})"
             "\n"
             R"({"step": 9, "eval_loss": 0.4, "eval_rewards/accuracies": 0.85})"
             "\n");
  const auto rows = eval::report_card(d);

  // The last evaluation of each run counts.
  const auto& r1 = row(rows, "encoder", "recall@1");
  CHECK(*r1.value == Approx(0.4));
  CHECK(*r1.baseline == Approx(0.02));
  CHECK(*r1.met);
  CHECK(*row(rows, "encoder", "recall@5").value == Approx(0.8));
  // Stage 1's caption loss against the text-only stage 0: 0.5 <= 0.7 x 0.8 = 0.56.
  const auto& loss = row(rows, "1", "caption loss");
  CHECK(*loss.value == Approx(0.5));
  CHECK(*loss.baseline == Approx(0.8));
  CHECK(*loss.met);
  const auto& cider = row(rows, "1", "CIDEr-D");
  CHECK(*cider.value == Approx(1.5));
  CHECK(*cider.met);  // 1.5 >= 2 x 0.7
  CHECK(*row(rows, "2", "all open").met);
  // Colour 0.3 against chance 0.2: below 2x chance, and 2x chance is within reach.
  const auto& colour = row(rows, "2", "color");
  CHECK(*colour.baseline == Approx(0.2));
  CHECK_FALSE(*colour.met);
  // A type without results has no verdict.
  CHECK_FALSE(row(rows, "2", "what_at").met.has_value());
  // POPE: stage 3 against stage 2 (0.3 < 0.4); reward accuracy at the end against the start.
  CHECK(*row(rows, "3", "POPE").baseline == Approx(0.4));
  CHECK(*row(rows, "3", "POPE").met);
  // POPE's accuracy beside it, stage 3 against stage 2, without a verdict.
  const auto& pope_accuracy = row(rows, "3", "POPE accuracy");
  CHECK(*pope_accuracy.value == Approx(0.6));
  CHECK(*pope_accuracy.baseline == Approx(0.55));
  CHECK_FALSE(pope_accuracy.met.has_value());
  const auto& reward = row(rows, "3", "reward");
  CHECK(*reward.value == Approx(0.85));
  CHECK(*reward.baseline == Approx(0.6));
  CHECK(*reward.met);

  const std::string md = eval::report_card_markdown(rows);
  CHECK_THAT(md, Catch::Contains("| encoder | image->caption recall@1 (among 50) | 0.400 | 0.020 "
                                 "chance | >= 5x chance | yes |"));
  CHECK_THAT(md, Catch::Contains("| 2 | answers, color | 0.300 | 0.200 chance (prior 0.550) |"));
  // The prior is shown, not judged against: a type without one says chance alone.
  CHECK_THAT(md, Catch::Contains("| 2 | answers, all open questions | "));
  CHECK_THAT(md, Catch::Contains("chance (prior 0.400) | >= 0.7 |"));
  CHECK_THAT(md, Catch::Contains("| 2 | answers, shape | - | - | >= 2x chance (or 0.9) |"));
  CHECK_THAT(md, Catch::Contains("targets met: 6 of 12"));
  // Without a stage2v run, no rows of it.
  for (const auto& r : rows) CHECK(r.stage != "2v");

  // Stage 2v: the visual questions against chance; the base-resolution row is shown, not judged.
  auto task = [](const char* name, double value, double chance) {
    return std::string("\"") + name + R"(": {"scores": {"exact": {"accuracy": )" +
           std::to_string(value) + R"(}}, "chance": {"exact": {"accuracy": )" +
           std::to_string(chance) + "}}}";
  };
  write_text(d / "stage2v/eval/results.json",
             "{\"tasks\": {" + task("hires", 0.9, 0.2) + ", " + task("hires_base", 0.25, 0.2) +
                 ", " + task("two_image", 0.45, 0.5) + ", " + task("motion", 1.0, 0.25) + "}}");
  const auto with_2v = eval::report_card(d);
  CHECK(*row(with_2v, "2v", "AnyRes").met);
  CHECK(*row(with_2v, "2v", "AnyRes").baseline == Approx(0.2));
  CHECK(*row(with_2v, "2v", "base image only").value == Approx(0.25));
  CHECK_FALSE(row(with_2v, "2v", "base image only").met.has_value());
  CHECK_FALSE(*row(with_2v, "2v", "two images").met);  // 0.45 is not above 0.5
  CHECK(*row(with_2v, "2v", "moves").met);
  CHECK_THAT(eval::report_card_markdown(with_2v), Catch::Contains("targets met: 8 of 15"));
}

TEST_CASE("report card: missing runs give empty rows; a malformed line names file and line") {
  TempDir dir("mllm-card-bad");
  auto rows = eval::report_card(dir.path());
  for (const auto& r : rows) {
    CHECK_FALSE(r.value.has_value());
    CHECK_FALSE(r.met.has_value());
  }
  CHECK_THAT(eval::report_card_markdown(rows), Catch::Contains("targets met: 0 of 12"));
  write_text(dir / "stage0/metrics.jsonl", "{\"step\": 1, \"eval_loss\": 0.8}\n{\"step\": 2,\n");
  try {
    eval::report_card(dir.path());
    FAIL("no error");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("stage0/metrics.jsonl:2: malformed JSON"));
  }
}
