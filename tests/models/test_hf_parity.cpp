// Parity with transformers: tiny random-weight checkpoints in HF layout (tests/fixtures/hf/, made
// by tests/reference/hf_models.py, an independent implementation of the transformers v4.48
// modeling code) load through the same paths a user's folder does, and our forward passes
// reproduce the reference hidden states, logits, router logits and losses within 1e-4 (fp32).
#include <catch2/catch.hpp>

#include <filesystem>

#include "core/error.h"
#include "core/safetensors.h"
#include "models/clip_model.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"
#include "models/llm/llama.h"
#include "models/vision/clip_vit.h"
#include "test_util.h"

using namespace mllm;
namespace fs = std::filesystem;

namespace {

fs::path fixture(const std::string& name) {
  return fs::path(MLLM_SOURCE_DIR) / "tests/fixtures/hf" / name;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

constexpr double kTol = 1e-4;

LlamaForCausalLM load_llm(const std::string& name) {
  LlmConfig c;
  read_llm_config_json(fixture(name), c);
  LlamaForCausalLM m(c);
  const auto report = load_parameters(*m, SafetensorsCheckpoint(fixture(name)), "");
  CHECK(report.unexpected.empty());
  m->eval();
  return m;
}

// Runs one of the fixture's batches ("" / "masked." / "left.") and compares every hidden state and
// the logits; on left-padded rows only the real positions (a fully masked query row is arbitrary).
void check_run(LlamaForCausalLM& m, const SafetensorsFile& io, const std::string& run) {
  torch::NoGradGuard no_grad;
  const auto ids = io.get(run + "input_ids");
  torch::Tensor mask, positions;
  if (io.contains(run + "attention_mask")) mask = io.get(run + "attention_mask");
  if (io.contains(run + "position_ids")) positions = io.get(run + "position_ids");
  std::vector<torch::Tensor> hs;
  const auto h = m->forward(m->embed(ids), mask, positions, &hs);
  const auto logits = m->logits(h);
  const auto keep = run == "left." ? mask.to(torch::kBool).unsqueeze(-1) : torch::Tensor();
  auto diff = [&](const torch::Tensor& ours, const std::string& key) {
    auto want = io.get(key);
    return keep.defined() ? max_diff(ours * keep, want * keep) : max_diff(ours, want);
  };
  REQUIRE(hs.size() == static_cast<size_t>(m->config().layers + 1));
  for (size_t i = 0; i < hs.size(); ++i) {
    INFO(run << "hidden_states." << i);
    CHECK(diff(hs[i], run + "hidden_states." + std::to_string(i)) < kTol);
  }
  INFO(run << "logits");
  CHECK(diff(logits, run + "logits") < kTol);
}

// transformers' causal LM loss: logits[:, :-1] against labels[:, 1:], -100 ignored, mean.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  const auto V = logits.size(-1);
  return torch::nn::functional::cross_entropy(
      logits.slice(1, 0, -1).reshape({-1, V}), labels.slice(1, 1).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

}  // namespace

TEST_CASE("hf parity: LlamaForCausalLM with GQA, rope_theta and linear RoPE scaling") {
  auto m = load_llm("llama");
  CHECK(m->config().kv_heads == 2);
  CHECK(m->config().rope_scaling == "linear");
  CHECK(m->config().rope_scaling_factor == 2.0);
  CHECK(m->config().rms_norm_eps == 1e-5);
  const SafetensorsFile io(fixture("llama/io.safetensors"));
  for (const std::string run : {"", "masked.", "left."}) check_run(m, io, run);
  torch::NoGradGuard no_grad;
  for (const std::string run : {"", "masked."}) {
    const auto logits = m->logits(m->forward(m->embed(io.get(run + "input_ids"))));
    INFO(run << "loss");
    // The padded batch's loss ignores its -100 labels; padding never reaches real tokens.
    CHECK(std::abs(lm_loss(logits, io.get(run + "labels")).item<double>() -
                   io.get(run + "loss").item<double>()) < kTol);
  }
}

TEST_CASE("hf parity: a sharded checkpoint loads through its index; BF16 weights upcast") {
  auto sharded = load_llm("llama_sharded");
  check_run(sharded, SafetensorsFile(fixture("llama_sharded/io.safetensors")), "");
  const SafetensorsCheckpoint index(fixture("llama_sharded"));
  CHECK(index.files().size() == 2);
  CHECK(index.path().filename() == "model.safetensors.index.json");
  auto bf16 = load_llm("llama_bf16");
  CHECK(SafetensorsCheckpoint(fixture("llama_bf16")).dtype("lm_head.weight") == "BF16");
  check_run(bf16, SafetensorsFile(fixture("llama_bf16/io.safetensors")), "");
}

TEST_CASE("hf parity: Qwen2ForCausalLM with q/k/v biases and tied embeddings") {
  auto m = load_llm("qwen2");
  CHECK(m->config().tie_word_embeddings);
  CHECK(!m->lm_head);
  CHECK(m->model->layers[0]->as<LlamaDecoderLayer>()->self_attn->q_proj->bias.defined());
  CHECK(!m->model->layers[0]->as<LlamaDecoderLayer>()->self_attn->o_proj->bias.defined());
  const SafetensorsFile io(fixture("qwen2/io.safetensors"));
  for (const std::string run : {"", "masked.", "left."}) check_run(m, io, run);
}

TEST_CASE("hf parity: Mixtral sparse MoE routing, router logits and load-balancing loss") {
  auto m = load_llm("mixtral");
  CHECK(m->config().experts == 4);
  CHECK(m->config().experts_per_token == 2);
  CHECK(m->config().router_aux_loss_coef == Approx(0.02));
  const SafetensorsFile io(fixture("mixtral/io.safetensors"));
  for (const std::string run : {"", "masked.", "left."}) {
    check_run(m, io, run);
    torch::NoGradGuard no_grad;
    torch::Tensor mask;
    if (io.contains(run + "attention_mask")) mask = io.get(run + "attention_mask");
    const auto logits =
        m->logits(m->forward(m->embed(io.get(run + "input_ids")), mask,
                             run == "left." ? io.get("left.position_ids") : torch::Tensor()));
    REQUIRE(m->model->router_logits.size() == 2);
    for (size_t l = 0; l < 2; ++l) {
      INFO(run << "router_logits." << l);
      const auto want = io.get(run + "router_logits." + std::to_string(l));
      const auto keep = mask.defined() ? mask.reshape({-1, 1}).to(torch::kBool) : torch::Tensor();
      const auto ours = m->model->router_logits[l];
      CHECK((keep.defined() ? max_diff(ours * keep, want * keep) : max_diff(ours, want)) < kTol);
    }
    const double aux = m->aux_loss(mask).item<double>();
    INFO(run << "aux_loss " << aux);
    CHECK(std::abs(aux - io.get(run + "aux_loss").item<double>()) < kTol);
    if (io.contains(run + "lm_loss")) {
      const double lm = lm_loss(logits, io.get(run + "labels")).item<double>();
      CHECK(std::abs(lm - io.get(run + "lm_loss").item<double>()) < kTol);
      CHECK(std::abs(lm + 0.02 * aux - io.get(run + "loss").item<double>()) < kTol);
    }
  }
}

TEST_CASE("hf parity: CLIP vision tower from CLIPVisionModel and CLIPModel folders") {
  for (const std::string name : {"clip_vision", "clip_full"}) {
    INFO(name);
    VisionConfig c;
    read_vision_config_json(fixture(name), c);
    CHECK(c.hidden == 32);
    CHECK(c.patch_size == 8);
    ClipVisionModel m(c);
    const auto report =
        load_parameters(*m->vision_model, SafetensorsCheckpoint(fixture(name)), "vision_model.");
    CHECK(report.unexpected.empty());  // text_model.*, logit_scale are outside the prefix
    m->eval();
    const SafetensorsFile io(fixture(name + "/io.safetensors"));
    torch::NoGradGuard no_grad;
    const auto hs = m->vision_model(io.get("pixel_values"));
    REQUIRE(hs.size() == 3);
    for (size_t i = 0; i < hs.size(); ++i) {
      INFO("hidden_states." << i);
      CHECK(max_diff(hs[i], io.get("hidden_states." + std::to_string(i))) < kTol);
    }
    CHECK(max_diff(hs.back(), io.get("last_hidden_state")) < kTol);
    const auto pooled = m->vision_model->post_layernorm(hs.back().select(1, 0));
    CHECK(max_diff(pooled, io.get("pooler_output")) < kTol);
  }
}

TEST_CASE("hf parity: CLIPModel's text tower, projections, logits and contrastive loss") {
  VisionConfig v;
  read_vision_config_json(fixture("clip_full"), v);
  ClipTextConfig t;
  read_clip_text_config_json(fixture("clip_full"), t);
  CHECK(t.vocab == 64);
  CHECK(t.max_position == 16);
  CHECK(t.eos_token_id == 63);
  CHECK(t.projection_dim == 16);
  CHECK(t.layer_norm_eps == 1e-5);  // absent from the file: CLIPTextConfig's default
  ClipModel m(v, t);
  const auto report = load_parameters(*m, SafetensorsCheckpoint(fixture("clip_full")), "");
  CHECK(report.unexpected.empty());  // every key is a parameter (position_ids are skipped)
  m->eval();
  const SafetensorsFile io(fixture("clip_full/io.safetensors"));
  torch::NoGradGuard no_grad;
  const auto ids = io.get("text_input_ids"), mask = io.get("text_attention_mask");
  const auto out = m->text_model(ids, mask);
  // Padded positions attend to the real tokens before them, as transformers' mask has it.
  CHECK(max_diff(out.last_hidden_state, io.get("text_last_hidden_state")) < kTol);
  CHECK(max_diff(out.pooled, io.get("text_pooler_output")) < kTol);
  const auto text = m->text_features(ids, mask);
  const auto image = m->image_features(io.get("pixel_values"));
  CHECK(max_diff(text, io.get("text_embeds")) < kTol);
  CHECK(max_diff(image, io.get("image_embeds")) < kTol);
  const auto logits = m->logits_per_text(text, image);
  CHECK(max_diff(logits, io.get("logits_per_text")) < kTol);
  CHECK(std::abs(clip_loss(logits).item<double>() - io.get("clip_loss").item<double>()) < kTol);
  // The loss and the pooling refuse what they cannot score.
  CHECK_THROWS_WITH(clip_loss(logits.slice(0, 0, 1)), Catch::Contains("square"));
  CHECK_THROWS_WITH(m->text_model(ids.masked_fill(ids == 63, 5), mask),
                    Catch::Contains("a row has no EOS token (id 63)"));
}

TEST_CASE("hf loading: wrong shapes, missing keys and a lying index are clear errors") {
  test::TempDir dir;
  // The llama weights with a vocabulary the config does not have.
  LlmConfig c;
  read_llm_config_json(fixture("llama"), c);
  c.vocab = 64;
  LlamaForCausalLM small(c);
  CHECK_THROWS_WITH(
      load_parameters(*small, SafetensorsCheckpoint(fixture("llama")), ""),
      Catch::Contains("size mismatch") && Catch::Contains("model.embed_tokens.weight"));
  // Missing tensors are named as transformers names them.
  NamedTensors partial;
  const SafetensorsFile full(fixture("llama/model.safetensors"));
  for (const auto& n : full.names())
    if (n != "model.norm.weight") partial.emplace_back(n, full.get(n));
  save_safetensors(dir / "model.safetensors", partial);
  read_llm_config_json(fixture("llama"), c);
  LlamaForCausalLM m(c);
  CHECK_THROWS_WITH(load_parameters(*m, SafetensorsCheckpoint(dir.path()), "", false, "the LLM"),
                    Catch::Contains("some weights of the LLM were not initialized") &&
                        Catch::Contains("model.norm.weight"));
  // An index naming a shard that is absent, or one that does not hold the tensor.
  test::write_text(dir / "model.safetensors.index.json",
                   R"({"metadata": {}, "weight_map": {"a": "gone.safetensors"}})");
  CHECK_THROWS_WITH(SafetensorsCheckpoint(dir / "model.safetensors.index.json"),
                    Catch::Contains("shard gone.safetensors (of a) is missing"));
  test::write_text(dir / "model.safetensors.index.json",
                   R"({"weight_map": {"not.there": "model.safetensors"}})");
  CHECK_THROWS_WITH(SafetensorsCheckpoint(dir / "model.safetensors.index.json"),
                    Catch::Contains("not.there is mapped to model.safetensors, which does not"));
  test::write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"a": "../x"}})");
  CHECK_THROWS_WITH(SafetensorsCheckpoint(dir / "model.safetensors.index.json"),
                    Catch::Contains("not a file name"));
  test::write_text(dir / "model.safetensors.index.json", "{\"weight_map\": ");
  CHECK_THROWS_WITH(SafetensorsCheckpoint(dir / "model.safetensors.index.json"),
                    Catch::Contains("malformed JSON"));
}

TEST_CASE("hf config.json: unsupported settings are named") {
  test::TempDir dir;
  LlmConfig c;
  test::write_text(
      dir / "config.json",
      R"({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4}})");
  CHECK_THROWS_WITH(read_llm_config_json(dir.path(), c), Catch::Contains("'yarn'"));
  test::write_text(dir / "config.json", R"({"model_type": "gpt2"})");
  CHECK_THROWS_WITH(read_llm_config_json(dir.path(), c), Catch::Contains("'gpt2'"));
  test::write_text(dir / "config.json", R"({"model_type": "llama", "hidden_size": "big"})");
  CHECK_THROWS_WITH(read_llm_config_json(dir.path(), c),
                    Catch::Contains("hidden_size has the wrong type"));
  VisionConfig v;
  test::write_text(dir / "config.json", R"({"model_type": "siglip_vision_model"})");
  CHECK_THROWS_WITH(read_vision_config_json(dir.path(), v), Catch::Contains("siglip"));
}
