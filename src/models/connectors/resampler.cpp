// Qwen-VL's position-aware resampler as a connector: a fixed set of `num_queries` learnable
// queries, laid out on a square grid, attend once (one cross-attention, no residual, no
// feed-forward) to the patch features projected to the resampler width H. 2D sin-cos positions are
// added to the queries (their grid cells) and to the keys (their patch cells), not to the values,
// so the queries know where each feature came from. LayerNorm on the queries, on the projected
// features and on the output, then a bias-free projection to the LLM width.
//
// Followed: Qwen-VL's visual.py (Hugging Face repository Qwen/Qwen-VL) — Resampler (query drawn
// with std 0.02, kv_proj without bias and only when the widths differ, ln_q, ln_kv, one
// nn.MultiheadAttention, query + pos_embed and features + positions as the attention's query and
// key inputs, the features alone as its value) and VisionTransformer (attn_pool -> ln_post ->
// x @ proj; LayerNorm eps 1e-6). The sin-cos table is MAE's get_2d_sincos_pos_embed (first half
// of the channels encodes the column, second half the row, each as [sin, cos] over frequencies
// 1 / 10000^(i / (H/4))).
// With model.connector.window > 0 query (i, j) attends only to the patches whose centres, in
// query-grid units (the coordinates of the key positions below), lie within `window` of (i, j) in
// both directions: 0.5 is its own cell of the patch grid, 1.5 adds the neighbouring cells.
//
// With model.connector.value_positions the key positions are added to the values too (not in
// Qwen-VL): the attention then returns, next to what each query read, the weighted position of
// where it read it, which a decoder whose RoPE positions reach only its attention scores cannot
// otherwise recover from the tokens it copies. ShapesWorld's stage 2 measures what it does to
// "where is ...?" questions (configs/shapes/stage2_instruct.yaml).
// One difference: Qwen-VL gives the keys its query table resized to the patch grid by bicubic
// interpolation (get_abs_pos); here the keys' sin-cos is evaluated exactly at each patch centre
// expressed in query-grid units, ((i + 0.5) * Gq / Gp - 0.5), which is the quantity that
// interpolation approximates and equals it when the grids match.
//
// Parameter names, relative to multi_modal_projector.: query (Q,H), kv_proj (absent when H = Cv),
// ln_q, ln_kv, attn.{q_proj, k_proj, v_proj, out_proj}, ln_post, proj. The position tables are
// buffers (query_pos (Q,H), key_pos (P,H)), recomputed at construction and never saved.
#include <limits>

#include "core/error.h"
#include "models/connectors/attention.h"

namespace mllm {

namespace {

constexpr double kLayerNormEps = 1e-6;  // Qwen-VL's norm_layer

torch::nn::LayerNorm layer_norm(int64_t width) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}).eps(kLayerNormEps));
}

// coords (G) are the positions of a grid's rows (and, the grid being square, of its columns).
// Returns (G*G, dim), row-major over the cells: channels [0, dim/2) encode the cell's column,
// [dim/2, dim) its row, each half as [sin(pos * w_i), cos(pos * w_i)], w_i = 10000^(-i / (dim/4)).
torch::Tensor sincos_2d(const torch::Tensor& coords, int64_t dim) {
  const int64_t quarter = dim / 4, G = coords.size(0);
  const auto freq =
      torch::pow(10000.0, -torch::arange(quarter, torch::kDouble) / static_cast<double>(quarter));
  auto encode = [&](const torch::Tensor& pos) {  // (M) -> (M, dim/2)
    const auto angle = pos.unsqueeze(1) * freq.unsqueeze(0);
    return torch::cat({angle.sin(), angle.cos()}, 1);
  };
  const auto rows = coords.unsqueeze(1).expand({G, G}).reshape({-1});
  const auto cols = coords.unsqueeze(0).expand({G, G}).reshape({-1});
  return torch::cat({encode(cols), encode(rows)}, 1).to(torch::kFloat);
}

class Resampler : public Connector {
 public:
  explicit Resampler(const ConnectorSpec& s)
      : queries_(s.config.num_queries > 0 ? s.config.num_queries : 64),
        value_positions_(s.config.value_positions) {
    const int64_t width = attention_width(s);
    if (width % 4 != 0)
      throw ConfigError("model.connector.hidden: the resampler's width (" + std::to_string(width) +
                        ") must be a multiple of 4 for its 2D sin-cos positions" +
                        (s.config.hidden > 0 ? "" : " (0 = model.vision.hidden)"));
    const int64_t query_side = square_side(queries_);
    if (query_side < 1)
      throw ConfigError(
          "model.connector.num_queries: the resampler's queries form a square grid; " +
          std::to_string(queries_) + " is not a square (e.g. 16, 36, 64, 144, 256)");
    const int64_t patch_side = patch_grid_side(s);

    query = register_parameter("query", torch::randn({queries_, width}) * 0.02);
    if (s.vision_hidden != width)
      kv_proj = register_module(
          "kv_proj",
          torch::nn::Linear(torch::nn::LinearOptions(s.vision_hidden, width).bias(false)));
    ln_q = register_module("ln_q", layer_norm(width));
    ln_kv = register_module("ln_kv", layer_norm(width));
    attn = register_module("attn", ConnectorAttention(width, width, s.config.heads));
    ln_post = register_module("ln_post", layer_norm(width));
    proj = register_module(
        "proj", torch::nn::Linear(torch::nn::LinearOptions(width, s.llm_hidden).bias(false)));

    const auto query_coords = torch::arange(query_side, torch::kDouble);
    const auto patch_coords =
        (torch::arange(patch_side, torch::kDouble) + 0.5) *
            (static_cast<double>(query_side) / static_cast<double>(patch_side)) -
        0.5;
    query_pos = register_buffer("query_pos", sincos_2d(query_coords, width));
    key_pos = register_buffer("key_pos", sincos_2d(patch_coords, width));
    if (s.config.window > 0) {
      // |query coordinate - patch coordinate| <= window along rows and along columns; a query
      // with no patch in reach is an error here rather than a softmax over nothing.
      const auto near = (query_coords.unsqueeze(1) - patch_coords.unsqueeze(0)).abs() <=
                        s.config.window + 1e-9;  // (Gq, Gp)
      const auto allowed = (near.unsqueeze(1).unsqueeze(3) & near.unsqueeze(0).unsqueeze(2))
                               .reshape({queries_, patch_side * patch_side});  // (Q, P)
      if (!allowed.any(1).all().item<bool>())
        throw ConfigError("model.connector.window: " + std::to_string(s.config.window) +
                          " leaves a query of the " + std::to_string(query_side) + "x" +
                          std::to_string(query_side) + " grid without a patch of the " +
                          std::to_string(patch_side) + "x" + std::to_string(patch_side) + " grid");
      window_mask = register_buffer(
          "window_mask",
          torch::zeros({queries_, patch_side * patch_side})
              .masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity()));
    }
  }

  torch::Tensor forward(const torch::Tensor& features) override {  // (N,P,Cv) -> (N,Q,C)
    auto x = norm(ln_kv, kv_proj ? kv_proj(features) : features);  // (N,P,H)
    auto q = (norm(ln_q, query) + query_pos).unsqueeze(0).expand({features.size(0), -1, -1});
    const auto keys = x + key_pos;
    return proj(norm(ln_post, attn(q, keys, value_positions_ ? keys : x, window_mask)));
  }
  int64_t output_tokens() const override { return queries_; }

 private:
  // LayerNorm in its parameters' dtype. Under bf16 autocast the projections return bf16, and
  // LibTorch 1.13's CPU autocast passes layer_norm a bf16 input with fp32 weights unchanged (an
  // error); nothing here adds the residual stream that would promote it back to fp32.
  static torch::Tensor norm(torch::nn::LayerNorm& ln, const torch::Tensor& x) {
    return ln(x.to(ln->weight.scalar_type()));
  }

  torch::Tensor query, query_pos, key_pos, window_mask;  // window_mask: (Q,P), or undefined
  torch::nn::Linear kv_proj{nullptr}, proj{nullptr};
  torch::nn::LayerNorm ln_q{nullptr}, ln_kv{nullptr}, ln_post{nullptr};
  ConnectorAttention attn{nullptr};
  int64_t queries_;
  bool value_positions_;
};

}  // namespace

std::shared_ptr<Connector> make_resampler_connector(const ConnectorSpec& spec) {
  return std::make_shared<Resampler>(spec);
}

}  // namespace mllm
