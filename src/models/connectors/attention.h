// Multi-head attention shared by the query-based connectors (qformer, resampler): Q queries of
// width H attend to S keys/values of width Ckv through separate q/k/v/out projections with biases
// (the layout of BERT's attention and of nn.MultiheadAttention's in/out projections). Keys and
// values are separate inputs so that a caller can add positions to the keys alone, as Qwen-VL's
// resampler does.
#pragma once

#include <torch/torch.h>

#include "models/connectors/connector.h"

namespace mllm {

class ConnectorAttentionImpl : public torch::nn::Module {
 public:
  ConnectorAttentionImpl(int64_t width, int64_t kv_width, int64_t heads);
  // query (N,Q,H), key (N,S,Ckv), value (N,S,Ckv) -> (N,Q,H). N may be 0. mask: optional
  // additive (Q,S), -inf where a query may not look.
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& key,
                        const torch::Tensor& value, const torch::Tensor& mask = {});

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
  int64_t heads;
};
TORCH_MODULE(ConnectorAttention);

// The width H of a query-based connector: model.connector.hidden, or the vision width when that is
// 0. Throws ConfigError naming model.connector.heads when the heads do not divide H.
int64_t attention_width(const ConnectorSpec& spec);

}  // namespace mllm
