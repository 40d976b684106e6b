#include "train/trainer.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/blas.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/signals.h"
#include "core/threads.h"
#include "core/torch_compat.h"
#include "data/collator.h"
#include "data/datasets.h"
#include "data/image_transform.h"
#include "data/loader.h"
#include "eval/evaluate.h"
#include "models/factory.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/freeze.h"
#include "train/init_from.h"
#include "train/lora.h"
#include "train/metrics_sink.h"
#include "train/objectives.h"
#include "train/optim.h"

namespace mllm {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

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
EvalResult evaluate(MultimodalModelImpl& model, Objective& objective, const SampleSource& data,
                    const ImageTransform& transform, int64_t pad_id, int64_t batch_size,
                    int64_t max_batches, const torch::Device& device, bool bf16, bool skip_bad,
                    ProcessGroup* group) {
  torch::NoGradGuard no_grad;
  model.eval();
  double sum = 0;
  std::map<std::string, double> sums;
  int64_t weight = 0, batches = 0;
  for (size_t i = 0; i < data.size(); i += static_cast<size_t>(batch_size)) {
    if (max_batches > 0 && batches >= max_batches) break;
    if (group && batches++ % group->world_size() != group->rank()) continue;
    if (!group) ++batches;
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
  if (group) {
    // Rank 0's metric names (it has a batch whenever any rank has): a rank without one has none.
    std::string names;
    for (const auto& kv : sums) names += kv.first + "\n";
    names = group->broadcast_string(names, "held-out evaluation");
    std::vector<double> v{sum, static_cast<double>(weight)};
    std::vector<std::string> keys;
    for (size_t a = 0, b; (b = names.find('\n', a)) != std::string::npos; a = b + 1)
      keys.push_back(names.substr(a, b - a));
    for (const auto& k : keys) v.push_back(sums.count(k) ? sums[k] : 0.0);
    v = group->sum(v, "held-out evaluation");
    sum = v[0];
    weight = static_cast<int64_t>(v[1]);
    sums.clear();
    for (size_t k = 0; k < keys.size(); ++k) sums[keys[k]] = v[k + 2];
  }
  EvalResult r;
  if (weight > 0) {
    r.loss = sum / static_cast<double>(weight);
    for (const auto& [k, v] : sums) r.metrics[k] = v / static_cast<double>(weight);
  }
  return r;
}

std::unique_ptr<SampleSource> open_dataset(const Config& config, const DataSourceConfig& source,
                                           const Tokenizer& tokenizer, int64_t image_tokens,
                                           const std::string& key) {
  if (config.train.stage == "dpo")
    return std::make_unique<PreferenceDataset>(source, config.data, tokenizer, image_tokens, key);
  return std::make_unique<ConversationDataset>(source, config.data, tokenizer, image_tokens, key);
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
                          then.value(k, nlohmann::json()).dump(), now[k].dump());
  if (!options.allow_data_change)
    throw ConfigError("--resume: the training data changed since the checkpoint (data.train: " +
                      diff +
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
void write_final(const fs::path& out, MultimodalModelImpl& model, const Config& config) {
  if (const auto merged = merge_lora(model))
    spdlog::info("lora: merged the adapters of {} layers into their weights", merged);
  const fs::path final_dir = out / "final";
  const fs::path tmp = out / ".tmp-final";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_safetensors(tmp / "model.safetensors", named_parameters(model), {{"format", "pt"}});
  write_file_atomic(tmp / "config.json",
                    llava_config_json(config.model, model.image_token_id()).dump(2) + "\n");
  write_file_atomic(tmp / "tokenizer.json", read_file(config.model.tokenizer));
  write_file_atomic(tmp / "tokenizer_config.json",
                    tokenizer_config_json(*load_tokenizer(config.model.tokenizer),
                                          config.model.llm.max_position, config.data.template_name)
                            .dump(2) +
                        "\n");
  const int64_t image_size =
      config.data.image.size > 0 ? config.data.image.size : config.model.vision.image_size;
  write_file_atomic(tmp / "preprocessor_config.json",
                    preprocessor_config_json(config.data.image, image_size).dump(2) + "\n");
  fsync_path(tmp);
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  rename_durable(tmp, final_dir);
}

}  // namespace

TrainSummary train(Config config, const TrainOptions& options) {
  const auto start = Clock::now();
  const fs::path out = config.output_dir();
  const fs::path ckpt_root = out / "checkpoints";

  // Data parallelism: the launcher's environment says whether this process is one rank of many.
  const DistEnv env = dist_env_from_environment();
  torch::Device device = select_device(config.run.device);
  if (env.distributed() && device.is_cuda() && !device.has_index())
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  const auto group = ProcessGroup::create(env, config.run.distributed, device);
  const bool main_rank = !group || group->is_main();
  const int world = group ? group->world_size() : 1;
  if (!main_rank) {
    // Rank 0 speaks for the run; the others only warn, and say who they are.
    auto logger = spdlog::default_logger();
    logger->set_pattern(fmt::format("[%H:%M:%S] [rank {}] %^%l%$ %v", env.rank));
    if (logger->level() < spdlog::level::warn) logger->set_level(spdlog::level::warn);
  }

  if (main_rank) buffer_log_lines();  // train.log gets them once the inputs are known to be sound

  // Rank 0 decides whether this is a fresh run or where it resumes; every rank follows.
  std::optional<fs::path> resume_from;
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
      if (!group) throw;
      decision = std::string("E") + e.what();
    }
  }
  if (group) {
    decision = group->broadcast_string(decision, "the resume decision");
    if (decision[0] == 'E') throw ConfigError(decision.substr(1));
    if (decision[0] == 'R') {
      resume_from = fs::path(decision.substr(1));
      const double blind =
          group->sum(fs::is_directory(*resume_from) ? 0.0 : 1.0, "the resume decision");
      if (blind > 0)
        throw Error(fmt::format(
            "distributed: {} of {} ranks cannot read the checkpoint {} that rank 0 resumes from: "
            "run.output_dir must be on a filesystem every node shares",
            blind, world, resume_from->string()));
    }
  }

  // Ranks sharing a node share its cores: run.threads auto gives each its part.
  int64_t want_threads = config.run.threads;
  if (want_threads == 0 && env.local_world_size > 1)
    want_threads = std::max<int64_t>(
        1, static_cast<int64_t>(std::thread::hardware_concurrency()) / env.local_world_size);
  const int threads = configure_threads(want_threads);
  const bool bf16 = config.train.precision == "bf16";
  spdlog::info("run {} -> {} ({} on {}, {} threads)", config.run.name, out.string(),
               config.train.precision, device.str(), threads);
  if (group)
    spdlog::info("data parallel: {} ranks ({}, {} backend, rendezvous {}:{}; launched by {})",
                 world, env.local_world_size == world ? "one node" : "several nodes",
                 group->backend(), env.master_addr, env.master_port, env.source);

  const auto tokenizer = load_tokenizer(config.model.tokenizer);
  adopt_init_from_architecture(config);  // before either model is built
  // The DPO reference: the initial policy, built the same way before `config` is filled in.
  MultimodalModel reference{nullptr};
  if (config.train.stage == "dpo") {
    Config ref_config = config;
    reference = build_model(ref_config, *tokenizer);
    init_from(*reference, config, "reference");
    reference->to(device);
    for (auto& p : reference->parameters()) p.set_requires_grad(false);
    reference->eval();
  }
  MultimodalModel model = build_model(config, *tokenizer);
  init_from(*model, config, "model");
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
  if (config.train.gradient_checkpointing)
    spdlog::info("gradient checkpointing: each LLM layer is recomputed in backward");
  int64_t n_trainable = 0, n_total = 0, n_tensors = 0;
  for (const auto& p : model->parameters()) {
    n_total += p.numel();
    if (p.requires_grad()) n_trainable += p.numel(), ++n_tensors;
  }
  spdlog::info("parameters: {} trainable of {} ({} tensors trainable)", n_trainable, n_total,
               n_tensors);

  auto optimizer = make_optimizer(*model, config.train);
  auto objective = make_objective(config.train, reference);

  const int64_t Q = model->image_tokens();
  const auto train_data = open_dataset(config, config.data.train, *tokenizer, Q, "data.train");
  std::unique_ptr<SampleSource> eval_data;
  if (!config.data.eval.path.empty())
    eval_data = open_dataset(config, config.data.eval, *tokenizer, Q, "data.eval");
  const int64_t image_size =
      config.data.image.size > 0 ? config.data.image.size : config.model.vision.image_size;
  const ImageTransform transform(image_size, config.data.image);
  const int64_t pad_id = tokenizer->pad_id() >= 0 ? tokenizer->pad_id() : 0;
  const bool skip_bad = config.data.on_bad_record == "skip";

  const auto& tc = config.train;
  // A step takes batch_size x grad_accum samples on each rank: world x that in all.
  const int64_t per_step = tc.batch_size * tc.grad_accum * world;
  const auto N = static_cast<int64_t>(train_data->size());
  const int64_t steps_per_epoch = N / per_step;
  if (steps_per_epoch == 0)
    throw ConfigError(config.where("train.batch_size") + ": " + config.data.train.path + " has " +
                      std::to_string(N) + " samples, fewer than batch_size*grad_accum" +
                      (world > 1 ? "*ranks" : "") + " = " + std::to_string(per_step));
  const int64_t total = tc.max_steps > 0 ? tc.max_steps : tc.epochs * steps_per_epoch;
  spdlog::info("data: {} train samples ({} steps/epoch of {}), {} eval samples; {} steps", N,
               steps_per_epoch, per_step, eval_data ? eval_data->size() : 0, total);

  const nlohmann::json data_fingerprint = fingerprint(config.data.train, *train_data);
  TrainerState state;
  state.total_steps = total;
  state.scheduler = {{"schedule", tc.schedule},
                     {"lr", tc.lr},
                     {"warmup_steps", warmup_steps(tc, total)},
                     {"total_steps", total},
                     {"min_lr_ratio", tc.min_lr_ratio}};
  if (resume_from) {
    const auto scheduler = state.scheduler;
    state = load_checkpoint(*resume_from, *model, *optimizer);
    if (state.total_steps != total || (!state.scheduler.empty() && state.scheduler != scheduler))
      spdlog::warn("the checkpoint's schedule {} differs from this run's {}: the schedule changes",
                   state.scheduler.dump(), scheduler.dump());
    state.total_steps = total;
    state.scheduler = scheduler;
    check_same_data(state, data_fingerprint, options, N, per_step);
    spdlog::info("resumed from {} at step {} (epoch {}, sample {})", resume_from->string(),
                 state.step, state.epoch, state.position);
    const int64_t saved_world = state.extra.value("world_size", int64_t{1});
    if (saved_world != world) {
      spdlog::warn(
          "the checkpoint was written by {} rank(s), this run has {}: the global batch changes "
          "from {} to {} samples",
          saved_world, world, tc.batch_size * tc.grad_accum * saved_world, per_step);
      if (state.position % per_step != 0) {
        spdlog::warn("epoch {} continues from sample {} (a step boundary) instead of {}",
                     state.epoch, state.position - state.position % per_step, state.position);
        state.position -= state.position % per_step;
      }
    }
  }
  // Only now, with the inputs read and the checkpoint (if any) restored, does the run directory
  // change: a resume that fails leaves it exactly as it was.
  if (main_rank) {
    fs::create_directories(out);
    add_log_file(out / "train.log");
    write_file_atomic(out / "config.yaml", config_to_yaml(config));
  }
  if (group) {
    // Every rank starts from rank 0's weights (parameters and buffers), as DDP does.
    std::vector<torch::Tensor> tensors;
    for (const auto& p : model->parameters()) tensors.push_back(p);
    for (const auto& b : model->buffers()) tensors.push_back(b);
    group->broadcast(tensors, "the broadcast of the initial weights");
  }
  // Wall time accumulates across resumes (up to each run's last checkpoint).
  const double earlier_seconds = state.extra.value("wall_seconds", 0.0);

  std::optional<MetricsSink> metrics_sink;  // rank 0's
  if (main_rank) metrics_sink.emplace(out / "metrics.jsonl");
  auto log_metrics = [&](const nlohmann::json& record) {
    if (metrics_sink) metrics_sink->write(record);
  };
  TrainSummary summary;
  summary.output_dir = out;
  auto run_eval = [&](const char* when) {
    nlohmann::json record = {{"step", state.step}};
    if (eval_data) {
      const auto r = evaluate(*model, *objective, *eval_data, transform, pad_id, tc.batch_size,
                              tc.eval_batches, device, bf16, skip_bad, group.get());
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
      const eval::EvalModel em{*model, *tokenizer, transform, config.data.template_name};
      std::string extra;
      for (const auto& [k, v] :
           eval::flat_scores(eval::run_eval(tasks, em, static_cast<uint64_t>(config.run.seed)))) {
        record[k] = v;
        if (std::count(k.begin(), k.end(), '/') == 2) extra += fmt::format(" | {} {:.4f}", k, v);
      }
      spdlog::info("eval ({}) step {}:{}", when, state.step, extra);
    }
    if (record.size() > 1) log_metrics(record);
  };
  if (!resume_from) run_eval("start");

  LoaderOptions lo = loader_options(config, pad_id);
  if (group) {
    lo.rank = group->rank();
    lo.world_size = world;
  }
  DataLoader loader(*train_data, transform, lo, {state.epoch, state.position});
  std::vector<torch::Tensor> params;  // the trainable ones
  for (const auto& p : model->parameters())
    if (p.requires_grad()) params.push_back(p);
  std::unique_ptr<GradientReducer> reducer;
  if (group) {
    reducer = std::make_unique<GradientReducer>(*group, params, config.run.distributed.bucket_mb);
    spdlog::info("gradients: summed across ranks in {} bucket(s) of up to {:g} MB",
                 reducer->buckets(), config.run.distributed.bucket_mb);
  }
  const auto loop_start = Clock::now();
  auto interval_start = Clock::now();
  int64_t interval_tokens = 0, steps_here = 0, tokens_here = 0, bad_in_a_row = 0;
  double interval_wait = 0, total_wait = 0;
  int64_t last_saved = resume_from ? state.step : -1;
  model->train();
  StopSignals stop;
  const auto step_delay = test_step_delay();

  while (state.step < total) {
    if (options.stop_after > 0 && steps_here >= options.stop_after) break;
    if (group) group->set_context("step " + std::to_string(state.step + 1));
    // A signal may reach the ranks at different steps: they stop together, at the first step
    // any of them saw it.
    bool stop_now = stop.requested();
    if (group) stop_now = group->sum(stop_now ? 1.0 : 0.0, "the stop-signal check") > 0;
    if (stop_now) {
      // Preemption: the step in flight has finished; keep it and leave (exit status 0).
      if (last_saved != state.step && state.step > 0) {
        if (main_rank) {
          const auto dir = save_checkpoint(ckpt_root, *model, *optimizer, state, tc.keep_last);
          spdlog::info("checkpoint {}", dir.string());
        }
        last_saved = state.step;
      }
      summary.stopped_by = stop.requested() ? stop.name() : "SIGTERM";
      spdlog::warn("{}: stopped at step {} of {}; continue with --resume auto", summary.stopped_by,
                   state.step, total);
      break;
    }
    state.lr = lr_at(tc, state.step, total);
    set_lr(*optimizer, state.lr);
    optimizer->zero_grad();

    std::vector<Batch> micro;
    const auto wait_start = Clock::now();
    for (int64_t m = 0; m < tc.grad_accum; ++m) micro.push_back(loader.next().to(device));
    const double wait = seconds_since(wait_start);
    interval_wait += wait;
    total_wait += wait;
    state.epoch = loader.position().epoch;
    state.position = loader.position().position;
    // The loss is a mean over the step's global batch: every rank divides by the global weight
    // (tokens, or pairs), and the gradients are summed across ranks.
    int64_t weight = 0;
    for (const auto& b : micro) weight += objective->weight(b);
    if (group)
      weight =
          static_cast<int64_t>(group->sum(static_cast<double>(weight), "the step's token count"));
    double loss_sum = 0;
    int64_t step_tokens = 0;
    std::map<std::string, double> metric_sums;
    for (size_t m = 0; m < micro.size(); ++m) {
      const auto& b = micro[m];
      if (reducer) reducer->prepare(m + 1 == micro.size());
      ObjectiveOutput o;
      {
        AutocastScope autocast(bf16, device.type(), torch::kBFloat16);
        o = objective->forward(*model, b);
      }
      (o.loss_sum / static_cast<double>(std::max<int64_t>(1, weight))).backward();
      loss_sum += o.loss_sum.item<double>();
      for (const auto& [k, v] : o.metric_sums) metric_sums[k] += v;
      step_tokens += b.tokens;
    }
    if (reducer) {
      reducer->finish();
      // The step's figures over all ranks (every rank's objective reports the same names).
      std::vector<double> v{loss_sum, static_cast<double>(step_tokens)};
      for (const auto& kv : metric_sums) v.push_back(kv.second);
      v = group->sum(v, "the step's metrics");
      loss_sum = v[0];
      step_tokens = static_cast<int64_t>(v[1]);
      size_t k = 2;
      for (auto& kv : metric_sums) kv.second = v[k++];
    }
    interval_tokens += step_tokens;
    tokens_here += step_tokens;
    const double max_norm =
        tc.clip_grad_norm > 0 ? tc.clip_grad_norm : std::numeric_limits<double>::infinity();
    const double grad_norm = torch::nn::utils::clip_grad_norm_(params, max_norm);
    const double loss = loss_sum / static_cast<double>(std::max<int64_t>(1, weight));
    ++state.step;
    ++steps_here;
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      // NaN/inf guard: no update from this step (its data is consumed); abort after too many.
      // The loss and gradients are global, so every rank skips the same steps.
      optimizer->zero_grad();
      ++bad_in_a_row;
      ++summary.skipped_steps;
      log_metrics(
          {{"step", state.step}, {"skipped_step", true}, {"loss", loss}, {"grad_norm", grad_norm}});
      spdlog::warn("step {}: loss {} / grad_norm {} is not finite; step skipped ({} in a row)",
                   state.step, loss, grad_norm, bad_in_a_row);
      if (bad_in_a_row > tc.max_bad_steps)
        throw Error(std::to_string(bad_in_a_row) + " steps in a row up to step " +
                    std::to_string(state.step) +
                    " had a non-finite loss or gradient (train.max_bad_steps=" +
                    std::to_string(tc.max_bad_steps) +
                    "): the run diverged or its inputs/weights hold NaN (lower train.lr, raise "
                    "train.warmup_ratio, check the pretrained weights); the last checkpoint is "
                    "kept");
      continue;
    }
    bad_in_a_row = 0;
    optimizer->step();
    summary.losses.emplace_back(state.step, loss);
    state.extra = {{"loss", loss},
                   {"wall_seconds", earlier_seconds + seconds_since(start)},
                   {"world_size", world},
                   {"data", data_fingerprint}};

    if (state.step % tc.log_every == 0 || state.step == total) {
      const double dt = seconds_since(interval_start);
      const double tps = dt > 0 ? static_cast<double>(interval_tokens) / dt : 0.0;
      const double eta = seconds_since(loop_start) / static_cast<double>(steps_here) *
                         static_cast<double>(total - state.step);
      const double data_wait = dt > 0 ? interval_wait / dt : 0.0;
      const auto stats = train_data->stats();
      nlohmann::json record = {{"step", state.step},
                               {"epoch", state.epoch},
                               {"loss", loss},
                               {"lr", state.lr},
                               {"grad_norm", grad_norm},
                               {"tokens_per_s", tps},
                               {"data_wait", data_wait},
                               {"skipped_records", stats.skipped},
                               {"truncated_samples", stats.truncated},
                               {"dropped_images", loader.dropped()},
                               {"dropped_records", loader.dropped_records()}};
      std::string extra;
      for (const auto& [k, v] : metric_sums) {
        const double mean = v / static_cast<double>(std::max<int64_t>(1, weight));
        record[k] = mean;
        if (k == "rewards/accuracies" || k == "rewards/margins")
          extra += fmt::format(" | {} {:.3f}", k, mean);
      }
      log_metrics(record);
      spdlog::info(
          "step {}/{} | loss {:.4f}{} | lr {:.2e} | grad_norm {:.3f} | {:.0f} tok/s | data wait "
          "{:.0f}% | ETA {}",
          state.step, total, loss, extra, state.lr, grad_norm, tps, 100 * data_wait,
          format_duration(eta));
      interval_start = Clock::now();
      interval_tokens = 0;
      interval_wait = 0;
    }
    if (step_delay.count() > 0) std::this_thread::sleep_for(step_delay);
    if (tc.eval_every > 0 && state.step % tc.eval_every == 0 && state.step != total)
      run_eval("periodic");
    if (tc.save_every > 0 && (state.step % tc.save_every == 0 || state.step == total)) {
      if (main_rank) {
        const auto dir = save_checkpoint(ckpt_root, *model, *optimizer, state, tc.keep_last);
        spdlog::info("checkpoint {}", dir.string());
      }
      last_saved = state.step;
    }
  }
  summary.steps = state.step;
  const double loop_s = seconds_since(loop_start);
  summary.data_wait_fraction = loop_s > 0 ? total_wait / loop_s : 0.0;
  summary.train_seconds = loop_s;
  if (loader.dropped() > 0)
    spdlog::warn("{} samples were dropped for unreadable images", loader.dropped());
  if (state.step < total) {
    if (summary.stopped_by.empty())
      spdlog::info("stopped at step {} of {} (--stop-after)", state.step, total);
    return summary;
  }
  run_eval("end");
  // summary.json: the figures a sweep tabulates; written before final/, which marks the end.
  nlohmann::json figures = {
      {"steps", state.step},
      {"trainable_params", n_trainable},
      {"total_params", n_total},
      {"image_tokens", Q},
      {"final_loss", state.extra.contains("loss") ? state.extra["loss"] : nlohmann::json()},
      {"final_eval_loss",
       summary.last_eval_loss ? nlohmann::json(*summary.last_eval_loss) : nlohmann::json()},
      {"tokens_per_s", loop_s > 0 && tokens_here > 0
                           ? nlohmann::json(static_cast<double>(tokens_here) / loop_s)
                           : nlohmann::json()},
      {"wall_seconds", earlier_seconds + seconds_since(start)},
      {"world_size", world},
      {"blas", blas_info().describe()}};
  if (main_rank) {
    write_file_atomic(out / "summary.json", figures.dump(2) + "\n");
    write_final(out, *model, config);
  }
  // No rank reports success before final/ exists.
  if (group) group->barrier("the end of the run");
  summary.final_dir = out / "final";
  spdlog::info("final weights: {}", summary.final_dir.string());
  return summary;
}

}  // namespace mllm
