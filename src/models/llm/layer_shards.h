// What a run that shards its trainable weights across ranks (train.sharding: parameters,
// train/sharding.h) does around each decoder layer of the LLM: the layer's weights are gathered
// whole just before its forward, released after it, and gathered again when backward reaches the
// layer's output. The decoder calls these when one is set (LlamaModelImpl::set_layer_shards);
// otherwise nothing happens.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace mllm {

class LayerShards {
 public:
  virtual ~LayerShards() = default;
  // Before layer `index`'s forward: its weights are whole when this returns.
  virtual void before_layer(int64_t index) = 0;
  // After it: the weights may be released; the returned tensor is `output`, carrying what gathers
  // them again before backward runs through the layer.
  virtual at::Tensor after_layer(int64_t index, at::Tensor output) = 0;
};

}  // namespace mllm
