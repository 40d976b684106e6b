#include "train/init_from.h"

#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <functional>
#include <optional>

#include "core/error.h"
#include "core/fs.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"

namespace mllm {

namespace fs = std::filesystem;

namespace {

// One shape-free field: how to read and write it in a ModelConfig, and its name in each file.
struct Field {
  const char* key;       // recipe key path
  const char* json_key;  // in a llava config.json
  std::function<std::string(const ModelConfig&)> get;
  std::function<void(ModelConfig&, const ModelConfig&)> take;  // copy from the second
  enum Part { kLlm, kVision, kConnector } part;
  bool in_pretrained = true;  // a pretrained part's config.json sets it (not feature_layer, select)
};

std::string number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      {"model.llm.rms_norm_eps", "text_config.rms_norm_eps",
       [](const ModelConfig& m) { return number(m.llm.rms_norm_eps); },
       [](ModelConfig& a, const ModelConfig& b) { a.llm.rms_norm_eps = b.llm.rms_norm_eps; },
       Field::kLlm},
      {"model.llm.rope_theta", "text_config.rope_theta",
       [](const ModelConfig& m) { return number(m.llm.rope_theta); },
       [](ModelConfig& a, const ModelConfig& b) { a.llm.rope_theta = b.llm.rope_theta; },
       Field::kLlm},
      {"model.llm.rope_scaling", "text_config.rope_scaling",
       [](const ModelConfig& m) { return m.llm.rope_scaling; },
       [](ModelConfig& a, const ModelConfig& b) { a.llm.rope_scaling = b.llm.rope_scaling; },
       Field::kLlm},
      {"model.llm.rope_scaling_factor", "text_config.rope_scaling.factor",
       [](const ModelConfig& m) { return number(m.llm.rope_scaling_factor); },
       [](ModelConfig& a, const ModelConfig& b) {
         a.llm.rope_scaling_factor = b.llm.rope_scaling_factor;
       },
       Field::kLlm},
      {"model.vision.layer_norm_eps", "vision_config.layer_norm_eps",
       [](const ModelConfig& m) { return number(m.vision.layer_norm_eps); },
       [](ModelConfig& a, const ModelConfig& b) {
         a.vision.layer_norm_eps = b.vision.layer_norm_eps;
       },
       Field::kVision},
      {"model.vision.feature_layer", "vision_feature_layer",
       [](const ModelConfig& m) { return std::to_string(m.vision.feature_layer); },
       [](ModelConfig& a, const ModelConfig& b) {
         a.vision.feature_layer = b.vision.feature_layer;
       },
       Field::kVision, false},
      {"model.vision.select", "vision_feature_select_strategy",
       [](const ModelConfig& m) { return m.vision.select; },
       [](ModelConfig& a, const ModelConfig& b) { a.vision.select = b.vision.select; },
       Field::kVision, false},
      // The resampler's settings that change what its tokens say without changing a shape.
      {"model.connector.window", "mllm_connector.window",
       [](const ModelConfig& m) { return number(m.connector.window); },
       [](ModelConfig& a, const ModelConfig& b) { a.connector.window = b.connector.window; },
       Field::kConnector, false},
      {"model.connector.value_positions", "mllm_connector.value_positions",
       [](const ModelConfig& m) { return m.connector.value_positions ? "true" : "false"; },
       [](ModelConfig& a, const ModelConfig& b) {
         a.connector.value_positions = b.connector.value_positions;
       },
       Field::kConnector, false},
  };
  return f;
}

// The architecture recorded with the weights `from` names, and the file it is in.
std::optional<std::pair<ModelConfig, fs::path>> recorded(const fs::path& from) {
  ModelConfig m;
  if (const fs::path folder = model_folder(from), file = folder / "config.json";
      fs::is_regular_file(file)) {
    const nlohmann::json j = nlohmann::json::parse(read_file(file), nullptr, false);
    // A llava folder (a run's final/, an export): its reader, connector settings included.
    if (j.is_object() && j.contains("text_config") && j.contains("vision_config"))
      return std::make_pair(read_llava_config_json(folder, nullptr), file);
    read_llm_config_json(folder, m.llm);
    read_vision_config_json(folder, m.vision);
    m.connector.type.clear();  // no connector recorded: nothing to compare it with
    if (j.is_object()) {
      if (j.contains("vision_feature_layer") && j["vision_feature_layer"].is_number_integer())
        m.vision.feature_layer = j["vision_feature_layer"].get<int64_t>();
      if (j.contains("vision_feature_select_strategy") &&
          j["vision_feature_select_strategy"].is_string())
        m.vision.select = j["vision_feature_select_strategy"].get<std::string>() == "full"
                              ? "cls_patch"
                              : "patch";
    }
    return std::make_pair(m, file);
  }
  // A run's checkpoint: the run's resolved recipe, two levels up.
  const fs::path yaml = from.parent_path().parent_path() / "config.yaml";
  if (fs::is_regular_file(from / "trainer_state.json") && fs::is_regular_file(yaml)) {
    try {
      const YAML::Node root = YAML::LoadFile(yaml.string());
      const YAML::Node l = root["model"]["llm"], v = root["model"]["vision"];
      m.llm.rms_norm_eps = l["rms_norm_eps"].as<double>(m.llm.rms_norm_eps);
      m.llm.rope_theta = l["rope_theta"].as<double>(m.llm.rope_theta);
      m.llm.rope_scaling = l["rope_scaling"].as<std::string>(m.llm.rope_scaling);
      m.llm.rope_scaling_factor = l["rope_scaling_factor"].as<double>(m.llm.rope_scaling_factor);
      m.vision.layer_norm_eps = v["layer_norm_eps"].as<double>(m.vision.layer_norm_eps);
      m.vision.feature_layer = v["feature_layer"].as<int64_t>(m.vision.feature_layer);
      m.vision.select = v["select"].as<std::string>(m.vision.select);
      const YAML::Node c = root["model"]["connector"];
      m.connector.type = c["type"].as<std::string>(m.connector.type);
      m.connector.projector = c["projector"].as<std::string>(m.connector.projector);
      m.connector.window = c["window"].as<double>(m.connector.window);
      m.connector.value_positions = c["value_positions"].as<bool>(m.connector.value_positions);
    } catch (const YAML::Exception& e) {
      throw Error(yaml.string() + ": cannot read the run's model section (" + e.msg + ")");
    }
    return std::make_pair(m, yaml);
  }
  return std::nullopt;
}

}  // namespace

void adopt_init_from_architecture(Config& config) {
  if (config.train.init_from.empty()) return;
  const auto theirs = recorded(config.train.init_from);
  if (!theirs) {
    spdlog::warn(
        "train.init_from: {} records no architecture (no config.json): rms_norm_eps, rope_theta "
        "and the vision settings come from the recipe alone",
        config.train.init_from);
    return;
  }
  const auto& [from, file] = *theirs;
  const bool from_yaml = file.extension() == ".yaml";
  // What this run would otherwise build: a pretrained part's own config.json wins over the recipe.
  ModelConfig ours = config.model;
  if (!ours.llm.pretrained.empty()) read_llm_config_json(ours.llm.pretrained, ours.llm);
  if (!ours.vision.pretrained.empty()) read_vision_config_json(ours.vision.pretrained, ours.vision);
  // The connector's settings compare only between the same design: another one's weights are
  // not this connector's (loading them reports that), and its keys mean nothing here.
  const bool same_connector = ours.connector.type == from.connector.type &&
                              (ours.connector.type != "visual_expert" ||
                               ours.connector.projector == from.connector.projector);
  for (const auto& f : fields()) {
    if (f.part == Field::kConnector && !same_connector) continue;
    const std::string a = f.get(ours), b = f.get(from);
    if (a == b) continue;
    const std::string pretrained = !f.in_pretrained        ? ""
                                   : f.part == Field::kLlm ? ours.llm.pretrained
                                                           : ours.vision.pretrained;
    const bool stated = !pretrained.empty() || config.origin.count(f.key) > 0;
    const std::string there =
        file.string() + ": " + (from_yaml ? f.key : f.json_key) + " = " + b + " (train.init_from)";
    // A connector setting is a design choice a run may change on purpose (a wider window for the
    // next stage): the same weights then compute other tokens, which is said, not refused.
    if (stated && f.part == Field::kConnector) {
      spdlog::warn(
          "{} = {}, but {}: the connector's weights were trained under the other value; "
          "leave the key out to take the folder's",
          config.where(f.key), a, there);
      continue;
    }
    if (stated) {
      const std::string here = !pretrained.empty()
                                   ? (fs::path(pretrained) / "config.json").string() + ": the " +
                                         (f.part == Field::kLlm ? "model.llm" : "model.vision") +
                                         ".pretrained config's value " + a
                                   : config.where(f.key) + " = " + a;
      throw ConfigError(here + ", but " + there +
                        ": the model would compute differently from the one it starts from; make "
                        "them agree" +
                        (pretrained.empty() ? " or leave the key out to take the folder's" : ""));
    }
    f.take(config.model, from);
    spdlog::info("train.init_from: {} = {} from {} (the recipe's default was {})", f.key, b,
                 file.string(), a);
  }
}

}  // namespace mllm
