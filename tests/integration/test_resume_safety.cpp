// Resuming never makes things worse: a resume that fails leaves the run directory as it was, a
// damaged newest checkpoint is passed over (and kept), and a checkpoint's data position is not
// silently applied to other data.
#include <catch2/catch.hpp>

#include <map>

#include <nlohmann/json.hpp>

#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_text;
using mllm::test::Result;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace fs = std::filesystem;

namespace {

struct Fixture {
  TempDir dir{"mllm-resume"};
  fs::path data = dir / "shapes";
  Fixture() {
    REQUIRE(mllm::test::run_mllm("data shapes --out " + data.string() +
                                 " --seed 4 --train 64 --val 8 --image-size 32")
                .code == 0);
  }
  // 12 steps of 8 samples (8 steps an epoch), a checkpoint every 2, all kept.
  std::string args(const fs::path& out) const {
    return mllm::test::tiny_stage0_args(data, out) +
           " --set train.batch_size=8 --set train.max_steps=12 --set train.log_every=1" +
           " --set train.eval_batches=1 --set train.save_every=2 --set train.keep_last=0";
  }
};

// Every file under `dir` (relative path -> bytes).
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = read_text(e.path());
  return out;
}

}  // namespace

TEST_CASE("resume: a resume that fails changes nothing in the run directory") {
  Fixture f;
  const auto out = f.dir / "run";
  REQUIRE(mllm::test::run_mllm(f.args(out) + " --stop-after 4").code == 0);
  const auto before = snapshot(out);
  REQUIRE(before.count("config.yaml"));
  REQUIRE(before.count("checkpoints/step-000004/model.safetensors"));
  // Another LLM shape: the checkpoint cannot be loaded into it.
  const Result r =
      mllm::test::run_mllm(f.args(out) + " --set model.llm.intermediate=96 --resume auto");
  INFO(r.output);
  CHECK(r.code == 1);
  CHECK_THAT(r.output, Catch::Contains("step-000004"));
  CHECK(snapshot(out) == before);  // config.yaml, train.log, metrics, checkpoints: all as they were
}

TEST_CASE("resume: --resume auto passes over a damaged newest checkpoint and keeps it") {
  Fixture f;
  const auto ref = f.dir / "reference";
  REQUIRE(mllm::test::run_mllm(f.args(ref)).code == 0);

  for (const char* damage : {"truncated", "flipped"}) {
    DYNAMIC_SECTION(damage) {
      const auto out = f.dir / damage;
      REQUIRE(mllm::test::run_mllm(f.args(out) + " --stop-after 6").code == 0);
      const auto bad = out / "checkpoints/step-000006";
      REQUIRE(fs::exists(bad / "manifest.json"));
      std::string why;
      if (std::string(damage) == "truncated") {
        const auto size = fs::file_size(bad / "model.safetensors");
        fs::resize_file(bad / "model.safetensors", size / 2);
        why = "model.safetensors has " + std::to_string(size / 2) + " bytes, the manifest says " +
              std::to_string(size);
      } else {  // same size, one byte changed in the middle of the AdamW moments
        std::string bytes = read_text(bad / "optimizer.pt");
        bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x5a);
        write_text(bad / "optimizer.pt", bytes);
        why = "optimizer.pt does not match its checksum";
      }
      const auto damaged = snapshot(bad);
      const Result r = mllm::test::run_mllm(f.args(out) + " --resume auto");
      INFO(r.output);
      REQUIRE(r.code == 0);
      CHECK_THAT(r.output, Catch::Contains("step-000006 is damaged (" + why));
      CHECK_THAT(r.output,
                 Catch::Contains("resumed from " + (out / "checkpoints/step-000004").string()));
      // The uninterrupted run's weights, exactly.
      CHECK(read_text(out / "final/model.safetensors") ==
            read_text(ref / "final/model.safetensors"));
      // The damaged checkpoint is still there for inspection, set aside when step 6 was saved
      // again.
      bool kept = false;
      for (const auto& e : fs::directory_iterator(out / "checkpoints"))
        if (e.path().filename().string().rfind("damaged-step-000006", 0) == 0)
          kept = snapshot(e.path()) == damaged;
      CHECK(kept);
      CHECK(fs::exists(out / "checkpoints/step-000006/manifest.json"));
    }
  }
}

TEST_CASE("resume: every checkpoint damaged is an error that changes nothing") {
  Fixture f;
  const auto out = f.dir / "run";
  REQUIRE(mllm::test::run_mllm(f.args(out) + " --stop-after 2").code == 0);
  fs::resize_file(out / "checkpoints/step-000002/optimizer.pt", 10);
  const auto before = snapshot(out);
  const Result r = mllm::test::run_mllm(f.args(out) + " --resume auto");
  INFO(r.output);
  CHECK(r.code == 1);
  CHECK_THAT(r.output, Catch::Contains("every checkpoint under") &&
                           Catch::Contains("optimizer.pt has 10 bytes"));
  CHECK(snapshot(out) == before);
}

TEST_CASE("resume: a changed training set is refused unless --resume-allow-data-change") {
  Fixture f;
  const auto out = f.dir / "run";
  REQUIRE(mllm::test::run_mllm(f.args(out) + " --stop-after 6").code == 0);
  // The dataset now holds fewer records than the checkpoint's position in it.
  auto records = nlohmann::json::parse(read_text(f.data / "captions_train.json"));
  records.erase(records.begin() + 40, records.end());
  write_text(f.data / "captions_train.json", records.dump());
  const auto before = snapshot(out);
  const Result r = mllm::test::run_mllm(f.args(out) + " --resume auto");
  INFO(r.output);
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains("the training data changed since the checkpoint") &&
                           Catch::Contains("records 64 -> 40") &&
                           Catch::Contains("--resume-allow-data-change"));
  CHECK(snapshot(out) == before);

  const Result ok = mllm::test::run_mllm(f.args(out) + " --resume auto --resume-allow-data-change");
  INFO(ok.output);
  CHECK(ok.code == 0);
  CHECK_THAT(ok.output,
             Catch::Contains("the training data changed (") && Catch::Contains("continuing"));
  CHECK(fs::exists(out / "final/model.safetensors"));
}
