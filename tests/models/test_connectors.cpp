// The token-level connectors behind the registry: shapes and token counts, gradients, how the
// output depends on the features (and on their order), hand-computed values, configuration errors,
// and a short stage-1 run on ShapesWorld for each design.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/error.h"
#include "core/torch_compat.h"
#include "fixtures.h"
#include "models/connectors/connector.h"
#include "models/hf/weights.h"
#include "models/multimodal_model.h"
#include "train/trainer.h"

using namespace mllm;
using mllm::test::TempDir;

namespace {

constexpr int64_t kCv = 16, kC = 24;  // vision and LLM widths of the standalone connectors

// A connector over P patch features of width kCv, emitting width kC, with small settings.
ConnectorSpec spec(const std::string& type, int64_t P = 16) {
  ConnectorConfig c;
  c.type = type;
  c.num_queries = 4;
  c.layers = 2;
  c.heads = 2;
  c.hidden = 0;
  c.pool_factor = 2;
  return {kCv, kC, P, c};
}

std::map<std::string, torch::Tensor> params(const Connector& c) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, t] : named_parameters(c)) out[name] = t;
  return out;
}

std::string config_error(const ConnectorSpec& s) {
  try {
    make_connector(s);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

bool close(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::allclose(a, b, 1e-5, 1e-6);
}

const std::vector<std::string> kNewTypes = {"qformer", "resampler", "pool"};

}  // namespace

TEST_CASE("connectors: (N,P,Cv) -> (N,Q,C) with Q = output_tokens(), for N = 0, 1 and 3") {
  torch::manual_seed(0);
  struct Case {
    ConnectorSpec s;
    int64_t Q;
  };
  std::vector<Case> cases;
  cases.push_back({spec("qformer"), 4});
  auto s = spec("qformer");
  s.config.num_queries = 7, s.config.layers = 1, s.config.hidden = 12, s.config.heads = 3;
  cases.push_back({s, 7});
  cases.push_back({spec("resampler"), 4});
  s = spec("resampler", 36);  // 6x6 patches, 3x3 queries, own width
  s.config.num_queries = 9, s.config.hidden = 8;
  cases.push_back({s, 9});
  cases.push_back({spec("pool"), 4});  // 4x4 grid pooled by 2
  s = spec("pool", 36);
  s.config.pool_factor = 3;
  cases.push_back({s, 4});
  s.config.pool_factor = 1;
  cases.push_back({s, 36});
  s = spec("pool", 64);
  s.config.pool_factor = 8;
  cases.push_back({s, 1});
  for (const auto& [sp, Q] : cases) {
    INFO(sp.config.type << " P=" << sp.input_tokens << " Q=" << Q);
    auto c = make_connector(sp);
    CHECK(c->output_tokens() == Q);
    for (int64_t N : {0, 1, 3}) {
      const auto out = c->forward(torch::randn({N, sp.input_tokens, kCv}));
      CHECK(out.sizes() == torch::IntArrayRef({N, Q, kC}));
    }
  }
}

TEST_CASE("connectors: parameter names") {
  auto q = params(*make_connector(spec("qformer")));
  for (const char* key : {"query_tokens", "layernorm.weight", "layers.0.self_attn.q_proj.weight",
                          "layers.1.self_attn.out_proj.bias", "layers.0.self_attn_layer_norm.bias",
                          "layers.1.cross_attn.k_proj.weight", "layers.0.cross_attn.v_proj.bias",
                          "layers.1.cross_attn_layer_norm.weight", "layers.0.mlp.fc1.weight",
                          "layers.1.mlp.fc2.bias", "layers.1.final_layer_norm.weight",
                          "language_projection.weight", "language_projection.bias"})
    CHECK(q.count(key) == 1);
  CHECK(q.count("layers.2.self_attn.q_proj.weight") == 0);  // layers: 2
  CHECK(q.at("query_tokens").sizes() == torch::IntArrayRef({1, 4, kCv}));
  // Cross-attention keys and values come straight from the vision width.
  CHECK(q.at("layers.0.cross_attn.k_proj.weight").sizes() == torch::IntArrayRef({kCv, kCv}));
  CHECK(q.at("layers.0.mlp.fc1.weight").sizes() == torch::IntArrayRef({4 * kCv, kCv}));

  auto s = spec("resampler");
  auto r = params(*make_connector(s));
  for (const char* key :
       {"query", "ln_q.weight", "ln_kv.bias", "attn.q_proj.weight", "attn.k_proj.bias",
        "attn.v_proj.weight", "attn.out_proj.weight", "ln_post.weight", "proj.weight"})
    CHECK(r.count(key) == 1);
  CHECK(r.count("kv_proj.weight") == 0);  // width = vision width: no projection, as Qwen-VL
  CHECK(r.count("proj.bias") == 0);
  s.config.hidden = 8;
  r = params(*make_connector(s));
  REQUIRE(r.count("kv_proj.weight") == 1);
  CHECK(r.at("kv_proj.weight").sizes() == torch::IntArrayRef({8, kCv}));
  CHECK(r.count("kv_proj.bias") == 0);
  CHECK(r.at("query").sizes() == torch::IntArrayRef({4, 8}));

  auto p = params(*make_connector(spec("pool")));
  CHECK(p.size() == 4);
  CHECK(p.at("linear_1.weight").sizes() == torch::IntArrayRef({kC, kCv}));
  CHECK(p.at("linear_2.weight").sizes() == torch::IntArrayRef({kC, kC}));
}

TEST_CASE("connectors: gradients reach every parameter, also on zero images") {
  for (const auto& type : kNewTypes) {
    auto s = spec(type);
    if (type == "resampler") s.config.hidden = 8;  // with kv_proj
    torch::manual_seed(1);
    auto c = make_connector(s);
    auto out = c->forward(torch::randn({2, 16, kCv}));
    (out * torch::randn_like(out)).sum().backward();
    for (const auto& [name, p] : named_parameters(*c)) {
      INFO(type << ": " << name);
      REQUIRE(p.grad().defined());
      CHECK(p.grad().abs().sum().item<double>() > 0);
    }
    // A text-only batch: the empty output still reaches every parameter (with a zero gradient),
    // which the multimodal model relies on to keep all trainable parameters in each step's graph.
    c->zero_grad();
    auto empty = c->forward(torch::zeros({0, 16, kCv}));
    REQUIRE(empty.requires_grad());
    (empty.sum() * 0.0).backward();
    for (const auto& [name, p] : named_parameters(*c)) {
      INFO(type << " (no image): " << name);
      REQUIRE(p.grad().defined());
      CHECK(p.grad().abs().sum().item<double>() == 0);
    }
  }
}

TEST_CASE("connectors: each image's tokens depend on that image's features only") {
  for (const auto& type : kNewTypes) {
    INFO(type);
    torch::manual_seed(2);
    auto c = make_connector(spec(type));
    torch::NoGradGuard g;
    const auto f = torch::randn({3, 16, kCv});
    const auto out = c->forward(f);
    auto f2 = f.clone();
    f2[1] += torch::randn({16, kCv});  // change image 1 only
    const auto out2 = c->forward(f2);
    CHECK(!close(out[1], out2[1]));
    CHECK(close(out[0], out2[0]));
    CHECK(close(out[2], out2[2]));
    CHECK(close(c->forward(f.slice(0, 1, 2))[0], out[1]));  // same alone as in a batch
    // Changing a single patch changes the output too (every patch is looked at).
    auto f3 = f.clone();
    f3[0][5] += torch::randn({kCv});
    CHECK(!close(c->forward(f3)[0], out[0]));
  }
}

TEST_CASE("connectors: train under bf16 autocast (train.precision: bf16)") {
  for (const auto& type : kNewTypes)
    for (const bool with_width : {false, true}) {
      auto s = spec(type);
      if (with_width) s.config.hidden = 8;  // the resampler then projects the features first
      torch::manual_seed(6);
      auto c = make_connector(s);
      for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
        INFO(type << " hidden " << s.config.hidden << " features " << dtype);
        c->zero_grad();
        torch::Tensor out;
        {
          AutocastScope autocast(true, torch::kCPU, torch::kBFloat16);
          out = c->forward(torch::randn({2, 16, kCv}).to(dtype));
        }
        CHECK(out.sizes() == torch::IntArrayRef({2, 4, kC}));
        CHECK(torch::isfinite(out).all().item<bool>());
        out.to(torch::kFloat).pow(2).mean().backward();
        for (const auto& [name, p] : named_parameters(*c)) {
          INFO(name);
          REQUIRE(p.grad().defined());
          CHECK(p.grad().scalar_type() == torch::kFloat);
          CHECK(torch::isfinite(p.grad()).all().item<bool>());
        }
      }
    }
}

TEST_CASE("qformer: blind to the order of the patches, equivariant in its queries") {
  torch::manual_seed(3);
  auto c = make_connector(spec("qformer"));
  torch::NoGradGuard g;
  const auto f = torch::randn({2, 16, kCv});
  const auto out = c->forward(f);
  const auto perm = torch::randperm(16);
  // No positions on the features: cross-attention sees a set.
  CHECK(close(c->forward(f.index_select(1, perm)), out));
  // Permuting the query tokens permutes the output tokens (self-attention is equivariant).
  auto q = params(*c).at("query_tokens");
  const auto qperm = torch::tensor({2, 0, 3, 1}, torch::kLong);
  q.copy_(q.index_select(1, qperm));
  CHECK(close(c->forward(f), out.index_select(1, qperm)));
}

TEST_CASE("resampler: positions make it see where each patch is") {
  torch::manual_seed(4);
  auto c = make_connector(spec("resampler"));
  torch::NoGradGuard g;
  const auto f = torch::randn({2, 16, kCv});
  const auto out = c->forward(f);
  // Shuffling the patches, or transposing their 4x4 grid, changes what the queries read.
  CHECK(!close(c->forward(f.index_select(1, torch::randperm(16))), out));
  const auto transposed = f.view({2, 4, 4, kCv}).transpose(1, 2).reshape({2, 16, kCv});
  CHECK(!close(c->forward(transposed), out));
  // Each query keeps its own grid position: permuting the query vectors alone does not simply
  // permute the output tokens, as it would without query positions.
  auto q = params(*c).at("query");
  const auto qperm = torch::tensor({2, 0, 3, 1}, torch::kLong);
  q.copy_(q.index_select(0, qperm));
  CHECK(!close(c->forward(f), out.index_select(1, qperm)));
}

TEST_CASE("resampler: value_positions puts where each query read into what it returns") {
  // Every patch the same feature: without positions in the values each query returns the same
  // average of equal values, whatever its attention; with them, the output tokens differ by where
  // their queries looked.
  torch::manual_seed(5);
  const auto same = torch::randn({1, 1, kCv}).expand({2, 16, kCv}).contiguous();
  auto s = spec("resampler");
  auto keys_only = make_connector(s);
  s.config.value_positions = true;
  auto with_values = make_connector(s);
  torch::NoGradGuard g;
  const auto a = keys_only->forward(same), b = with_values->forward(same);
  for (int64_t q = 1; q < 4; ++q) {
    CHECK(close(a.select(1, q), a.select(1, 0)));
    CHECK(!close(b.select(1, q), b.select(1, 0)));
  }
  // Same parameter names either way: a checkpoint loads into both.
  CHECK(params(*keys_only).size() == params(*with_values).size());
}

TEST_CASE("resampler: a window keeps each query to the patches near its own cell") {
  // 6x6 patches, a 3x3 grid of queries: a query's own cell is 2x2 patches.
  torch::manual_seed(6);
  auto s = spec("resampler", 36);
  s.config.num_queries = 9;
  torch::NoGradGuard g;
  const auto f = torch::randn({2, 36, kCv});
  auto changed = f.clone();  // the bottom-right cell's 2x2 patches (rows 4-5, columns 4-5)
  for (int64_t r = 4; r < 6; ++r) changed.narrow(1, r * 6 + 4, 2).add_(torch::randn({2, 2, kCv}));
  auto tokens_moved = [&](double window) {
    s.config.window = window;
    auto c = make_connector(s);
    const auto a = c->forward(f), b = c->forward(changed);
    std::vector<int64_t> moved;
    for (int64_t q = 0; q < 9; ++q)
      if (!close(a.select(1, q), b.select(1, q))) moved.push_back(q);
    return moved;
  };
  // 0: every query reads every patch (Qwen-VL).
  CHECK(tokens_moved(0) == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8});
  // 0.5: its own cell only.
  CHECK(tokens_moved(0.5) == std::vector<int64_t>{8});
  // 1.0: the patches within one cell of its centre, so the neighbours' nearest rows and columns.
  CHECK(tokens_moved(1.0) == std::vector<int64_t>{4, 5, 7, 8});
  // Same parameters with or without a window: a checkpoint loads into both.
  s.config.window = 0;
  const auto global = params(*make_connector(s));
  s.config.window = 0.5;
  CHECK(params(*make_connector(s)).size() == global.size());
  // A window that leaves a query nothing to read is refused, naming the key.
  s.config.window = 0.1;
  CHECK_THROWS_WITH(make_connector(s), Catch::Contains("model.connector.window") &&
                                           Catch::Contains("without a patch"));
}

TEST_CASE("resampler: the 2D sin-cos tables") {
  auto s = spec("resampler", 16);
  s.config.num_queries = 16;  // the same 4x4 grid for queries and patches
  auto c = make_connector(s);
  std::map<std::string, torch::Tensor> buf;
  for (const auto& item : c->named_buffers()) buf[item.key()] = item.value();
  REQUIRE(buf.count("query_pos") == 1);
  REQUIRE(buf.count("key_pos") == 1);
  const auto qp = buf.at("query_pos"), kp = buf.at("key_pos");
  CHECK(qp.sizes() == torch::IntArrayRef({16, kCv}));
  CHECK(torch::allclose(qp, kp));  // same grid, same positions
  // Cell (row 1, col 2) is row-major index 6. Channels: [sin, cos] of the column over the first
  // half, of the row over the second; the first frequency of each quarter is 1, the next
  // 10000^-1/4.
  const auto cell = qp[6];
  const int64_t quarter = kCv / 4;
  const double w1 = std::pow(10000.0, -1.0 / quarter);
  CHECK(cell[0].item<double>() == Approx(std::sin(2.0)));
  CHECK(cell[1].item<double>() == Approx(std::sin(2.0 * w1)));
  CHECK(cell[quarter].item<double>() == Approx(std::cos(2.0)));
  CHECK(cell[2 * quarter].item<double>() == Approx(std::sin(1.0)));
  CHECK(cell[3 * quarter + 1].item<double>() == Approx(std::cos(1.0 * w1)));
  // 4x4 queries over an 8x8 patch grid: patch centres in query-grid units, (i + 0.5) / 2 - 0.5.
  auto s8 = spec("resampler", 64);
  s8.config.num_queries = 16;
  auto c8 = make_connector(s8);
  torch::Tensor kp8;
  for (const auto& item : c8->named_buffers())
    if (item.key() == "key_pos") kp8 = item.value();
  REQUIRE(kp8.defined());
  CHECK(kp8.sizes() == torch::IntArrayRef({64, kCv}));
  const auto p = kp8[3 * 8 + 5];  // row 3, col 5 -> (1.25, 2.25)
  CHECK(p[0].item<double>() == Approx(std::sin(2.25)));
  CHECK(p[2 * quarter].item<double>() == Approx(std::sin(1.25)));
  CHECK(kp8[0][0].item<double>() == Approx(std::sin(-0.25)));
}

TEST_CASE("pool: equals a hand-computed 2x2 average pool followed by the MLP") {
  torch::manual_seed(5);
  auto c = make_connector(spec("pool"));  // 4x4 grid, factor 2 -> 2x2 tokens
  torch::NoGradGuard g;
  // Small integers: every window's average is exact in float.
  const auto f = torch::randint(-8, 8, {2, 16, kCv}).to(torch::kFloat);
  auto pooled = torch::zeros({2, 4, kCv});
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t col = 0; col < 4; ++col)
        pooled[n][(r / 2) * 2 + col / 2] += f[n][r * 4 + col] / 4.0;  // patch p = row * 4 + col
  const auto p = params(*c);
  namespace F = torch::nn::functional;
  const auto expected =
      F::linear(torch::gelu(F::linear(pooled, p.at("linear_1.weight"), p.at("linear_1.bias"))),
                p.at("linear_2.weight"), p.at("linear_2.bias"));
  const auto out = c->forward(f);
  CHECK(torch::equal(out, expected));

  // Moving patches inside a window changes nothing; moving one to another window does.
  auto within = f.clone();
  within.index_put_({torch::indexing::Slice(), 0}, f.select(1, 5));  // (0,0) <-> (1,1)
  within.index_put_({torch::indexing::Slice(), 5}, f.select(1, 0));
  CHECK(torch::equal(c->forward(within), out));
  auto across = f.clone();
  across.index_put_({torch::indexing::Slice(), 0}, f.select(1, 2));  // (0,0) <-> (0,2)
  across.index_put_({torch::indexing::Slice(), 2}, f.select(1, 0));
  CHECK(!close(c->forward(across), out));
}

TEST_CASE("connectors: impossible settings are ConfigErrors naming the key") {
  auto s = spec("qformer");
  s.config.heads = 3;  // 16 % 3
  CHECK_THAT(config_error(s), Catch::Contains("model.connector.heads") &&
                                  Catch::Contains("width 16") &&
                                  Catch::Contains("model.vision.hidden"));
  s.config.hidden = 20;
  s.config.heads = 8;
  CHECK_THAT(config_error(s), Catch::Contains("model.connector.heads") &&
                                  Catch::Contains("(model.connector.hidden)"));

  s = spec("resampler");
  s.config.heads = 5;
  CHECK_THAT(config_error(s), Catch::Contains("model.connector.heads"));
  s = spec("resampler");
  s.config.hidden = 6, s.config.heads = 2;  // 2D sin-cos needs 4 | width
  CHECK_THAT(config_error(s),
             Catch::Contains("model.connector.hidden") && Catch::Contains("multiple of 4"));
  s = spec("resampler");
  s.config.num_queries = 32;
  CHECK_THAT(config_error(s), Catch::Contains("model.connector.num_queries") &&
                                  Catch::Contains("32 is not a square"));
  s = spec("resampler", 17);  // class token + 4x4 patches
  CHECK_THAT(config_error(s), Catch::Contains("model.connector.type") &&
                                  Catch::Contains("17 tokens per image") &&
                                  Catch::Contains("cls_patch"));

  s = spec("pool", 17);
  CHECK_THAT(config_error(s), Catch::Contains("model.connector.type") &&
                                  Catch::Contains("'pool'") && Catch::Contains("not a square"));
  s = spec("pool", 36);
  s.config.pool_factor = 4;
  CHECK_THAT(config_error(s),
             Catch::Contains("model.connector.pool_factor") && Catch::Contains("6x6 patch grid"));

  // Through the whole model: a class token in the features cannot be pooled on a grid.
  ModelConfig m;
  m.vision.image_size = 32, m.vision.patch_size = 8, m.vision.hidden = 32, m.vision.layers = 1,
  m.vision.heads = 2, m.vision.intermediate = 32, m.vision.select = "cls_patch";
  m.llm.hidden = 32, m.llm.layers = 1, m.llm.heads = 2, m.llm.kv_heads = 2, m.llm.intermediate = 32,
  m.llm.vocab = 16;
  m.connector.type = "pool";
  CHECK_THROWS_AS(MultimodalModel(m, 4), ConfigError);
  m.connector.type = "qformer";  // a set of features: the class token is welcome
  m.connector.heads = 4;
  CHECK(MultimodalModel(m, 4)->image_tokens() == 32);
}

TEST_CASE("connectors: stage 1 on ShapesWorld lowers the training loss for each new design") {
  // Connector only (encoder and LLM frozen, random). Eight captions, batch 8: every step sees the
  // same batch, so a connector that did not learn would give the same loss at every step.
  TempDir data("mllm-data");
  test::make_shapes(data.path(), 8, 4);
  for (const auto& type : kNewTypes) {
    INFO(type);
    Config c = test::tiny_config(data.path(), data / ("run-" + type));
    c.data.eval.path.clear();  // train loss only
    c.model.connector.type = type;
    c.model.connector.num_queries = 4;  // a 2x2 grid for the resampler; pool: 4x4 patches by 2
    c.model.connector.layers = 1;
    c.model.connector.heads = 2;
    c.train.max_steps = 60;
    c.train.lr = 1e-2;
    c.train.schedule = "constant";
    const TrainSummary s = train(c);
    REQUIRE(s.losses.size() == 60);
    auto mean = [&](size_t from, size_t to) {
      double sum = 0;
      for (size_t i = from; i < to; ++i) sum += s.losses[i].second;
      return sum / static_cast<double>(to - from);
    };
    const double first = mean(0, 5), last = mean(55, 60);
    INFO("mean loss of the first 5 steps " << first << ", of the last 5 " << last);
    CHECK(last < first - 0.2);  // nats per caption token
  }
}
