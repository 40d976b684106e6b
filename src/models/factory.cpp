#include "models/factory.h"

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"

namespace mllm {

namespace {

// The prefix under which `probe` appears in the file: a whole llava checkpoint nests the part under
// `outer`, a bare HF checkpoint of the part does not.
std::string detect_prefix(const SafetensorsFile& f, const std::string& outer,
                          const std::string& probe) {
  if (f.contains(outer + probe)) return outer;
  if (f.contains(probe)) return "";
  throw Error(f.path().string() + ": neither " + outer + probe + " nor " + probe +
              " is in the file: not a checkpoint of this part");
}

std::filesystem::path weights_file(const std::filesystem::path& folder, const std::string& key) {
  const auto p = folder / "model.safetensors";
  if (!std::filesystem::exists(p))
    throw ConfigError(key + ": " + folder.string() + " has no model.safetensors");
  return p;
}

}  // namespace

MultimodalModel build_model(Config& config, const Tokenizer& tokenizer) {
  auto& llm = config.model.llm;
  if (!llm.pretrained.empty()) {
    read_llm_config_json(llm.pretrained, llm);
    spdlog::info("model.llm: architecture from {}/config.json ({} layers, hidden {}, vocab {})",
                 llm.pretrained, llm.layers, llm.hidden, llm.vocab);
  }
  if (tokenizer.vocab_size() > llm.vocab)
    throw ConfigError(config.where("model.llm.vocab") + ": the tokenizer " +
                      tokenizer.path().string() + " has " + std::to_string(tokenizer.vocab_size()) +
                      " ids but the LLM only " + std::to_string(llm.vocab));
  if (tokenizer.image_id() < 0)
    throw ConfigError(config.where("model.tokenizer") + ": " + tokenizer.path().string() +
                      " has no <image> token");

  torch::manual_seed(config.run.seed);
  MultimodalModel model(config.model, tokenizer.image_id());

  if (!llm.pretrained.empty()) {
    SafetensorsFile f(weights_file(llm.pretrained, config.where("model.llm.pretrained")));
    const std::string prefix = detect_prefix(f, "language_model.", "model.embed_tokens.weight");
    const auto n = load_parameters(*model->language_model, f, prefix);
    spdlog::info("model.llm: loaded {} tensors from {}", n, f.path().string());
  }
  const auto& vision = config.model.vision;
  if (!vision.pretrained.empty()) {
    SafetensorsFile f(weights_file(vision.pretrained, config.where("model.vision.pretrained")));
    const std::string prefix =
        detect_prefix(f, "vision_tower.", "vision_model.embeddings.patch_embedding.weight");
    const auto n = load_parameters(*model->vision_tower, f, prefix);
    spdlog::info("model.vision: loaded {} tensors from {}", n, f.path().string());
  }
  return model;
}

}  // namespace mllm
