#include "train/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "core/error.h"
#include "models/hf/config_json.h"
#include "models/multimodal_model.h"
#include "train/freeze.h"
#include "train/lora.h"

namespace mllm {

namespace fs = std::filesystem;

namespace {

struct Tally {
  int64_t total = 0, trainable = 0;
  int64_t layer0_trainable = 0;                                // decoder layer 0
  int64_t vision_layer_total = 0, vision_layer_trainable = 0;  // vision layer 0
};

// The model at full width with `llm_layers` decoder layers and one vision layer.
Tally tally(const Config& config, int64_t llm_layers) {
  Config c = config;
  c.model.llm.layers = llm_layers;
  c.model.vision.layers = 1;
  c.model.vision.feature_layer = -1;  // counts do not depend on which layer feeds the connector
  torch::NoGradGuard no_grad;
  MultimodalModel model(c.model, 0);
  apply_trainable(*model, c);
  apply_lora(*model, c);
  Tally t;
  const std::string layer0 = "language_model.model.layers.0.";
  const std::string vision0 = "vision_tower.vision_model.encoder.layers.0.";
  for (const auto& item : model->named_parameters(true)) {
    const int64_t n = item.value().numel();
    const bool trains = item.value().requires_grad();
    t.total += n;
    if (trains) t.trainable += n;
    if (item.key().rfind(layer0, 0) == 0 && trains) t.layer0_trainable += n;
    if (item.key().rfind(vision0, 0) == 0) {
      t.vision_layer_total += n;
      if (trains) t.vision_layer_trainable += n;
    }
  }
  return t;
}

std::string gib(double bytes) {
  return fmt::format("{:.1f} GiB", bytes / (1024.0 * 1024 * 1024));
}

std::string billions(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f}B", static_cast<double>(n) / 1e9);
  if (n >= 1000000) return fmt::format("{:.1f}M", static_cast<double>(n) / 1e6);
  return std::to_string(n);
}

}  // namespace

ParameterCounts count_parameters(Config config, int64_t vocab_size) {
  auto& llm = config.model.llm;
  auto& vision = config.model.vision;
  // The pretrained parts' own architecture where this machine has them (as build_model reads it).
  if (!llm.pretrained.empty() && fs::is_regular_file(fs::path(llm.pretrained) / "config.json"))
    read_llm_config_json(llm.pretrained, llm);
  if (!vision.pretrained.empty() &&
      fs::is_regular_file(fs::path(vision.pretrained) / "config.json"))
    read_vision_config_json(vision.pretrained, vision);
  // A tokenizer with more ids grows the vocabulary to a multiple of 64, as build_model does.
  if (vocab_size > llm.vocab) llm.vocab = (vocab_size + 63) / 64 * 64;
  // What one more decoder layer adds (per-layer connector parts included): two builds apart.
  const Tally one = tally(config, 1);
  int64_t per_layer_total = 0, per_layer_trainable = 0;
  if (llm.layers > 1) {
    const Tally two = tally(config, 2);
    per_layer_total = two.total - one.total;
    per_layer_trainable = two.trainable - one.trainable;
  }
  ParameterCounts c;
  c.llm_layers = llm.layers;
  c.layer_trainable = one.layer0_trainable;
  c.total =
      one.total + (llm.layers - 1) * per_layer_total + (vision.layers - 1) * one.vision_layer_total;
  c.trainable = one.trainable + (llm.layers - 1) * per_layer_trainable +
                (vision.layers - 1) * one.vision_layer_trainable;
  c.root_trainable = c.trainable - llm.layers * c.layer_trainable;
  return c;
}

MemoryPlan plan_memory(const Config& config, const ParameterCounts& counts, int64_t ranks) {
  MemoryPlan p;
  p.ranks = ranks;
  p.counts = counts;
  const double W = static_cast<double>(ranks);
  const auto T = static_cast<double>(counts.trainable);
  const auto F = static_cast<double>(counts.total - counts.trainable);
  const auto R = static_cast<double>(counts.root_trainable);
  const auto layer = static_cast<double>(counts.layer_trainable);
  const double bucket = config.run.distributed.bucket_mb * 1024 * 1024;

  LevelMemory none{"none", 4 * (F + T), 4 * T + (ranks > 1 ? 4 * T : 0), 8 * T, 0};
  LevelMemory zero1{"optimizer", 4 * (F + T), 4 * T, 8 * T / W, 0};
  // ZeRO-2: the slice, plus the whole gradients of the buckets whose reduction is in flight.
  LevelMemory zero2{"gradients", 4 * (F + T), 4 * T / W + std::min(4 * T, 3 * bucket), 8 * T / W,
                    0};
  // ZeRO-3: the root's weights and gradients during the step, two layers whole, one layer's
  // gradient bucket.
  LevelMemory zero3{"parameters", 4 * F + 4 * T / W, 4 * T / W, 8 * T / W, 8 * R + 12 * layer};
  p.levels = {none, zero1, zero2, zero3};

  // Activations of one micro-batch.
  const auto& llm = config.model.llm;
  const double B = static_cast<double>(config.train.batch_size);
  const double S = static_cast<double>(config.data.max_length);
  p.batch = config.train.batch_size;
  p.length = config.data.max_length;
  const double N = B * S;
  const double h = static_cast<double>(llm.hidden);
  const double hd = static_cast<double>(llm.attention_head_dim());
  const double qd = static_cast<double>(llm.heads) * hd;
  const double kvd = static_cast<double>(llm.kv_heads) * hd;
  const double I = static_cast<double>(llm.intermediate) *
                   static_cast<double>(llm.experts > 0 ? llm.experts_per_token : 1);
  const double e = config.train.precision == "bf16" ? 2 : 4;
  const double per_token_layer = 8 * h + 2 * e * h + e * (qd + 2 * kvd) + e * qd +
                                 4 * static_cast<double>(llm.heads) + 4 * e * I;
  const double L = static_cast<double>(llm.layers);
  const double chunk = config.train.lm_head_chunk_mb > 0
                           ? static_cast<double>(config.train.lm_head_chunk_mb) * 1024 * 1024
                           : N * static_cast<double>(llm.vocab) * 4;
  const double head = 2 * std::min(chunk, N * static_cast<double>(llm.vocab) * 4);
  const double outside = N * 4 * h /* embeddings */ + N * (4 + e) * h /* final norm */ + head;
  p.activations = L * N * per_token_layer + outside;
  p.activations_checkpointed = L * N * 4 * h + N * per_token_layer + outside;
  p.checkpointing = config.train.gradient_checkpointing;
  return p;
}

double parse_memory_size(const std::string& text, const std::string& option) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  std::string unit = text.substr(i);
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  double scale = 0;
  if (unit == "B") scale = 1;
  if (unit == "K" || unit == "KB" || unit == "KIB") scale = 1024.0;
  if (unit == "M" || unit == "MB" || unit == "MIB") scale = 1024.0 * 1024;
  if (unit == "G" || unit == "GB" || unit == "GIB") scale = 1024.0 * 1024 * 1024;
  if (unit == "T" || unit == "TB" || unit == "TIB") scale = 1024.0 * 1024 * 1024 * 1024;
  double value = 0;
  try {
    size_t used = 0;
    value = std::stod(text.substr(0, i), &used);
    if (used != i) scale = 0;
  } catch (const std::exception&) {
    scale = 0;
  }
  if (scale == 0 || !(value > 0))
    throw ConfigError(option + ": expected a size such as 40GiB, 80GB or 24576MiB (got '" + text +
                      "')");
  return value * scale;
}

std::string format_plan(const MemoryPlan& p, double device_memory) {
  const auto& c = p.counts;
  std::string out = fmt::format(
      "memory plan per rank, {} rank(s): {} parameters, {} trainable ({} in each of {} decoder "
      "layers, {} outside them); fp32 weights\n",
      p.ranks, billions(c.total), billions(c.trainable), billions(c.layer_trainable), c.llm_layers,
      billions(c.root_trainable));
  out += fmt::format(
      "activations (estimate) of a {} x {} token micro-batch: {} without gradient checkpointing, "
      "{} with (the recipe: {})\n",
      p.batch, p.length, gib(p.activations), gib(p.activations_checkpointed),
      p.checkpointing ? "on" : "off");
  out += fmt::format("{:<22} {:>10} {:>10} {:>10} {:>10} {:>10}", "train.sharding", "weights",
                     "gradients", "optimizer", "gathered", "total");
  if (device_memory > 0) out += fmt::format("  fits {}", gib(device_memory));
  out += "\n";
  for (const auto& l : p.levels) {
    std::string name = l.level;
    if (l.level == "none") name += " (DDP)";
    if (l.level == "optimizer") name += " (ZeRO-1)";
    if (l.level == "gradients") name += " (ZeRO-2)";
    if (l.level == "parameters") name += " (ZeRO-3)";
    const double total = p.total(l);
    out += fmt::format("{:<22} {:>10} {:>10} {:>10} {:>10} {:>10}", name, gib(l.weights),
                       gib(l.gradients), gib(l.optimizer), gib(l.gathered), gib(total));
    if (device_memory > 0)
      out += total <= device_memory ? fmt::format("  yes ({} spare)", gib(device_memory - total))
                                    : fmt::format("  no ({} over)", gib(total - device_memory));
    out += "\n";
  }
  out +=
      "not counted: the CUDA context and allocator fragmentation (keep a few GiB spare); "
      "attention assumed fused (LibTorch 2.x on CUDA; the eager path adds 4 x heads x length "
      "bytes per token per layer)\n";
  return out;
}

}  // namespace mllm
