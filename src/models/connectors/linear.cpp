// LLaVA-1.0's projector: a single Linear(Cv,C) per token. HF name: multi_modal_projector.linear.
#include "models/connectors/connector.h"

namespace mllm {

namespace {
class LinearConnector : public Connector {
 public:
  explicit LinearConnector(const ConnectorSpec& s) : tokens_(s.input_tokens) {
    linear = register_module("linear", torch::nn::Linear(s.vision_hidden, s.llm_hidden));
  }
  torch::Tensor forward(const torch::Tensor& features) override {
    return linear(features);
  }  // (N,P,Cv) -> (N,P,C)
  int64_t output_tokens() const override { return tokens_; }

 private:
  torch::nn::Linear linear{nullptr};
  int64_t tokens_;
};
}  // namespace

std::shared_ptr<Connector> make_linear_connector(const ConnectorSpec& spec) {
  return std::make_shared<LinearConnector>(spec);
}

}  // namespace mllm
