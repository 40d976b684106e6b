#include "models/factory.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>

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

std::string bytes_text(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
}

// The designs whose size follows model.connector.hidden and num_queries.
bool query_based(const ConnectorConfig& c) {
  return c.type == "qformer" || c.type == "resampler";
}

// Refuses, before anything is allocated, a model whose fp32 parameters alone exceed this machine's
// memory (the model is built on the CPU whatever run.device says), naming the part that needs it.
void check_fits(const Config& config, int64_t vocab) {
  ModelConfig m = config.model;
  m.llm.vocab = std::max(m.llm.vocab, vocab);
  const ParameterEstimate e = estimate_parameters(m);
  const double need = 4.0 * static_cast<double>(e.llm + e.vision + e.connector);
  const double pages = static_cast<double>(sysconf(_SC_PHYS_PAGES));
  const double page = static_cast<double>(sysconf(_SC_PAGE_SIZE));
  if (pages <= 0 || page <= 0 || need <= pages * page) return;
  const bool llm_biggest = e.llm >= e.vision && e.llm >= e.connector;
  const std::string key =
      llm_biggest ? (m.llm.pretrained.empty() ? "model.llm.hidden" : "model.llm.pretrained")
      : e.vision >= e.connector
          ? (m.vision.pretrained.empty() ? "model.vision.hidden" : "model.vision.pretrained")
          : (m.connector.hidden > 0 && query_based(m.connector) ? "model.connector.hidden"
                                                                : "model.connector.type");
  throw ConfigError(fmt::format(
      "{}: the model needs {} for its fp32 parameters alone (LLM {:.3g}, vision {:.3g}, "
      "connector {:.3g} parameters) but this machine has {} of memory",
      config.where(key), bytes_text(need), static_cast<double>(e.llm),
      static_cast<double>(e.vision), static_cast<double>(e.connector), bytes_text(pages * page)));
}

}  // namespace

ParameterEstimate estimate_parameters(const ModelConfig& m) {
  // In doubles: the point is to refuse sizes whose products overflow int64.
  const auto& l = m.llm;
  const double h = static_cast<double>(l.hidden), hd = static_cast<double>(l.attention_head_dim());
  const double q = static_cast<double>(l.heads) * hd, kv = static_cast<double>(l.kv_heads) * hd;
  const double experts = l.experts > 0 ? static_cast<double>(l.experts) : 1.0;
  const double per_layer = h * q + 2 * h * kv + q * h +                             // attention
                           experts * 3 * h * static_cast<double>(l.intermediate) +  // SwiGLU
                           (l.experts > 0 ? h * experts : 0.0) + 2 * h;             // router, norms
  const double vocab = static_cast<double>(l.vocab);
  const double llm =
      static_cast<double>(l.layers) * per_layer + vocab * h * (l.tie_word_embeddings ? 1 : 2) + h;
  const auto& v = m.vision;
  const double vh = static_cast<double>(v.hidden);
  const double patches =
      std::pow(static_cast<double>(v.image_size / std::max<int64_t>(1, v.patch_size)), 2);
  const double vision = 3 * std::pow(static_cast<double>(v.patch_size), 2) * vh +
                        (patches + 2) * vh +
                        static_cast<double>(v.layers) *
                            (4 * vh * vh + 2 * vh * static_cast<double>(v.intermediate) + 6 * vh);
  // Connectors differ; the largest of the token-level designs (two layers vision -> LLM width)
  // bounds them well enough here, plus what the designs that work inside the LLM add per layer:
  // a cross-attention block (gated_xattn), a copy of the layer's attention projections and MLP
  // (visual_expert), prompts and gates (adapter_prompt).
  const auto& cc = m.connector;
  const double layers = static_cast<double>(l.layers);
  const double every = static_cast<double>(
      std::max<int64_t>(1, cc.type == "gated_xattn" ? cc.xattn_every : cc.expert_every));
  double connector = vh * h + h * h + 2 * h;
  if (query_based(cc)) {
    // Queries of width W, then W -> the LLM's width. The resampler: the patches projected to W
    // and one cross-attention (4 W^2). A Q-Former layer: a self-attention (4 W^2), a
    // cross-attention (2 W^2 + 2 W vh) and a 4x MLP (8 W^2), with biases and norms.
    const double w = static_cast<double>(cc.hidden > 0 ? cc.hidden : v.hidden);
    const double queries = static_cast<double>(cc.num_queries) * w, out = w * h + h;
    connector = cc.type == "resampler"
                    ? queries + vh * w + 4 * w * w + 10 * w + out
                    : static_cast<double>(cc.layers) * (14 * w * w + 2 * w * vh + 19 * w) +
                          queries + 2 * w + out;
  }
  if (cc.type == "gated_xattn") connector = std::ceil(layers / every) * (4 * h * h + 8 * h * h);
  if (cc.type == "visual_expert")
    connector += std::ceil(layers / every) *
                 (h * q + 2 * h * kv + q * h + 3 * h * static_cast<double>(l.intermediate));
  if (cc.type == "adapter_prompt")
    connector = vh * h + h +
                (cc.prompt_layers > 0 ? static_cast<double>(cc.prompt_layers) : layers) *
                    (static_cast<double>(cc.prompt_length) * h + static_cast<double>(l.heads));
  auto clamp = [](double x) {
    return x >= 9e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(x);
  };
  return {clamp(llm), clamp(vision), clamp(connector)};
}

MultimodalModel build_model(Config& config, const Vocabulary& tokenizer) {
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
  if (tokenizer.size > llm.vocab && !llm.pretrained.empty())
    grow_to = (tokenizer.size + 63) / 64 * 64;
  else if (tokenizer.size > llm.vocab)
    throw ConfigError(config.where("model.llm.vocab") + ": the tokenizer " + tokenizer.source +
                      " has " + std::to_string(tokenizer.size) + " ids but the LLM only " +
                      std::to_string(llm.vocab));
  if (tokenizer.image_id < 0)
    throw ConfigError(config.where("model.tokenizer") + ": " + tokenizer.source +
                      " has no <image> token");

  check_fits(config, grow_to);
  torch::manual_seed(config.run.seed);
  MultimodalModel model(config.model, tokenizer.image_id);

  if (!llm.pretrained.empty()) {
    const auto f = open_folder(llm.pretrained, config.where("model.llm.pretrained"));
    const std::string prefix = detect_prefix(f, "language_model.", "model.embed_tokens.weight");
    const auto r = load_parameters(*model->language_model, f, prefix, false, "the LLM");
    spdlog::info("model.llm: loaded {} tensors from {}", r.loaded, f.path().string());
    if (grow_to > 0) {
      spdlog::info(
          "model.llm: vocabulary {} -> {} for the tokenizer's {} ids (new rows: the mean "
          "embedding)",
          llm.vocab, grow_to, tokenizer.size);
      model->language_model->resize_vocab(grow_to);
      llm.vocab = grow_to;
      model->config_mutable().llm.vocab = grow_to;
    }
    // Designs that start from the LLM's weights (visual experts) take the loaded ones.
    model->connector->adopt_llm_weights(*model->language_model);
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
