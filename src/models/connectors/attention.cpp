#include "models/connectors/attention.h"

#include <cmath>

#include "core/error.h"
#include "core/torch_compat.h"

namespace mllm {

ConnectorAttentionImpl::ConnectorAttentionImpl(int64_t width, int64_t kv_width, int64_t heads_)
    : heads(heads_) {
  q_proj = register_module("q_proj", torch::nn::Linear(width, width));
  k_proj = register_module("k_proj", torch::nn::Linear(kv_width, width));
  v_proj = register_module("v_proj", torch::nn::Linear(kv_width, width));
  out_proj = register_module("out_proj", torch::nn::Linear(width, width));
}

torch::Tensor ConnectorAttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                              const torch::Tensor& value,
                                              const torch::Tensor& mask) {
  const int64_t N = query.size(0), Q = query.size(1), S = key.size(1);
  const int64_t H = q_proj->weight.size(0), D = H / heads;
  auto q = q_proj(query).view({N, Q, heads, D}).transpose(1, 2);  // (N,heads,Q,D)
  auto k = k_proj(key).view({N, S, heads, D}).transpose(1, 2);    // (N,heads,S,D)
  auto v = v_proj(value).view({N, S, heads, D}).transpose(1, 2);
  torch::Tensor y;
  if (N == 0) {
    // A text-only batch runs the connector on zero images. Some fused kernels reject an empty
    // batch; the explicit form returns the empty result and keeps every projection in the graph.
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
    if (mask.defined()) scores = scores + mask.to(scores.scalar_type());
    y = torch::matmul(torch::softmax(scores, -1), v);
  } else {
    y = attention(q, k, v, mask.defined() ? c10::optional<torch::Tensor>(mask) : c10::nullopt,
                  false);
  }
  return out_proj(y.transpose(1, 2).reshape({N, Q, H}));
}

int64_t attention_width(const ConnectorSpec& spec) {
  const auto& c = spec.config;
  const int64_t width = c.hidden > 0 ? c.hidden : spec.vision_hidden;
  if (width % c.heads != 0)
    throw ConfigError("model.connector.heads: " + std::to_string(c.heads) +
                      " heads do not divide the " + c.type + " width " + std::to_string(width) +
                      (c.hidden > 0 ? " (model.connector.hidden)"
                                    : " (model.vision.hidden; set model.connector.hidden to "
                                      "choose another)"));
  return width;
}

}  // namespace mllm
