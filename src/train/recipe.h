// Reading a recipe: core's parser (parse_config: YAML -> Config, every key, type, range and file),
// then each name a registry owns, asked of that registry — train.stage (train/stage.h),
// model.connector.type (models/connectors/connector.h), data.template and the eval tasks'
// templates (data/chat_template.h), the eval tasks' metrics (eval/metrics.h) — and the stage's own
// checks (the data formats it reads, its settings). Errors are ConfigErrors in the parser's style:
// "file.yaml:LINE: key.path: must be one of ... (got 'x'); did you mean 'y'?".
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/config.h"

namespace mllm {

Config load_config(const std::filesystem::path& yaml_path,
                   const std::vector<std::string>& overrides = {}, bool check_files = true);
EvalFile load_eval_config(const std::filesystem::path& yaml_path,
                          const std::vector<std::string>& overrides = {});

// The registry checks alone, for a Config built in code (tests, sweeps).
void check_registered_names(const Config& config);

// Each registry-owned key and the names its registry accepts, for a test that holds the config
// and the registries to each other.
std::vector<std::pair<std::string, std::vector<std::string>>> registered_names();

}  // namespace mllm
