// The sweep's pure parts: --grid parsing, grid expansion, run names, sweep files, key checks, and
// the summary read from run outputs. Whole sweeps through the CLI are in
// tests/integration/test_sweep.cpp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "test_util.h"
#include "train/sweep.h"
#include "train/sweep_report.h"

using namespace mllm;
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
