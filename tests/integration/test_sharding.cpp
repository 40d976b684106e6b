// Sharded data parallel (train.sharding: optimizer | gradients | parameters) through `mllm train`,
// ranks as separate processes on 127.0.0.1 over Gloo: for each level, 2 ranks end with the weights
// of 1 unsharded rank on the same global batch (with and without gradient accumulation, with LoRA
// and gradient checkpointing); each rank holds half the optimizer state; a checkpoint resumes on
// another number of ranks (2 -> 1, 1 -> 2, 1 -> 3) and at another level to the uninterrupted
// run's weights; a rank whose batch holds no image runs the same collectives as one whose batch
// does (no hang); an unsharded run refuses a sharded checkpoint with one clear line.
#include <catch2/catch.hpp>

#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "dist_fixture.h"
#include "run_mllm.h"
#include "test_util.h"

using mllm::test::read_text;
using namespace mllm::test::dist;

namespace {

const char* const kLevels[] = {"optimizer", "gradients", "parameters"};

std::string level_arg(const std::string& level) {
  return " --set train.sharding=" + level;
}

// Every "optimizer state per rank [a, b] bytes of N unsharded" of a run's output.
std::pair<std::vector<double>, double> optimizer_bytes(const std::string& output) {
  const std::regex line(R"(optimizer state per rank \[([0-9., ]+)\] bytes of ([0-9]+) unsharded)");
  std::smatch m;
  REQUIRE(std::regex_search(output, m, line));
  std::vector<double> per_rank;
  std::stringstream in(m[1].str());
  for (std::string v; std::getline(in, v, ',');) per_rank.push_back(std::stod(v));
  return {per_rank, std::stod(m[2].str())};
}

}  // namespace

TEST_CASE("sharding: each level on 2 ranks ends with the weights of 1 unsharded rank") {
  Fixture f;
  // Stage 0 trains the whole LLM; 2 micro-batches per step (Fixture::args).
  const auto ref = f.dir / "reference";
  const auto single = mllm::test::run_mllm(f.args(ref, 4));
  INFO(single.output);
  REQUIRE(single.code == 0);
  // LoRA adapters (no dropout: its draws differ between 1 and 2 ranks), one micro-batch per step,
  // each layer recomputed in backward.
  const std::string lora =
      " --set train.lora.rank=4 --set train.lora.dropout=0 --set train.grad_accum=1"
      " --set train.gradient_checkpointing=true";
  const auto ref_lora = f.dir / "reference-lora";
  const auto single_lora = mllm::test::run_mllm(f.args(ref_lora, 8) + lora);
  INFO(single_lora.output);
  REQUIRE(single_lora.code == 0);

  for (const std::string level : kLevels) {
    DYNAMIC_SECTION("train.sharding: " << level) {
      const auto two = f.dir / level;
      const auto pair = f.launch(2, f.args(two, 2) + level_arg(level));
      INFO(pair.output);
      REQUIRE(pair.code == 0);
      CHECK(max_weight_diff(ref / "final/model.safetensors", two / "final/model.safetensors") <=
            1e-6);
      check_losses_close(ref, two, 12);
      // Each rank holds half the AdamW state (to a padding element), counted from its tensors.
      const auto [per_rank, unsharded] = optimizer_bytes(pair.output);
      REQUIRE(per_rank.size() == 2);
      for (double b : per_rank) CHECK(std::abs(b - unsharded / 2) <= 8.0 * 64);
      // The checkpoints are one shard per rank and the layout.
      const auto ckpt = two / "checkpoints/step-000012";
      CHECK(fs::is_regular_file(ckpt / "shard-00000-of-00002.safetensors"));
      CHECK(fs::is_regular_file(ckpt / "shard-00001-of-00002.safetensors"));
      const auto layout = nlohmann::json::parse(read_text(ckpt / "sharding.json"));
      CHECK(layout["level"] == level);
      CHECK(layout["world_size"] == 2);
      CHECK_FALSE(fs::exists(ckpt / "optimizer.pt"));

      const auto two_lora = f.dir / (level + "-lora");
      const auto pair_lora = f.launch(2, f.args(two_lora, 4) + lora + level_arg(level));
      INFO(pair_lora.output);
      REQUIRE(pair_lora.code == 0);
      CHECK(max_weight_diff(ref_lora / "final/model.safetensors",
                            two_lora / "final/model.safetensors") <= 1e-6);
    }
  }
}

TEST_CASE("sharding: a checkpoint resumes on another number of ranks and at another level") {
  Fixture f;
  // 12 samples per step whatever the ranks: 1 x 6, 2 x 3 or 3 x 2 per rank (x 2 micro-batches).
  const auto ref = f.dir / "reference";
  const auto single = mllm::test::run_mllm(f.args(ref, 6, 8));
  INFO(single.output);
  REQUIRE(single.code == 0);
  struct Case {
    int ranks_before, ranks_after;
    const char *level_before, *level_after;
  };
  for (const Case c : {Case{2, 1, "parameters", "gradients"}, Case{1, 2, "optimizer", "optimizer"},
                       Case{1, 3, "gradients", "parameters"}}) {
    DYNAMIC_SECTION(c.ranks_before << " ranks (" << c.level_before << ") -> " << c.ranks_after
                                   << " (" << c.level_after << ")") {
      const auto out = f.dir / "run";
      auto launch = [&](int ranks, const char* level, const std::string& extra) {
        const std::string args = f.args(out, 6 / ranks, 8) + level_arg(level) + extra;
        return ranks == 1 ? mllm::test::run_mllm(args) : f.launch(ranks, args);
      };
      const auto part = launch(c.ranks_before, c.level_before, " --stop-after 4");
      INFO(part.output);
      REQUIRE(part.code == 0);
      REQUIRE(fs::is_directory(out / "checkpoints/step-000003"));
      CHECK_FALSE(fs::exists(out / "final"));
      const auto rest = launch(c.ranks_after, c.level_after, " --resume auto");
      INFO(rest.output);
      REQUIRE(rest.code == 0);
      CHECK_THAT(rest.output, Catch::Contains("resumed from"));
      CHECK_THAT(rest.output, Catch::Contains("step-000003"));
      CHECK_THAT(rest.output, !Catch::Contains("the global batch changes"));
      CHECK(max_weight_diff(ref / "final/model.safetensors", out / "final/model.safetensors") <=
            1e-6);
    }
  }
}

TEST_CASE("sharding: a sharded checkpoint refused by an unsharded run, and the reverse") {
  Fixture f;
  const auto out = f.dir / "run";
  const auto part =
      mllm::test::run_mllm(f.args(out, 4, 6) + level_arg("gradients") + " --stop-after 3");
  REQUIRE(part.code == 0);
  const auto before = read_text(out / "checkpoints/step-000003/manifest.json");
  const auto r = mllm::test::run_mllm(f.args(out, 4, 6) + " --resume auto");
  INFO(r.output);
  CHECK(r.code == 2);
  CHECK_THAT(r.output, Catch::Contains("train.sharding"));
  CHECK_THAT(r.output, Catch::Contains("written by a sharded run"));
  CHECK(read_text(out / "checkpoints/step-000003/manifest.json") == before);

  const auto plain = f.dir / "plain";
  REQUIRE(mllm::test::run_mllm(f.args(plain, 4, 6) + " --stop-after 3").code == 0);
  const auto r2 =
      mllm::test::run_mllm(f.args(plain, 4, 6) + level_arg("parameters") + " --resume auto");
  INFO(r2.output);
  CHECK(r2.code == 2);
  CHECK_THAT(r2.output, Catch::Contains("written without sharding"));
}

TEST_CASE("sharding: a rank whose batch has no image runs the same collectives (no hang)") {
  Fixture f;
  // 24 instruction records, 3 of them with an image: one sample per rank per step, so the steps
  // that take an image pair it with a text-only sample on the other rank (3 images: at least one
  // such step). The connector trains, and at level parameters every decoder layer is gathered.
  const auto records = nlohmann::json::parse(read_text(f.data / "instruct_train.json"));
  nlohmann::json mixed = nlohmann::json::array();
  for (size_t i = 0; i < 24; ++i) {
    auto r = records[i];
    if (i % 8 != 5) {
      r.erase("image");
      for (auto& turn : r["conversations"]) {
        auto text = turn["value"].get<std::string>();
        if (const auto at = text.find("<image>\n"); at != std::string::npos) text.erase(at, 8);
        turn["value"] = text;
      }
    }
    mixed.push_back(r);
  }
  const auto data = f.dir / "mixed.json";
  std::ofstream(data) << mixed.dump();
  const std::string d = f.data.string();
  auto args = [&](const fs::path& out, int64_t batch) {
    return "train --config " + std::string(MLLM_SOURCE_DIR) +
           "/configs/shapes/stage2_instruct.yaml" + " --set run.output_dir=" + out.string() +
           " --set run.threads=1 --set train.init_from= --set model.llm.pretrained=" +
           " --set model.vision.pretrained= --set model.tokenizer=" + d + "/tokenizer.json" +
           " --set 'data.train={format: llava_json, path: " + data.string() + ", image_root: " + d +
           "/images}' --set data.eval.path= --set data.eval.image_root=" + d +
           "/images --set data.image.size=32" +
           " --set model.vision.image_size=32 --set model.vision.hidden=32" +
           " --set model.vision.layers=1 --set model.vision.intermediate=64" +
           " --set model.connector.type=mlp2x_gelu --set train.grad_accum=1 --set train.epochs=1" +
           " --set train.log_every=1 --set train.save_every=0 --set eval.tasks=[]" +
           " --set run.distributed.timeout=20 --set run.distributed.bucket_mb=0.5" +
           " --set train.batch_size=" + std::to_string(batch);
  };
  const auto ref = f.dir / "reference";
  const auto single = mllm::test::run_mllm(args(ref, 2));
  INFO(single.output);
  REQUIRE(single.code == 0);
  for (const std::string level : {"gradients", "parameters"}) {
    DYNAMIC_SECTION("train.sharding: " << level) {
      const auto two = f.dir / level;
      // A hang would end in run.distributed.timeout's error (20 s), not exit 0.
      const auto pair = f.launch(2, args(two, 1) + level_arg(level));
      INFO(pair.output);
      REQUIRE(pair.code == 0);
      // fp32 sums in another order, through 12 Adam steps: 1.0e-6 seen on an Intel Xeon with
      // OpenBLAS's generic kernels; a gradient or parameter shard lost moves weights by ~lr.
      CHECK(max_weight_diff(ref / "final/model.safetensors", two / "final/model.safetensors") <=
            1e-5);
    }
  }
}
