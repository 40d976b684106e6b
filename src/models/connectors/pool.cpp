// Average pooling on the patch grid, then LLaVA-1.5's MLP: the P = G*G patch features are put back
// on their G x G grid, averaged over non-overlapping f x f windows (kernel = stride =
// `pool_factor`), and each of the Q = (G/f)^2 pooled features goes through Linear(Cv,C) -> GELU ->
// Linear(C,C). The knob is the number of visual tokens per image: MM1 (McKinzie et al. 2024,
// arXiv:2403.09611) found image resolution and the image token count to matter far more than the
// connector's design. MM1's average-pooling connector follows the pooling with one linear
// projection; the MLP here is LLaVA-1.5's, with mlp2x_gelu's names: linear_1, linear_2.
#include "core/error.h"
#include "models/connectors/connector.h"

namespace mllm {

namespace {

class PoolConnector : public Connector {
 public:
  explicit PoolConnector(const ConnectorSpec& s) : factor_(s.config.pool_factor) {
    const int64_t side = patch_grid_side(s);
    if (side % factor_ != 0)
      throw ConfigError("model.connector.pool_factor: " + std::to_string(factor_) +
                        " does not divide the " + std::to_string(side) + "x" +
                        std::to_string(side) + " patch grid");
    side_ = side / factor_;
    linear_1 = register_module("linear_1", torch::nn::Linear(s.vision_hidden, s.llm_hidden));
    linear_2 = register_module("linear_2", torch::nn::Linear(s.llm_hidden, s.llm_hidden));
  }

  torch::Tensor forward(const torch::Tensor& features) override {  // (N,P,Cv) -> (N,Q,C)
    const int64_t N = features.size(0), Cv = features.size(2);
    // Patch p = row * G + col, G = side_ * factor_: split row and col into (window, offset).
    auto pooled = features.reshape({N, side_, factor_, side_, factor_, Cv})
                      .mean({2, 4})
                      .reshape({N, side_ * side_, Cv});  // (N,Q,Cv)
    return linear_2(torch::gelu(linear_1(pooled)));
  }
  int64_t output_tokens() const override { return side_ * side_; }

 private:
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
  int64_t factor_, side_ = 0;
};

}  // namespace

std::shared_ptr<Connector> make_pool_connector(const ConnectorSpec& spec) {
  return std::make_shared<PoolConnector>(spec);
}

}  // namespace mllm
