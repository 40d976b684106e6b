// `mllm generate --checkpoint DIR [--image x.png] --prompt "..."`: a person tries a model. DIR is
// a llava folder (a run's final/, an export) or a run directory (its final/ is used). The prompt
// goes through the conversation template as one human turn (with <image> first when there is an
// image) ending in the assistant's generation prompt; the reply streams to stdout as it is made.
#include <spdlog/spdlog.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/blas.h"
#include "core/error.h"
#include "core/threads.h"
#include "data/chat_template.h"
#include "data/image_transform.h"
#include "data/tokenizer/tokenizer.h"
#include "models/generate.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"

namespace mllm::cli {

Action add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate a reply from a trained model (streamed)");
  struct Args {
    std::string checkpoint, image, prompt, template_name;
    int64_t max_new_tokens = 64, top_k = 0, threads = 0;
    double temperature = 0.0, top_p = 1.0;
    uint64_t seed = 0;
    std::vector<std::string> stop;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--checkpoint", args->checkpoint, "llava folder (final/, export) or run dir")
      ->required();
  cmd->add_option("--image", args->image, "image file");
  cmd->add_option("--prompt", args->prompt, "the user's message")->required();
  cmd->add_option("--template", args->template_name,
                  "conversation template (default: the one it was trained with, recorded in "
                  "tokenizer_config.json; else chatml for Qwen2, vicuna_v1 otherwise)");
  cmd->add_option("--max-new-tokens", args->max_new_tokens, "at most this many tokens")
      ->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "0 = greedy; > 0 samples")
      ->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "sample among the k most likely (0 = all)");
  cmd->add_option("--top-p", args->top_p, "nucleus sampling (1 = off)");
  cmd->add_option("--seed", args->seed, "sampling seed")->capture_default_str();
  cmd->add_option("--stop", args->stop, "stop string (repeatable)");
  cmd->add_option("--threads", args->threads, "intra-op threads (0 = all cores)");
  return [args]() {
    warn_if_slow_blas();
    namespace fs = std::filesystem;
    const fs::path folder = resolve_llava_folder(args->checkpoint, "--checkpoint", true);
    if (!args->image.empty() && !fs::is_regular_file(args->image))
      throw ConfigError("--image: " + args->image + ": not found");
    if (args->temperature < 0 || args->top_p <= 0 || args->top_p > 1 || args->top_k < 0 ||
        args->max_new_tokens < 1)
      throw ConfigError(
          "--temperature must be >= 0, --top-p in (0, 1], --top-k >= 0, --max-new-tokens >= 1");
    configure_threads(args->threads);
    const auto tok = load_tokenizer(folder / "tokenizer.json");
    MultimodalModel model = load_llava_folder(folder);
    const ModelConfig& mc = model->config();
    std::string name = args->template_name;
    if (name.empty()) name = model_template(folder, mc);
    const auto& names = template_names();
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw ConfigError("--template: unknown '" + name + "'");

    const TemplateTokens tt = {tok->bos_id() >= 0 ? tok->id_to_token(tok->bos_id()) : "",
                               tok->eos_id() >= 0 ? tok->id_to_token(tok->eos_id()) : "",
                               "<image>"};
    const bool with_image = !args->image.empty() && template_uses_images(name);
    const std::vector<Turn> turns = {
        {"human", (with_image ? tt.image + "\n" : std::string()) + args->prompt}};
    const std::string text = render_template(name, turns, tt).text;
    // <image> becomes Q placeholder ids, as in training.
    std::vector<int64_t> ids;
    for (int64_t id : tok->encode(text)) {
      if (id == tok->image_id())
        ids.insert(ids.end(), static_cast<size_t>(model->image_tokens()), id);
      else
        ids.push_back(id);
    }
    torch::Tensor pixels;
    if (with_image) {
      // As the model was trained (final/preprocessor_config.json), else the data.image defaults.
      ImageConfig ic;
      int64_t size = mc.vision.image_size;
      read_preprocessor_config_json(folder, ic, size);
      pixels = ImageTransform(size, ic).load(args->image).unsqueeze(0);
    }
    GenerationOptions o;
    o.max_new_tokens = args->max_new_tokens;
    o.sample = args->temperature > 0;
    o.temperature = o.sample ? args->temperature : 1.0;
    o.top_k = args->top_k;
    o.top_p = args->top_p;
    o.seed = args->seed;
    o.stop_strings = args->stop;
    o.pad_id = tok->pad_id() >= 0 ? tok->pad_id() : 0;
    o.vocab_limit = tok->vocab_size();
    if (tok->eos_id() >= 0) o.stop_ids.push_back(tok->eos_id());
    if (auto im_end = tok->token_to_id("<|im_end|>")) o.stop_ids.push_back(*im_end);
    auto decode = [&](const std::vector<int64_t>& t) { return tok->decode(t); };
    std::vector<int64_t> so_far;
    std::string printed;
    const auto r = generate(*model, {ids}, pixels, o, decode, [&](int64_t, int64_t id) {
      so_far.push_back(id);
      const std::string now = decode(so_far);
      if (now.size() > printed.size() && now.compare(0, printed.size(), printed) == 0) {
        std::fputs(now.c_str() + printed.size(), stdout);
        std::fflush(stdout);
        printed = now;
      }
    });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    spdlog::info("{} tokens, stopped by {}", r.tokens[0].size(), r.stopped_by[0]);
    return 0;
  };
}

}  // namespace mllm::cli
