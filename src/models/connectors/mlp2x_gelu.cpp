// LLaVA-1.5's projector: Linear(Cv,C) -> GELU (exact erf form) -> Linear(C,C), applied per token.
// HF names: multi_modal_projector.linear_1 / linear_2 (transformers' LlavaMultiModalProjector).
#include "models/connectors/connector.h"

namespace mllm {

namespace {
class Mlp2xGelu : public Connector {
 public:
  explicit Mlp2xGelu(const ConnectorSpec& s) : tokens_(s.input_tokens) {
    linear_1 = register_module("linear_1", torch::nn::Linear(s.vision_hidden, s.llm_hidden));
    linear_2 = register_module("linear_2", torch::nn::Linear(s.llm_hidden, s.llm_hidden));
  }
  torch::Tensor forward(const torch::Tensor& features) override {  // (N,P,Cv) -> (N,P,C)
    return linear_2(torch::gelu(linear_1(features)));
  }
  int64_t output_tokens() const override { return tokens_; }

 private:
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
  int64_t tokens_;
};
}  // namespace

std::shared_ptr<Connector> make_mlp2x_gelu_connector(const ConnectorSpec& spec) {
  return std::make_shared<Mlp2xGelu>(spec);
}

}  // namespace mllm
