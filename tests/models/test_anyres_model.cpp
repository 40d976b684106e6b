// AnyRes in the model: the tiles' features packed as transformers' LlavaNext pack_image_features
// (vectors from tests/reference/anyres_pack_reference.py -> tests/fixtures/anyres/pack.json), the
// token count the data side uses equal to what the model splices, image_newline learning with the
// connector, and the LlavaNextForConditionalGeneration folder written and read back.
#include <catch2/catch.hpp>

#include <functional>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "models/hf/llava_folder.h"
#include "models/multimodal_model.h"
#include "test_util.h"

using namespace mllm;

namespace {

ModelConfig anyres_model(const nlohmann::json& fixture) {
  ModelConfig m;
  auto& v = m.vision;
  v.image_size = fixture.at("tile").get<int64_t>();  // 8 px tiles of 4 px patches: 2 x 2 tokens
  v.patch_size = 4, v.hidden = 8, v.layers = 1, v.heads = 2, v.intermediate = 16;
  v.anyres.grid_pinpoints = fixture.at("pinpoints").get<std::vector<std::vector<int64_t>>>();
  auto& l = m.llm;
  l.hidden = fixture.at("hidden").get<int64_t>(), l.layers = 1, l.heads = 1, l.kv_heads = 1,
  l.intermediate = 8, l.vocab = 16;
  m.connector.type = "mlp2x_gelu";
  return m;
}

nlohmann::json fixture() {
  return nlohmann::json::parse(mllm::test::read_text(std::filesystem::path(MLLM_SOURCE_DIR) /
                                                     "tests/fixtures/anyres/pack.json"));
}

torch::Tensor tensor(const nlohmann::json& j) {
  // Nested lists of numbers -> a double tensor of their shape.
  std::vector<int64_t> shape;
  for (const nlohmann::json* at = &j; at->is_array(); at = &(*at)[0]) shape.push_back(at->size());
  std::vector<double> flat;
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& x) {
    if (x.is_array())
      for (const auto& e : x) walk(e);
    else
      flat.push_back(x.get<double>());
  };
  walk(j);
  return torch::tensor(flat, torch::kDouble).view(shape);
}

}  // namespace

TEST_CASE("anyres model: tiles packed as LLaVA-NeXT's pack_image_features, counted as the data") {
  const auto f = fixture();
  torch::manual_seed(0);
  MultimodalModel model(anyres_model(f), 3);
  REQUIRE(model->image_newline.defined());
  REQUIRE(model->image_tokens() == f["side"].get<int64_t>() * f["side"].get<int64_t>());
  {
    torch::NoGradGuard g;
    model->image_newline.copy_(tensor(f["newline"]).to(torch::kFloat));
  }
  std::vector<torch::Tensor> features, packed;
  std::vector<int64_t> sizes;
  const ImageTokens counts = model->image_token_counts();
  for (const auto& c : f["cases"]) {
    features.push_back(tensor(c["features"]).to(torch::kFloat));
    packed.push_back(tensor(c["packed"]).to(torch::kFloat));
    const Resolution size{c["height"].get<int64_t>(), c["width"].get<int64_t>()};
    sizes.insert(sizes.end(), {size.first, size.second});
    INFO(size.first << "x" << size.second);
    CHECK(counts.crops(size) == features.back().size(0));
    CHECK(counts.of_image(size) == packed.back().size(0));
  }
  ImageLayout layout;
  layout.sizes = torch::tensor(sizes, torch::kLong).view({-1, 2});
  const auto ours = model->image_tokens_of(torch::cat(features), layout);
  const auto ref = torch::cat(packed);
  REQUIRE(ours.sizes() == ref.sizes());
  CHECK(torch::allclose(ours, ref, 0, 1e-6));

  // A video frame ((0,0): one plain crop) between AnyRes images keeps its Q tokens, pooled.
  ImageLayout mixed;
  mixed.sizes = torch::tensor({30, 61, 0, 0}, torch::kLong).view({2, 2});
  mixed.pool = torch::tensor({1, 2}, torch::kLong);
  const auto frame = torch::randn({1, 4, 4});
  const auto out = model->image_tokens_of(torch::cat({features[1], frame}), mixed);
  CHECK(out.size(0) == packed[1].size(0) + 1);  // 2 x 2 pooled 2 x 2: one token
  CHECK(torch::allclose(out.slice(0, -1), frame.mean(1), 0, 1e-6));

  // Too few crops for the sizes is an error, not a silent misalignment.
  CHECK_THROWS_WITH(model->image_tokens_of(features[1].slice(0, 0, 2), mixed),
                    Catch::Contains("needs 4 crops; the batch has 2 left"));
}

TEST_CASE("anyres model: image_newline is trained by what reaches it; connectors it needs") {
  const auto f = fixture();
  torch::manual_seed(1);
  MultimodalModel model(anyres_model(f), 3);
  // Two images: 30x61 (1 + 2 tiles) and 13x17; placeholders as the data side counts them.
  const ImageTokens counts = model->image_token_counts();
  const int64_t n1 = counts.of_image({30, 61}), n2 = counts.of_image({13, 17});
  std::vector<int64_t> ids = {1, 2};
  ids.insert(ids.end(), static_cast<size_t>(n1), 3);
  ids.push_back(5);
  ids.insert(ids.end(), static_cast<size_t>(n2), 3);
  ids.push_back(6);
  const auto input = torch::tensor(ids, torch::kLong).unsqueeze(0);
  const auto pixels = torch::randn({counts.crops({30, 61}) + counts.crops({13, 17}), 3, 8, 8});
  ImageLayout layout;
  layout.sizes = torch::tensor({30, 61, 13, 17}, torch::kLong).view({2, 2});
  const auto h = model->forward(input, pixels, {}, {}, layout);
  CHECK(h.size(1) == static_cast<int64_t>(ids.size()));
  h.pow(2).sum().backward();
  REQUIRE(model->image_newline.grad().defined());
  CHECK(model->image_newline.grad().abs().sum().item<double>() > 0);
  // One placeholder short: the counts disagree and it says so.
  auto short_ids = ids;
  short_ids.erase(short_ids.begin() + 2);  // the first image's first placeholder
  const auto short_input = torch::tensor(short_ids, torch::kLong).unsqueeze(0);
  CHECK_THROWS_WITH(model->forward(short_input, pixels, {}, {}, layout),
                    Catch::Contains("image placeholder tokens but the connector produced"));

  auto cfg = anyres_model(f);
  cfg.connector.type = "gated_xattn";
  CHECK_THROWS_WITH(MultimodalModel(cfg, 3), Catch::Contains("AnyRes needs a token-level"));
  cfg.connector.type = "qformer";
  cfg.connector.num_queries = 5;
  CHECK_THROWS_WITH(MultimodalModel(cfg, 3), Catch::Contains("square grid"));
}

TEST_CASE("anyres model: exported as LlavaNextForConditionalGeneration and read back") {
  const auto f = fixture();
  torch::manual_seed(2);
  MultimodalModel model(anyres_model(f), 3);
  mllm::test::TempDir dir;
  write_llava_folder(dir / "next", *model, {});
  const auto config = nlohmann::json::parse(read_file(dir / "next" / "config.json"));
  CHECK(config["model_type"] == "llava_next");
  CHECK(config["architectures"][0] == "LlavaNextForConditionalGeneration");
  CHECK(config["image_grid_pinpoints"] == f["pinpoints"]);
  auto back = load_llava_folder(dir / "next");
  REQUIRE(back->image_newline.defined());
  CHECK(back->image_newline.equal(model->image_newline));
  CHECK(back->anyres_pinpoints() == model->anyres_pinpoints());
  // Without AnyRes the folder is plain llava and has no image_newline.
  auto plain = anyres_model(f);
  plain.vision.anyres = {};
  MultimodalModel p(plain, 3);
  CHECK_FALSE(p->image_newline.defined());
  write_llava_folder(dir / "plain", *p, {});
  CHECK(nlohmann::json::parse(read_file(dir / "plain" / "config.json"))["model_type"] == "llava");
}
