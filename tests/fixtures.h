// A tiny ShapesWorld and a tiny model config for fast tests.
#pragma once

#include "core/config.h"
#include "data/shapes_world.h"
#include "test_util.h"

namespace mllm::test {

// Generates a small ShapesWorld (32x32 images) into `dir`.
inline void make_shapes(const std::filesystem::path& dir, int64_t train = 48, int64_t val = 16) {
  data::ShapesWorldOptions o;
  o.seed = 1;
  o.train = train;
  o.val = val;
  o.image_size = 32;
  data::generate_shapes_world(dir, o);
}

// A stage-1-like config over the data in `data_dir`, with models small enough to train in seconds.
inline Config tiny_config(const std::filesystem::path& data_dir,
                          const std::filesystem::path& out_dir) {
  Config c;
  c.source = "tiny";
  c.run.name = "tiny";
  c.run.output_dir = out_dir.string();
  c.run.threads = 1;
  c.run.seed = 3;
  auto& v = c.model.vision;
  v.image_size = 32, v.patch_size = 8, v.hidden = 32, v.layers = 2, v.heads = 2,
  v.intermediate = 64;
  auto& l = c.model.llm;
  l.hidden = 32, l.layers = 2, l.heads = 2, l.kv_heads = 1, l.intermediate = 64, l.vocab = 128;
  c.model.tokenizer = (data_dir / "tokenizer.json").string();
  c.data.train.path = (data_dir / "captions_train.json").string();
  c.data.train.image_root = (data_dir / "images").string();
  c.data.eval.path = (data_dir / "captions_val.json").string();
  c.data.eval.image_root = (data_dir / "images").string();
  c.data.template_name = "plain";
  c.data.max_length = 64;
  c.train.trainable = {"multi_modal_projector.*"};
  c.train.batch_size = 8;
  c.train.lr = 3e-3;
  c.train.max_steps = 6;
  c.train.log_every = 1;
  c.train.warmup_ratio = 0.0;
  return c;
}

// Points `c` at make_shapes' preference pairs (train and val) under `data`, vicuna_v1, 96 tokens.
inline void use_preference_data(Config& c, const std::filesystem::path& data) {
  for (auto* s : {&c.data.train, &c.data.eval}) {
    s->format = "preference_json";
    s->image_root = (data / "images").string();
  }
  c.data.train.path = (data / "preference_train.json").string();
  c.data.eval.path = (data / "preference_val.json").string();
  c.data.template_name = "vicuna_v1";
  c.data.max_length = 96;
}

}  // namespace mllm::test
