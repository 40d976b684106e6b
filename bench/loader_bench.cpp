// Loader figures: how fast the data pipeline feeds the trainer. Generates a ShapesWorld set of
// real-size images (224 px PNGs), then
//   1. runs the loader alone with 0, 1 and 2 workers: images/s and tokens/s it delivers;
//   2. trains a tiny stage-1 model for a few steps with 0 and 2 workers: the fraction of the
//      trainer's time spent waiting for data.
// Prints figures; asserts nothing. Run: scripts/bench (or build/bench_loader [images]).
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>

#include "core/config.h"
#include "data/loader.h"
#include "data/shapes_world.h"
#include "data/tokenizer/tokenizer.h"
#include "train/trainer.h"

using namespace mllm;

int main(int argc, char** argv) {
  const int64_t images = argc > 1 ? std::atoll(argv[1]) : 512;
  spdlog::set_level(spdlog::level::warn);
  const auto dir = std::filesystem::temp_directory_path() / "mllm-bench-loader";
  std::filesystem::remove_all(dir);
  data::ShapesWorldOptions so;
  so.train = images;
  so.val = 16;
  so.image_size = 224;
  data::generate_shapes_world(dir, so);

  Config c;
  c.run.output_dir = (dir / "run0").string();
  c.run.threads = 0;
  auto& v = c.model.vision;
  v.image_size = 224, v.patch_size = 32, v.hidden = 64, v.layers = 2, v.heads = 2,
  v.intermediate = 128;
  auto& l = c.model.llm;
  l.hidden = 64, l.layers = 2, l.heads = 2, l.kv_heads = 1, l.intermediate = 128, l.vocab = 128;
  c.model.tokenizer = (dir / "tokenizer.json").string();
  c.data.train.path = (dir / "captions_train.json").string();
  c.data.train.image_root = (dir / "images").string();
  c.data.template_name = "plain";
  c.train.trainable = {"multi_modal_projector.*"};
  c.train.batch_size = 16;
  c.train.max_steps = 24;
  c.train.log_every = 1000;

  const auto tok = load_tokenizer(c.model.tokenizer);
  const ConversationDataset ds(c.data.train, c.data, *tok, 49, "data.train");
  const ImageTransform transform(c.data.image, 224);
  std::printf("loader alone: %lld PNGs of 224x224, batches of %lld\n",
              static_cast<long long>(images), static_cast<long long>(c.train.batch_size));
  for (int64_t workers : {0, 1, 2}) {
    LoaderOptions o;
    o.batch_size = c.train.batch_size;
    o.workers = workers;
    DataLoader loader(ds, transform, o);
    const int64_t batches = images / o.batch_size;
    int64_t tokens = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < batches; ++i) tokens += loader.next().tokens;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  workers %lld: %8.1f images/s %10.0f tokens/s\n", static_cast<long long>(workers),
                static_cast<double>(batches * o.batch_size) / s, static_cast<double>(tokens) / s);
  }
  std::printf("training (tiny stage-1 model, %lld steps):\n",
              static_cast<long long>(c.train.max_steps));
  for (int64_t workers : {2, 0}) {
    c.data.workers = workers;
    c.run.output_dir = (dir / ("run" + std::to_string(workers))).string();
    const TrainSummary s = train(c);
    std::printf("  workers %lld: %.2f s/step, %4.1f%% of the trainer's time waiting for data\n",
                static_cast<long long>(workers), s.train_seconds / static_cast<double>(s.steps),
                100.0 * s.data_wait_fraction);
  }
  std::filesystem::remove_all(dir);
  return 0;
}
