#include <catch2/catch.hpp>

#include "core/config.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "models/factory.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"
#include "models/multimodal_model.h"

using namespace mllm;

namespace {
ModelConfig tiny_model() {
  ModelConfig m;
  auto& v = m.vision;
  v.image_size = 32, v.patch_size = 8, v.hidden = 32, v.layers = 2, v.heads = 2,
  v.intermediate = 64;
  auto& l = m.llm;
  l.hidden = 32, l.layers = 2, l.heads = 4, l.kv_heads = 2, l.intermediate = 64, l.vocab = 50;
  return m;
}
constexpr int64_t kImage = 4;
}  // namespace

TEST_CASE("models: parameter names are the llava-hf checkpoint keys") {
  torch::manual_seed(0);
  MultimodalModel model(tiny_model(), kImage);
  std::set<std::string> names;
  for (const auto& kv : named_parameters(*model)) names.insert(kv.first);
  for (const char* key : {
           "vision_tower.vision_model.embeddings.class_embedding",
           "vision_tower.vision_model.embeddings.patch_embedding.weight",
           "vision_tower.vision_model.embeddings.position_embedding.weight",
           "vision_tower.vision_model.pre_layrnorm.weight",
           "vision_tower.vision_model.encoder.layers.1.self_attn.out_proj.bias",
           "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
           "vision_tower.vision_model.encoder.layers.0.layer_norm2.bias",
           "vision_tower.vision_model.post_layernorm.weight",
           "multi_modal_projector.linear_1.weight",
           "multi_modal_projector.linear_2.bias",
           "language_model.model.embed_tokens.weight",
           "language_model.model.layers.1.self_attn.k_proj.weight",
           "language_model.model.layers.0.mlp.gate_proj.weight",
           "language_model.model.layers.0.post_attention_layernorm.weight",
           "language_model.model.norm.weight",
           "language_model.lm_head.weight",
       })
    CHECK(names.count(key) == 1);
  CHECK(names.count("vision_tower.vision_model.embeddings.patch_embedding.bias") ==
        0);                                                                        // CLIP: no bias
  CHECK(names.count("language_model.model.layers.0.self_attn.q_proj.bias") == 0);  // llama: no bias
}

TEST_CASE("models: shapes through vision tower, connector and LLM") {
  torch::manual_seed(0);
  auto cfg = tiny_model();
  MultimodalModel model(cfg, kImage);
  auto pixels = torch::randn({3, 3, 32, 32});
  auto f = model->vision_tower->features(pixels);
  CHECK(f.sizes() == torch::IntArrayRef({3, 16, 32}));  // (N,P,Cv), class token dropped
  auto hidden = model->vision_tower->vision_model(pixels);
  CHECK(hidden.size() == 3);  // embeddings + 2 layers
  CHECK(model->image_tokens() == 16);
  auto ids = torch::randint(5, 50, {2, 10});
  auto h = model->forward(ids, {});
  CHECK(h.sizes() == torch::IntArrayRef({2, 10, 32}));
  CHECK(model->logits(h).sizes() == torch::IntArrayRef({2, 10, 50}));

  cfg.vision.select = "cls_patch";
  MultimodalModel with_cls(cfg, kImage);
  CHECK(with_cls->vision_tower->features(pixels).sizes() == torch::IntArrayRef({3, 17, 32}));
}

TEST_CASE("models: a new vision tower's position embeddings have the configured spread") {
  torch::manual_seed(0);
  VisionConfig c;  // 64 patches + the class position, 64 wide: 4160 draws
  const auto std_of = [&](double init) {
    c.position_init_std = init;
    return ClipVisionEmbeddings(c)->position_embedding->weight.std().item<double>();
  };
  CHECK(std_of(0.02) == Approx(0.02).epsilon(0.05));
  CHECK(std_of(0.5) == Approx(0.5).epsilon(0.05));
}

TEST_CASE("models: qwen2 adds q/k/v biases; tied embeddings drop lm_head") {
  auto cfg = tiny_model();
  cfg.llm.type = "qwen2";
  cfg.llm.tie_word_embeddings = true;
  MultimodalModel model(cfg, kImage);
  std::set<std::string> names;
  for (const auto& kv : named_parameters(*model)) names.insert(kv.first);
  CHECK(names.count("language_model.model.layers.0.self_attn.q_proj.bias") == 1);
  CHECK(names.count("language_model.model.layers.0.self_attn.o_proj.bias") == 0);
  CHECK(names.count("language_model.lm_head.weight") == 0);
  auto h = model->forward(torch::randint(5, 50, {1, 4}), {});
  CHECK(model->logits(h).size(-1) == 50);
}

TEST_CASE("models: the decoder is causal") {
  torch::manual_seed(1);
  MultimodalModel model(tiny_model(), kImage);
  torch::NoGradGuard g;
  auto ids = torch::randint(5, 50, {1, 8});
  auto a = model->forward(ids, {});
  auto ids2 = ids.clone();
  ids2[0][5] = (ids[0][5].item<int64_t>() + 1 - 5) % 45 + 5;
  auto b = model->forward(ids2, {});
  CHECK(torch::allclose(a.slice(1, 0, 5), b.slice(1, 0, 5), 1e-5, 1e-6));
  CHECK(!torch::allclose(a.slice(1, 5), b.slice(1, 5), 1e-5, 1e-6));
}

TEST_CASE("models: right padding does not change the real tokens' outputs") {
  torch::manual_seed(2);
  MultimodalModel model(tiny_model(), kImage);
  torch::NoGradGuard g;
  auto ids = torch::randint(5, 50, {1, 6});
  auto alone = model->forward(ids, {});
  auto padded_ids = torch::cat({ids, torch::zeros({1, 3}, torch::kLong)}, 1);
  auto mask =
      torch::cat({torch::ones({1, 6}, torch::kLong), torch::zeros({1, 3}, torch::kLong)}, 1);
  auto padded = model->forward(padded_ids, {}, mask);
  CHECK(torch::allclose(alone, padded.slice(1, 0, 6), 1e-5, 1e-6));
}

TEST_CASE("splicing: image features land exactly where <image> was; text elsewhere untouched") {
  torch::manual_seed(3);
  MultimodalModel model(tiny_model(), kImage);
  torch::NoGradGuard g;
  const int64_t Q = model->image_tokens();
  // Sample 0: BOS, Q image tokens, 3 words. Sample 1: 2 words, Q image tokens, 1 word, padding.
  std::vector<int64_t> a{1}, b{7, 8};
  a.insert(a.end(), static_cast<size_t>(Q), kImage);
  a.insert(a.end(), {9, 10, 11});
  b.insert(b.end(), static_cast<size_t>(Q), kImage);
  b.insert(b.end(), {12, 0});
  auto ids = torch::stack({torch::tensor(a), torch::tensor(b)});
  auto pixels = torch::randn({2, 3, 32, 32});
  auto embeds = model->embed(ids, pixels);
  auto text = model->language_model->embed(ids);
  auto image_tokens = model->connector->forward(model->vision_tower->features(pixels));  // (2,Q,C)
  CHECK(torch::equal(embeds[0].slice(0, 1, 1 + Q), image_tokens[0]));
  CHECK(torch::equal(embeds[1].slice(0, 2, 2 + Q), image_tokens[1]));
  CHECK(torch::equal(embeds[0][0], text[0][0]));
  CHECK(torch::equal(embeds[0].slice(0, 1 + Q), text[0].slice(0, 1 + Q)));
  CHECK(torch::equal(embeds[1].slice(0, 0, 2), text[1].slice(0, 0, 2)));
  CHECK(torch::equal(embeds[1].slice(0, 2 + Q), text[1].slice(0, 2 + Q)));
}

TEST_CASE("splicing: a placeholder count that does not match the images is an error") {
  MultimodalModel model(tiny_model(), kImage);
  torch::NoGradGuard g;
  auto ids =
      torch::full({1, 5}, kImage, torch::kLong);  // 5 placeholders, but an image is 16 tokens
  CHECK_THROWS_WITH(model->embed(ids, torch::randn({1, 3, 32, 32})),
                    Catch::Contains("5 image placeholder tokens but the connector produced 16"));
  CHECK_THROWS_AS(model->embed(ids, {}), Error);
}

TEST_CASE("connector registry: names and unknown types") {
  auto cfg = tiny_model();
  cfg.connector.type = "linear";
  MultimodalModel model(cfg, kImage);
  CHECK(model->connector->forward(torch::randn({2, 16, 32})).sizes() ==
        torch::IntArrayRef({2, 16, 32}));
  cfg.connector.type = "qformer9";
  CHECK_THROWS_WITH(MultimodalModel(cfg, kImage), Catch::Contains("unknown connector 'qformer9'"));
}

TEST_CASE("splicing: a text-only batch still gives the connector a (zero) gradient") {
  MultimodalModel model(tiny_model(), kImage);
  auto h = model->forward(torch::randint(5, 50, {2, 6}), {});
  model->logits(h).sum().backward();
  for (const auto& p : model->connector->parameters()) {
    REQUIRE(p.grad().defined());
    CHECK(p.grad().abs().sum().item<double>() == 0.0);
  }
}

TEST_CASE("gated_xattn: zero gates leave the LLM unchanged; open gates bring in the image") {
  auto cfg = tiny_model();
  cfg.connector.type = "gated_xattn";
  cfg.connector.xattn_every = 2;
  MultimodalModel model(cfg, kImage);
  model->eval();
  CHECK(model->image_tokens() == 1);
  CHECK(model->connector->feature_level());
  // 2 LLM layers, a block before every 2nd: one block.
  const auto names = named_parameters(*model->connector);
  CHECK(std::any_of(names.begin(), names.end(),
                    [](const auto& kv) { return kv.first == "blocks.0.attn_gate"; }));
  CHECK(std::none_of(names.begin(), names.end(),
                     [](const auto& kv) { return kv.first.rfind("blocks.1.", 0) == 0; }));
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(5, 50, {2, 6});
  ids[0][0] = kImage;  // row 0 has an image, row 1 none
  const auto pixels = torch::randn({1, 3, 32, 32});
  const auto alone = model->language_model->forward(model->language_model->embed(ids));
  CHECK(torch::allclose(model->forward(ids, pixels), alone, 1e-6, 1e-6));
  for (auto& kv : model->connector->named_parameters())
    if (kv.key().find("gate") != std::string::npos) kv.value().fill_(0.5);
  const auto open = model->forward(ids, pixels);
  CHECK(!torch::allclose(open[0], alone[0], 1e-4, 1e-4));  // the image row changes
  CHECK(torch::allclose(open[1], alone[1], 1e-6, 1e-6));   // the text-only row does not
  const auto other = model->forward(ids, torch::randn({1, 3, 32, 32}));
  CHECK(!torch::allclose(other[0], open[0], 1e-4, 1e-4));  // and depends on which image
  // One placeholder per image is required.
  ids[1][0] = kImage;
  CHECK_THROWS_WITH(model->forward(ids, pixels), Catch::Contains("one <image> placeholder"));
}

TEST_CASE(
    "gated_xattn: the gates get gradients at zero; a text-only batch keeps every parameter "
    "in the graph") {
  auto cfg = tiny_model();
  cfg.connector.type = "gated_xattn";
  MultimodalModel model(cfg, kImage);
  auto ids = torch::randint(5, 50, {1, 6});
  ids[0][0] = kImage;
  model->logits(model->forward(ids, torch::randn({1, 3, 32, 32}))).pow(2).sum().backward();
  for (auto& kv : model->connector->named_parameters())
    if (kv.key().find("gate") != std::string::npos) {
      INFO(kv.key());
      CHECK(kv.value().grad().abs().sum().item<double>() > 0);
    }
  model->zero_grad();
  model->logits(model->forward(torch::randint(5, 50, {2, 6}), {})).sum().backward();
  for (const auto& p : model->connector->parameters()) CHECK(p.grad().defined());
}

TEST_CASE("a pretrained LLM grows its vocabulary for a tokenizer with more ids (<image>)") {
  test::TempDir dir("mllm-resize");
  test::make_shapes(dir.path(), 4, 1);
  const auto tok = load_tokenizer(dir / "tokenizer.json");
  REQUIRE(tok->vocab_size() > 64);
  // A saved llava folder whose LLM has 64 ids: fewer than the tokenizer's.
  ModelConfig small = tiny_model();
  small.llm.vocab = 64;
  torch::manual_seed(5);
  MultimodalModel saved(small, tok->image_id());
  const auto folder = dir / "llm";
  std::filesystem::create_directories(folder);
  save_safetensors(folder / "model.safetensors", named_parameters(*saved), {{"format", "pt"}});
  test::write_text(folder / "config.json", llava_config_json(small, tok->image_id()).dump());

  Config c;
  c.model = tiny_model();
  c.model.llm.pretrained = folder.string();
  c.model.tokenizer = (dir / "tokenizer.json").string();
  MultimodalModel grown = build_model(c, tok->vocabulary());
  const int64_t V = (tok->vocab_size() + 63) / 64 * 64;
  CHECK(c.model.llm.vocab == V);
  CHECK(grown->config().llm.vocab == V);
  for (const char* key :
       {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"}) {
    INFO(key);
    torch::Tensor before, after;
    for (const auto& [n, t] : named_parameters(*saved))
      if (n == key) before = t;
    for (const auto& [n, t] : named_parameters(*grown))
      if (n == key) after = t;
    REQUIRE(after.size(0) == V);
    CHECK(torch::equal(after.slice(0, 0, 64), before));
    const auto mean = before.mean(0);
    for (int64_t r = 64; r < V; r += 17) CHECK(torch::allclose(after[r], mean, 1e-6, 1e-6));
  }
  torch::NoGradGuard no_grad;
  const auto ids = torch::tensor({{1L, 5L, tok->vocab_size() - 1}});
  CHECK(grown->logits(grown->forward(ids, {}, {})).size(-1) == V);
  // Its config.json now says V: the folder it exports reloads without growing again.
  CHECK(llava_config_json(grown->config(), tok->image_id())["text_config"]["vocab_size"] == V);
}

TEST_CASE("the parameter estimate made before building matches the built model") {
  for (const bool moe : {false, true}) {
    ModelConfig m = tiny_model();
    if (moe) m.llm.type = "mixtral", m.llm.experts = 4, m.llm.experts_per_token = 2;
    torch::manual_seed(0);
    MultimodalModel model(m, kImage);
    auto count = [](const torch::nn::Module& part) {
      int64_t n = 0;
      for (const auto& p : part.parameters()) n += p.numel();
      return n;
    };
    const auto e = estimate_parameters(m);
    INFO("moe " << moe);
    CHECK(static_cast<double>(e.llm) == Approx(count(*model->language_model)).epsilon(0.05));
    CHECK(static_cast<double>(e.vision) == Approx(count(*model->vision_tower)).epsilon(0.05));
  }
  // Query-based connectors: the estimate bounds the built one from above, within a few times.
  for (const std::string type : {"resampler", "qformer"}) {
    ModelConfig m = tiny_model();
    m.connector.type = type, m.connector.num_queries = 16, m.connector.hidden = 48;
    m.connector.heads = 4;
    torch::manual_seed(0);
    MultimodalModel model(m, kImage);
    int64_t built = 0;
    for (const auto& p : model->connector->parameters()) built += p.numel();
    const auto estimate = static_cast<double>(estimate_parameters(m).connector);
    INFO(type << ": built " << built << ", estimated " << estimate);
    CHECK(estimate >= static_cast<double>(built));
    CHECK(estimate <= 4.0 * static_cast<double>(built));
  }
  // The largest sizes the config allows do not wrap around.
  ModelConfig huge = tiny_model();
  huge.llm.hidden = 1 << 17, huge.llm.layers = 1024, huge.llm.intermediate = 1 << 20;
  huge.llm.experts = 1024;
  CHECK(static_cast<double>(estimate_parameters(huge).llm) > 4e17);
}
