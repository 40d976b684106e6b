// The sweep's pure parts: --grid parsing, grid expansion, run names, sweep files, key checks, and
// the summary read from run outputs; multi-stage sweeps run with a stand-in for `mllm train` (a
// shell script that records its arguments and writes a run's outputs). Whole sweeps through the
// CLI are in tests/integration/test_sweep.cpp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include <opencv2/imgcodecs.hpp>

#include "core/error.h"
#include "test_util.h"
#include "train/sweep.h"
#include "train/sweep_report.h"

using namespace mllm;
using mllm::test::read_text;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

template <class F>
std::string config_error(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

}  // namespace

TEST_CASE("sweep: a --grid argument splits into values at commas outside brackets and quotes") {
  const GridAxis a = parse_grid_arg("model.connector.type=linear,mlp2x_gelu");
  CHECK(a.key == "model.connector.type");
  CHECK(a.values == std::vector<std::string>{"linear", "mlp2x_gelu"});
  CHECK(parse_grid_arg("train.lr= 1e-3 , 3e-3").values == std::vector<std::string>{"1e-3", "3e-3"});
  CHECK(parse_grid_arg("train.betas=[0.9,0.99],[0.9, 0.999]").values ==
        std::vector<std::string>{"[0.9,0.99]", "[0.9, 0.999]"});
  CHECK(parse_grid_arg("run.name='a,b',c").values == std::vector<std::string>{"'a,b'", "c"});
  CHECK(parse_grid_arg("train.lr=1e-3").values.size() == 1);

  CHECK_THAT(config_error([] { parse_grid_arg("train.lr"); }),
             Catch::Contains("--grid train.lr: expected key.path=value1,value2"));
  CHECK_THAT(config_error([] { parse_grid_arg("=1,2"); }), Catch::Contains("expected key.path="));
  CHECK_THAT(config_error([] { parse_grid_arg("train.lr="); }),
             Catch::Contains("--grid train.lr=: no values"));
  CHECK_THAT(config_error([] { parse_grid_arg("train.lr=1,,2"); }),
             Catch::Contains("value 2 is empty"));
  CHECK_THAT(config_error([] { parse_grid_arg("train.betas=[0.9,0.99"); }),
             Catch::Contains("unbalanced"));
}

TEST_CASE("sweep: the grid expands to its cartesian product, first key slowest, values in order") {
  const std::vector<GridAxis> grid = {{"model.connector.type", {"linear", "mlp2x_gelu"}},
                                      {"train.lr", {"1e-3", "3e-3", "1e-2"}}};
  const auto runs = expand_grid(grid);
  REQUIRE(runs.size() == 6);
  CHECK(runs[0].name == "model.connector.type=linear,train.lr=1e-3");
  CHECK(runs[1].name == "model.connector.type=linear,train.lr=3e-3");
  CHECK(runs[3].name == "model.connector.type=mlp2x_gelu,train.lr=1e-3");
  CHECK(runs[5].name == "model.connector.type=mlp2x_gelu,train.lr=1e-2");
  CHECK(runs[4].overrides == std::vector<std::pair<std::string, std::string>>{
                                 {"model.connector.type", "mlp2x_gelu"}, {"train.lr", "3e-3"}});
  CHECK(expand_grid({{"train.lr", {"1e-3"}}}).size() == 1);
  CHECK(expand_grid({}).empty());
  CHECK(expand_grid({{"train.lr", {"1e-3"}}, {"train.epochs", {}}}).empty());
}

TEST_CASE("sweep: run names are safe file names") {
  CHECK(sanitize_file_name("model.connector.type=linear,train.lr=1e-3") ==
        "model.connector.type=linear,train.lr=1e-3");
  CHECK(run_name({{"model.llm.pretrained", "runs/a b/final"}}) ==
        "model.llm.pretrained=runs_a_b_final");
  CHECK(run_name({{"train.betas", "[0.9, 0.99]"}}) == "train.betas=_0.9,_0.99_");
  CHECK(sanitize_file_name("../x") == "_.._x");
  CHECK(sanitize_file_name("-rf") == "_-rf");
  CHECK(sanitize_file_name("") == "_");
  CHECK(sanitize_file_name("caf\xc3\xa9") == "caf__");
  // Long names are cut, and keep apart by a hash of the whole name.
  const std::string a = "run.name=" + std::string(200, 'a') + "1";
  const std::string b = "run.name=" + std::string(200, 'a') + "2";
  CHECK(sanitize_file_name(a).size() == 120);
  CHECK(sanitize_file_name(a) != sanitize_file_name(b));
  CHECK(sanitize_file_name(a) == sanitize_file_name(a));
  for (char c : sanitize_file_name(a + "/x y"))
    CHECK(
        (std::isalnum(c) || c == '=' || c == '.' || c == '-' || c == '_' || c == ',' || c == '+'));
}

TEST_CASE("sweep: grid keys must be config keys, once each, with distinct values") {
  CHECK_NOTHROW(check_grid({{"model.connector.type", {"linear"}}, {"train.lr", {"1e-3"}}}, "g"));
  CHECK_THAT(config_error([] {
               check_grid({{"model.conector.type", {"linear"}}}, "--grid");
             }),
             Catch::Contains("--grid: model.conector.type: unknown key (did you mean "
                             "model.connector.type?)"));
  CHECK_THAT(config_error([] {
               check_grid({{"train.frobnicate", {"1"}}}, "--grid");
             }),
             Catch::Contains("train.frobnicate: unknown key"));
  CHECK_THAT(config_error([] {
               check_grid({{"run.output_dir", {"a", "b"}}}, "--grid");
             }),
             Catch::Contains("run.output_dir: is set by the sweep"));
  CHECK_THAT(config_error([] {
               check_grid({{"train.lr", {"1"}}, {"train.lr", {"2"}}}, "--grid");
             }),
             Catch::Contains("train.lr: appears twice"));
  CHECK_THAT(config_error([] {
               check_grid({{"train.lr", {"1e-3", "1e-3"}}}, "--grid");
             }),
             Catch::Contains("value '1e-3' is given twice"));
  CHECK_THAT(config_error([] { check_grid({}, "--grid"); }), Catch::Contains("nothing to sweep"));
}

TEST_CASE("sweep: a bad grid or --parallel stops the sweep before any run starts") {
  TempDir dir;
  SweepSpec spec;
  spec.base = dir / "missing.yaml";
  spec.grid = {{"train.lr", {"1e-3"}}};
  spec.parallel = 0;
  CHECK_THAT(config_error([&] { run_sweep(spec, "/bin/false"); }),
             Catch::Contains("--parallel: must be >= 1 (got 0)"));
  spec.parallel = 1;
  spec.grid = {{"train.lrr", {"1e-3"}}};
  CHECK_THAT(config_error([&] { run_sweep(spec, "/bin/false"); }),
             Catch::Contains("--grid: train.lrr: unknown key (did you mean train.lr?)"));
  spec.grid = {{"train.lr", {"1e-3"}}};
  CHECK_THAT(config_error([&] { run_sweep(spec, "/bin/false"); }),
             Catch::Contains("missing.yaml: config file not found"));
  // Two values that differ only in characters a file name cannot keep.
  spec.base = dir / "base.yaml";
  write_text(dir / "base.yaml", "");
  spec.grid = {{"run.name", {"a/b", "a:b"}}};
  CHECK_THAT(config_error([&] { run_sweep(spec, "/bin/false"); }),
             Catch::Contains("the same directory name 'run.name=a_b'"));
}

TEST_CASE("sweep: a sweep file names its base relative to itself, a grid, set, out and parallel") {
  TempDir dir;
  write_text(dir / "sweeps/s.yaml",
             "base: ../recipes/base.yaml\n"
             "grid:\n"
             "  model.connector.type: [linear, mlp2x_gelu]\n"
             "  train: {lr: [1.0e-3, 3e-3], betas: [[0.9, 0.99]]}\n"
             "set: {train.max_steps: 5, data: {workers: 0}}\n"
             "out: runs/s\n"
             "parallel: 2\n");
  const SweepSpec s = load_sweep_file(dir / "sweeps/s.yaml");
  CHECK(s.base == dir / "sweeps/../recipes/base.yaml");
  REQUIRE(s.grid.size() == 3);
  CHECK(s.grid[0].key == "model.connector.type");
  CHECK(s.grid[1].key == "train.lr");
  CHECK(s.grid[1].values == std::vector<std::string>{"1.0e-3", "3e-3"});
  CHECK(s.grid[2].key == "train.betas");
  CHECK(s.grid[2].values == std::vector<std::string>{"[0.9, 0.99]"});
  CHECK(s.set == std::vector<std::string>{"train.max_steps=5", "data.workers=0"});
  CHECK(s.out == "runs/s");
  CHECK(s.parallel == 2);

  CHECK_THAT(config_error([&] { load_sweep_file(dir / "missing.yaml"); }),
             Catch::Contains((dir / "missing.yaml").string() + ": sweep file not found"));
  write_text(dir / "typo.yaml", "base: b.yaml\ngird: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "typo.yaml"); }),
             Catch::Contains("typo.yaml:2: gird: unknown key (did you mean grid?)"));
  write_text(dir / "nobase.yaml", "grid: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "nobase.yaml"); }),
             Catch::Contains("nobase.yaml: base: required"));
  write_text(dir / "bad.yaml", "base: b.yaml\ngrid: {train.lr: [1]\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "bad.yaml"); }),
             Catch::Contains("bad.yaml:") && Catch::Contains("invalid YAML"));
  write_text(dir / "par.yaml", "base: b.yaml\ngrid: {train.lr: [1]}\nparallel: 0\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "par.yaml"); }),
             Catch::Contains("par.yaml:3: parallel: expected an integer >= 1"));
}

TEST_CASE(
    "sweep report: figures from summary.json, the curve from metrics.jsonl, last value wins") {
  TempDir dir;
  // A resumed run re-logs step 4; the last line was cut short by a crash.
  write_text(dir / "run/metrics.jsonl",
             "{\"step\":0,\"eval_loss\":3.5}\n"
             "{\"step\":2,\"loss\":3.0,\"tokens_per_s\":100}\n"
             "{\"step\":4,\"loss\":2.5,\"tokens_per_s\":300}\n"
             "{\"step\":4,\"loss\":2.4,\"tokens_per_s\":200}\n"
             "{\"step\":6,\"eval_loss\":2.2}\n"
             "{\"step\":6,\"lo");
  RunReport partial;
  read_run_outputs(dir / "run", partial);
  REQUIRE(partial.loss_curve.size() == 2);
  CHECK(partial.loss_curve[1] == std::pair<double, double>(4, 2.4));
  CHECK(*partial.final_loss == Approx(2.4));
  CHECK(*partial.eval_loss == Approx(2.2));
  CHECK(*partial.tokens_per_s == Approx(200));
  CHECK(!partial.trainable_params);

  write_text(dir / "run/summary.json",
             R"({"trainable_params": 2112, "image_tokens": 16, "final_loss": 2.25,
                 "final_eval_loss": 2.125, "tokens_per_s": 512.5, "wall_seconds": 7.5})");
  RunReport r;
  r.name = "model.connector.type=linear,train.lr=1e-3";
  r.values = {"linear", "1e-3"};
  r.status = "done";
  read_run_outputs(dir / "run", r);
  CHECK(*r.trainable_params == 2112);
  CHECK(*r.image_tokens == 16);
  CHECK(*r.final_loss == Approx(2.25));
  CHECK(*r.eval_loss == Approx(2.125));
  CHECK(*r.wall_seconds == Approx(7.5));
  CHECK(r.loss_curve.size() == 2);

  RunReport bad;
  bad.name = "model.connector.type=nope,train.lr=1e-3";
  bad.values = {"nope", "1e-3"};
  bad.status = "invalid";
  bad.note = "--set x: must be one of a, b | c";
  const std::vector<std::string> keys = {"model.connector.type", "train.lr"};
  const std::string csv = summary_csv(keys, {r, bad});
  CHECK_THAT(csv, Catch::StartsWith("run,model.connector.type,train.lr,status,trainable_params,"
                                    "visual_tokens,final_train_loss,eval_loss,tokens_per_s,wall_s,"
                                    "note\n"));
  CHECK_THAT(csv, Catch::Contains("\"model.connector.type=linear,train.lr=1e-3\",linear,1e-3,"
                                  "done,2112,16,2.250000,2.125000,512.5,7.500,\n"));
  CHECK_THAT(csv, Catch::Contains(",invalid,,,,,,,\"--set x: must be one of a, b | c\"\n"));
  const std::string md = summary_markdown(keys, {r, bad});
  CHECK(std::count(md.begin(), md.end(), '\n') == 4);  // header, rule, two rows
  CHECK_THAT(md, Catch::Contains("| done | 2112 | 16 | 2.2500 | 2.1250 | 512 | 7.5s |"));
  CHECK_THAT(md, Catch::Contains("must be one of a, b \\| c |"));

  // A run shorter than 50 ms still shows its time (it used to print 0.0 / 0.0s).
  RunReport fast = r;
  fast.wall_seconds = 0.042;
  CHECK_THAT(summary_csv(keys, {fast}), Catch::Contains(",512.5,0.042,\n"));
  CHECK_THAT(summary_markdown(keys, {fast}), Catch::Contains("| 512 | 0.042s |"));
}

TEST_CASE("sweep: a sweep file's stages are relative to it, in order; base or stages, not both") {
  TempDir dir;
  write_text(dir / "sweeps/s.yaml",
             "stages: [../recipes/stage1_pretrain.yaml, stage2_instruct.yaml]\n"
             "grid: {train.lr: [1e-3]}\n");
  const SweepSpec s = load_sweep_file(dir / "sweeps/s.yaml");
  CHECK(s.base.empty());
  REQUIRE(s.stages.size() == 2);
  CHECK(s.stages[0] == dir / "sweeps/../recipes/stage1_pretrain.yaml");
  CHECK(s.stages[1] == dir / "sweeps/stage2_instruct.yaml");
  CHECK(stage_labels(s.stages, "x") ==
        std::vector<std::string>{"stage1_pretrain", "stage2_instruct"});
  CHECK(stage_labels({"a/-x y.yaml"}, "x") == std::vector<std::string>{"_-x_y"});

  write_text(dir / "both.yaml", "base: b.yaml\nstages: [a.yaml, c.yaml]\ngrid: {train.lr: [1]}\n");
  CHECK_THAT(
      config_error([&] { load_sweep_file(dir / "both.yaml"); }),
      Catch::Contains("both.yaml:2: stages: give either base") && Catch::Contains("not both"));
  write_text(dir / "neither.yaml", "grid: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "neither.yaml"); }),
             Catch::Contains("neither.yaml: base: required") && Catch::Contains("or stages:"));
  write_text(dir / "scalar.yaml", "stages: a.yaml\ngrid: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "scalar.yaml"); }),
             Catch::Contains("scalar.yaml:1: stages: expected a list of recipe paths"));
  write_text(dir / "empty.yaml", "stages: []\ngrid: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "empty.yaml"); }),
             Catch::Contains("empty.yaml:1: stages: expected a list"));
  write_text(dir / "nested.yaml", "stages:\n  - a.yaml\n  - [b.yaml]\ngrid: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "nested.yaml"); }),
             Catch::Contains("nested.yaml:3: stages: expected a list"));
  write_text(dir / "dup.yaml", "stages: [one/stage.yaml, two/stage.yml]\ngrid: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "dup.yaml"); }),
             Catch::Contains("dup.yaml:1: stages: ") &&
                 Catch::Contains("both get the directory name 'stage'"));
  write_text(dir / "typo.yaml", "stagse: [a.yaml]\ngrid: {train.lr: [1]}\n");
  CHECK_THAT(config_error([&] { load_sweep_file(dir / "typo.yaml"); }),
             Catch::Contains("typo.yaml:1: stagse: unknown key (did you mean stages?)"));
  CHECK_THAT(config_error([] { stage_labels({}, "--stages"); }),
             Catch::Contains("--stages: stages: no recipes"));
}

namespace {

// Two minimal valid stage recipes in `dir`/recipes; stage 2's own train.init_from names a folder
// that does not exist (the sweep's replaces it). `model2` and `data2` go into stage 2's model and
// data sections.
std::vector<std::filesystem::path> two_stages(const TempDir& dir, const std::string& model2 = "",
                                              const std::string& data2 = "") {
  write_text(dir / "tok.json", "{}");
  write_text(dir / "train.json", "[]");
  auto recipe = [&](const std::string& model, const std::string& data, const std::string& train) {
    return "model:\n  tokenizer: " + (dir / "tok.json").string() + "\n" + model +
           "data:\n  train:\n    path: " + (dir / "train.json").string() + "\n" + data +
           "train:\n" + train;
  };
  write_text(dir / "recipes/stage1_pretrain.yaml", recipe("", "", "  stage: pretrain\n"));
  write_text(dir / "recipes/stage2_instruct.yaml",
             recipe(model2, data2,
                    "  stage: instruct\n  init_from: " + (dir / "nowhere").string() + "\n"));
  return {dir / "recipes/stage1_pretrain.yaml", dir / "recipes/stage2_instruct.yaml"};
}

// A stand-in for `mllm train`: records its arguments (argv.txt, one a line) and each call
// (calls), logs a step line, then writes a run's outputs: figures of its own per stage, stage 2
// with eval task scores. Stage 2 of a run with train.lr=2e-3 fails while `dir`/fail exists.
std::filesystem::path fake_mllm(const TempDir& dir) {
  const auto p = dir / "fake-mllm";
  write_text(p, R"(#!/bin/sh
out=
for a in "$@"; do case "$a" in run.output_dir=*) out=${a#run.output_dir=};; esac; done
out=${out#\'}; out=${out%\'}
printf '%s\n' "$@" > "$out/argv.txt"
echo call >> "$out/calls"
echo "step 3/3 | loss 1.0"
case "$out" in
  */stage2_instruct)
    case "$out" in *train.lr=2e-3/*) if [ -e ")" +
                    (dir / "fail").string() + R"(" ]; then
      echo "[12:00:00] error stage 2 broke"; exit 1; fi;; esac
    printf '%s\n' '{"step":0,"eval_loss":2.0,"eval/qa/accuracy":0.25,"eval/qa/color/accuracy":0.5}' \
      '{"step":3,"loss":1.25,"tokens_per_s":400,"eval_loss":1.5,"eval/qa/accuracy":0.75}' \
      > "$out/metrics.jsonl"
    echo '{"steps":3,"trainable_params":99999,"image_tokens":1,"final_loss":1.25,"final_eval_loss":1.5,"tokens_per_s":400,"wall_seconds":2.25}' > "$out/summary.json";;
  *)
    printf '%s\n' '{"step":1,"loss":3.0,"tokens_per_s":100}' \
      '{"step":3,"loss":2.0,"eval_loss":2.5,"tokens_per_s":300}' > "$out/metrics.jsonl"
    echo '{"steps":3,"trainable_params":1056,"image_tokens":16,"final_loss":2.0,"final_eval_loss":2.5,"tokens_per_s":200,"wall_seconds":1.5}' > "$out/summary.json";;
esac
mkdir "$out/final"
)");
  std::filesystem::permissions(p, std::filesystem::perms::owner_all);
  return p;
}

std::vector<std::string> lines_of(const std::filesystem::path& p) {
  std::vector<std::string> lines;
  std::istringstream in(read_text(p));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE(
    "sweep: a multi-stage run trains its stages in order, each from the previous one's final/; "
    "a failed stage ends the run; a rerun skips finished stages") {
  TempDir dir;
  SweepSpec spec;
  spec.stages = two_stages(dir);
  spec.grid = {{"train.lr", {"1e-3", "2e-3"}}};
  spec.set = {"train.max_steps=3"};
  spec.out = dir / "out";
  const auto fake = fake_mllm(dir);
  write_text(dir / "fail", "");
  CHECK(run_sweep(spec, fake) == 1);

  const auto run1 = dir / "out/train.lr=1e-3", run2 = dir / "out/train.lr=2e-3";
  const auto s1 = lines_of(run1 / "stage1_pretrain/argv.txt");
  const auto s2 = lines_of(run1 / "stage2_instruct/argv.txt");
  REQUIRE(s1.size() > 4);
  REQUIRE(s2.size() > 4);
  CHECK(s1[1] == "--config");
  CHECK(s1[2] == spec.stages[0].string());
  CHECK(s2[2] == spec.stages[1].string());
  // The common and grid overrides reach both stages; only stage 2 starts from a stage's final/,
  // after the grid's values (it wins over them and over the recipe's own).
  for (const auto* argv : {&s1, &s2}) {
    CHECK(std::count(argv->begin(), argv->end(), "train.max_steps=3") == 1);
    CHECK(std::count(argv->begin(), argv->end(), "train.lr=1e-3") == 1);
    CHECK(argv->back() == "auto");
  }
  const auto has_init = [](const std::string& a) { return a.rfind("train.init_from=", 0) == 0; };
  CHECK(std::none_of(s1.begin(), s1.end(), has_init));
  const auto init = std::find_if(s2.begin(), s2.end(), has_init);
  REQUIRE(init != s2.end());
  CHECK(*init == "train.init_from='" + (run1 / "stage1_pretrain/final").string() + "'");
  CHECK(init > std::find(s2.begin(), s2.end(), "train.lr=1e-3"));
  CHECK(std::count(s2.begin(), s2.end(),
                   "run.output_dir='" + (run1 / "stage2_instruct").string() + "'") == 1);
  CHECK(std::filesystem::exists(run1 / "stage2_instruct/train.log"));
  CHECK(!std::filesystem::exists(run1 / "train.log"));

  // Run 2's stage 2 failed: the run failed, stage 1's figures are kept.
  CHECK(std::filesystem::exists(run2 / "stage1_pretrain/final"));
  CHECK(!std::filesystem::exists(run2 / "stage2_instruct/final"));

  const std::string csv = read_text(dir / "out/summary.csv");
  CHECK_THAT(csv, Catch::StartsWith(
                      "run,train.lr,status,trainable_params,visual_tokens,"
                      "stage2_instruct/final_train_loss,stage1_pretrain/eval_loss,"
                      "stage1_pretrain/tokens_per_s,stage2_instruct/eval_loss,"
                      "stage2_instruct/qa/accuracy,stage2_instruct/tokens_per_s,wall_s,note\n"));
  // Parameters and visual tokens of stage 1, the last score logged, wall summed.
  CHECK_THAT(csv, Catch::Contains("\ntrain.lr=1e-3,1e-3,done,1056,16,1.250000,2.500000,200.0,"
                                  "1.500000,0.750000,400.0,3.750,\n"));
  CHECK_THAT(csv, Catch::Contains("\ntrain.lr=2e-3,2e-3,failed,1056,16,,2.500000,200.0,,,,1.500,"
                                  "stage2_instruct: stage 2 broke\n"));
  const std::string md = read_text(dir / "out/summary.md");
  CHECK_THAT(md,
             Catch::Contains("| stage2_instruct train loss | stage1_pretrain eval loss | "
                             "stage1_pretrain tokens/s | stage2_instruct eval loss | "
                             "stage2_instruct qa accuracy | stage2_instruct tokens/s | wall |"));
  CHECK_THAT(md, Catch::Contains("| done | 1056 | 16 | 1.2500 | 2.5000 | 200 | 1.5000 | 0.7500 | "
                                 "400 | 3.8s |"));
  // A panel per stage, stacked.
  const cv::Mat png = cv::imread((dir / "out/loss_curves.png").string(), cv::IMREAD_COLOR);
  REQUIRE(!png.empty());
  CHECK(png.cols == 1200);
  CHECK(png.rows == 1200);

  // Again, the failure gone: run 1 is skipped whole, run 2 trains stage 2 only.
  std::filesystem::remove(dir / "fail");
  CHECK(run_sweep(spec, fake) == 0);
  CHECK(lines_of(run1 / "stage1_pretrain/calls").size() == 1);
  CHECK(lines_of(run1 / "stage2_instruct/calls").size() == 1);
  CHECK(lines_of(run2 / "stage1_pretrain/calls").size() == 1);
  CHECK(lines_of(run2 / "stage2_instruct/calls").size() == 2);
  const std::string csv2 = read_text(dir / "out/summary.csv");
  CHECK_THAT(csv2, Catch::Contains("\ntrain.lr=1e-3,1e-3,skipped-finished,1056,16,1.250000,"));
  CHECK_THAT(csv2, Catch::Contains("\ntrain.lr=2e-3,2e-3,done,1056,16,1.250000,2.500000,200.0,"
                                   "1.500000,0.750000,400.0,3.750,"
                                   "stage1_pretrain: finished earlier\n"));

  // An interrupted stage 2 (a checkpoint, no final/) is resumed; stage 1 is not run again.
  std::filesystem::remove_all(run1 / "stage2_instruct/final");
  std::filesystem::create_directories(run1 / "stage2_instruct/checkpoints/step-000002");
  CHECK(run_sweep(spec, fake) == 0);
  CHECK(lines_of(run1 / "stage1_pretrain/calls").size() == 1);
  CHECK(lines_of(run1 / "stage2_instruct/calls").size() == 2);
  CHECK(count_of(read_text(run1 / "stage2_instruct/train.log"), "---- mllm sweep resumes: ") == 1);
  CHECK_THAT(read_text(dir / "out/summary.csv"),
             Catch::Contains(",done,1056,16,1.250000,2.500000,200.0,1.500000,0.750000,400.0,3.750,"
                             "stage1_pretrain: finished earlier; stage2_instruct: resumed from a "
                             "checkpoint\n"));

  // Two runs at a time: each run's stages still one after the other, each once.
  spec.out = dir / "par";
  spec.parallel = 2;
  CHECK(run_sweep(spec, fake) == 0);
  for (const char* run : {"train.lr=1e-3", "train.lr=2e-3"}) {
    INFO(run);
    const auto d = dir / "par" / run;
    CHECK(lines_of(d / "stage1_pretrain/calls").size() == 1);
    CHECK(lines_of(d / "stage2_instruct/calls").size() == 1);
    const auto argv = lines_of(d / "stage2_instruct/argv.txt");
    CHECK(std::count(argv.begin(), argv.end(),
                     "train.init_from='" + (d / "stage1_pretrain/final").string() + "'") == 1);
  }
  CHECK(count_of(read_text(dir / "par/summary.csv"), ",done,1056,16,1.250000,") == 2);
}

TEST_CASE("sweep: every stage's config is checked before any stage of any run starts") {
  SECTION("a recipe that no run makes valid is the sweep's error, naming the stage") {
    TempDir dir;
    SweepSpec spec;
    spec.stages =
        two_stages(dir, "", "  eval:\n    path: " + (dir / "missing.json").string() + "\n");
    spec.grid = {{"train.lr", {"1e-3", "2e-3"}}};
    spec.out = dir / "out";
    CHECK_THAT(config_error([&] { run_sweep(spec, fake_mllm(dir)); }),
               Catch::StartsWith("stage stage2_instruct: " + spec.stages[1].string()) &&
                   Catch::Contains("data.eval.path: not found"));
    CHECK(!std::filesystem::exists(dir / "out"));
  }
  SECTION("a grid value wrong for stage 2 only makes its run invalid before stage 1 trains") {
    TempDir dir;
    SweepSpec spec;
    // Stage 2's LLM is narrower: 32 heads give it an odd head dimension (RoPE needs an even one).
    spec.stages = two_stages(dir, "  llm: {hidden: 96}\n");
    spec.grid = {{"model.llm.heads", {"4", "32"}}};
    spec.out = dir / "out";
    CHECK(run_sweep(spec, fake_mllm(dir)) == 1);
    CHECK(std::filesystem::exists(dir / "out/model.llm.heads=4/stage2_instruct/final"));
    CHECK(!std::filesystem::exists(dir / "out/model.llm.heads=32"));
    CHECK_THAT(read_text(dir / "out/summary.csv"),
               Catch::Contains("\nmodel.llm.heads=32,32,invalid,") &&
                   Catch::Contains(",\"stage2_instruct: ") && Catch::Contains("must be an even"));
  }
  SECTION("two stages with one name, or a base and stages") {
    TempDir dir;
    SweepSpec spec;
    spec.stages = two_stages(dir);
    spec.grid = {{"train.lr", {"1e-3"}}};
    spec.base = spec.stages[0];
    CHECK_THAT(config_error([&] { run_sweep(spec, "/bin/false"); }), Catch::Contains("not both"));
    spec.base.clear();
    spec.stages[1] = dir / "other/stage1_pretrain.yaml";
    write_text(spec.stages[1], read_text(spec.stages[0]));
    CHECK_THAT(config_error([&] { run_sweep(spec, "/bin/false"); }),
               Catch::Contains("both get the directory name 'stage1_pretrain'"));
  }
}

TEST_CASE("sweep report: eval task scores are the last logged, a column each, single-base too") {
  TempDir dir;
  write_text(
      dir / "a/metrics.jsonl",
      "{\"step\":0,\"eval_loss\":3.0,\"eval/qa/accuracy\":0.1,\"eval/qa/color/accuracy\":0.2,"
      "\"eval/caption/cider_d\":0.5}\n"
      "{\"step\":2,\"loss\":2.0}\n"
      "{\"step\":4,\"eval_loss\":2.5,\"eval/qa/accuracy\":0.4,\"eval/caption/cider_d\":1.5}\n");
  write_text(dir / "b/metrics.jsonl", "{\"step\":2,\"loss\":2.5,\"eval/qa/accuracy\":0.3}\n");
  RunReport a, b;
  a.name = "train.lr=1", a.values = {"1"}, a.status = "done";
  b.name = "train.lr=2", b.values = {"2"}, b.status = "failed";
  read_run_outputs(dir / "a", a);
  read_run_outputs(dir / "b", b);
  // Per-type scores (eval/<task>/<type>/<score>) stay out of the table.
  CHECK(a.scores == std::vector<std::pair<std::string, double>>{{"caption/cider_d", 1.5},
                                                                {"qa/accuracy", 0.4}});
  CHECK(b.scores == std::vector<std::pair<std::string, double>>{{"qa/accuracy", 0.3}});
  const std::string csv = summary_csv({"train.lr"}, {a, b});
  CHECK_THAT(csv, Catch::StartsWith("run,train.lr,status,trainable_params,visual_tokens,"
                                    "final_train_loss,eval_loss,caption/cider_d,qa/accuracy,"
                                    "tokens_per_s,wall_s,note\n"));
  CHECK_THAT(csv,
             Catch::Contains("\ntrain.lr=1,1,done,,,2.000000,2.500000,1.500000,0.400000,,,\n"));
  CHECK_THAT(csv, Catch::Contains("\ntrain.lr=2,2,failed,,,2.500000,,,0.300000,,,\n"));
  CHECK_THAT(summary_markdown({"train.lr"}, {a, b}),
             Catch::Contains("| eval loss | caption cider_d | qa accuracy | tokens/s |"));

  // Stages combined: stage 1's parameters, the last stage's losses and scores, wall summed.
  RunReport m;
  m.stages.resize(2);
  m.stages[0].trainable_params = 10, m.stages[0].wall_seconds = 1.0;
  m.stages[0].final_loss = 5.0;
  m.stages[1].trainable_params = 20, m.stages[1].wall_seconds = 2.5;
  m.stages[1].scores = {{"qa/accuracy", 0.5}};
  combine_stages(m);
  CHECK(*m.trainable_params == 10);
  CHECK(!m.final_loss);  // the last stage has none yet
  CHECK(*m.wall_seconds == Approx(3.5));
  CHECK(m.scores == m.stages[1].scores);
}
