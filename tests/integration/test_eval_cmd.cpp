// `mllm eval` through the executable: a trained run's model on ShapesWorld's held-out questions.
#include <catch2/catch.hpp>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "fixtures.h"
#include "jsonl.h"
#include "run_mllm.h"
#include "test_util.h"
#include "train/trainer.h"

using namespace mllm;
using mllm::test::read_jsonl;
using mllm::test::Result;
using mllm::test::run_mllm;
using mllm::test::TempDir;

namespace {}  // namespace

TEST_CASE("eval: tasks from YAML on a run; predictions are what generate says; bad input") {
  TempDir data("mllm-eval");
  test::make_shapes(data.path(), 8, 3);
  Config c = test::tiny_config(data.path(), data / "run");
  c.data.template_name = "vicuna_v1";
  c.train.stage = "instruct";
  c.data.train.path = (data / "instruct_train.json").string();
  c.data.eval.path.clear();
  c.data.max_length = 160;
  c.train.max_steps = 2;
  train(c);

  const std::string images = (data / "images").string();
  const std::string questions = (data / "questions_val.json").string();
  test::write_text(data / "eval.yaml",
                   "run: {threads: 1}\neval:\n  batch_size: 4\n  tasks:\n"
                   "    - {name: qa, format: qa_json, path: " +
                       questions + ", image_root: " + images +
                       ", types: [color, size], metrics: [exact, vqa],"
                       " generation: {max_new_tokens: 4}}\n"
                       "    - {name: pope, format: qa_json, path: " +
                       questions + ", image_root: " + images +
                       ", types: [exists], metrics: [pope], generation: {max_new_tokens: 3}}\n"
                       "    - {name: caption, path: " +
                       (data / "captions_val.json").string() + ", image_root: " + images +
                       ", metrics: [cider_d, bleu], generation: {max_new_tokens: 6}}\n");
  const Result r = run_mllm("eval --config " + (data / "eval.yaml").string() + " --checkpoint " +
                            (data / "run").string());
  INFO(r.output);
  REQUIRE(r.code == 0);
  // The default output folder of a run, with the Markdown table also printed.
  const auto out = data / "run" / "eval";
  const auto results = nlohmann::json::parse(test::read_text(out / "results.json"));
  CHECK_THAT(r.output, Catch::Contains("| qa | all | 6 | exact accuracy |"));
  CHECK(test::read_text(out / "results.md").find("| pope | ") != std::string::npos);
  const auto& qa = results["tasks"]["qa"];
  CHECK(qa["n"] == 6);                   // 3 images, one color and one size question each
  CHECK(qa["template"] == "vicuna_v1");  // recorded in final/tokenizer_config.json
  CHECK(results["tasks"]["pope"]["n"] == 6);
  CHECK(results["tasks"]["caption"]["n"] == 3);
  for (const char* m : {"exact", "vqa"}) {
    INFO(m);
    CHECK(qa["scores"][m].contains("by_category"));
    CHECK(qa["chance"][m].is_object());
  }
  CHECK(results["tasks"]["caption"]["scores"]["bleu"].contains("bleu_4"));

  // Each prediction is what `mllm generate` replies to the same question alone (batched, left
  // padded generation gives the same greedy tokens).
  const auto preds = read_jsonl(out / "predictions" / "qa.jsonl");
  REQUIRE(preds.size() == 6);
  const auto records = nlohmann::json::parse(test::read_text(questions));
  int checked = 0;
  for (const auto& p : preds) {
    for (const auto& rec : records) {
      if (rec["id"] != p["id"] || checked >= 2) continue;
      std::string question = rec["question"].get<std::string>().substr(8);  // after "<image>\n"
      std::string quoted;
      for (char ch : question) quoted += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
      const Result g = run_mllm("generate --checkpoint " + (data / "run").string() + " --image " +
                                (data / "images" / rec["image"].get<std::string>()).string() +
                                " --prompt '" + quoted + "' --max-new-tokens 4 --threads 1");
      REQUIRE(g.code == 0);
      std::string reply = mllm::test::first_reply_line(g.output);
      while (!reply.empty() && reply.back() == ' ') reply.pop_back();
      while (!reply.empty() && reply.front() == ' ') reply.erase(0, 1);
      CHECK(reply == p["text"].get<std::string>());
      CHECK(p["answers"] == rec["answers"]);
      ++checked;
    }
  }
  CHECK(checked == 2);

  // The run report: every plot and held-out image decodes in a browser (headless Chromium reads
  // the page's own count of rendered images), and a screenshot is kept for a person to look at.
  {
    const auto report = data / "report";
    const Result rep = run_mllm("report " + (data / "run").string() + " --out " + report.string());
    INFO(rep.output);
    REQUIRE(rep.code == 0);
    for (const char* png : {"loss.png", "lr.png", "grad_norm.png", "throughput.png"})
      CHECK(std::filesystem::file_size(report / png) > 1000);
    const std::string html = test::read_text(report / "report.html");
    CHECK(html.find("http://") == std::string::npos);  // self-contained
    CHECK(html.find("https://") == std::string::npos);
    CHECK(html.find("Held-out samples") != std::string::npos);
    CHECK(html.find(preds[0]["text"].get<std::string>()) != std::string::npos);
    const std::string chromium =
        "chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
        "--virtual-time-budget=3000 ";
    const Result dom = test::run_shell(chromium + "--dump-dom file://" +
                                       (report / "report.html").string() + " 2>/dev/null");
    INFO(dom.output.substr(0, 400));
    REQUIRE(dom.code == 0);
    const auto at = dom.output.find("<title>report: ");
    REQUIRE(at != std::string::npos);
    int ok = -1, all = -2;
    REQUIRE(std::sscanf(dom.output.c_str() + at, "<title>report: %d of %d", &ok, &all) == 2);
    CHECK(all >= 4 + 3 * 4);  // four plots at least, and the samples' images
    CHECK(ok == all);
    const auto shot = std::filesystem::path(MLLM_BIN).parent_path() / "report-screenshot.png";
    std::filesystem::remove(shot);
    CHECK(test::run_shell(chromium + "--window-size=1600,2400 --screenshot=" + shot.string() +
                          " file://" + (report / "report.html").string() + " 2>/dev/null")
              .code == 0);
    CHECK(std::filesystem::exists(shot));
    // A directory with nothing to report is an error naming it.
    const Result none = run_mllm("report " + (data / "images").string());
    CHECK(none.code == 1);
    CHECK_THAT(none.output, Catch::Contains("no metrics.jsonl"));
  }

  // Earlier results side by side, the chance baseline last.
  const Result cmp =
      run_mllm("eval --compare a=" + out.string() + " b=" + (out / "results.json").string());
  REQUIRE(cmp.code == 0);
  CHECK_THAT(cmp.output, Catch::Contains("| task | type | score | a | b | chance |"));
  CHECK_THAT(cmp.output, Catch::Contains("| qa | color | exact accuracy |"));
  CHECK(run_mllm("eval --compare a=" + (data / "nowhere").string()).code == 2);

  // Bad input: a typo in the recipe, a corrupt question file, a missing checkpoint.
  test::write_text(data / "typo.yaml",
                   "eval:\n  tasks:\n    - {name: a, path: " + questions + ", metric: [exact]}\n");
  const Result typo = run_mllm("eval --config " + (data / "typo.yaml").string() + " --checkpoint " +
                               (data / "run").string());
  CHECK(typo.code == 2);
  CHECK_THAT(typo.output, Catch::Contains("eval.tasks[0].metric: unknown key"));
  CHECK_THAT(typo.output, Catch::Contains("did you mean eval.tasks[].metrics?"));
  test::write_text(data / "bad.json", "[{\"id\": \"x\", \"question\": \"q?\"},\n{\"id\": 2");
  test::write_text(data / "bad.yaml", "eval:\n  tasks:\n    - {name: a, format: qa_json, path: " +
                                          (data / "bad.json").string() + "}\n");
  const Result bad = run_mllm("eval --config " + (data / "bad.yaml").string() + " --checkpoint " +
                              (data / "run").string());
  CHECK(bad.code == 1);
  CHECK_THAT(bad.output, Catch::Contains((data / "bad.json").string() + ":1: record 0"));
  CHECK_THAT(bad.output, Catch::Contains("needs \"answers\" or \"answer\""));
  const Result nowhere = run_mllm("eval --config " + (data / "eval.yaml").string() +
                                  " --checkpoint " + (data / "nowhere").string());
  CHECK(nowhere.code == 2);
  CHECK_THAT(nowhere.output, Catch::Contains("neither a llava folder"));
}
