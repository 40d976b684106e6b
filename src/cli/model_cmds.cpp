// `mllm inspect` and `mllm export`: looking at models and weights, and handing a trained model to
// the Hugging Face world.
//   mllm inspect --config X [--set k=v]   parameters per component (total / trainable, LoRA
//                                         adapters included), visual tokens per image
//   mllm inspect --config X --ranks N [--device-memory 40GiB]
//                                         the memory plan per rank for each train.sharding level
//                                         (train/memory_plan.h); the models need not be here
//   mllm inspect --weights FILE_OR_FOLDER the tensors of a safetensors file or HF folder (validated
//                                         first), with dtype, shape and total size
//   mllm export --from RUN_OR_FOLDER --out DIR
//       a llava folder: config.json (LlavaForConditionalGeneration when transformers can run it —
//       the mlp2x_gelu projector with a LLaMA/Qwen2 LLM — else our own "mllm_llava" layout with
//       the connector in "mllm_connector"), model.safetensors with llava-hf keys, tokenizer.json.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/config.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "data/tokenizer/tokenizer.h"
#include "models/factory.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"
#include "models/hf/weights.h"
#include "train/freeze.h"
#include "train/lora.h"
#include "train/memory_plan.h"
#include "train/recipe.h"

namespace fs = std::filesystem;

namespace mllm::cli {

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, units[u]);
  return buf;
}

std::string human_count(int64_t n) {
  char buf[32];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2fB", static_cast<double>(n) / 1e9);
  else if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2fM", static_cast<double>(n) / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

int inspect_config(const std::string& path, const std::vector<std::string>& overrides) {
  Config config = load_config(path, overrides);
  const auto tok = load_tokenizer(config.model.tokenizer);
  auto model = build_model(config, tok->vocabulary());
  apply_trainable(*model, config);
  const auto adapted = apply_lora(*model, config);  // as the trainer does: adapters count
  std::printf("%-24s %14s %14s\n", "component", "parameters", "trainable");
  int64_t total = 0, trainable = 0;
  for (const auto& child : model->named_children()) {
    int64_t n = 0, t = 0;
    for (const auto& p : child.value()->parameters()) {
      n += p.numel();
      if (p.requires_grad()) t += p.numel();
    }
    total += n, trainable += t;
    std::printf("%-24s %14s %14s\n", child.key().c_str(), human_count(n).c_str(),
                human_count(t).c_str());
  }
  std::printf("%-24s %14s %14s\n", "total", human_count(total).c_str(),
              human_count(trainable).c_str());
  std::printf("parameters_total %lld\nparameters_trainable %lld\n", static_cast<long long>(total),
              static_cast<long long>(trainable));
  if (!adapted.empty())
    std::printf("lora: rank %lld adapters on %zu linear layers\n",
                static_cast<long long>(config.train.lora.rank), adapted.size());
  const auto& m = config.model;
  std::printf("connector %s: %lld visual tokens per image%s\n", m.connector.type.c_str(),
              static_cast<long long>(model->image_tokens()),
              model->connector->feature_level()
                  ? " (one placeholder; features enter the LLM's layers)"
              : m.connector.type == "visual_expert"
                  ? " (through their own attention and MLP experts in the LLM's layers)"
                  : "");
  // Its parts (the projector, per-layer experts, blocks, prompts and gates), by top-level name.
  std::map<std::string, int64_t> parts;
  for (const auto& [name, p] : named_parameters(*model->connector))
    parts[name.substr(0, name.find('.'))] += p.numel();
  std::string listed;
  for (const auto& [name, n] : parts)
    listed += (listed.empty() ? "" : ", ") + name + " " + human_count(n);
  std::printf("connector parameters: %s\n", listed.c_str());
  if (const auto& pins = model->anyres_pinpoints(); !pins.empty()) {
    // A 4:3 photo at the largest pinpoint's width, as an example of what AnyRes makes of one.
    int64_t w = 0;
    for (const auto& p : pins) w = std::max(w, p.second);
    const ImageTokens counts = model->image_token_counts();
    std::printf(
        "anyres: %zu pinpoints, %lld-px tiles; per image the base crop and up to %lld tiles (a "
        "%lldx%lld image: %lld tokens)\n",
        pins.size(), static_cast<long long>(m.vision.image_size), static_cast<long long>([&] {
          int64_t most = 0;
          for (const auto& p : pins)
            most =
                std::max(most, (p.first / m.vision.image_size) * (p.second / m.vision.image_size));
          return most;
        }()),
        static_cast<long long>(w), static_cast<long long>(w * 3 / 4),
        static_cast<long long>(counts.of_image({w * 3 / 4, w})));
  }
  std::printf(
      "vision %dx%d px, patch %lld -> %lld features of width %lld; LLM %s, %lld layers, "
      "hidden %lld%s\n",
      static_cast<int>(m.vision.image_size), static_cast<int>(m.vision.image_size),
      static_cast<long long>(m.vision.patch_size),
      static_cast<long long>(model->vision_tower->num_feature_tokens()),
      static_cast<long long>(m.vision.hidden), m.llm.type.c_str(),
      static_cast<long long>(m.llm.layers), static_cast<long long>(m.llm.hidden),
      m.llm.experts > 0 ? (", " + std::to_string(m.llm.experts) + " experts").c_str() : "");
  return 0;
}

int inspect_plan(const std::string& path, const std::vector<std::string>& overrides, int64_t ranks,
                 const std::string& device_memory) {
  if (ranks < 1) throw ConfigError("--ranks: must be at least 1");
  const double memory =
      device_memory.empty() ? 0 : parse_memory_size(device_memory, "--device-memory");
  // The plan is for the machine that will run the recipe: its files need not be on this one.
  const Config config = load_config(path, overrides, /*check_files=*/false);
  int64_t vocab = 0;
  if (fs::is_regular_file(config.model.tokenizer))
    vocab = load_tokenizer(config.model.tokenizer)->vocabulary().size;
  const auto counts = count_parameters(config, vocab);
  std::printf("%s", format_plan(plan_memory(config, counts, ranks), memory).c_str());
  return 0;
}

int inspect_weights(const std::string& path) {
  const SafetensorsCheckpoint ckpt(path);  // validates every file first
  double bytes = 0;
  int64_t elements = 0;
  std::map<std::string, int64_t> by_dtype;
  for (const auto& name : ckpt.names()) {
    const auto shape = ckpt.shape(name);
    int64_t n = 1;
    for (auto d : shape) n *= d;
    const auto t = ckpt.get(name);
    bytes += static_cast<double>(n * static_cast<int64_t>(t.element_size()));
    elements += n;
    by_dtype[ckpt.dtype(name)] += n;
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
    std::printf("%-64s %-5s [%s]\n", name.c_str(), ckpt.dtype(name).c_str(), dims.c_str());
  }
  std::printf("%zu tensors in %zu file(s), %s parameters, %s", ckpt.names().size(),
              ckpt.files().size(), human_count(elements).c_str(), human_bytes(bytes).c_str());
  for (const auto& [dtype, n] : by_dtype)
    std::printf("; %s %s", dtype.c_str(), human_count(n).c_str());
  std::printf("\n");
  return 0;
}

int export_model(const std::string& from, const std::string& out_dir) {
  const fs::path src = resolve_llava_folder(from, "export --from", false);
  const fs::path out = out_dir;
  if (fs::exists(out) && !fs::is_empty(out))
    throw ConfigError("export --out: " + out.string() + " exists and is not empty");
  int64_t image_token_id = -1;
  const ModelConfig m = read_llava_config_json(src, &image_token_id);
  auto model = load_llava_folder(src);  // validates the weights against the config
  LlavaFolderExtras extras;
  if (fs::exists(src / "tokenizer.json")) {
    extras.tokenizer = src / "tokenizer.json";
    extras.tokenizer_config =
        tokenizer_config_json(*load_tokenizer(extras.tokenizer), m.llm.max_position,
                              model_template(src, m), model_system(src));
  }
  if (fs::exists(src / "preprocessor_config.json")) {
    try {
      extras.preprocessor_config =
          nlohmann::json::parse(read_file(src / "preprocessor_config.json"));
    } catch (const nlohmann::json::exception& e) {
      throw Error((src / "preprocessor_config.json").string() + ": " + json_error_message(e));
    }
  }
  write_llava_folder(out, *model, extras);
  std::printf("exported %s -> %s (%s)\n", src.string().c_str(), out.string().c_str(),
              !llava_hf_compatible(m)     ? "mllm_llava layout"
              : m.vision.anyres.enabled() ? "LlavaNextForConditionalGeneration"
                                          : "LlavaForConditionalGeneration");
  return 0;
}

}  // namespace

Action add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "inspect", "Parameter counts of a configured model, or the tensors of a weights file");
  struct Args {
    std::string config, weights, device_memory;
    std::vector<std::string> overrides;
    int64_t ranks = 0;
  };
  auto args = std::make_shared<Args>();
  auto* c = cmd->add_option("--config", args->config, "Recipe YAML");
  auto* r = cmd->add_option("--ranks", args->ranks,
                            "Print the memory plan per rank over this many ranks, for each "
                            "train.sharding level");
  cmd->add_option("--device-memory", args->device_memory,
                  "With --ranks: say whether each level fits this much memory (40GiB, 80GB)")
      ->needs(r);
  r->needs(c);
  auto* w = cmd->add_option("--weights", args->weights,
                            "A .safetensors file, an index .json or an HF folder");
  c->excludes(w);
  cmd->add_option("--set", args->overrides, "Override a config key (key=value), repeatable");
  return [args, r]() {
    if (r->count() > 0)
      return inspect_plan(args->config, args->overrides, args->ranks, args->device_memory);
    if (!args->config.empty()) return inspect_config(args->config, args->overrides);
    if (!args->weights.empty()) return inspect_weights(args->weights);
    throw ConfigError("inspect: give --config or --weights");
  };
}

Action add_export_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "export",
      "Write a trained model as a Hugging Face llava folder (config, weights, tokenizer)");
  struct Args {
    std::string from, out;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--from", args->from, "A run directory (its final/) or a llava folder")
      ->required();
  cmd->add_option("--out", args->out, "Folder to create")->required();
  return [args]() { return export_model(args->from, args->out); };
}

}  // namespace mllm::cli
