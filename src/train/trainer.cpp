#include "train/trainer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <thread>

#include "core/blas.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/recent_rate.h"
#include "core/signals.h"
#include "core/threads.h"
#include "core/torch_compat.h"
#include "data/collator.h"
#include "data/datasets.h"
#include "data/image_transform.h"
#include "data/loader.h"
#include "data/mixture.h"
#include "data/tokenizer/tokenizer.h"
#include "eval/evaluate.h"
#include "models/factory.h"
#include "models/hf/config_json.h"
#include "models/hf/llava_folder.h"
#include "models/hf/weights.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/freeze.h"
#include "train/init_from.h"
#include "train/lora.h"
#include "train/metrics_sink.h"
#include "train/objectives.h"
#include "train/optim.h"
#include "train/sharding.h"
#include "train/stage.h"

namespace mllm {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// Gradients dropped, not zero-filled (PyTorch 2's zero_grad(set_to_none=True), where 1.13's
// zeroed them): backward writes each one fresh instead of adding it to zeros, a pass over every
// trainable weight less; a parameter no gradient reaches in a step is skipped by the optimizer
// (no momentum or weight-decay update), as in PyTorch 2 and HF's Trainer.
void drop_grads(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params())
      if (p.grad().defined()) p.mutable_grad().reset();
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct EvalResult {
  double loss = 0;
  std::map<std::string, double> metrics;  // the objective's further figures, means
};

// Mean of the objective over (up to max_batches batches of) a dataset, in order, without gradients.
// With a process group, rank r takes batches r, r+W, r+2W, ... and the sums are reduced: the
// figures equal a single process's.
EvalResult evaluate_loss(MultimodalModelImpl& model, Objective& objective, const SampleSource& data,
                         const ImageTransform& transform, int64_t pad_id, int64_t batch_size,
                         int64_t max_batches, const torch::Device& device, bool bf16, bool skip_bad,
                         Collectives& group) {
  torch::NoGradGuard no_grad;
  model.eval();
  double sum = 0;
  std::map<std::string, double> sums;
  int64_t weight = 0, batches = 0;
  for (size_t i = 0; i < data.size(); i += static_cast<size_t>(batch_size)) {
    if (max_batches > 0 && batches >= max_batches) break;
    if (batches++ % group.world_size() != group.rank()) continue;
    std::vector<int64_t> indices;
    for (size_t k = i; k < std::min(data.size(), i + static_cast<size_t>(batch_size)); ++k)
      indices.push_back(static_cast<int64_t>(k));
    int64_t bad_records = 0;
    Batch batch;
    try {
      batch = collate_items(data, indices, transform, pad_id, skip_bad, nullptr, &bad_records);
    } catch (const Error&) {
      if (skip_bad && bad_records == static_cast<int64_t>(indices.size())) continue;
      throw;
    }
    batch = batch.to(device);
    AutocastScope autocast(bf16, device.type(), torch::kBFloat16);
    const auto out = objective.forward(model, batch);
    sum += out.loss_sum.item<double>();
    for (const auto& [k, v] : out.metric_sums) sums[k] += v;
    weight += out.weight;
  }
  model.train();
  // The sums over every rank's batches. Rank 0's metric names (it has a batch whenever any rank
  // has): a rank without one has none.
  std::string names;
  for (const auto& kv : sums) names += kv.first + "\n";
  names = group.broadcast_string(names, "held-out evaluation");
  std::vector<double> v{sum, static_cast<double>(weight)};
  std::vector<std::string> keys;
  for (size_t a = 0, b; (b = names.find('\n', a)) != std::string::npos; a = b + 1)
    keys.push_back(names.substr(a, b - a));
  for (const auto& k : keys) v.push_back(sums.count(k) ? sums[k] : 0.0);
  v = group.sum(v, "held-out evaluation");
  sum = v[0];
  weight = static_cast<int64_t>(v[1]);
  sums.clear();
  for (size_t k = 0; k < keys.size(); ++k) sums[keys[k]] = v[k + 2];
  EvalResult r;
  if (weight > 0) {
    r.loss = sum / static_cast<double>(weight);
    for (const auto& [k, v] : sums) r.metrics[k] = v / static_cast<double>(weight);
  }
  return r;
}

std::unique_ptr<SampleSource> open_dataset(const Stage& stage, const Config& config,
                                           const DataSourceConfig& source,
                                           const Tokenizer& tokenizer,
                                           const ImageTokens& image_tokens,
                                           const std::string& key) {
  // A stage that reads either kind (clip) goes by the format.
  if (stage.data == StageData::preference_pairs || source.format.rfind("preference_", 0) == 0)
    return std::make_unique<PreferenceDataset>(source, config.data, tokenizer, image_tokens, key);
  return std::make_unique<ConversationDataset>(source, config.data, tokenizer, image_tokens, key);
}

// data.train: one source, or a mixture of them (data/mixture.h), each with its own template.
std::unique_ptr<SampleSource> open_train_data(const Stage& stage, const Config& config,
                                              const Tokenizer& tokenizer,
                                              const ImageTokens& image_tokens) {
  if (config.data.mixture.empty())
    return open_dataset(stage, config, config.data.train, tokenizer, image_tokens, "data.train");
  std::vector<MixtureSource::Part> parts;
  for (size_t i = 0; i < config.data.mixture.size(); ++i) {
    const auto& source = config.data.mixture[i];
    Config c = config;
    if (!source.template_name.empty()) c.data.template_name = source.template_name;
    MixtureSource::Part part;
    part.name = fs::path(source.path).filename().string();
    part.data = open_dataset(stage, c, source, tokenizer, image_tokens,
                             "data.train[" + std::to_string(i) + "]");
    part.weight = source.weight;
    part.epochs = source.epochs;
    parts.push_back(std::move(part));
  }
  auto mixture = std::make_unique<MixtureSource>(std::move(parts));
  for (size_t i = 0; i < mixture->sources(); ++i)
    spdlog::info("data.train[{}]: {} ({} samples; {} per epoch{})", i, mixture->name(i),
                 mixture->part(i).size(), mixture->counts()[i],
                 config.data.mixture[i].weight > 0
                     ? fmt::format(", weight {:g}", config.data.mixture[i].weight)
                     : fmt::format(", {:g} passes", config.data.mixture[i].epochs));
  return mixture;
}

// train.init_from: the previous stage's weights over the freshly built model.
void init_from(MultimodalModelImpl& model, const Config& config, const char* which) {
  if (config.train.init_from.empty()) return;
  try {
    const auto [file, loaded] = load_init_weights(model, config.train.init_from);
    std::string parts;
    for (const auto& [part, n] : loaded)
      parts += (parts.empty() ? "" : ", ") + part + " " + std::to_string(n);
    spdlog::info(
        "train.init_from: {} tensors of the {} from {} ({})",
        [&] {
          int64_t n = 0;
          for (const auto& kv : loaded) n += kv.second;
          return n;
        }(),
        which, file.string(), parts);
  } catch (const Error& e) {
    throw Error(config.where("train.init_from") + ": " + e.what());
  }
}

// --resume auto: the newest sound checkpoint. Damaged newer ones (a truncated file, a checksum that
// differs from the manifest) are passed over with a warning and left on disk for inspection.
std::optional<fs::path> choose_checkpoint(const fs::path& root) {
  std::vector<SkippedCheckpoint> skipped;
  auto found = find_latest_checkpoint(root, &skipped);
  for (const auto& s : skipped)
    spdlog::warn("checkpoint {} is damaged ({}): skipped, left on disk", s.dir.string(), s.why);
  if (!found && !skipped.empty())
    throw Error("--resume auto: every checkpoint under " + root.string() +
                " is damaged (the newest: " + skipped.front().dir.filename().string() + ": " +
                skipped.front().why + ")");
  if (found && !skipped.empty())
    spdlog::warn("resuming from the newest sound checkpoint, {}", found->filename().string());
  return found;
}

// What identifies the training data a checkpoint's position counts into.
nlohmann::json fingerprint(const DataSourceConfig& source, const SampleSource& data) {
  std::error_code ec;
  const auto bytes = fs::file_size(source.path, ec);
  return {{"path", source.path},
          {"records", data.stats().records},
          {"samples", data.size()},
          {"bytes", ec ? -1 : static_cast<int64_t>(bytes)}};
}

// A mixture's: each source's, and the items per epoch each takes.
nlohmann::json fingerprint(const Config& config, const SampleSource& data) {
  const auto* mixture = dynamic_cast<const MixtureSource*>(&data);
  if (!mixture) return fingerprint(config.data.train, data);
  nlohmann::json sources = nlohmann::json::array();
  for (size_t i = 0; i < mixture->sources(); ++i)
    sources.push_back(fingerprint(config.data.mixture[i], mixture->part(i)));
  return {{"mixture", sources}, {"per_epoch", mixture->counts()}};
}

// A checkpoint's data position means nothing over other data: refused unless the user says
// --resume-allow-data-change, and then the epoch restarts if the position is past the end.
void check_same_data(TrainerState& state, const nlohmann::json& now, const TrainOptions& options,
                     int64_t samples, int64_t per_step) {
  if (!state.extra.contains("data")) return;  // a checkpoint from before fingerprints
  const nlohmann::json& then = state.extra["data"];
  if (then == now) return;
  std::string diff;
  for (const char* k : {"path", "records", "samples", "bytes"})
    if (then.value(k, nlohmann::json()) != now.value(k, nlohmann::json()))
      diff += fmt::format("{}{} {} -> {}", diff.empty() ? "" : ", ", k,
                          then.value(k, nlohmann::json()).dump(),
                          now.value(k, nlohmann::json()).dump());
  if (diff.empty()) diff = then.dump() + " -> " + now.dump();  // mixtures
  if (!options.allow_data_change)
    throw ConfigError(
        "--resume: the training data changed since the checkpoint (data.train: " + diff +
        "); its position in the data would mean nothing. Pass "
        "--resume-allow-data-change to continue anyway");
  spdlog::warn("--resume-allow-data-change: the training data changed ({}); continuing", diff);
  if (state.position + per_step > samples) {
    spdlog::warn("epoch {} position {} is past the new data's {} samples: the next epoch starts",
                 state.epoch, state.position, samples);
    ++state.epoch;
    state.position = 0;
  }
}

// Tests that interrupt a run mid-way set MLLM_TEST_STEP_DELAY_MS so the run is still going when
// the signal lands, however fast the machine. Nothing else reads it.
std::chrono::milliseconds test_step_delay() {
  const char* v = std::getenv("MLLM_TEST_STEP_DELAY_MS");
  return std::chrono::milliseconds(v ? std::max(0, std::atoi(v)) : 0);
}

// Refuses to start a fresh run over an earlier one's results.
void check_fresh_output(const Config& config, const fs::path& out) {
  const bool has_ckpt = fs::is_directory(out / "checkpoints") && !fs::is_empty(out / "checkpoints");
  if (has_ckpt || fs::exists(out / "final"))
    throw ConfigError(
        config.where("run.output_dir") + ": " + out.string() +
        " already holds a run (checkpoints/ or final/); pass --resume auto to continue it, "
        "or choose another run.output_dir");
}

// final/ is a plain model: LoRA adapters are merged into the weights first (so it reloads and
// exports without LoRA; the adapters alone stay in the checkpoints). This changes `model`: call it
// last.
void write_final(const fs::path& out, MultimodalModelImpl& model, const Config& config,
                 const Stage& stage, const Tokenizer& tokenizer) {
  if (const auto merged = merge_lora(model))
    spdlog::info("lora: merged the adapters of {} layers into their weights", merged);
  LlavaFolderExtras extras;
  extras.tokenizer = config.model.tokenizer;
  extras.tokenizer_config = tokenizer_config_json(tokenizer, config.model.llm.max_position,
                                                  config.data.template_name, config.data.system);
  extras.preprocessor_config = preprocessor_config_json(
      config.data.image, config.model.vision.image_size,
      anyres_pinpoints(config.model.vision.anyres, config.model.vision.image_size));
  if (stage.write_final)
    stage.write_final(out / "final", model, config, tokenizer, extras);
  else
    write_llava_folder(out / "final", model, extras);
}

}  // namespace

// Everything a run holds, and the parts of setup and the loop as its methods.
struct Trainer::Impl {
  Config config;
  TrainOptions options;
  Clock::time_point start = Clock::now();
  fs::path out, ckpt_root;
  const Stage* stage = nullptr;

  DistEnv env;
  torch::Device device{torch::kCPU};
  std::unique_ptr<Collectives> group;
  int world = 1;
  bool main_rank = true, bf16 = false, skip_bad = false, ready = false;

  std::unique_ptr<Tokenizer> tokenizer;
  MultimodalModel model{nullptr}, reference{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::unique_ptr<Objective> objective;
  std::unique_ptr<SampleSource> train_data, eval_data;
  std::optional<ImageTransform> transform;
  std::unique_ptr<DataLoader> loader;
  std::vector<torch::Tensor> params;        // the trainable ones
  std::vector<int64_t> source_items;        // a mixture's items drawn from each source so far
  std::unique_ptr<GradientSync> grad_sync;  // train.sharding: none
  ShardLevel sharding = ShardLevel::none;
  std::unique_ptr<ShardedTraining> sharded;  // the other levels
  int64_t pad_id = 0, per_step = 0, total = 0, image_tokens = 0, n_trainable = 0, n_total = 0;

  std::optional<fs::path> resume_from;
  nlohmann::json data_fingerprint;
  TrainerState state;
  double earlier_seconds = 0;               // wall time of the earlier parts of a resumed run
  std::optional<MetricsSink> metrics_sink;  // rank 0's
  TrainSummary summary;

  // The loop's bookkeeping.
  std::optional<Clock::time_point> loop_start;
  RecentRate step_rate;  // steps per second over the last logged intervals (the ETA)
  int64_t last_logged_step = 0;
  Clock::time_point interval_start = Clock::now();
  int64_t interval_positions = 0, interval_unpacked = 0;  // padding fractions of the interval
  int64_t interval_tokens = 0, steps_here = 0, tokens_here = 0, bad_in_a_row = 0, last_saved = -1;
  double interval_wait = 0, total_wait = 0;
  std::optional<StopSignals> stop;
  std::chrono::milliseconds step_delay{0};

  Impl(Config c, TrainOptions o) : config(std::move(c)), options(std::move(o)) {
    out = config.output_dir();
    ckpt_root = out / "checkpoints";
    stage = &find_stage(config.train.stage);
    sharding = parse_shard_level(config.train.sharding);
  }
  ~Impl() {
    if (sharded && model) model->language_model->model->set_layer_shards(nullptr);
  }

  // Level parameters: the whole weights on every rank while evaluating or writing final/.
  struct WholeWeights {
    explicit WholeWeights(ShardedTraining* s) : s(s) {
      if (s) s->gather_all();
    }
    ~WholeWeights() {
      if (s) s->release_all();
    }
    ShardedTraining* s;
  };

  void log_metrics(const nlohmann::json& record) {
    if (metrics_sink) metrics_sink->write(record);
  }

  // The launcher's environment says whether this process is one rank of many.
  void join() {
    env = dist_env_from_environment();
    device = select_device(config.run.device);
    if (env.distributed() && device.is_cuda() && !device.has_index())
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
    group = join_job(env, config.run.distributed, device);
    main_rank = group->is_main();
    world = group->world_size();
    if (!main_rank) {
      // Rank 0 speaks for the run; the others only warn, and say who they are.
      auto logger = spdlog::default_logger();
      logger->set_pattern(fmt::format("[%H:%M:%S] [rank {}] %^%l%$ %v", env.rank));
      if (logger->level() < spdlog::level::warn) logger->set_level(spdlog::level::warn);
    }
    if (main_rank) buffer_log_lines();  // train.log gets them once the inputs are known sound
  }

  // Rank 0 decides whether this is a fresh run or where it resumes; every rank follows.
  void decide_resume() {
    std::string decision;  // "F": fresh, "R<path>": resume, "E<message>": a configuration error
    if (main_rank) {
      try {
        if (options.resume == "auto") {
          resume_from = choose_checkpoint(ckpt_root);
          if (!resume_from) check_fresh_output(config, out);
        } else if (options.resume != "none" && !options.resume.empty()) {
          resume_from = fs::path(options.resume);
          if (!fs::is_directory(*resume_from))
            throw ConfigError("--resume: " + options.resume + ": not a directory");
        } else {
          check_fresh_output(config, out);
        }
        decision = resume_from ? "R" + resume_from->string() : "F";
      } catch (const ConfigError& e) {
        decision = std::string("E") + e.what();
      }
    }
    decision = group->broadcast_string(decision, "the resume decision");
    if (decision[0] == 'E') throw ConfigError(decision.substr(1));
    if (decision[0] != 'R') return;
    resume_from = fs::path(decision.substr(1));
    const double blind =
        group->sum(fs::is_directory(*resume_from) ? 0.0 : 1.0, "the resume decision");
    if (blind > 0)
      throw Error(fmt::format(
          "distributed: {} of {} ranks cannot read the checkpoint {} that rank 0 resumes from: "
          "run.output_dir must be on a filesystem every node shares",
          blind, world, resume_from->string()));
  }

  // Threads, the tokenizer, the model (and the stage's frozen reference), what trains, LoRA.
  void build_models() {
    // Ranks sharing a node share its cores: run.threads auto gives each its part.
    int64_t want_threads = config.run.threads;
    if (want_threads == 0 && env.local_world_size > 1)
      want_threads = std::max<int64_t>(
          1, static_cast<int64_t>(std::thread::hardware_concurrency()) / env.local_world_size);
    const int threads = configure_threads(want_threads);
    bf16 = config.train.precision == "bf16";
    spdlog::info("run {} -> {} ({} on {}, {} threads)", config.run.name, out.string(),
                 config.train.precision, device.str(), threads);
    if (const auto job = group->describe(); !job.empty()) spdlog::info("{}", job);

    tokenizer = load_tokenizer(config.model.tokenizer);
    tokenizer->set_chat_template_file(config.data.chat_template);
    adopt_init_from_architecture(config);  // before either model is built
    if (stage->needs_reference) {
      // The reference: the initial policy, built the same way before `config` is filled in.
      Config ref_config = config;
      reference = build_model(ref_config, tokenizer->vocabulary());
      init_from(*reference, config, "reference");
      reference->to(device);
      for (auto& p : reference->parameters()) p.set_requires_grad(false);
      reference->eval();
    }
    model = build_model(config, tokenizer->vocabulary());
    init_from(*model, config, "model");
    if (stage->extend) stage->extend(*model, config, *tokenizer);
    model->to(device);
    // train.trainable first, then LoRA: adapters train, the layers they adapt freeze. Both before
    // the optimizer and before a checkpoint is loaded (it holds the adapters by name).
    apply_trainable(*model, config);
    const auto adapted = apply_lora(*model, config);
    if (!adapted.empty())
      spdlog::info("lora: rank {} adapters (alpha {}, dropout {}) on {} linear layers",
                   config.train.lora.rank, config.train.lora.alpha, config.train.lora.dropout,
                   adapted.size());
    model->language_model->model->set_gradient_checkpointing(config.train.gradient_checkpointing);
    // The LM head's bound: MiB of fp32 logits -> elements (0: one chunk).
    const int64_t max_logits = config.train.lm_head_chunk_mb * (int64_t{1} << 20) / 4;
    model->language_model->set_max_logits(max_logits);
    if (reference) reference->language_model->set_max_logits(max_logits);
    if (config.train.gradient_checkpointing)
      spdlog::info("gradient checkpointing: each LLM layer is recomputed in backward");
    int64_t n_tensors = 0;
    for (const auto& p : model->parameters()) {
      n_total += p.numel();
      if (p.requires_grad()) n_trainable += p.numel(), ++n_tensors;
    }
    spdlog::info("parameters: {} trainable of {} ({} tensors trainable)", n_trainable, n_total,
                 n_tensors);
    optimizer = make_optimizer(*model, config.train);
    objective = make_objective(config.train, reference);
  }

  // The stage's datasets, the image transform, and the run's length in steps.
  void open_data() {
    image_tokens = model->image_tokens();
    const ImageTokens counts = model->image_token_counts();
    train_data = open_train_data(*stage, config, *tokenizer, counts);
    if (!config.data.eval.path.empty())
      eval_data = open_dataset(*stage, config, config.data.eval, *tokenizer, counts, "data.eval");
    transform.emplace(config.data.image, config.model.vision.image_size, counts.pinpoints);
    pad_id = tokenizer->pad_id() >= 0 ? tokenizer->pad_id() : 0;
    skip_bad = config.data.on_bad_record == "skip";

    const auto& tc = config.train;
    // A step takes batch_size x grad_accum samples on each rank: world x that in all.
    per_step = tc.batch_size * tc.grad_accum * world;
    const int64_t N = train_data->epoch_size();
    const int64_t steps_per_epoch = N / per_step;
    if (steps_per_epoch == 0)
      throw ConfigError(config.where("train.batch_size") + ": " + config.data.train.path + " has " +
                        std::to_string(N) + " samples, fewer than batch_size*grad_accum" +
                        (world > 1 ? "*ranks" : "") + " = " + std::to_string(per_step));
    total = tc.max_steps > 0 ? tc.max_steps : tc.epochs * steps_per_epoch;
    spdlog::info("data: {} train samples ({} steps/epoch of {}), {} eval samples; {} steps", N,
                 steps_per_epoch, per_step, eval_data ? eval_data->size() : 0, total);
    data_fingerprint = fingerprint(config, *train_data);
    source_items.assign(train_data->sources() > 1 ? train_data->sources() : 0, 0);
  }

  // The trainer state: fresh, or the checkpoint's (weights, optimizer, position, RNG).
  void restore() {
    const auto& tc = config.train;
    state.total_steps = total;
    state.scheduler = {{"schedule", tc.schedule},
                       {"lr", tc.lr},
                       {"warmup_steps", warmup_steps(tc, total)},
                       {"total_steps", total},
                       {"min_lr_ratio", tc.min_lr_ratio}};
    if (!resume_from) return;
    const auto scheduler = state.scheduler;
    if (is_sharded_checkpoint(*resume_from)) {
      if (sharding == ShardLevel::none)
        throw ConfigError(config.where("train.sharding") + ": " + resume_from->string() +
                          " was written by a sharded run; resume it with train.sharding set to "
                          "optimizer, gradients or parameters (any level, any number of ranks)");
      state = read_checkpoint_state(*resume_from);  // the shards are read in open_run()
    } else if (sharding != ShardLevel::none) {
      throw ConfigError(config.where("train.sharding") + ": " + resume_from->string() +
                        " was written without sharding (model.safetensors, optimizer.pt); "
                        "resume it with train.sharding: none");
    } else {
      state = load_checkpoint(*resume_from, *model, *optimizer);
    }
    if (state.total_steps != total || (!state.scheduler.empty() && state.scheduler != scheduler))
      spdlog::warn("the checkpoint's schedule {} differs from this run's {}: the schedule changes",
                   state.scheduler.dump(), scheduler.dump());
    state.total_steps = total;
    state.scheduler = scheduler;
    check_same_data(state, data_fingerprint, options, train_data->epoch_size(), per_step);
    if (state.extra.contains("source_items") &&
        state.extra["source_items"].size() == source_items.size())
      source_items = state.extra["source_items"].get<std::vector<int64_t>>();
    spdlog::info("resumed from {} at step {} (epoch {}, sample {})", resume_from->string(),
                 state.step, state.epoch, state.position);
    const int64_t saved_world = state.extra.value("world_size", int64_t{1});
    const int64_t saved_per_step =
        state.extra.value("samples_per_step", tc.batch_size * tc.grad_accum * saved_world);
    if (saved_world != world)
      spdlog::info("the checkpoint was written by {} rank(s), this run has {}{}", saved_world,
                   world,
                   sharding != ShardLevel::none ? ": its shards are re-cut for this run" : "");
    if (saved_per_step != per_step) {
      spdlog::warn("the global batch changes from {} to {} samples per step", saved_per_step,
                   per_step);
      if (state.position % per_step != 0) {
        spdlog::warn("epoch {} continues from sample {} (a step boundary) instead of {}",
                     state.epoch, state.position - state.position % per_step, state.position);
        state.position -= state.position % per_step;
      }
    }
    last_saved = state.step;
    earlier_seconds = state.extra.value("wall_seconds", 0.0);
  }

  // Only now, with the inputs read and the checkpoint (if any) restored, does the run directory
  // change: a resume that fails leaves it exactly as it was. Then every rank takes rank 0's
  // weights, and the loader and the gradient reduction start.
  void open_run() {
    if (main_rank) {
      fs::create_directories(out);
      add_log_file(out / "train.log");
      write_file_atomic(out / "config.yaml", config_to_yaml(config));
      metrics_sink.emplace(out / "metrics.jsonl",
                           config.run.tensorboard ? out / "tensorboard" : fs::path());
    }
    // Every rank starts from rank 0's weights (parameters and buffers), as DDP does.
    std::vector<torch::Tensor> tensors;
    for (const auto& p : model->parameters()) tensors.push_back(p);
    for (const auto& b : model->buffers()) tensors.push_back(b);
    group->broadcast(tensors, "the broadcast of the initial weights");
    summary.output_dir = out;

    LoaderOptions lo = loader_options(config, pad_id);
    lo.rank = group->rank();
    lo.world_size = world;
    loader = std::make_unique<DataLoader>(*train_data, *transform, lo,
                                          LoaderPosition{state.epoch, state.position});
    for (const auto& p : model->parameters())
      if (p.requires_grad()) params.push_back(p);
    if (sharding == ShardLevel::none) {
      grad_sync = group->gradient_sync(params, config.run.distributed.bucket_mb);
      if (world > 1)
        spdlog::info("gradients: summed across ranks in {} bucket(s) of up to {:g} MB",
                     grad_sync->buckets(), config.run.distributed.bucket_mb);
    } else {
      start_sharding();
    }
    model->train();
    step_delay = test_step_delay();
  }

  // train.sharding: the trainable weights, their gradients and AdamW state go to the flat buckets
  // of train/sharding.h (after every rank has rank 0's weights, and before a checkpoint's shards
  // are read into them).
  void start_sharding() {
    std::vector<ShardedParam> sp;
    const std::string layers = "language_model.model.layers.";
    for (const auto& item : model->named_parameters(true)) {
      if (!item.value().requires_grad()) continue;
      ShardedParam p{item.key(), item.value(),
                     weight_decay_of(item.key(), item.value(), config.train), -1};
      if (item.key().rfind(layers, 0) == 0) p.layer = std::stoll(item.key().substr(layers.size()));
      sp.push_back(std::move(p));
    }
    const auto& tc = config.train;
    sharded = std::make_unique<ShardedTraining>(
        *group, sharding, std::move(sp), AdamWSettings{tc.betas[0], tc.betas[1], tc.adam_eps},
        config.run.distributed.bucket_mb);
    if (sharding == ShardLevel::parameters)
      model->language_model->model->set_layer_shards(sharded.get());
    if (resume_from) sharded->load(*resume_from);
    // What each rank holds, counted from its tensors; rank 0 says it for all.
    const auto b = sharded->bytes();
    std::vector<double> held(static_cast<size_t>(world), 0.0);
    held[static_cast<size_t>(group->rank())] = static_cast<double>(b.optimizer);
    held = group->sum(held, "the sharding summary");
    std::string per_rank;
    for (double h : held) per_rank += fmt::format("{}{}", per_rank.empty() ? "" : ", ", h);
    auto mib = [](int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); };
    spdlog::info(
        "sharding: {} ({}) over {} rank(s), {} bucket(s); optimizer state per rank [{}] bytes "
        "of {} unsharded; rank 0 holds gradients {:.2f} MiB, whole weights {:.2f} MiB, weight "
        "slices {:.2f} MiB",
        config.train.sharding, zero_stage_name(sharding), world, sharded->buckets(), per_rank,
        sharded->unsharded_optimizer_bytes(), mib(b.gradients), mib(b.weights), mib(b.master));
  }

  // The step's backward passes, with the global normalisation; fills the loss sums.
  void forward_backward(const std::vector<Batch>& micro, int64_t weight, StepResult& r) {
    double loss_sum = 0;
    for (size_t m = 0; m < micro.size(); ++m) {
      const auto& b = micro[m];
      if (sharded)
        sharded->begin_micro_batch(m + 1 == micro.size());
      else
        grad_sync->prepare(m + 1 == micro.size());
      auto t = Clock::now();
      ObjectiveOutput o;
      {
        AutocastScope autocast(bf16, device.type(), torch::kBFloat16);
        o = objective->forward(*model, b);
      }
      r.forward_s += seconds_since(t);
      t = Clock::now();
      (o.loss_sum / static_cast<double>(std::max<int64_t>(1, weight))).backward();
      loss_sum += o.loss_sum.item<double>();
      if (sharded) sharded->end_micro_batch();
      r.backward_s += seconds_since(t);
      for (const auto& [k, v] : o.metric_sums) r.metrics[k] += v;
      r.tokens += b.tokens;
      r.positions += b.positions;
      r.unpacked_positions += b.unpacked_positions;
      r.source_items.resize(b.source_items.size());
      for (size_t k = 0; k < b.source_items.size(); ++k) r.source_items[k] += b.source_items[k];
    }
    const auto t = Clock::now();
    if (grad_sync) grad_sync->finish();
    // The step's figures over all ranks (every rank's objective reports the same names).
    std::vector<double> v{loss_sum, static_cast<double>(r.tokens), static_cast<double>(r.positions),
                          static_cast<double>(r.unpacked_positions)};
    for (const auto& kv : r.metrics) v.push_back(kv.second);
    r.source_items.resize(source_items.size());
    for (int64_t n : r.source_items) v.push_back(static_cast<double>(n));
    v = group->sum(v, "the step's metrics");
    for (size_t k = 0; k < r.source_items.size(); ++k)
      r.source_items[k] = static_cast<int64_t>(v[v.size() - r.source_items.size() + k]);
    r.tokens = static_cast<int64_t>(v[1]);
    r.positions = static_cast<int64_t>(v[2]);
    r.unpacked_positions = static_cast<int64_t>(v[3]);
    size_t k = 4;
    const double w = static_cast<double>(std::max<int64_t>(1, weight));
    for (auto& kv : r.metrics) kv.second = v[k++] / w;
    r.loss = v[0] / w;
    r.backward_s += seconds_since(t);
  }

  StepResult step(const std::vector<Batch>& micro) {
    if (!loop_start) {
      loop_start = Clock::now();
      last_logged_step = state.step;  // a resumed run counts its rate from where it resumed
    }
    const auto& tc = config.train;
    StepResult r;
    auto t = Clock::now();
    state.lr = lr_at(tc, state.step, total);
    set_lr(*optimizer, state.lr);
    if (sharded)
      sharded->zero_grad();
    else
      drop_grads(*optimizer);
    r.optimizer_s += seconds_since(t);
    // The loss is a mean over the step's global batch: every rank divides by the global weight
    // (tokens, or pairs), and the gradients are summed across ranks.
    int64_t weight = 0;
    for (const auto& b : micro) weight += objective->weight(b);
    weight =
        static_cast<int64_t>(group->sum(static_cast<double>(weight), "the step's token count"));
    r.weight = weight;
    forward_backward(micro, weight, r);
    interval_tokens += r.tokens;
    for (size_t k = 0; k < source_items.size(); ++k) source_items[k] += r.source_items[k];
    interval_positions += r.positions;
    interval_unpacked += r.unpacked_positions;
    tokens_here += r.tokens;
    t = Clock::now();
    const double max_norm =
        tc.clip_grad_norm > 0 ? tc.clip_grad_norm : std::numeric_limits<double>::infinity();
    r.grad_norm = sharded ? sharded->clip_grad_norm(max_norm)
                          : torch::nn::utils::clip_grad_norm_(params, max_norm);
    r.lr = state.lr;
    r.step = ++state.step;
    ++steps_here;
    if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
      skip_step(r);
      r.optimizer_s += seconds_since(t);
      return r;
    }
    bad_in_a_row = 0;
    if (sharded)
      sharded->step(state.lr);
    else
      optimizer->step();
    r.optimizer_s += seconds_since(t);
    summary.losses.emplace_back(state.step, r.loss);
    state.extra = {{"loss", r.loss},
                   {"wall_seconds", earlier_seconds + seconds_since(start)},
                   {"world_size", world},
                   {"samples_per_step", per_step},
                   {"data", data_fingerprint}};
    if (!source_items.empty()) state.extra["source_items"] = source_items;
    return r;
  }

  // The NaN/inf guard: no update from this step (its data is consumed); abort after too many. The
  // loss and gradients are global, so every rank skips the same steps.
  void skip_step(StepResult& r) {
    if (sharded)
      sharded->zero_grad();
    else
      drop_grads(*optimizer);
    r.skipped = true;
    ++bad_in_a_row;
    ++summary.skipped_steps;
    log_metrics(
        {{"step", r.step}, {"skipped_step", true}, {"loss", r.loss}, {"grad_norm", r.grad_norm}});
    spdlog::warn("step {}: loss {} / grad_norm {} is not finite; step skipped ({} in a row)",
                 r.step, r.loss, r.grad_norm, bad_in_a_row);
    const int64_t limit = config.train.max_bad_steps;
    if (bad_in_a_row > limit)
      throw Error(
          std::to_string(bad_in_a_row) + " steps in a row up to step " + std::to_string(r.step) +
          " had a non-finite loss or gradient (train.max_bad_steps=" + std::to_string(limit) +
          "): the run diverged or its inputs/weights hold NaN (lower train.lr, raise "
          "train.warmup_ratio, check the pretrained weights); the last checkpoint is "
          "kept");
  }

  std::vector<Batch> next_micro_batches() {
    std::vector<Batch> micro;
    const auto wait_start = Clock::now();
    for (int64_t m = 0; m < config.train.grad_accum; ++m)
      micro.push_back(loader->next().to(device));
    const double wait = seconds_since(wait_start);
    interval_wait += wait;
    total_wait += wait;
    state.epoch = loader->position().epoch;
    state.position = loader->position().position;
    return micro;
  }

  // Every train.log_every steps (and the last): the step's figures to the log and metrics.jsonl.
  void log_step(const StepResult& r) {
    if (r.step % config.train.log_every != 0 && r.step != total) return;
    const double dt = seconds_since(interval_start);
    const double tps = dt > 0 ? static_cast<double>(interval_tokens) / dt : 0.0;
    // From the last few logged intervals (core/recent_rate.h), not the run's average.
    step_rate.observe(dt, r.step - last_logged_step);
    last_logged_step = r.step;
    const double eta = step_rate.eta(total - r.step);
    const double data_wait = dt > 0 ? interval_wait / dt : 0.0;
    const auto stats = train_data->stats();
    nlohmann::json record = {{"step", r.step},
                             {"epoch", state.epoch},
                             {"loss", r.loss},
                             {"lr", r.lr},
                             {"grad_norm", r.grad_norm},
                             {"tokens_per_s", tps},
                             {"data_wait", data_wait},
                             {"skipped_records", stats.skipped},
                             {"truncated_samples", stats.truncated},
                             {"dropped_images", loader->dropped()},
                             {"dropped_records", loader->dropped_records()}};
    if (config.data.template_name == "hf") {
      // What the tokenizer's chat template could not give exactly (data/chat_template.h): replies
      // left without loss, and records whose prompt ends inside a token (seen so far).
      record["template_unrendered_replies"] = stats.unrendered_replies;
      record["template_prompt_mismatches"] = stats.prompt_boundary_mismatches;
    }
    // The share of input positions that were padding, and what it would have been unpacked.
    auto padding = [&](int64_t positions) {
      return positions > 0
                 ? 1.0 - static_cast<double>(interval_tokens) / static_cast<double>(positions)
                 : 0.0;
    };
    if (const auto* mixture = dynamic_cast<const MixtureSource*>(train_data.get())) {
      nlohmann::json drawn = nlohmann::json::object();
      for (size_t k = 0; k < source_items.size(); ++k) drawn[mixture->name(k)] = source_items[k];
      record["source_items"] = drawn;  // since the run began, over all ranks
    }
    record["padding"] = padding(interval_positions);
    record["padding_unpacked"] = padding(interval_unpacked);
    std::string extra;
    for (const auto& [k, v] : r.metrics) {
      record[k] = v;
      if (std::find(stage->headline.begin(), stage->headline.end(), k) != stage->headline.end())
        extra += fmt::format(" | {} {:.3f}", k, v);
    }
    log_metrics(record);
    spdlog::info(
        "step {}/{} | loss {:.4f}{} | lr {:.2e} | grad_norm {:.3f} | {:.0f} tok/s | data wait "
        "{:.0f}% | ETA {}",
        r.step, total, r.loss, extra, r.lr, r.grad_norm, tps, 100 * data_wait,
        format_duration(eta));
    interval_start = Clock::now();
    interval_tokens = interval_positions = interval_unpacked = 0;
    interval_wait = 0;
  }

  void evaluate(const char* when) {
    WholeWeights whole(sharded.get());
    nlohmann::json record = {{"step", state.step}};
    if (eval_data) {
      const auto r =
          evaluate_loss(*model, *objective, *eval_data, *transform, pad_id, config.train.batch_size,
                        config.train.eval_batches, device, bf16, skip_bad, *group);
      if (!summary.first_eval_loss) summary.first_eval_loss = r.loss;
      summary.last_eval_loss = r.loss;
      record["eval_loss"] = r.loss;
      std::string extra;
      for (const auto& [k, v] : r.metrics) {
        record["eval_" + k] = v;
        extra += fmt::format(" | {} {:.4f}", k, v);
      }
      spdlog::info("eval ({}) step {}: held-out loss {:.4f}{}", when, state.step, r.loss, extra);
    }
    if (!config.eval.tasks.empty()) {
      // Generation tasks (eval: in the recipe), prompted with the template the model trains on.
      // Every rank runs them (the same weights give the same answers), so none waits on rank 0.
      EvalConfig tasks = config.eval;
      tasks.chance = false;
      const eval::EvalModel em{*model, *tokenizer, *transform, config.data.template_name,
                               config.data.system};
      std::string extra;
      for (const auto& [k, v] :
           eval::flat_scores(eval::run_eval(tasks, em, static_cast<uint64_t>(config.run.seed)))) {
        record[k] = v;
        if (std::count(k.begin(), k.end(), '/') == 2) extra += fmt::format(" | {} {:.4f}", k, v);
      }
      spdlog::info("eval ({}) step {}:{}", when, state.step, extra);
    }
    if (record.size() > 1) log_metrics(record);
  }

  void save() {
    if (sharded) {
      // Every rank writes its shard into the directory rank 0 opened; rank 0 commits it.
      const auto tmp = ckpt_root / (".tmp-" + checkpoint_name(state.step));
      if (main_rank) begin_checkpoint(ckpt_root, state.step);
      group->barrier("the start of checkpoint " + checkpoint_name(state.step));
      write_manifest_part(tmp, group->rank(), sharded->save(tmp));
      group->barrier("the shards of checkpoint " + checkpoint_name(state.step));
      if (main_rank) {
        const auto dir = commit_checkpoint(ckpt_root, tmp, state, config.train.keep_last);
        spdlog::info("checkpoint {} ({} shards)", dir.string(), world);
      }
      group->barrier("checkpoint " + checkpoint_name(state.step));
      last_saved = state.step;
      return;
    }
    if (main_rank) {
      const auto dir =
          save_checkpoint(ckpt_root, *model, *optimizer, state, config.train.keep_last);
      spdlog::info("checkpoint {}", dir.string());
    }
    last_saved = state.step;
  }

  // A signal may reach the ranks at different steps: they stop together, at the first step any
  // of them saw it. The step in flight has finished; it is kept, and the run ends (exit 0).
  bool preempted() {
    const bool seen = stop->requested();
    if (group->sum(seen ? 1.0 : 0.0, "the stop-signal check") == 0) return false;
    if (last_saved != state.step && state.step > 0) save();
    summary.stopped_by = seen ? stop->name() : "SIGTERM";
    spdlog::warn("{}: stopped at step {} of {}; continue with --resume auto", summary.stopped_by,
                 state.step, total);
    return true;
  }

  // After a step of run(): the test delay, periodic evaluation, periodic checkpoints.
  void after_step() {
    const auto& tc = config.train;
    if (step_delay.count() > 0) std::this_thread::sleep_for(step_delay);
    if (tc.eval_every > 0 && state.step % tc.eval_every == 0 && state.step != total)
      evaluate("periodic");
    if (tc.save_every > 0 && (state.step % tc.save_every == 0 || state.step == total)) save();
  }

  TrainSummary finish() {
    summary.steps = state.step;
    const double loop_s = loop_start ? seconds_since(*loop_start) : 0.0;
    summary.data_wait_fraction = loop_s > 0 ? total_wait / loop_s : 0.0;
    summary.train_seconds = loop_s;
    if (loader->dropped() > 0)
      spdlog::warn("{} samples were dropped for unreadable images", loader->dropped());
    if (state.step < total) {
      if (summary.stopped_by.empty())
        spdlog::info("stopped at step {} of {} (--stop-after)", state.step, total);
      return summary;
    }
    evaluate("end");
    // summary.json: the figures a sweep tabulates; written before final/, which marks the end.
    nlohmann::json figures = {
        {"steps", state.step},
        {"trainable_params", n_trainable},
        {"total_params", n_total},
        {"image_tokens", image_tokens},
        {"final_loss", state.extra.contains("loss") ? state.extra["loss"] : nlohmann::json()},
        {"final_eval_loss",
         summary.last_eval_loss ? nlohmann::json(*summary.last_eval_loss) : nlohmann::json()},
        {"tokens_per_s", loop_s > 0 && tokens_here > 0
                             ? nlohmann::json(static_cast<double>(tokens_here) / loop_s)
                             : nlohmann::json()},
        {"wall_seconds", earlier_seconds + seconds_since(start)},
        {"world_size", world},
        {"blas", blas_info().describe()}};
    {
      WholeWeights whole(sharded.get());
      if (main_rank) {
        write_file_atomic(out / "summary.json", figures.dump(2) + "\n");
        write_final(out, *model, config, *stage, *tokenizer);
      }
    }
    // No rank reports success before final/ exists.
    group->barrier("the end of the run");
    summary.final_dir = out / "final";
    spdlog::info("final weights: {}", summary.final_dir.string());
    return summary;
  }
};

Trainer::Trainer(Config config, TrainOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(options))) {}
Trainer::~Trainer() = default;

void Trainer::setup() {
  Impl& s = *impl_;
  s.join();
  s.decide_resume();
  s.build_models();
  s.open_data();
  s.restore();
  s.open_run();
  s.ready = true;
}

bool Trainer::done() const {
  return impl_->state.step >= impl_->total;
}

std::vector<Batch> Trainer::next_micro_batches() {
  return impl_->next_micro_batches();
}

StepResult Trainer::step(const std::vector<Batch>& micro_batches) {
  if (!impl_->ready) throw Error("Trainer::step before setup()");
  return impl_->step(micro_batches);
}

void Trainer::evaluate(const char* when) {
  impl_->evaluate(when);
}
void Trainer::save() {
  impl_->save();
}
TrainSummary Trainer::finish() {
  return impl_->finish();
}
MultimodalModelImpl& Trainer::model() {
  return *impl_->model;
}
const Config& Trainer::config() const {
  return impl_->config;
}
int64_t Trainer::total_steps() const {
  return impl_->total;
}

TrainSummary Trainer::run() {
  setup();
  Impl& s = *impl_;
  if (!s.resume_from) evaluate("start");
  s.loop_start = Clock::now();
  s.interval_start = Clock::now();
  s.stop.emplace();
  while (!done()) {
    if (s.options.stop_after > 0 && s.steps_here >= s.options.stop_after) break;
    s.group->set_context("step " + std::to_string(s.state.step + 1));
    if (s.preempted()) break;
    const StepResult r = step(next_micro_batches());
    if (r.skipped) continue;  // no update: nothing to log, evaluate or save
    s.log_step(r);
    s.after_step();
  }
  return finish();
}

TrainSummary train(Config config, const TrainOptions& options) {
  return Trainer(std::move(config), options).run();
}

}  // namespace mllm
