// `mllm sweep` through the executable: a 2x2 grid of tiny stage-1 runs on ShapesWorld, rerun,
// resumed, run two at a time; invalid and failing runs; bad sweep input; a two-stage sweep
// (pretraining, then instruction tuning with an eval task).
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>

#include <opencv2/imgcodecs.hpp>

#include "core/plot.h"
#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_text;
using mllm::test::TempDir;
using mllm::test::write_text;
namespace fs = std::filesystem;

namespace {

using mllm::test::Result;
Result run(const std::string& args) {
  return mllm::test::run_mllm(args);
}

const std::string kStage1 = std::string(MLLM_SOURCE_DIR) + "/configs/shapes/stage1_pretrain.yaml";

// Overrides that point the stage-1 recipe at `data` and make its models and runs tiny: a random
// 1-layer LLM, 4 steps, a checkpoint every 2.
std::vector<std::pair<std::string, std::string>> tiny(const fs::path& data) {
  const std::string d = data.string();
  return {{"run.threads", "1"},
          {"model.tokenizer", d + "/tokenizer.json"},
          {"data.train.path", d + "/captions_train.json"},
          {"data.train.image_root", d + "/images"},
          {"data.eval.path", d + "/captions_val.json"},
          {"data.eval.image_root", d + "/images"},
          {"data.workers", "0"},
          {"model.vision.pretrained", "null"},
          {"model.vision.image_size", "32"},
          {"data.image.size", "32"},
          {"model.vision.hidden", "32"},
          {"model.vision.layers", "2"},
          {"model.vision.intermediate", "64"},
          {"model.llm.pretrained", "null"},
          {"model.llm.hidden", "32"},
          {"model.llm.layers", "1"},
          {"model.llm.intermediate", "64"},
          {"train.batch_size", "8"},
          {"train.max_steps", "4"},
          {"train.save_every", "2"},
          {"train.log_every", "1"},
          {"train.eval_every", "0"},
          {"train.eval_batches", "1"}};
}

std::string as_set_args(const std::vector<std::pair<std::string, std::string>>& kv) {
  std::string s;
  for (const auto& [k, v] : kv) s += " --set " + k + "=" + v;
  return s;
}

// RFC 4180 rows (quoted fields may hold commas and doubled quotes).
std::vector<std::vector<std::string>> read_csv(const fs::path& p) {
  std::vector<std::vector<std::string>> rows(1);
  std::string cell;
  bool quoted = false;
  const std::string text = read_text(p);
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"')
        cell += '"', ++i;
      else if (c == '"')
        quoted = false;
      else
        cell += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      rows.back().push_back(cell), cell.clear();
    } else if (c == '\n') {
      rows.back().push_back(cell), cell.clear();
      rows.emplace_back();
    } else {
      cell += c;
    }
  }
  if (rows.back().empty()) rows.pop_back();
  return rows;
}

// Column `name` of a CSV with a header row.
size_t column(const std::vector<std::vector<std::string>>& csv, const std::string& name) {
  const auto& h = csv.at(0);
  const auto it = std::find(h.begin(), h.end(), name);
  REQUIRE(it != h.end());
  return static_cast<size_t>(it - h.begin());
}

double number(const std::string& s) {
  INFO("'" << s << "' is not a number");
  REQUIRE(!s.empty());
  size_t used = 0;
  const double x = std::stod(s, &used);
  REQUIRE(used == s.size());
  return x;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE(
    "sweep: a 2x2 grid of stage-1 runs; rerun skips, an interrupted run resumes, and two at "
    "a time gives the same results") {
  TempDir dir("mllm-sweep");
  const auto data = dir / "shapes";
  REQUIRE(run("data shapes --out " + data.string() + " --seed 0 --train 32 --val 8 --image-size 32")
              .code == 0);
  const auto out = dir / "seq";
  const std::string sweep = "sweep --config " + kStage1 + as_set_args(tiny(data)) +
                            " --grid model.connector.type=linear,mlp2x_gelu" +
                            " --grid train.lr=1e-3,3e-3 --out " + out.string();
  Result r = run(sweep);
  INFO(r.output);
  REQUIRE(r.code == 0);
  const std::vector<std::string> names = {"model.connector.type=linear,train.lr=1e-3",
                                          "model.connector.type=linear,train.lr=3e-3",
                                          "model.connector.type=mlp2x_gelu,train.lr=1e-3",
                                          "model.connector.type=mlp2x_gelu,train.lr=3e-3"};
  for (const auto& n : names) {
    INFO(n);
    CHECK(fs::exists(out / n / "final/model.safetensors"));
    CHECK(fs::exists(out / n / "summary.json"));
    const std::string log = read_text(out / n / "train.log");
    CHECK(count(log, "---- mllm sweep starts: ") == 1);
    CHECK(count(log, "step 4/4") == 1);  // the child's stderr is the log, once, not twice
    CHECK(read_text(out / n / "config.yaml").find((out / n).string()) != std::string::npos);
  }

  const auto csv = read_csv(out / "summary.csv");
  REQUIRE(csv.size() == 5);
  CHECK(csv[0] == std::vector<std::string>{"run", "model.connector.type", "train.lr", "status",
                                           "trainable_params", "visual_tokens", "final_train_loss",
                                           "eval_loss", "tokens_per_s", "wall_s", "note"});
  std::vector<double> losses;
  for (size_t i = 1; i <= 4; ++i) {
    const auto& row = csv[i];
    INFO(row[0]);
    CHECK(row[0] == names[i - 1]);
    CHECK(row[1] == (i <= 2 ? "linear" : "mlp2x_gelu"));
    CHECK(row[2] == (i % 2 ? "1e-3" : "3e-3"));
    CHECK(row[3] == "done");
    // linear: 32x32 + 32; mlp2x_gelu: two of those. 16 patches of 8x8 in a 32x32 image.
    CHECK(number(row[4]) == (i <= 2 ? 1056 : 2112));
    CHECK(number(row[5]) == 16);
    const double loss = number(row[6]);
    CHECK(std::isfinite(loss));
    CHECK(loss > 0);
    CHECK(loss < 10);
    CHECK(number(row[7]) > 0);
    CHECK(number(row[8]) > 0);
    CHECK(number(row[9]) > 0);
    losses.push_back(loss);
  }
  CHECK(std::set<double>(losses.begin(), losses.end()).size() == 4);  // four different runs
  const std::string md = read_text(out / "summary.md");
  CHECK(count(md, "\n| model.connector.type=") == 4);
  CHECK_THAT(md, Catch::Contains("| trainable params | visual tokens | train loss | eval loss |"));
  CHECK_THAT(r.output, Catch::Contains("4 done, 0 skipped"));

  // The plot: the default size, the four runs' colours drawn inside the frame.
  const cv::Mat png = cv::imread((out / "loss_curves.png").string(), cv::IMREAD_COLOR);
  REQUIRE(!png.empty());
  CHECK(png.cols == 1200);
  CHECK(png.rows == 600);
  for (size_t i = 0; i < 4; ++i) {
    const cv::Scalar c = mllm::series_color(i);
    cv::Mat mask;
    cv::inRange(png(cv::Rect(0, 0, 700, 600)), c - cv::Scalar(25, 25, 25),
                c + cv::Scalar(25, 25, 25), mask);
    INFO("series " << i);
    CHECK(cv::countNonZero(mask) > 50);
  }

  // The same command again: every run is finished, none is started, the figures are the same.
  Result again = run(sweep);
  INFO(again.output);
  REQUIRE(again.code == 0);
  CHECK_THAT(again.output, Catch::Contains("0 done, 4 skipped"));
  const auto csv2 = read_csv(out / "summary.csv");
  REQUIRE(csv2.size() == 5);
  for (size_t i = 1; i <= 4; ++i) {
    CHECK(csv2[i][3] == "skipped-finished");
    for (size_t k : {0, 4, 5, 6, 7, 8, 9}) CHECK(csv2[i][k] == csv[i][k]);
    CHECK(count(read_text(out / names[i - 1] / "train.log"), "---- mllm sweep") == 1);
  }

  // An interrupted run (no final/, its newest checkpoint lost) resumes from step 2 and ends with
  // the same loss as the uninterrupted run.
  fs::remove_all(out / names[3] / "final");
  fs::remove_all(out / names[3] / "checkpoints/step-000004");
  fs::remove(out / names[3] / "summary.json");
  Result resumed = run(sweep);
  INFO(resumed.output);
  REQUIRE(resumed.code == 0);
  CHECK_THAT(resumed.output, Catch::Contains("1 done, 3 skipped"));
  const auto csv3 = read_csv(out / "summary.csv");
  CHECK(csv3[4][3] == "done");
  CHECK(csv3[4][10] == "resumed from a checkpoint");
  CHECK(number(csv3[4][6]) == Approx(losses[3]).epsilon(1e-5));
  CHECK_THAT(read_text(out / names[3] / "train.log"), Catch::Contains("resumed from"));

  // Two at a time, from a sweep file whose base is relative to it: the same runs, the same results.
  fs::create_directories(dir / "recipes");
  fs::copy_file(kStage1, dir / "recipes/stage1.yaml");
  std::string file = "base: ../recipes/stage1.yaml\nout: " + (dir / "par").string() +
                     "\nparallel: 2\ngrid:\n  model.connector.type: [linear, mlp2x_gelu]\n" +
                     "  train.lr: [1e-3, 3e-3]\nset:\n";
  for (const auto& [k, v] : tiny(data)) file += "  " + k + ": " + v + "\n";
  write_text(dir / "sweeps/connectors.yaml", file);
  Result par = run("sweep --sweep " + (dir / "sweeps/connectors.yaml").string());
  INFO(par.output);
  REQUIRE(par.code == 0);
  CHECK_THAT(par.output, Catch::Contains("2 at a time"));
  const auto pcsv = read_csv(dir / "par/summary.csv");
  REQUIRE(pcsv.size() == 5);
  for (size_t i = 1; i <= 4; ++i) {
    INFO(pcsv[i][0]);
    CHECK(pcsv[i][0] == names[i - 1]);
    CHECK(pcsv[i][3] == "done");
    CHECK(pcsv[i][4] == csv[i][4]);
    CHECK(number(pcsv[i][6]) == Approx(losses[i - 1]).epsilon(1e-5));
    CHECK(number(pcsv[i][7]) == Approx(number(csv[i][7])).epsilon(1e-5));
  }
}

TEST_CASE("sweep: invalid combinations and failing runs are reported, the rest still run") {
  TempDir dir("mllm-sweep");
  const auto data = dir / "shapes";
  REQUIRE(run("data shapes --out " + data.string() + " --seed 1 --train 16 --val 8 --image-size 32")
              .code == 0);
  // nope: fails validation before any process starts; batch_size=1000: the child finds the data
  // too small and exits with code 2.
  const auto out = dir / "inv";
  Result r = run("sweep --config " + kStage1 + as_set_args(tiny(data)) +
                 " --grid model.connector.type=nope,linear --grid train.batch_size=8,1000" +
                 " --out " + out.string());
  INFO(r.output);
  CHECK(r.code == 1);
  const auto csv = read_csv(out / "summary.csv");
  REQUIRE(csv.size() == 5);
  const size_t status = column(csv, "status"), note = column(csv, "note");
  CHECK(csv[1][status] == "invalid");
  CHECK_THAT(csv[1][note], Catch::Contains("model.connector.type: must be one of") &&
                               Catch::Contains("got 'nope'"));
  CHECK(csv[2][status] == "invalid");
  CHECK(csv[3][0] == "model.connector.type=linear,train.batch_size=8");
  CHECK(csv[3][status] == "done");
  CHECK(std::isfinite(number(csv[3][column(csv, "final_train_loss")])));
  CHECK(csv[4][status] == "invalid");
  CHECK_THAT(csv[4][note], Catch::Contains("fewer than batch_size"));
  CHECK(!fs::exists(out / "model.connector.type=nope,train.batch_size=8"));
  CHECK_THAT(r.output,
             Catch::Contains("1 done, 0 skipped (finished earlier), 3 invalid, 0 failed"));

  // A run that fails at runtime (an unreadable data file): reported with its error and the end of
  // its log, exit code 1. The grid supplies data.train.path (the recipe's own does not exist).
  write_text(dir / "bad.json", "[{\"image\": ");
  const auto fail = dir / "fail";
  auto set = tiny(data);
  set.erase(std::remove_if(set.begin(), set.end(),
                           [](const auto& kv) { return kv.first == "data.train.path"; }),
            set.end());
  Result f = run("sweep --config " + kStage1 + as_set_args(set) +
                 " --grid model.connector.type=linear --grid data.train.path=" +
                 (dir / "bad.json").string() + " --out " + fail.string());
  INFO(f.output);
  CHECK(f.code == 1);
  const auto fcsv = read_csv(fail / "summary.csv");
  REQUIRE(fcsv.size() == 2);
  CHECK(fcsv[1][column(fcsv, "status")] == "failed");
  CHECK_THAT(fcsv[1][column(fcsv, "note")], Catch::Contains("bad.json"));
  CHECK_THAT(f.output, Catch::Contains("failed; the end of"));
  CHECK(fs::exists(fail / "loss_curves.png"));
}

TEST_CASE("sweep: bad sweep input is one clear error and exit code 2") {
  TempDir dir("mllm-sweep");
  auto check = [](const std::string& args, const std::string& message) {
    Result r = run(args);
    INFO(args << "\n" << r.output);
    CHECK(r.code == 2);
    CHECK_THAT(r.output, Catch::Contains(message));
  };
  check("sweep --config " + kStage1 + " --grid model.conector.type=linear,mlp2x_gelu",
        "model.conector.type: unknown key (did you mean model.connector.type?)");
  check("sweep --config " + kStage1 + " --grid train.lr", "--grid train.lr: expected key.path=");
  check("sweep --config " + kStage1 + " --grid train.lr=1e-3 --set train.lrr=1",
        "train.lrr: unknown key (did you mean train.lr?)");
  check("sweep --config " + (dir / "missing.yaml").string() + " --grid train.lr=1e-3",
        (dir / "missing.yaml").string() + ": config file not found");
  check("sweep --sweep " + (dir / "missing.yaml").string(),
        (dir / "missing.yaml").string() + ": sweep file not found");
  check("sweep --grid train.lr=1e-3", "give --config");
  write_text(dir / "s.yaml", "base: b.yaml\ngrid: {train.lr: [1e-3]}\nparalel: 2\n");
  check("sweep --sweep " + (dir / "s.yaml").string(),
        "s.yaml:3: paralel: unknown key (did you mean parallel?)");
}

TEST_CASE("sweep: four connector designs side by side, table and plot") {
  TempDir dir("mllm-sweep4");
  const auto data = dir / "shapes";
  REQUIRE(run("data shapes --out " + data.string() + " --seed 0 --train 16 --val 8 --image-size 32")
              .code == 0);
  const auto out = dir / "designs";
  Result r =
      run("sweep --config " + kStage1 + as_set_args(tiny(data)) +
          " --set model.connector.num_queries=4 --set model.connector.heads=2" +
          " --grid model.connector.type=linear,mlp2x_gelu,pool,gated_xattn --out " + out.string());
  INFO(r.output);
  REQUIRE(r.code == 0);
  const auto csv = read_csv(out / "summary.csv");
  REQUIRE(csv.size() == 5);  // header + 4 runs
  const size_t status = column(csv, "status"), tokens = column(csv, "visual_tokens");
  std::set<std::string> seen_tokens;
  for (size_t i = 1; i < csv.size(); ++i) {
    CHECK(csv[i][status] == "done");
    seen_tokens.insert(csv[i][tokens]);
  }
  // 16 patches (linear, mlp2x_gelu), 4 after pooling by 2, 1 placeholder for gated_xattn.
  CHECK(seen_tokens == std::set<std::string>{"16", "4", "1"});
  CHECK(std::filesystem::file_size(out / "loss_curves.png") > 1000);
}

TEST_CASE("sweep: a terminal shows one progress line over the runs' training steps") {
  TempDir dir("mllm-sweep");
  const auto data = dir / "shapes";
  REQUIRE(run("data shapes --out " + data.string() + " --seed 0 --train 32 --val 8 --image-size 32")
              .code == 0);
  // script(1) gives the sweep a terminal; the runs are slowed so that it has time to draw.
  const std::string sweep = std::string("env MLLM_TEST_STEP_DELAY_MS=150 ") + MLLM_BIN +
                            " sweep --config " + kStage1 + as_set_args(tiny(data)) +
                            " --set train.max_steps=6 --set train.log_every=1" +
                            " --grid train.lr=1e-3,3e-3 --out " + (dir / "out").string();
  const Result r = mllm::test::run_shell("script -qec '" + sweep + "' /dev/null");
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK(r.output.find("sweep: ") != std::string::npos);
  CHECK(r.output.find("/12 training steps of all runs") != std::string::npos);
  CHECK(r.output.find("\r") != std::string::npos);  // redrawn in place
}

TEST_CASE(
    "sweep: two stages per run, stage 2 from stage 1's final/, an eval task's score in the "
    "summary") {
  TempDir dir("mllm-sweep-stages");
  const auto data = dir / "shapes";
  REQUIRE(run("data shapes --out " + data.string() + " --seed 0 --train 16 --val 8 --image-size 32")
              .code == 0);
  const std::string d = data.string();
  // Tiny models (a random 1-layer LLM), 4 steps a stage. Stage 2 reads instruction data through
  // its own template, trains the LLM too and answers 8 held-out questions; its own init_from
  // names a folder that does not exist: the sweep's replaces it.
  const std::string model =
      "model:\n"
      "  vision: {type: clip_vit, image_size: 32, patch_size: 8, hidden: 32, layers: 2, heads: 4,\n"
      "           intermediate: 64, feature_layer: -2, select: patch}\n"
      "  llm: {type: llama, hidden: 32, layers: 1, intermediate: 64}\n"
      "  tokenizer: " +
      d + "/tokenizer.json\n";
  const std::string train =
      "  max_steps: 4\n  batch_size: 8\n  lr: 1.0e-3\n  log_every: 1\n  eval_every: 0\n"
      "  eval_batches: 1\n  save_every: 2\n";
  write_text(dir / "recipes/stage1_pretrain.yaml",
             "run: {output_dir: " + (dir / "s1").string() + ", threads: 1}\n" + model +
                 "data:\n  train: {format: llava_json, path: " + d +
                 "/captions_train.json, image_root: " + d + "/images}\n" +
                 "  eval: {format: llava_json, path: " + d + "/captions_val.json, image_root: " +
                 d + "/images}\n  template: plain\n  max_length: 128\n" +
                 "  image: {size: 32, aspect: pad}\n  workers: 0\n" +
                 "train:\n  stage: pretrain\n  trainable: [\"multi_modal_projector.*\"]\n" + train);
  write_text(dir / "recipes/stage2_instruct.yaml",
             "run: {output_dir: " + (dir / "s2").string() + ", threads: 1}\n" + model +
                 "data:\n  train: {format: llava_json, path: " + d +
                 "/instruct_train.json, image_root: " + d + "/images}\n" +
                 "  eval: {format: llava_json, path: " + d + "/instruct_val.json, image_root: " +
                 d + "/images}\n  template: vicuna_v1\n  max_length: 192\n" +
                 "  image: {size: 32, aspect: pad}\n  workers: 0\n" +
                 "train:\n  stage: instruct\n  init_from: " + (dir / "nowhere/final").string() +
                 "\n  trainable: [\"multi_modal_projector.*\", \"language_model.*\"]\n" + train +
                 "eval:\n  batch_size: 8\n  tasks:\n"
                 "    - {name: qa, format: qa_json, path: " +
                 d + "/questions_val.json, image_root: " + d +
                 "/images, max_samples: 8, metrics: [exact], generation: {max_new_tokens: 4}}\n");
  const auto out = dir / "two";
  write_text(dir / "sweeps/two.yaml",
             "stages: [../recipes/stage1_pretrain.yaml, ../recipes/stage2_instruct.yaml]\n"
             "grid: {model.connector.type: [linear, mlp2x_gelu]}\nout: " +
                 out.string() + "\n");
  // On a terminal (script(1)), slowed so that the progress line is drawn: 2 runs x 2 stages x 4.
  const std::string sweep = std::string("env MLLM_TEST_STEP_DELAY_MS=100 ") + MLLM_BIN +
                            " sweep --sweep " + (dir / "sweeps/two.yaml").string();
  const Result r = mllm::test::run_shell("script -qec '" + sweep + "' /dev/null");
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("2 done, 0 skipped"));
  CHECK_THAT(r.output, Catch::Contains("/16 training steps of all runs"));

  const std::vector<std::string> names = {"model.connector.type=linear",
                                          "model.connector.type=mlp2x_gelu"};
  const auto csv = read_csv(out / "summary.csv");
  REQUIRE(csv.size() == 3);
  CHECK(csv[0] ==
        std::vector<std::string>{"run", "model.connector.type", "status", "trainable_params",
                                 "visual_tokens", "stage2_instruct/final_train_loss",
                                 "stage1_pretrain/eval_loss", "stage1_pretrain/tokens_per_s",
                                 "stage2_instruct/eval_loss", "stage2_instruct/qa/accuracy",
                                 "stage2_instruct/tokens_per_s", "wall_s", "note"});
  for (size_t i = 0; i < names.size(); ++i) {
    const auto run_dir = out / names[i];
    INFO(names[i]);
    CHECK(fs::exists(run_dir / "stage1_pretrain/final/model.safetensors"));
    CHECK(fs::exists(run_dir / "stage2_instruct/final/model.safetensors"));
    // Stage 2 started from this run's stage 1, not from its recipe's init_from.
    const auto from = (run_dir / "stage1_pretrain/final").string();
    CHECK_THAT(read_text(run_dir / "stage2_instruct/config.yaml"),
               Catch::Contains("init_from: \"" + from + "\""));
    CHECK_THAT(read_text(run_dir / "stage2_instruct/train.log"),
               Catch::Contains("tensors of the model from " + from));
    CHECK_THAT(read_text(run_dir / "stage1_pretrain/train.log"),
               !Catch::Contains("train.init_from: "));

    const auto& row = csv[i + 1];
    CHECK(row[0] == names[i]);
    CHECK(row[2] == "done");
    // Stage 1's trainable parameters (the connector; stage 2 trains the LLM as well).
    CHECK(number(row[3]) == (i == 0 ? 1056 : 2112));
    CHECK(number(row[4]) == 16);
    for (size_t k : {5, 6, 7, 8, 10}) {
      CHECK(std::isfinite(number(row[k])));
      CHECK(number(row[k]) > 0);
    }
    const double qa = number(row[9]);
    CHECK(qa >= 0);
    CHECK(qa <= 1);
    // Wall time: the stages' sum.
    double wall = 0;
    for (const char* stage : {"stage1_pretrain", "stage2_instruct"}) {
      std::ifstream in(run_dir / stage / "summary.json");
      wall += nlohmann::json::parse(in)["wall_seconds"].get<double>();
    }
    CHECK(number(row[11]) == Approx(wall).margin(2e-3));
  }
  const cv::Mat png = cv::imread((out / "loss_curves.png").string(), cv::IMREAD_COLOR);
  REQUIRE(!png.empty());
  CHECK(png.rows == 1200);  // a panel per stage

  // Again: both runs finished, nothing is trained.
  const Result again = run("sweep --sweep " + (dir / "sweeps/two.yaml").string());
  INFO(again.output);
  REQUIRE(again.code == 0);
  CHECK_THAT(again.output, Catch::Contains("0 done, 2 skipped"));
  CHECK(read_csv(out / "summary.csv")[1][9] == csv[1][9]);
}

TEST_CASE("sweep: --stages on the command line; a bad stage is one clear error and exit code 2") {
  TempDir dir("mllm-sweep");
  write_text(dir / "tok.json", "{}");
  write_text(dir / "train.json", "[]");
  write_text(dir / "a.yaml", "model: {tokenizer: " + (dir / "tok.json").string() +
                                 "}\ndata: {train: {path: " + (dir / "train.json").string() +
                                 "}}\n");
  const std::string a = (dir / "a.yaml").string();
  write_text(dir / "other/a.yaml", read_text(dir / "a.yaml"));
  auto check = [](const std::string& args, const std::string& message) {
    Result r = run(args);
    INFO(args << "\n" << r.output);
    CHECK(r.code == 2);
    CHECK_THAT(r.output, Catch::Contains(message));
  };
  check("sweep --stages " + a + "," + (dir / "other/a.yaml").string() + " --grid train.lr=1e-3",
        "--stages: stages: " + a + " and " + (dir / "other/a.yaml").string() +
            " both get the directory name 'a'");
  check("sweep --stages " + a + "," + (dir / "b.yaml").string() + " --grid train.lr=1e-3",
        "stage b: " + (dir / "b.yaml").string() + ": config file not found");
  check("sweep --stages " + a + "," + (dir / "other/b.yaml").string() + " --grid train.lrr=1e-3",
        "train.lrr: unknown key (did you mean train.lr?)");
  const Result both = run("sweep --stages " + a + " --config " + a + " --grid train.lr=1e-3");
  CHECK(both.code != 0);
  CHECK_THAT(both.output, Catch::Contains("excludes"));
}
