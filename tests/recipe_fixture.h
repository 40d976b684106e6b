// A minimal recipe on disk and the ConfigError text of loading it, for the recipe-loader tests
// (tests/core/test_config.cpp, tests/train/test_recipe.cpp).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"
#include "train/recipe.h"

namespace mllm::test {

// A minimal valid recipe whose files exist inside `dir`: `model_extra` goes inside the model
// section, `body` (other sections) at the end.
inline std::filesystem::path recipe(const TempDir& dir, const std::string& body,
                                    const std::string& model_extra = "") {
  write_text(dir / "tok.json", "{}");
  write_text(dir / "train.json", "[]");
  const auto p = dir / "recipe.yaml";
  write_text(p, "model:\n  tokenizer: " + (dir / "tok.json").string() + "\n" + model_extra +
                    "data:\n  train:\n    path: " + (dir / "train.json").string() + "\n" + body);
  return p;
}

inline std::string error_of(const std::filesystem::path& p,
                            const std::vector<std::string>& overrides = {}) {
  try {
    load_config(p, overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace mllm::test
