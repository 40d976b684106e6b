// AnyRes token counts (core/anyres.h) against vectors made from transformers' LlavaNext code
// (tests/reference/anyres_reference.py -> tests/fixtures/anyres/vectors.json): LLaVA-v1.6's
// pinpoints at 336 px tiles and a small set at 64 px, over wide, tall, tiny and huge images.
#include <catch2/catch.hpp>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/anyres.h"
#include "core/error.h"
#include "test_util.h"

using namespace mllm;

TEST_CASE("anyres: best resolution, tile grid and image tokens as LLaVA-NeXT's processor") {
  const auto vectors = nlohmann::json::parse(mllm::test::read_text(
      std::filesystem::path(MLLM_SOURCE_DIR) / "tests/fixtures/anyres/vectors.json"));
  const auto& cases = vectors.at("cases");
  REQUIRE(cases.size() >= 20);
  for (const auto& c : cases) {
    std::vector<Resolution> pinpoints;
    for (const auto& p : c["pinpoints"]) pinpoints.emplace_back(p[0], p[1]);
    const Resolution image{c["height"].get<int64_t>(), c["width"].get<int64_t>()};
    INFO(image.first << "x" << image.second << " tile " << c["tile"] << " cls " << c["cls"]);
    const auto best = select_best_resolution(image, pinpoints);
    CHECK(best.first == c["best"][0]);
    CHECK(best.second == c["best"][1]);
    const auto grid = anyres_grid_shape(image, pinpoints, c["tile"]);
    CHECK(grid.first == c["grid"][0]);
    CHECK(grid.second == c["grid"][1]);
    CHECK(anyres_image_tokens(image, pinpoints, c["tile"], c["patch"], c["cls"]) ==
          c["tokens"].get<int64_t>());
  }
  CHECK_THROWS_AS(select_best_resolution({0, 10}, {{336, 336}}), Error);
}

TEST_CASE(
    "anyres: max_tiles pinpoints; ImageTokens counts as the processor, plain counts convert") {
  AnyResConfig c;
  c.max_tiles = 4;
  const auto p = anyres_pinpoints(c, 336);
  // 1x1..1x4, 2x1, 2x2, 3x1, 4x1: every grid of at most 4 tiles.
  CHECK(p.size() == 8);
  CHECK(p.front() == Resolution{336, 336});
  CHECK(std::find(p.begin(), p.end(), Resolution{672, 672}) != p.end());
  CHECK(std::find(p.begin(), p.end(), Resolution{1008, 672}) == p.end());
  const ImageTokens plain = 576;
  CHECK_FALSE(plain.anyres());
  CHECK(plain.of_image({480, 640}) == 576);
  CHECK(plain.crops({480, 640}) == 1);
  const std::vector<Resolution> v16 = {
      {336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
  const ImageTokens next(576, v16, 336);
  CHECK(next.side() == 24);
  CHECK(next.of_image({480, 640}) == anyres_image_tokens({480, 640}, v16, 336, 14));
  CHECK(next.crops({480, 640}) == 5);  // the base image and 2 x 2 tiles
  CHECK(anyres_side_problem(576).empty());
  CHECK_FALSE(anyres_side_problem(32).empty());
}
