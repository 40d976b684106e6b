// The memory plan (train/memory_plan.h): its parameter counts, made from two small builds, equal
// the counts of the whole model built for real (full fine-tune, LoRA, tied embeddings, a
// feature-level connector with per-layer parts); the per-level bytes follow the accounting the
// header states; sizes parse; `mllm inspect --ranks` prints the plan for the LLaVA-1.5 recipes
// without their models on this machine, and the 7B fine-tune recipe's level fits 8 x 40 GiB.
#include <catch2/catch.hpp>

#include "core/config.h"
#include "integration/run_mllm.h"
#include "models/multimodal_model.h"
#include "train/freeze.h"
#include "train/lora.h"
#include "train/memory_plan.h"

using namespace mllm;

namespace {

Config small_config() {
  Config c;
  c.model.vision.image_size = 32;
  c.model.vision.patch_size = 8;
  c.model.vision.hidden = 32;
  c.model.vision.layers = 3;
  c.model.vision.heads = 2;
  c.model.vision.intermediate = 64;
  c.model.llm.hidden = 48;
  c.model.llm.layers = 5;
  c.model.llm.heads = 4;
  c.model.llm.kv_heads = 2;
  c.model.llm.intermediate = 96;
  c.model.llm.vocab = 100;
  c.train.trainable = {"multi_modal_projector.*", "language_model.*"};
  return c;
}

ParameterCounts count_built(const Config& c) {
  MultimodalModel model(c.model, 0);
  apply_trainable(*model, c);
  apply_lora(*model, c);
  ParameterCounts out;
  out.llm_layers = c.model.llm.layers;
  for (const auto& item : model->named_parameters(true)) {
    out.total += item.value().numel();
    if (!item.value().requires_grad()) continue;
    out.trainable += item.value().numel();
    if (item.key().rfind("language_model.model.layers.0.", 0) == 0)
      out.layer_trainable += item.value().numel();
  }
  out.root_trainable = out.trainable - out.llm_layers * out.layer_trainable;
  return out;
}

}  // namespace

TEST_CASE("memory plan: counts from two small builds equal the whole model's") {
  Config c = small_config();
  SECTION("full fine-tune, mlp2x_gelu") {}
  SECTION("LoRA on a qwen2 LLM with tied embeddings, the vision tower trainable") {
    c.model.llm.type = "qwen2";
    c.model.llm.tie_word_embeddings = true;
    c.train.trainable = {"multi_modal_projector.*", "vision_tower.*"};
    c.train.lora.rank = 4;
  }
  SECTION("gated cross-attention (parts inside the LLM's layers)") {
    c.model.connector.type = "gated_xattn";
    c.train.trainable = {"multi_modal_projector.*"};
  }
  const auto built = count_built(c);
  const auto planned = count_parameters(c, 0);
  CHECK(planned.total == built.total);
  CHECK(planned.trainable == built.trainable);
  CHECK(planned.layer_trainable == built.layer_trainable);
  CHECK(planned.root_trainable == built.root_trainable);
  CHECK(planned.trainable > 0);
  // A tokenizer with more ids than the LLM grows the vocabulary to a multiple of 64.
  Config grown = small_config();
  const auto more = count_parameters(grown, 130);
  CHECK(more.total - count_parameters(grown, 0).total == 2 * (192 - 100) * 48);
}

TEST_CASE("memory plan: bytes per rank by level") {
  Config c = small_config();
  c.train.batch_size = 2;
  c.data.max_length = 64;
  c.train.gradient_checkpointing = true;
  c.run.distributed.bucket_mb = 0.0001;  // 104 bytes: three buckets in flight are 315
  ParameterCounts n;
  n.total = 1500;
  n.trainable = 1000;
  n.llm_layers = 4;
  n.layer_trainable = 200;
  n.root_trainable = 200;
  const auto p = plan_memory(c, n, 4);
  REQUIRE(p.levels.size() == 4);
  const auto &none = p.levels[0], &z1 = p.levels[1], &z2 = p.levels[2], &z3 = p.levels[3];
  CHECK(none.weights == 4 * 1500);
  CHECK(none.gradients == 8 * 1000);  // .grad and the all-reduce buckets
  CHECK(none.optimizer == 8 * 1000);
  CHECK(z1.optimizer == 8 * 1000 / 4);
  CHECK(z1.gradients == 4 * 1000);
  CHECK(z2.gradients == Approx(4 * 1000 / 4 + 3 * 0.0001 * 1024 * 1024));
  CHECK(z3.weights == 4 * 500 + 4 * 1000 / 4);
  CHECK(z3.gathered == 8 * 200 + 12 * 200);
  // Each level holds less than the one before it.
  for (size_t i = 1; i < 3; ++i) CHECK(p.levels[i].state() < p.levels[i - 1].state());
  // Checkpointing keeps less than the whole graph; the total follows the recipe's setting.
  CHECK(p.activations_checkpointed < p.activations);
  CHECK(p.total(z3) == Approx(z3.state() + p.activations_checkpointed));
  // Twice the micro-batch, twice the activations.
  c.train.batch_size = 4;
  c.train.lm_head_chunk_mb = 0;
  const auto twice = plan_memory(c, n, 4);
  auto q = c;
  q.train.batch_size = 2;
  CHECK(twice.activations == Approx(2 * plan_memory(q, n, 4).activations));
  const std::string table = format_plan(p, 1e9);
  CHECK_THAT(table, Catch::Contains("parameters (ZeRO-3)"));
  CHECK_THAT(table, Catch::Contains("yes ("));
  CHECK_THAT(format_plan(p, 1000), Catch::Contains("no ("));
}

TEST_CASE("memory plan: device memory sizes") {
  CHECK(parse_memory_size("40GiB", "--device-memory") == 40.0 * (1 << 30));
  CHECK(parse_memory_size("80GB", "--device-memory") == 80.0 * (1 << 30));
  CHECK(parse_memory_size("24576 MiB", "--device-memory") == 24.0 * (1 << 30));
  CHECK(parse_memory_size("1.5T", "--device-memory") == 1.5 * 1024 * (1 << 30));
  CHECK_THROWS_WITH(parse_memory_size("40", "--device-memory"),
                    Catch::Contains("--device-memory: expected a size"));
  CHECK_THROWS_WITH(parse_memory_size("forty GiB", "--device-memory"),
                    Catch::Contains("forty GiB"));
}

TEST_CASE("memory plan: mllm inspect --ranks for the LLaVA-1.5 recipes, models absent") {
  const std::string src = MLLM_SOURCE_DIR;
  const auto r = mllm::test::run_mllm("inspect --config " + src +
                                      "/configs/llava15/finetune_vicuna7b.yaml --ranks 8 "
                                      "--device-memory 40GiB");
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("8 rank(s): 7.06B parameters, 6.76B trainable"));
  // The recipe shards at the level that fits; the one below it does not.
  std::string zero3, zero2;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("parameters (ZeRO-3)", 0) == 0) zero3 = line;
    if (line.rfind("gradients (ZeRO-2)", 0) == 0) zero2 = line;
  }
  CHECK_THAT(zero3, Catch::Contains("yes"));
  CHECK_THAT(zero2, Catch::Contains("no"));
  CHECK_THAT(mllm::test::read_text(src + "/configs/llava15/finetune_vicuna7b.yaml"),
             Catch::Contains("sharding: parameters"));

  const auto q = mllm::test::run_mllm("inspect --config " + src +
                                      "/configs/llava15/finetune_qwen2_0.5b.yaml --ranks 8");
  INFO(q.output);
  REQUIRE(q.code == 0);
  CHECK_THAT(q.output, Catch::Contains("parameters (ZeRO-3)"));
  const auto bad = mllm::test::run_mllm("inspect --config " + src +
                                        "/configs/llava15/finetune_qwen2_0.5b.yaml --ranks 8 "
                                        "--device-memory lots");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.output, Catch::Contains("--device-memory"));
  const auto none = mllm::test::run_mllm("inspect --config " + src +
                                         "/configs/llava15/finetune_qwen2_0.5b.yaml --ranks 0");
  CHECK(none.code == 2);
  CHECK_THAT(none.output, Catch::Contains("--ranks: must be at least 1"));
}
