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
#include "eval/evaluate.h"
#include "models/hf/llava_folder.h"

namespace mllm::cli {

Action add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate a reply from a trained model (streamed)");
  struct Args {
    std::string checkpoint, image, prompt, template_name;
    int64_t threads = 0;
    GenerationConfig g;
  };
  auto args = std::make_shared<Args>();
  args->g.max_new_tokens = 64;
  cmd->add_option("--checkpoint", args->checkpoint, "llava folder (final/, export) or run dir")
      ->required();
  cmd->add_option("--image", args->image, "image file");
  cmd->add_option("--prompt", args->prompt, "the user's message")->required();
  cmd->add_option("--template", args->template_name,
                  "conversation template (default: the one it was trained with, recorded in "
                  "tokenizer_config.json; else chatml for Qwen2, vicuna_v1 otherwise)");
  cmd->add_option("--max-new-tokens", args->g.max_new_tokens, "at most this many tokens")
      ->capture_default_str();
  cmd->add_option("--temperature", args->g.temperature, "0 = greedy; > 0 samples")
      ->capture_default_str();
  cmd->add_option("--top-k", args->g.top_k, "sample among the k most likely (0 = all)");
  cmd->add_option("--top-p", args->g.top_p, "nucleus sampling (1 = off)");
  cmd->add_option("--seed", args->g.seed, "sampling seed")->capture_default_str();
  cmd->add_option("--stop", args->g.stop, "stop string (repeatable)");
  cmd->add_option("--threads", args->threads, "intra-op threads (0 = all cores)");
  return [args]() {
    warn_if_slow_blas();
    namespace fs = std::filesystem;
    const fs::path folder = resolve_llava_folder(args->checkpoint, "--checkpoint", true);
    if (!args->image.empty() && !fs::is_regular_file(args->image))
      throw ConfigError("--image: " + args->image + ": not found");
    if (args->g.temperature < 0 || args->g.top_p <= 0 || args->g.top_p > 1 || args->g.top_k < 0 ||
        args->g.max_new_tokens < 1)
      throw ConfigError(
          "--temperature must be >= 0, --top-p in (0, 1], --top-k >= 0, --max-new-tokens >= 1");
    configure_threads(args->threads);
    eval::FolderModel loaded = eval::load_folder_model(folder);
    const Tokenizer& tok = *loaded.tokenizer;
    MultimodalModelImpl& model = *loaded.model;
    const std::string name =
        args->template_name.empty() ? loaded.default_template : args->template_name;
    const auto& names = template_names();
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw ConfigError("--template: unknown '" + name + "'");
    const bool with_image = !args->image.empty() && template_uses_images(name);
    // Images as the model was trained (final/preprocessor_config.json; AnyRes when it has it).
    std::vector<eval::PromptImage> images;
    if (with_image) images.push_back(eval::load_prompt_image(model, loaded.transform, args->image));
    const std::vector<int64_t> ids =
        eval::prompt_ids(tok, name, (with_image ? "<image>\n" : std::string()) + args->prompt,
                         with_image ? images.front().tokens : model.image_tokens(),
                         args->template_name.empty() ? loaded.system : std::nullopt);
    const ImageBatch pixels = eval::prompt_image_batch(images);
    const GenerationOptions o = eval::generation_options(args->g, tok);
    auto decode = [&](const std::vector<int64_t>& t) { return tok.decode(t); };
    std::vector<int64_t> so_far;
    std::string printed;
    const auto r = generate(model, {ids}, pixels, o, decode, [&](int64_t, int64_t id) {
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
