// train.init_from brings more than weights: the numbers that change a model's math without
// changing any tensor's shape (rms_norm_eps, rope_theta, rope scaling, the vision tower's
// layer_norm_eps, which hidden state feeds the connector and whether it keeps CLS, the resampler's
// window and value_positions) come from the folder it names too. Otherwise a recipe that omits
// rms_norm_eps (default 1e-6) silently builds a different model over LLaMA's weights (trained at
// 1e-5).
#pragma once

#include "core/config.h"

namespace mllm {

// Reads the architecture recorded with train.init_from (a folder's config.json: a run's final/ or
// an export; for a run's checkpoint, the run's config.yaml) and, field by field: takes its value
// where the recipe does not set the key; refuses (ConfigError naming both files and keys) where
// the recipe, or model.llm/vision.pretrained's config.json, says otherwise — except the
// connector's settings, a design a run may change on purpose: stated otherwise, a warning that
// names both, and the recipe's value is kept. No-op without
// init_from or when the folder records no architecture (weights only: a warning).
void adopt_init_from_architecture(Config& config);

}  // namespace mllm
