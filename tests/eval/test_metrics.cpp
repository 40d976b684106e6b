// Metrics against vectors made by the published reference code (tests/reference/
// metrics_reference.py runs pycocoevalcap's scorers, VQAv2's vqaEval.py and POPE's evaluate.py),
// and the parsing rules read from the reference code where it cannot run here.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/metrics.h"
#include "test_util.h"

using namespace mllm;
using namespace mllm::eval;
using Json = nlohmann::json;

namespace {

const Json& vectors() {
  static const Json j = Json::parse(
      test::read_text(std::string(MLLM_SOURCE_DIR) + "/tests/fixtures/metrics/vectors.json"));
  return j;
}

}  // namespace

TEST_CASE("metrics: CIDEr-D, BLEU-1..4 and ROUGE-L equal pycocoevalcap's to 1e-6") {
  for (const auto& c : vectors()["captions"]) {
    const auto refs = c["refs"].get<std::vector<std::vector<std::string>>>();
    const auto cands = c["cands"].get<std::vector<std::string>>();
    INFO(c["cands"].dump());
    std::vector<double> items;
    CHECK(cider_d(refs, cands, &items) == Approx(c["cider_d"].get<double>()).margin(1e-6));
    REQUIRE(items.size() == c["cider_d_items"].size());
    for (size_t i = 0; i < items.size(); ++i)
      CHECK(items[i] == Approx(c["cider_d_items"][i].get<double>()).margin(1e-6));
    const auto b = bleu(refs, cands);
    for (size_t k = 0; k < 4; ++k) CHECK(b[k] == Approx(c["bleu"][k].get<double>()).margin(1e-6));
    CHECK(rouge_l(refs, cands) == Approx(c["rouge_l"].get<double>()).margin(1e-6));
  }
}

TEST_CASE("metrics: VQA answer normalisation and accuracy equal vqaEval.py's") {
  for (const auto& n : vectors()["vqa"]["normalize"]) {
    INFO(n["in"].get<std::string>());
    CHECK(vqa_normalize(n["in"].get<std::string>()) == n["out"].get<std::string>());
  }
  for (const auto& a : vectors()["vqa"]["accuracy"]) {
    INFO(a["prediction"].get<std::string>() + " vs " + a["answers"].dump());
    CHECK(vqa_accuracy(a["prediction"], a["answers"].get<std::vector<std::string>>()) ==
          Approx(a["accuracy"].get<double>()).margin(1e-6));
  }
}

TEST_CASE("metrics: POPE's yes/no reading and scores equal evaluate.py's") {
  const auto& p = vectors()["pope"];
  std::vector<Prediction> preds;
  std::vector<Reference> refs;
  for (size_t i = 0; i < p["answers"].size(); ++i) {
    const std::string a = p["answers"][i];
    INFO(a);
    CHECK(pope_says_yes(a) == (p["parsed"][i] == "yes"));
    preds.push_back({std::to_string(i), a});
    refs.push_back({std::to_string(i), {p["labels"][i].get<std::string>()}, "", ""});
  }
  const Json s = score("pope", preds, refs);
  for (const char* k : {"accuracy", "precision", "recall", "f1", "yes_ratio"}) {
    INFO(k);
    CHECK(s[k].get<double>() == Approx(p[k].get<double>()).margin(1e-6));
  }
  // The hallucination rate: absent objects ("no" labels) answered yes.
  int no = 0, yes_on_no = 0;
  for (size_t i = 0; i < p["labels"].size(); ++i)
    if (p["labels"][i] == "no") ++no, yes_on_no += p["parsed"][i] == "yes";
  CHECK(s["hallucination_rate"].get<double>() == Approx(double(yes_on_no) / no));
}

TEST_CASE("metrics: PTB tokenization as coco-caption's tokenizer step") {
  // Expected outputs derived from Stanford PTBLexer's documented rules (the Java tokenizer does
  // not run here): punctuation split off and then dropped by coco's PUNCTUATIONS list, clitics
  // split, numbers and hyphenated words kept, brackets renamed and lower-cased (kept).
  CHECK(ptb_tokenize("A man riding a horse.") == "a man riding a horse");
  CHECK(ptb_tokenize("It's a dog's toy, isn't it?") == "it 's a dog 's toy is n't it");
  CHECK(ptb_tokenize("I can't see; they're here: 3.5 m, 1,000 ft!") ==
        "i ca n't see they 're here 3.5 m 1,000 ft");
  CHECK(ptb_tokenize("A well-known cat -- on the mat...") == "a well-known cat on the mat");
  CHECK(ptb_tokenize("two (small) cars") == "two -lrb- small -rrb- cars");
  CHECK(ptb_tokenize("He said \"hi\" to Mr. Smith") == "he said hi to mr. smith");
  CHECK(ptb_tokenize("at the bottom .") == "at the bottom");
  CHECK(ptb_tokenize("") == "");
}

TEST_CASE("metrics: multiple-choice letters and MME's yes/no, as the published evaluators read") {
  // llava/eval/eval_science_qa.py: a letter alone, "X. ...", or one "The answer is X.".
  CHECK(extract_choice_letter("B") == 'B');
  CHECK(extract_choice_letter("C. a red star") == 'C');
  CHECK(extract_choice_letter("The answer is A.") == 'A');
  CHECK(extract_choice_letter("I think The answer is D, clearly") == 'D');
  CHECK_FALSE(extract_choice_letter("The answer is A. The answer is B."));
  CHECK_FALSE(extract_choice_letter("the answer is a."));  // that form is case-sensitive
  CHECK_FALSE(extract_choice_letter("a red star"));
  CHECK_FALSE(extract_choice_letter(""));
  CHECK(extract_choice_letter("c.") == 'C');  // ShapesWorld's short forms
  CHECK(extract_choice_letter("c .") == 'C');
  CHECK_FALSE(extract_choice_letter("c . d"));
  CHECK(extract_choice_letter(" b ") == 'B');
  // MME calculation.py parse_pred_ans.
  CHECK(mme_parse("Yes") == "yes");
  CHECK(mme_parse("no") == "no");
  CHECK(mme_parse("Yes, it is.") == "yes");
  CHECK(mme_parse("Not really") == "no");
  CHECK(mme_parse("I think yes") == "other");
  // acc over questions, acc+ over images (both right), score = 100 (acc + acc+), summed by task.
  const std::vector<Reference> refs = {
      {"1", {"yes"}, "img1", "count"}, {"2", {"no"}, "img1", "count"},
      {"3", {"yes"}, "img2", "count"}, {"4", {"no"}, "img2", "count"},
      {"5", {"yes"}, "img3", "color"}, {"6", {"no"}, "img3", "color"}};
  const std::vector<Prediction> preds = {{"1", "Yes"}, {"2", "No"},  {"3", "yes"},
                                         {"4", "yes"}, {"5", "hmm"}, {"6", "no"}};
  const Json s = score("mme", preds, refs);
  CHECK(s["by_category"]["count"]["acc"] == Approx(0.75));
  CHECK(s["by_category"]["count"]["acc_plus"] == Approx(0.5));
  CHECK(s["by_category"]["count"]["score"] == Approx(125.0));
  CHECK(s["by_category"]["color"]["acc"] == Approx(0.5));
  CHECK(s["by_category"]["color"]["acc_plus"] == Approx(0.0));
  CHECK(s["total_score"] == Approx(175.0));
}

TEST_CASE("metrics: score() matches predictions to references by id; bad input is one error") {
  const std::vector<Reference> refs = {{"a", {"Two"}, "", "count"}, {"b", {"red"}, "", "color"}};
  const Json s = score("exact", {{"b", "Red."}, {"a", "2"}}, refs);
  CHECK(s["accuracy"] == Approx(1.0));
  CHECK(s["n"] == 2);
  CHECK(s["by_category"]["count"]["accuracy"] == Approx(1.0));
  CHECK(score("exact", {{"b", "blue"}, {"a", "2"}}, refs)["accuracy"] == Approx(0.5));
  const Json mc =
      score("mc", {{"x", "b."}, {"y", "zzz"}}, {{"x", {"b"}, "", ""}, {"y", {"a"}, "", ""}});
  CHECK(mc["accuracy"] == Approx(0.5));
  CHECK(mc["n_unparsed"] == 1);
  CHECK_THROWS_WITH(score("exact", {{"a", "2"}}, refs),
                    Catch::Contains("no prediction for reference id \"b\""));
  CHECK_THROWS_WITH(score("exact", {{"a", "2"}, {"b", "x"}, {"c", "y"}}, refs),
                    Catch::Contains("no reference for prediction id \"c\""));
  CHECK_THROWS_AS(score("cidr", {}, {}), ConfigError);
  CHECK_THROWS_WITH(score("pope", {{"a", "yes"}}, {{"a", {"maybe"}, "", ""}}),
                    Catch::Contains("must be yes or no"));

  test::TempDir dir("mllm-metrics");
  test::write_text(dir / "p.jsonl", "{\"id\": \"a\", \"text\": \"2\"}\n\n{\"id\": \"b\"}\n");
  CHECK_THROWS_WITH(read_predictions(dir / "p.jsonl"),
                    Catch::Contains((dir / "p.jsonl").string() + ":3: needs \"text\""));
  test::write_text(dir / "r.jsonl", "{\"id\": 1, \"answer\": \"x\", \"type\": \"t\"}\n{oops\n");
  CHECK_THROWS_WITH(read_references(dir / "r.jsonl"),
                    Catch::Contains((dir / "r.jsonl").string() + ":2: malformed JSON"));
  test::write_text(dir / "r.jsonl", "{\"id\": 1, \"answer\": \"x\", \"type\": \"t\"}\n");
  const auto r = read_references(dir / "r.jsonl");
  REQUIRE(r.size() == 1);
  CHECK(r[0].id == "1");
  CHECK(r[0].category == "t");
}
