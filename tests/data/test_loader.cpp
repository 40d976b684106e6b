#include <catch2/catch.hpp>

#include <set>

#include "core/error.h"
#include "data/loader.h"
#include "data/tokenizer/tokenizer.h"
#include "fixtures.h"

using namespace mllm;
using mllm::test::TempDir;

namespace {

struct Fixture {
  TempDir dir{"mllm-loader"};
  std::unique_ptr<Tokenizer> tok;
  DataConfig data;
  std::unique_ptr<ConversationDataset> ds;
  ImageTransform transform{ImageConfig{}, 32};

  explicit Fixture(const char* file = "instruct_train.json", int64_t n = 30) {
    test::make_shapes(dir.path(), n, 2);
    tok = load_tokenizer(dir / "tokenizer.json");
    data.template_name = "plain";
    data.train.path = (dir / "captions_train.json").string();
    data.train.image_root = (dir / "images").string();
    if (std::string(file) != "captions_train.json") {
      data.template_name = "text";  // variable lengths, no images
      data.train.path = (dir / file).string();
    }
    ds = std::make_unique<ConversationDataset>(data.train, data, *tok, 16, "data.train");
  }
};

std::vector<torch::Tensor> drain(DataLoader& loader, int n) {
  std::vector<torch::Tensor> out;
  for (int i = 0; i < n; ++i) out.push_back(loader.next().input_ids);
  return out;
}

}  // namespace

TEST_CASE("loader: the batch sequence does not depend on the number of workers") {
  Fixture f("captions_train.json");
  LoaderOptions o;
  o.batch_size = 4;
  o.grad_accum = 2;
  o.seed = 5;
  DataLoader serial(*f.ds, f.transform, o);
  const auto a = drain(serial, 12);  // 3 steps per epoch (30 / 8): crosses two epoch boundaries
  for (int64_t workers : {1, 3}) {
    o.workers = workers;
    DataLoader parallel(*f.ds, f.transform, o);
    const auto b = drain(parallel, 12);
    for (size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
  }
  // 12 micro-batches = 2 epochs of 6: the loader stands at the end of epoch 1.
  CHECK(serial.position().epoch == 1);
  CHECK(serial.position().position == 24);
}

TEST_CASE("loader: each epoch is a new permutation; incomplete steps are dropped") {
  Fixture f("captions_train.json");
  LoaderOptions o;
  o.batch_size = 4;
  o.grad_accum = 2;
  o.seed = 1;
  const auto e0 = plan_epoch(*f.ds, o, 0), e1 = plan_epoch(*f.ds, o, 1);
  REQUIRE(e0.size() == 6);  // 3 whole steps of 2 micro-batches
  std::set<int64_t> seen;
  for (const auto& b : e0) seen.insert(b.begin(), b.end());
  CHECK(seen.size() == 24);
  CHECK(e0 != e1);
}

TEST_CASE("loader: starting at a stored position continues with the next unseen batch") {
  Fixture f("captions_train.json");
  LoaderOptions o;
  o.batch_size = 4;
  o.grad_accum = 2;
  o.workers = 2;
  DataLoader full(*f.ds, f.transform, o);
  const auto all = drain(full, 10);
  DataLoader first(*f.ds, f.transform, o);
  drain(first, 8);  // 4 steps: one epoch and one step
  const LoaderPosition at = first.position();
  CHECK(at.epoch == 1);
  CHECK(at.position == 8);
  DataLoader resumed(*f.ds, f.transform, o, at);
  const auto rest = drain(resumed, 2);
  CHECK(torch::equal(rest[0], all[8]));
  CHECK(torch::equal(rest[1], all[9]));
}

TEST_CASE("loader: group_by_length pads less") {
  Fixture f("instruct_train.json", 64);
  LoaderOptions o;
  o.batch_size = 8;
  auto padding = [&](bool grouped) {
    o.group_by_length = grouped;
    DataLoader loader(*f.ds, f.transform, o);
    int64_t pad = 0;
    for (int i = 0; i < 8; ++i) {
      const Batch b = loader.next();
      pad += b.attention_mask.numel() - b.attention_mask.sum().item<int64_t>();
    }
    return pad;
  };
  const int64_t plain = padding(false), grouped = padding(true);
  INFO("padding tokens: plain " << plain << ", grouped " << grouped);
  CHECK(grouped < plain / 2);
}

TEST_CASE("loader: a worker's error surfaces on the trainer's thread, naming the file") {
  Fixture f("captions_train.json");
  for (int i = 0; i < 30; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "images/train/%06d.png", i);
    test::write_text(f.dir / name, "not a png");
  }
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  DataLoader loader(*f.ds, f.transform, o);
  CHECK_THROWS_WITH(loader.next(), Catch::Contains(".png: cannot decode image"));
}

TEST_CASE(
    "loader: workers tokenize; records too long to keep are dropped (skip) or name the record") {
  TempDir dir{"mllm-loader"};
  test::make_shapes(dir.path(), 4, 1);
  auto tok = load_tokenizer(dir / "tokenizer.json");
  // Eight text-only records; the ones with a long question cannot keep their reply in 12 tokens.
  std::string lines;
  for (int i = 0; i < 8; ++i) {
    const std::string q = i % 4 == 3 ? "what is it ? what is it ? what is it ?" : "what is it ?";
    lines += R"({"id": "r)" + std::to_string(i) +
             R"(", "conversations": [{"from": "human", "value": ")" + q +
             R"("}, {"from": "gpt", "value": "a red circle ."}]})" + "\n";
  }
  test::write_text(dir / "recs.jsonl", lines);
  DataConfig data;
  data.template_name = "text";
  data.max_length = 12;
  data.train.path = (dir / "recs.jsonl").string();
  data.on_bad_record = "skip";
  const ConversationDataset ds(data.train, data, *tok, 4, "data.train");
  REQUIRE(ds.size() == 8);
  CHECK(ds.stats().skipped == 0);  // loading does not tokenize
  const ImageTransform transform{ImageConfig{}, 32};
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  int64_t rows = 0;
  {
    DataLoader loader(ds, transform, o);
    for (int i = 0; i < 2; ++i) rows += loader.next().input_ids.size(0);
    CHECK(loader.dropped_records() == 2);
  }
  CHECK(rows == 6);
  CHECK(ds.stats().skipped == 2);
  CHECK(ds.stats().records == 8);

  data.on_bad_record = "error";
  const ConversationDataset strict(data.train, data, *tok, 4, "data.train");
  DataLoader loader(strict, transform, o);
  auto two_batches = [&] {
    for (int i = 0; i < 2; ++i) loader.next();
  };
  CHECK_THROWS_WITH(two_batches(), Catch::Contains("recs.jsonl:") && Catch::Contains("(id \"r") &&
                                       Catch::Contains("truncation leaves nothing supervised"));
}

TEST_CASE("loader: ranks split each global micro-batch; together they see one process's batches") {
  Fixture f("captions_train.json");
  LoaderOptions one;
  one.batch_size = 4;
  one.grad_accum = 2;
  one.seed = 9;
  const auto whole = plan_epoch(*f.ds, one, 3);
  LoaderOptions r0 = one, r1 = one;
  r0.batch_size = r1.batch_size = 2;
  r0.world_size = r1.world_size = 2;
  r1.rank = 1;
  const auto a = plan_epoch(*f.ds, r0, 3), b = plan_epoch(*f.ds, r1, 3);
  REQUIRE(a.size() == whole.size());
  REQUIRE(b.size() == whole.size());
  for (size_t m = 0; m < whole.size(); ++m) {
    CHECK(std::vector<int64_t>(whole[m].begin(), whole[m].begin() + 2) == a[m]);
    CHECK(std::vector<int64_t>(whole[m].begin() + 2, whole[m].end()) == b[m]);
  }
  // Positions count global samples: both ranks stand where the single process does.
  DataLoader single(*f.ds, f.transform, one), rank1(*f.ds, f.transform, r1);
  drain(single, 5);
  drain(rank1, 5);
  CHECK(rank1.position().epoch == single.position().epoch);
  CHECK(rank1.position().position == single.position().position);
  CHECK(rank1.steps_per_epoch() == 3);
  r1.rank = 2;
  CHECK_THROWS_WITH(DataLoader(*f.ds, f.transform, r1), Catch::Contains("rank 2"));
}
