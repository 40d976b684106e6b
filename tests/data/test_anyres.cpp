// AnyRes token counts (core/anyres.h) against vectors made from transformers' LlavaNext code
// (tests/reference/anyres_reference.py -> tests/fixtures/anyres/vectors.json): LLaVA-v1.6's
// pinpoints at 336 px tiles and a small set at 64 px, over wide, tall, tiny and huge images.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/anyres.h"
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
