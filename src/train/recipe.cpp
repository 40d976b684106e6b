#include "train/recipe.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/error.h"
#include "core/strings.h"
#include "data/chat_template.h"
#include "eval/metrics.h"
#include "models/connectors/connector.h"
#include "models/connectors/keys.h"
#include "train/stage.h"

namespace mllm {

namespace {

// "file:LINE: key" for `key`, as the parser names it.
template <class C>
std::string where(const C& c, const std::string& key) {
  const auto it = c.origin.find(key);
  if (it != c.origin.end()) return it->second + ": " + key;
  return (c.source.empty() ? std::string("config") : c.source) + ": " + key;
}

template <class C>
void check_name(const C& c, const std::string& key, const std::string& value,
                const std::vector<std::string>& names) {
  if (const auto problem = choice_problem(value, names); !problem.empty())
    throw ConfigError(where(c, key) + ": " + problem);
}

template <class C>
void check_tasks(const C& c, const EvalConfig& e) {
  for (size_t i = 0; i < e.tasks.size(); ++i) {
    const std::string at = "eval.tasks[" + std::to_string(i) + "]";
    const auto& t = e.tasks[i];
    if (!t.template_name.empty())
      check_name(c, at + ".template", t.template_name, template_names());
    for (const auto& m : t.metrics) check_name(c, at + ".metrics", m, eval::metric_names());
  }
}

}  // namespace

void check_registered_names(const Config& c) {
  check_name(c, "train.stage", c.train.stage, stage_names());
  check_name(c, "model.connector.type", c.model.connector.type, connector_names());
  // Settings given for another design (a recipe's resampler keys under --set
  // model.connector.type=mlp2x_gelu, as a sweep over designs does): said, not refused. Only values
  // other than the defaults: a run's resolved config.yaml states every key.
  std::vector<std::string> unread;
  const auto read = connector_keys(c.model.connector);
  for (const auto& key : connector_keys_changed(c.model.connector))
    if (c.origin.count("model.connector." + key) &&
        std::find(read.begin(), read.end(), key) == read.end())
      unread.push_back(key);
  if (!unread.empty())
    spdlog::warn("{}: the {} connector does not read {} ({})", where(c, "model.connector.type"),
                 c.model.connector.type, join(unread, ", "),
                 read.empty() ? std::string("it has no settings") : "it reads " + join(read, ", "));
  check_name(c, "data.template", c.data.template_name, template_names());
  if (c.data.system && c.data.mixture.empty() && !template_has_system(c.data.template_name))
    throw ConfigError(where(c, "data.system") + ": the " + c.data.template_name +
                      " template has no system prompt (vicuna_v1, llama_2, chatml and hf do)");
  check_tasks(c, c.eval);
  const Stage& stage = find_stage(c.train.stage);
  std::vector<std::pair<std::string, const DataSourceConfig*>> sources = {
      {"data.train", &c.data.train}, {"data.eval", &c.data.eval}};
  for (size_t i = 0; i < c.data.mixture.size(); ++i) {
    const std::string key = "data.train[" + std::to_string(i) + "]";
    sources.emplace_back(key, &c.data.mixture[i]);
    if (!c.data.mixture[i].template_name.empty())
      check_name(c, key + ".template", c.data.mixture[i].template_name, template_names());
  }
  for (const auto& [key, source] : sources) {
    const auto& src = *source;
    if (src.path.empty()) continue;
    if (std::find(stage.formats.begin(), stage.formats.end(), src.format) == stage.formats.end()) {
      std::string formats;
      for (const auto& f : stage.formats) formats += (formats.empty() ? "" : " or ") + f;
      throw ConfigError(where(c, std::string(key) + ".format") + ": '" + src.format +
                        "' does not suit train.stage '" + stage.name + "' (" + stage.name +
                        " reads " + formats + ")");
    }
  }
  if (c.data.packing && !stage.packs)
    throw ConfigError(
        where(c, "data.packing") + ": train.stage '" + stage.name + "' does not pack samples (" +
        (stage.data == StageData::preference_pairs ? "a preference pair is scored row against row"
                                                   : "each row is one image-caption pair") +
        "); set data.packing: false");
  if (stage.check) {
    const auto [key, message] = stage.check(c.train);
    if (!key.empty()) throw ConfigError(where(c, key) + ": " + message);
  }
}

Config load_config(const std::filesystem::path& yaml_path,
                   const std::vector<std::string>& overrides, bool check_files) {
  Config c = parse_config(yaml_path, overrides, check_files);
  // A recipe without data.template uses the tokenizer's own chat template where it has one, or
  // data.chat_template's.
  if (!c.data.chat_template.empty()) {
    if (c.origin.count("data.template") && c.data.template_name != "hf")
      throw ConfigError(where(c, "data.chat_template") + ": " + c.data.chat_template +
                        " is rendered as the tokenizer's own template (data.template hf), but " +
                        where(c, "data.template") + " is " + c.data.template_name +
                        "; leave data.template out or make it hf");
    c.data.template_name = "hf";
  } else if (!c.origin.count("data.template") && has_hf_chat_template(c.model.tokenizer)) {
    c.data.template_name = "hf";
  }
  check_registered_names(c);
  return c;
}

EvalFile load_eval_config(const std::filesystem::path& yaml_path,
                          const std::vector<std::string>& overrides) {
  EvalFile e = parse_eval_config(yaml_path, overrides);
  check_tasks(e, e.eval);
  return e;
}

std::vector<std::pair<std::string, std::vector<std::string>>> registered_names() {
  return {{"train.stage", stage_names()},
          {"model.connector.type", connector_names()},
          {"data.template", template_names()},
          {"eval.tasks[0].template", template_names()},
          {"eval.tasks[0].metrics", eval::metric_names()}};
}

}  // namespace mllm
