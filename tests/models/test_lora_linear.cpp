#include <catch2/catch.hpp>

#include "models/hf/weights.h"
#include "models/llm/lora_linear.h"

using namespace mllm;

TEST_CASE("lora linear: same parameters, initialisation and output as torch.nn.Linear") {
  for (const bool bias : {true, false}) {
    INFO("bias " << bias);
    torch::manual_seed(5);
    torch::nn::Linear ref(torch::nn::LinearOptions(12, 7).bias(bias));
    const auto after_ref = torch::rand({4});
    torch::manual_seed(5);
    LoraLinear lin(12, 7, bias);
    // Construction consumed the generator alike: seeded models keep their values.
    CHECK(torch::equal(torch::rand({4}), after_ref));
    std::vector<std::string> names;
    for (const auto& [name, t] : named_parameters(*lin)) names.push_back(name);
    CHECK(names ==
          (bias ? std::vector<std::string>{"weight", "bias"} : std::vector<std::string>{"weight"}));
    CHECK(torch::equal(lin->weight, ref->weight));
    CHECK(lin->bias.defined() == bias);
    if (bias) CHECK(torch::equal(lin->bias, ref->bias));
    const auto x = torch::randn({3, 5, 12});
    CHECK(torch::equal(lin(x), ref(x)));
  }
}

TEST_CASE("lora linear: a fresh adapter (B = 0) leaves the output exactly as it was") {
  torch::manual_seed(6);
  LoraLinear lin(16, 8, true);
  const auto x = torch::randn({2, 4, 16});
  const auto before = lin(x);
  lin->add_adapter(4, 8.0, 0.1);
  REQUIRE(lin->has_adapter());
  CHECK(lin->scaling == 2.0);
  CHECK(lin->lora_A->weight.sizes() == torch::IntArrayRef({4, 16}));
  CHECK(lin->lora_B->weight.sizes() == torch::IntArrayRef({8, 4}));
  CHECK(torch::count_nonzero(lin->lora_B->weight).item<int64_t>() == 0);
  // A is Kaiming-uniform with a = sqrt(5): U(-1/sqrt(I), 1/sqrt(I)), not zero.
  CHECK(lin->lora_A->weight.abs().max().item<double>() <= 1.0 / 4.0);
  CHECK(lin->lora_A->weight.abs().max().item<double>() > 0.1);
  lin->eval();
  CHECK(torch::equal(lin(x), before));
  lin->train();  // dropout only touches the adapter's input, whose output is still zero
  CHECK(torch::equal(lin(x), before));
  std::vector<std::string> names;
  for (const auto& [name, t] : named_parameters(*lin)) names.push_back(name);
  CHECK(names == std::vector<std::string>{"weight", "bias", "lora_A.weight", "lora_B.weight"});
  CHECK_THROWS_WITH(lin->add_adapter(2, 1.0, 0.0), Catch::Contains("already has an adapter"));
}

TEST_CASE("lora linear: forward is base + (alpha/r) B A x; merging gives the same output") {
  torch::manual_seed(7);
  LoraLinear lin(10, 6, true);
  lin->add_adapter(3, 12.0, 0.5);
  {
    torch::NoGradGuard g;
    lin->lora_B->weight.normal_();
  }
  lin->eval();  // no dropout
  const auto x = torch::randn({5, 10});
  const auto expected = x.matmul(lin->weight.t()) + lin->bias +
                        x.matmul(lin->lora_A->weight.t()).matmul(lin->lora_B->weight.t()) * 4.0;
  const auto y = lin(x).detach();
  CHECK(torch::allclose(y, expected, 1e-5, 1e-5));
  lin->train();  // dropout now changes the adapter's contribution
  CHECK(!torch::allclose(lin(x), y, 1e-5, 1e-5));
  lin->merge_adapter();
  CHECK(!lin->has_adapter());
  CHECK(named_parameters(*lin).size() == 2);
  lin->eval();
  CHECK(torch::allclose(lin(x), y, 1e-5, 1e-5));
  lin->train();  // no adapter, no dropout
  CHECK(torch::allclose(lin(x), y, 1e-5, 1e-5));
}
