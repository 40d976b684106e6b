// `mllm tokenize`: what the tokenizer (and a template) make of some text — the first thing to look
// at when a template and a tokenizer disagree. Prints one JSON object: ids, the token strings, and
// with
// --template the rendered prompt, a 0/1 supervised flag per token and the prompt with the
// supervised spans marked ⟦like this⟧.
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "data/chat_template.h"
#include "data/datasets.h"
#include "data/tokenizer/tokenizer.h"

namespace mllm::cli {

namespace {

// Turns from a LLaVA record ({"conversations": [...], "image": ...}) or a bare list of turns, read
// and placed by the same code as the training data, so the ids shown are the ids that train.
std::vector<Turn> read_conversation(const nlohmann::json& j, const std::string& file,
                                    const std::string& template_name) {
  const bool record = j.is_object() && j.contains("conversations");
  const nlohmann::json& list = record ? j["conversations"] : j;
  if (!list.is_array())
    throw ConfigError(
        file + ": with --template, expected a LLaVA record or a list of {from, value} turns");
  // A record says how many images it has (a list, or a video: one); a bare list has one per tag.
  size_t images = 0;
  if (record) {
    for (const char* k : {"image", "images", "video"})
      if (j.contains(k) && !j[k].is_null())
        images = j[k].is_array() && std::string(k) != "video" ? j[k].size() : 1;
  } else {
    for (const auto& t : list)
      if (t.is_object() && t.contains("value") && t["value"].is_string())
        for (size_t p = 0;
             (p = t["value"].get<std::string>().find("<image>", p)) != std::string::npos; p += 7)
          ++images;
  }
  try {
    return conversation_turns(list, images, template_uses_images(template_name), "<image>");
  } catch (const Error& e) {
    throw ConfigError(file + ": " + e.what());
  }
}

}  // namespace

Action add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenize", "Show the ids (and with --template, the supervised spans) of some text");
  struct Args {
    std::string tokenizer, template_name, text_file, text;
    std::string system;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json or SentencePiece .model")
      ->required();
  cmd->add_option("--template", args->template_name,
                  "Render a conversation through this chat template first");
  auto* system = cmd->add_option(
      "--system", args->system,
      "With --template: the system prompt of a conversation without one (data.system; "
      "--system '' for none)");
  auto* file = cmd->add_option(
      "--text-file", args->text_file,
      "Text to tokenize; with --template, a LLaVA record or a list of turns (JSON)");
  auto* text = cmd->add_option("--text", args->text, "Text to tokenize (instead of --text-file)");
  file->excludes(text);
  return [args, system]() {
    if (args->text_file.empty() && args->text.empty())
      throw ConfigError("tokenize: give --text-file or --text");
    const auto tok = load_tokenizer(args->tokenizer);
    const std::string input = args->text_file.empty() ? args->text : read_file(args->text_file);
    nlohmann::json out;
    std::string text = input;
    std::vector<std::pair<size_t, size_t>> spans;
    if (!args->template_name.empty()) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(input);
      } catch (const nlohmann::json::exception& e) {
        throw ConfigError((args->text_file.empty() ? "--text" : args->text_file) +
                          ": malformed JSON: " + e.what());
      }
      const RenderedConversation r = render_template(
          args->template_name,
          read_conversation(j, args->text_file.empty() ? "--text" : args->text_file,
                            args->template_name),
          template_tokens(
              *tok, args->template_name,
              system->count() > 0 ? std::optional<std::string>(args->system) : std::nullopt));
      text = r.text;
      spans = r.supervised;
      out["rendered"] = text;
    }
    const Encoding enc = tok->encode_with_offsets(text);
    std::vector<std::string> tokens;
    for (int64_t id : enc.ids) tokens.push_back(tok->id_to_token(id));
    out["ids"] = enc.ids;
    out["tokens"] = tokens;
    if (!args->template_name.empty()) {
      const auto mask = supervised_token_mask(enc.offsets, spans);
      std::vector<int> flags(mask.begin(), mask.end());
      out["supervised"] = flags;
      std::string marked;
      size_t at = 0;
      for (const auto& [b, e] : spans) {
        marked += text.substr(at, b - at) + "\u27e6" + text.substr(b, e - b) + "\u27e7";
        at = e;
      }
      marked += text.substr(at);
      out["marked"] = marked;
      out["supervised_tokens"] = std::count(flags.begin(), flags.end(), 1);
    }
    std::cout << out.dump() << "\n";
    if (out.contains("marked"))
      std::cout << "\nrendered prompt, supervised spans marked \u27e6 \u27e7:\n"
                << out["marked"].get<std::string>() << "\n";
    return 0;
  };
}

}  // namespace mllm::cli
