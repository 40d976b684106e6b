#include "models/factory.h"

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"

namespace mllm {

namespace {

// The prefix under which `probe` appears in the checkpoint: a whole llava checkpoint nests the
// part under `outer`, a bare HF checkpoint of the part does not.
std::string detect_prefix(const SafetensorsCheckpoint& f, const std::string& outer,
                          const std::string& probe) {
  if (f.contains(outer + probe)) return outer;
  if (f.contains(probe)) return "";
  throw Error(f.path().string() + ": neither " + outer + probe + " nor " + probe +
              " is in the checkpoint: not a checkpoint of this part");
}

SafetensorsCheckpoint open_folder(const std::filesystem::path& folder, const std::string& key) {
  if (!std::filesystem::exists(folder / "model.safetensors") &&
      !std::filesystem::exists(folder / "model.safetensors.index.json"))
    throw ConfigError(key + ": " + folder.string() +
                      " has neither model.safetensors nor model.safetensors.index.json");
  return SafetensorsCheckpoint(folder);
}

}  // namespace

MultimodalModel build_model(Config& config, const Tokenizer& tokenizer) {
  auto& llm = config.model.llm;
  if (!llm.pretrained.empty()) {
    read_llm_config_json(llm.pretrained, llm);
    spdlog::info("model.llm: architecture from {}/config.json ({} {} layers, hidden {}, vocab {})",
                 llm.pretrained, llm.type, llm.layers, llm.hidden, llm.vocab);
  }
  auto& vision = config.model.vision;
  if (!vision.pretrained.empty()) {
    read_vision_config_json(vision.pretrained, vision);
    spdlog::info("model.vision: architecture from {}/config.json ({} layers, hidden {}, {}px / {})",
                 vision.pretrained, vision.layers, vision.hidden, vision.image_size,
                 vision.patch_size);
    if (vision.feature_layer > vision.layers || vision.feature_layer < -(vision.layers + 1))
      throw ConfigError(config.where("model.vision.feature_layer") + ": " +
                        std::to_string(vision.feature_layer) + " does not index one of the " +
                        std::to_string(vision.layers + 1) + " hidden states of " +
                        vision.pretrained);
  }
  // A pretrained LLM whose tokenizer gained tokens (<image>; LLaVA-1.5 over Vicuna) grows its
  // vocabulary after loading, padded to a multiple of 64 as llava-hf's checkpoints are (32064).
  int64_t grow_to = 0;
  if (tokenizer.vocab_size() > llm.vocab && !llm.pretrained.empty())
    grow_to = (tokenizer.vocab_size() + 63) / 64 * 64;
  else if (tokenizer.vocab_size() > llm.vocab)
    throw ConfigError(config.where("model.llm.vocab") + ": the tokenizer " +
                      tokenizer.path().string() + " has " + std::to_string(tokenizer.vocab_size()) +
                      " ids but the LLM only " + std::to_string(llm.vocab));
  if (tokenizer.image_id() < 0)
    throw ConfigError(config.where("model.tokenizer") + ": " + tokenizer.path().string() +
                      " has no <image> token");

  torch::manual_seed(config.run.seed);
  MultimodalModel model(config.model, tokenizer.image_id());

  if (!llm.pretrained.empty()) {
    const auto f = open_folder(llm.pretrained, config.where("model.llm.pretrained"));
    const std::string prefix = detect_prefix(f, "language_model.", "model.embed_tokens.weight");
    const auto r = load_parameters(*model->language_model, f, prefix, false, "the LLM");
    spdlog::info("model.llm: loaded {} tensors from {}", r.loaded, f.path().string());
    if (grow_to > 0) {
      spdlog::info(
          "model.llm: vocabulary {} -> {} for the tokenizer's {} ids (new rows: the mean "
          "embedding)",
          llm.vocab, grow_to, tokenizer.vocab_size());
      model->language_model->resize_vocab(grow_to);
      llm.vocab = grow_to;
      model->config_mutable().llm.vocab = grow_to;
    }
  }
  if (!vision.pretrained.empty()) {
    const auto f = open_folder(vision.pretrained, config.where("model.vision.pretrained"));
    const std::string prefix =
        detect_prefix(f, "vision_tower.", "vision_model.embeddings.patch_embedding.weight");
    // A CLIPModel checkpoint also holds the text tower: only vision_model.* is this part's.
    const auto r = load_parameters(*model->vision_tower->vision_model, f, prefix + "vision_model.",
                                   false, "the vision tower");
    spdlog::info("model.vision: loaded {} tensors from {}", r.loaded, f.path().string());
  }
  return model;
}

}  // namespace mllm
