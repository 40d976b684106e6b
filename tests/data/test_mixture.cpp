// Data mixtures (data/mixture.h): weights 3:1 draw 3:1 in every epoch, `epochs` makes passes, a
// source's items are drawn from its own stream of permutations (each item equally often over whole
// passes), the order is a pure function of (seed, epoch), ranks take disjoint shares, and
// data.train as a list parses, validates and writes back.
#include <catch2/catch.hpp>

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/error.h"
#include "data/loader.h"
#include "data/mixture.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"
#include "train/recipe.h"

using namespace mllm;
using mllm::test::TempDir;
using mllm::test::write_text;

namespace {

// A source of n text-only records whose ids start with `tag`.
std::unique_ptr<SampleSource> source(const TempDir& dir, const Tokenizer& tok,
                                     const std::string& tag, int n) {
  nlohmann::json recs = nlohmann::json::array();
  for (int i = 0; i < n; ++i)
    recs.push_back(
        {{"id", tag + std::to_string(i)},
         {"conversations",
          {{{"from", "human"}, {"value", "a circle"}}, {{"from", "gpt"}, {"value", "red ."}}}}});
  write_text(dir / (tag + ".json"), recs.dump());
  DataConfig data;
  data.template_name = "text";
  data.train.path = (dir / (tag + ".json")).string();
  return std::make_unique<ConversationDataset>(data.train, data, tok, 4, "data.train");
}

struct Mix {
  TempDir dir{"mllm-mixture"};
  std::unique_ptr<Tokenizer> tok;
  Mix() {
    test::make_shapes(dir.path(), 2, 1);
    tok = load_tokenizer(dir / "tokenizer.json");
  }
  MixtureSource make(double wa, double wb, double ea = 0, double eb = 0, int na = 8, int nb = 4) {
    std::vector<MixtureSource::Part> parts;
    parts.push_back({"a.json", source(dir, *tok, "a", na), wa, ea});
    parts.push_back({"b.json", source(dir, *tok, "b", nb), wb, eb});
    return MixtureSource(std::move(parts));
  }
};

std::map<size_t, int> per_source(const MixtureSource& m, const std::vector<int64_t>& order) {
  std::map<size_t, int> n;
  for (int64_t i : order) ++n[m.source_of(static_cast<size_t>(i))];
  return n;
}

}  // namespace

TEST_CASE("mixture: weights 3:1 draw 3:1 each epoch, deterministically") {
  Mix f;
  const auto m = f.make(3, 1);  // 8 + 4 items: an epoch of 12, 9 from a and 3 from b
  REQUIRE(m.size() == 12);
  CHECK(m.counts() == std::vector<int64_t>{9, 3});
  CHECK(m.epoch_size() == 12);
  std::map<int64_t, int> seen_b, seen_a;
  for (int64_t e = 0; e < 8; ++e) {
    const auto order = m.epoch_order(e, 17);
    CHECK(order == m.epoch_order(e, 17));  // a pure function of (seed, epoch)
    const auto n = per_source(m, order);
    CHECK(n.at(0) == 9);
    CHECK(n.at(1) == 3);
    for (int64_t i : order) (m.source_of(static_cast<size_t>(i)) ? seen_b : seen_a)[i]++;
  }
  CHECK(m.epoch_order(0, 17) != m.epoch_order(1, 17));
  CHECK(m.epoch_order(0, 17) != m.epoch_order(0, 18));
  // Over 8 epochs b gave 24 items = 6 whole passes over its 4, a 72 = 9 passes over its 8.
  REQUIRE(seen_b.size() == 4);
  for (const auto& [i, n] : seen_b) CHECK(n == 6);
  REQUIRE(seen_a.size() == 8);
  for (const auto& [i, n] : seen_a) CHECK(n == 9);
  // Items come from the right file.
  const auto item = m.try_item(9);
  REQUIRE(item);
  CHECK(item->front().id == "b1");
  CHECK(m.try_item(2)->front().id == "a2");
}

TEST_CASE("mixture: epochs per source, and weights beside them") {
  Mix f;
  const auto passes = f.make(0, 0, 0.5, 2);  // half of a's 8, twice b's 4
  CHECK(passes.counts() == std::vector<int64_t>{4, 8});
  const auto n = per_source(passes, passes.epoch_order(0, 1));
  CHECK(n.at(0) == 4);
  CHECK(n.at(1) == 8);
  // Odd shares: 7 and 3 items weighted 1:1 share 10: 5 each.
  const auto odd = f.make(1, 1, 0, 0, 7, 3);
  CHECK(odd.counts() == std::vector<int64_t>{5, 5});
}

TEST_CASE("mixture: ranks take disjoint runs of each global batch") {
  Mix f;
  const auto m = f.make(3, 1);
  LoaderOptions o;
  o.batch_size = 2;
  o.world_size = 2;
  o.seed = 5;
  std::multiset<int64_t> both;
  std::vector<std::vector<int64_t>> plans;
  for (int64_t r = 0; r < 2; ++r) {
    o.rank = r;
    for (const auto& b : plan_epoch(m, o, 0)) {
      CHECK(b.size() == 2);
      both.insert(b.begin(), b.end());
    }
  }
  const auto order = m.epoch_order(0, 5);
  CHECK(both == std::multiset<int64_t>(order.begin(), order.end()));
}

TEST_CASE("mixture: data.train as a list parses, is validated and is written back") {
  TempDir dir;
  test::make_shapes(dir.path(), 4, 1);
  const std::string d = dir.path().string();
  const std::string base = "run: {output_dir: " + d +
                           "/out}\n"
                           "model: {tokenizer: " +
                           d +
                           "/tokenizer.json}\n"
                           "train: {stage: pretrain}\n";
  write_text(dir / "mix.yaml", base + "data:\n  train:\n    - {path: " + d +
                                   "/captions_train.json, image_root: " + d +
                                   "/images, weight: 3}\n    - {path: " + d +
                                   "/text_train.json, epochs: 2, template: text}\n");
  const Config c = load_config(dir / "mix.yaml");
  REQUIRE(c.data.mixture.size() == 2);
  CHECK(c.data.mixture[0].weight == 3);
  CHECK(c.data.mixture[1].epochs == 2);
  CHECK(c.data.mixture[1].template_name == "text");
  CHECK(c.data.train.path == c.data.mixture[0].path);
  // Written back as a list, read again the same.
  write_text(dir / "again.yaml", config_to_yaml(c));
  const Config again = load_config(dir / "again.yaml");
  REQUIRE(again.data.mixture.size() == 2);
  CHECK(again.data.mixture[1].epochs == 2);
  // --set reaches an element; a key set on the list itself would have replaced the mixture by a
  // one-source mapping without its format or image_root: refused, naming both ways to say it.
  const Config one = load_config(dir / "mix.yaml", {"data.train[1].epochs=0.5"});
  REQUIRE(one.data.mixture.size() == 2);
  CHECK(one.data.mixture[1].epochs == 0.5);
  CHECK_THROWS_WITH(
      load_config(dir / "mix.yaml", {"data.train.path=" + d + "/text_train.json"}),
      Catch::Contains("--set data.train.path=") && Catch::Contains("'data.train' is a list") &&
          Catch::Contains("'data.train[0].path'") && Catch::Contains("'data.train=[...]'"));

  write_text(dir / "bad1.yaml",
             base + "data:\n  train:\n    - {path: " + d + "/captions_train.json}\n");
  CHECK_THROWS_WITH(load_config(dir / "bad1.yaml"),
                    Catch::Contains("data.train[0].weight") && Catch::Contains("either a weight"));
  write_text(dir / "bad2.yaml",
             base + "data:\n  train: {path: " + d + "/captions_train.json, weight: 2}\n");
  CHECK_THROWS_WITH(load_config(dir / "bad2.yaml"),
                    Catch::Contains("data.train.weight") && Catch::Contains("only in a mixture"));
  write_text(dir / "bad3.yaml", base + "data:\n  train:\n    - {path: " + d +
                                    "/captions_train.json, weight: 1, template: nope}\n");
  CHECK_THROWS_WITH(load_config(dir / "bad3.yaml"), Catch::Contains("data.train[0].template"));
}
