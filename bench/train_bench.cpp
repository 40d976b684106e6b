// Training-step figures: what one optimizer step costs, phase by phase. Generates a ShapesWorld set
// into a temp dir, then for each configuration
//   1. ShapesWorld stage 1 (captions, plain template, only the mlp2x_gelu connector trains),
//   2. ShapesWorld stage 2 (instruct data, vicuna_v1, connector + LLM train),
//   3. ShapesWorld stage 3 (preference pairs, DPO against a frozen reference copy),
//   4. a d=1024 LLM in the stage-2 setting (batch 8),
//   5. a 32k-vocabulary LLM (d=256) in the stage-2 setting, few supervised positions,
//   6. variable-length samples shaped like llava_v1_5_mix665k (~100 to 2048 tokens), packed,
//   7. the same samples unpacked, batches padded to their longest (as eager runs them),
// sets up the trainer (src/train/trainer.h: Trainer::setup, as `mllm train` does) and runs its own
// step, Trainer::step, on the micro-batches of Trainer::next_micro_batches: the phases are the
// step's own timings — data (waiting for the loader), forward (the objective under AutocastScope),
// backward (of loss_sum / weight, with the gradient reduction), optimizer (set_lr + zero_grad +
// clip + step). A few warm-up steps are left out. Each block prints tokens/s (real,
// non-pad tokens), samples/s, ms per step by phase, the process's peak RSS, the estimated model
// FLOPs and achieved GFLOP/s, and the GFLOP/s of a plain fp32 torch::mm measured just before the
// timed steps, in the same process. For the blocks compared with PyTorch eager (stage2, d1024,
// vocab32k, varlen, unpacked) it prints an `eager-args` line: what bench/train_eager.py needs to
// run the same step (scripts/bench runs it and prints the ratio). With --profile N, N more steps
// run under LibTorch's profiler and the ops taking the most self time are listed. Prints figures;
// asserts nothing.
//
// Run: scripts/bench, or build/bench_train [--steps N] [--warmup N] [--big-steps N]
//   [--big-warmup N] [--threads N] [--workers N] [--big-layers N] [--big-kv-heads N] [--only NAME]
//   [--profile N] [--eager-dir DIR]
// (threads also from MLLM_BENCH_THREADS; 0 = all cores).
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/blas.h"
#include "core/config.h"
#include "core/threads.h"
#include "core/torch_compat.h"
#include "data/datasets.h"
#include "data/image_transform.h"
#include "data/loader.h"
#include "data/shapes_world.h"
#include "data/tokenizer/tokenizer.h"
#include "models/factory.h"
#include "train/freeze.h"
#include "train/objectives.h"
#include "train/optim.h"
#include "train/stage.h"
#include "train/trainer.h"

using namespace mllm;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

constexpr double kMiB = 1024.0 * 1024.0;

// The process's peak resident set (getrusage; on Linux ru_maxrss is in KiB).
double max_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) * 1024.0;
}

// The resident set now (/proc/self/statm, second field, in pages).
double rss_bytes() {
  std::ifstream f("/proc/self/statm");
  long long size = 0, resident = 0;
  f >> size >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

struct Options {
  int64_t steps = 16, warmup = 2;         // ShapesWorld stages
  int64_t big_steps = 3, big_warmup = 1;  // the d=1024 LLM
  int64_t threads = 0;                    // 0 = all cores
  int64_t workers = 2;                    // data.workers (the recipes' default)
  int64_t big_layers = 4, big_kv_heads = 8;
  int64_t profile = 0;  // steps run under the profiler after the timed ones (0: none)
  int64_t bf16 = 0;     // 1: train.precision bf16 (autocast), as on a GPU
  int64_t gpu = 0;      // 1: also the 0.5B-class block (too big for a CPU's minutes)
  std::string only;     // run only the configurations whose name contains this
  std::string eager_dir = std::filesystem::temp_directory_path().string();  // varlen lengths file
};

[[noreturn]] void usage(const char* argv0) {
  std::fprintf(
      stderr,
      "usage: %s [--steps N] [--warmup N] [--big-steps N] [--big-warmup N] [--threads N] "
      "[--workers N] [--big-layers N] [--big-kv-heads N] [--only NAME] [--profile N] "
      "[--eager-dir DIR] [--bf16 1] [--gpu 1]\n"
      "  NAME: stage1, stage2, stage3, d1024, vocab32k, varlen or unpacked; threads also from "
      "MLLM_BENCH_THREADS\n",
      argv0);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  if (const char* t = std::getenv("MLLM_BENCH_THREADS")) o.threads = std::atoll(t);
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help" || i + 1 >= argc) usage(argv[0]);
    const std::string v = argv[++i];
    if (k == "--only" || k == "--eager-dir") {
      (k == "--only" ? o.only : o.eager_dir) = v;
      continue;
    }
    const std::map<std::string, int64_t*> ints = {{"--steps", &o.steps},
                                                  {"--warmup", &o.warmup},
                                                  {"--big-steps", &o.big_steps},
                                                  {"--big-warmup", &o.big_warmup},
                                                  {"--threads", &o.threads},
                                                  {"--workers", &o.workers},
                                                  {"--big-layers", &o.big_layers},
                                                  {"--big-kv-heads", &o.big_kv_heads},
                                                  {"--profile", &o.profile},
                                                  {"--bf16", &o.bf16},
                                                  {"--gpu", &o.gpu}};
    const auto it = ints.find(k);
    if (it == ints.end()) usage(argv[0]);
    *it->second = std::atoll(v.c_str());
  }
  if (o.steps < 1 || o.big_steps < 1 || o.warmup < 0 || o.big_warmup < 0) usage(argv[0]);
  return o;
}

// fp32 torch::mm of (M,K) x (K,N): GFLOP/s of the median repetition (at least 3, about 0.3 s).
double gemm_gflops(int64_t M, int64_t K, int64_t N) {
  torch::NoGradGuard no_grad;
  const auto a = torch::randn({M, K}), b = torch::randn({K, N});
  auto c = torch::mm(a, b);  // warm-up
  std::vector<double> reps;
  const auto start = Clock::now();
  while (reps.size() < 3 || (seconds_since(start) < 0.3 && reps.size() < 200)) {
    const auto t = Clock::now();
    c = torch::mm(a, b);
    reps.push_back(seconds_since(t));
  }
  std::nth_element(reps.begin(), reps.begin() + static_cast<long>(reps.size() / 2), reps.end());
  return 2.0 * static_cast<double>(M * K * N) / reps[reps.size() / 2] / 1e9;
}

// Which parts of the model have trainable parameters.
struct Trains {
  bool vision = false, connector = false, llm = false, lm_head = false;
};

struct Flops {
  double forward = 0, backward = 0;
};

// Estimated model FLOPs of one step on a batch of `rows` sequences of (padded) length T with
// `images` images and `supervised` supervised positions. What is counted: every matrix product,
// a multiply-add being 2 FLOPs —
//   vision tower (per image, S = patches + 1 tokens, only the layers up to feature_layer run):
//     patch conv 2*3*p^2*Cv*P, per layer 2*(4*Cv^2 + 2*Cv*Iv)*S + attention 4*S^2*Cv;
//   connector: 2 x its matrix parameters x the image tokens (exact for linear and mlp2x_gelu);
//   LLM: 2 x the decoder's matrix parameters (q,k,v,o, gate/up/down; MoE: the top-k experts and
//     the router) x the real tokens (`real`: padding is skipped, LlamaModelImpl::forward; all
//     rows*T positions in packed rows), plus attention 4*rows*T^2*H*hd per layer (the whole T x T
//     score matrix of the padded grid: LibTorch 1.13's masked path computes it); a dense last
//     layer: only k and v x the real tokens, the rest x the supervised positions;
//   LM head: 2*C*V x supervised positions (only those reach it; objectives.cpp).
// Not counted: norms, softmax, activations, RoPE, other elementwise work, embedding lookups, the
// loss and the optimizer (AdamW is a few tens of FLOPs per trainable parameter, memory-bound).
// Backward per part: the input gradient (1x the forward's matrix products) when anything before
// the part trains, plus the weight gradient (1x) when the part trains; attention products have two
// activation operands, so 2x whenever gradients pass. So a trainable part costs ~2x its forward,
// a frozen part that still passes gradients to an earlier trainable one ~1x, a frozen part with
// nothing trainable before it (a frozen vision tower, run without a graph) 0. DPO adds the frozen
// reference model's forward (no backward) on the same rows.
Flops step_flops(const ModelConfig& m, const Trains& tr, int64_t connector_params, int64_t rows,
                 int64_t T, int64_t real, int64_t images, int64_t image_tokens, int64_t supervised,
                 bool dpo) {
  const auto& v = m.vision;
  const double Cv = static_cast<double>(v.hidden), Iv = static_cast<double>(v.intermediate);
  const double P =
      static_cast<double>((v.image_size / v.patch_size) * (v.image_size / v.patch_size));
  const double S = P + 1;
  const int64_t run = v.feature_layer >= 0 ? v.feature_layer : v.layers + 1 + v.feature_layer;
  const double vision_fwd =
      static_cast<double>(images) *
      (2.0 * 3.0 * static_cast<double>(v.patch_size * v.patch_size) * Cv * P +
       static_cast<double>(run) * (2.0 * (4 * Cv * Cv + 2 * Cv * Iv) * S + 4.0 * S * S * Cv));
  const double conn_fwd =
      2.0 * static_cast<double>(connector_params) * static_cast<double>(images * image_tokens);

  const auto& l = m.llm;
  const double d = static_cast<double>(l.hidden), hd = static_cast<double>(l.attention_head_dim());
  const double H = static_cast<double>(l.heads), KV = static_cast<double>(l.kv_heads);
  const double I = static_cast<double>(l.intermediate), L = static_cast<double>(l.layers);
  double ffn = 3 * d * I;
  if (l.experts > 0)
    ffn = static_cast<double>(l.experts_per_token) * 3 * d * I + d * static_cast<double>(l.experts);
  const double layer_params = d * H * hd + 2 * d * KV * hd + H * hd * d + ffn;
  const double positions = static_cast<double>(real), sup = static_cast<double>(supervised);
  double llm_mm = 2.0 * layer_params * L * positions;
  double llm_attn = 4.0 * static_cast<double>(rows) * static_cast<double>(T * T) * H * hd * L;
  if (l.experts == 0 && l.layers > 0) {
    // A dense last layer runs k and v at every position, the rest (q, o, the MLP, attention's
    // queries) at the supervised ones only (LlamaModelImpl::forward's `wanted`).
    const double kv = 2 * d * KV * hd;
    llm_mm -= 2.0 * (layer_params - kv) * (positions - sup);
    llm_attn -= 4.0 * (static_cast<double>(rows * T) - sup) * static_cast<double>(T) * H * hd;
  }
  const double head = 2.0 * d * static_cast<double>(l.vocab) * static_cast<double>(supervised);

  Flops f;
  const double forward = vision_fwd + conn_fwd + llm_mm + llm_attn + head;
  f.forward = dpo ? 2 * forward : forward;
  const bool into_conn = tr.vision, into_llm = tr.vision || tr.connector || tr.llm;
  if (tr.vision) f.backward += 2 * vision_fwd;
  f.backward += conn_fwd * ((tr.connector ? 1 : 0) + (into_conn ? 1 : 0));
  if (into_llm) f.backward += llm_mm * (tr.llm ? 2 : 1) + 2 * llm_attn;
  f.backward += head * ((tr.lm_head ? 1 : 0) + (into_llm ? 1 : 0));
  return f;
}

struct Case {
  std::string name, title;
  Config config;
  int64_t warmup = 0, steps = 0;
  bool eager = false;          // compared with bench/train_eager.py (scripts/bench runs it)
  double eager_target = 0;     // the ratio's target, where the issue set one
  bool eager_lengths = false;  // eager pads the samples' own lengths per batch (tokens/s)
};

// The ops that took the most self time (their time less that of the ops they called) over the
// steps run under the legacy profiler (`trace`: the chrome trace it writes), per thread.
void print_top_ops(const std::filesystem::path& trace, int64_t steps, size_t top = 12) {
  nlohmann::json events;
  try {
    std::ifstream f(trace);
    events = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    std::printf("  profile     (unreadable trace: %s)\n", e.what());
    return;
  }
  struct Ev {
    std::string name;
    double ts, dur;
  };
  std::map<std::string, std::vector<Ev>> by_thread;
  for (const auto& e : events) {
    if (!e.is_object() || e.value("ph", "") != "X") continue;
    by_thread[e.contains("tid") ? e["tid"].dump() : ""].push_back(
        {e.value("name", "?"), e.value("ts", 0.0), e.value("dur", 0.0)});
  }
  std::map<std::string, std::pair<double, int64_t>> self;  // name -> (us, calls)
  double total = 0;
  for (auto& [tid, evs] : by_thread) {
    std::sort(evs.begin(), evs.end(),
              [](const Ev& a, const Ev& b) { return a.ts != b.ts ? a.ts < b.ts : a.dur > b.dur; });
    // A stack of open events: each one's self time is its duration less its children's.
    std::vector<std::pair<const Ev*, double>> open;  // event, children's time
    auto close = [&](const Ev* e, double children) {
      auto& s = self[e->name];
      s.first += e->dur - children;
      s.second += 1;
      if (open.empty()) total += e->dur;
    };
    for (const auto& e : evs) {
      while (!open.empty() && open.back().first->ts + open.back().first->dur <= e.ts) {
        const auto [done, children] = open.back();
        open.pop_back();
        close(done, children);
        if (!open.empty()) open.back().second += done->dur;
      }
      open.emplace_back(&e, 0.0);
    }
    while (!open.empty()) {
      const auto [done, children] = open.back();
      open.pop_back();
      close(done, children);
      if (!open.empty()) open.back().second += done->dur;
    }
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(self.begin(), self.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  const double per = 1000.0 * static_cast<double>(std::max<int64_t>(steps, 1));
  std::printf("  profile     %lld steps, %.1f ms/step in profiled ops; top self time:\n",
              static_cast<long long>(steps), total / per);
  for (size_t i = 0; i < std::min(top, rows.size()); ++i)
    std::printf("    %-44s %8.1f ms/step %5.1f%%  %6lld calls/step\n", rows[i].first.c_str(),
                rows[i].second.first / per, total > 0 ? 100.0 * rows[i].second.first / total : 0.0,
                static_cast<long long>(rows[i].second.second / std::max<int64_t>(steps, 1)));
}

struct Phases {
  double data = 0, forward = 0, backward = 0, optimizer = 0;
  double total() const { return data + forward + backward + optimizer; }
};

// Totals over the timed steps.
struct Totals {
  Phases t;
  double wall = 0;
  int64_t steps = 0, rows = 0, items = 0, positions = 0, tokens = 0, supervised = 0, unpacked = 0;
  Flops flops;
  double first_loss = 0, last_loss = 0;
};

// Each sample's (tokens, supervised tokens) of the run's training set, as the trainer tokenizes
// it, for eager to pad the same samples: a JSON list of pairs at `path`.
void write_lengths(const Config& config, int64_t Q, const std::filesystem::path& path) {
  const auto tok = load_tokenizer(config.model.tokenizer);
  ConversationDataset ds(config.data.train, config.data, *tok, Q, "data.train");
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < ds.size(); ++i) {
    const auto item = ds.try_item(i);
    if (!item) continue;
    const auto& s = item->front();
    int64_t supervised = 0;
    for (size_t t = 1; t < s.labels.size(); ++t) supervised += s.labels[t] != kIgnoreIndex;
    out.push_back({static_cast<int64_t>(s.input_ids.size()), supervised});
  }
  std::ofstream(path) << out.dump();
}

// Records shaped like llava_v1_5_mix665k's lengths: one image each and a conversation whose length
// (with the image's 64 tokens and the template) is log-normal around 300 tokens, from ~100 to
// 2048, a third of it the reply. Words from the ShapesWorld vocabulary (one token each).
void write_varlen_records(const std::filesystem::path& dir, int64_t n) {
  const std::vector<std::string> words = {"a",     "red",    "circle", "small", "large",
                                          "blue",  "square", "at",     "the",   "left",
                                          "green", "star",   "top",    "and",   "right"};
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> length(std::log(300.0), 0.8);
  std::uniform_int_distribution<size_t> word(0, words.size() - 1);
  auto text = [&](int64_t k) {
    std::string s;
    for (int64_t i = 0; i < k; ++i) s += (i ? " " : "") + words[word(rng)];
    return s;
  };
  nlohmann::json records = nlohmann::json::array();
  for (int64_t i = 0; i < n; ++i) {
    // ~95 tokens of template and image; the rest is text, a third of it the reply.
    const auto total = std::clamp<int64_t>(static_cast<int64_t>(length(rng)), 100, 2040);
    const int64_t words_n = std::max<int64_t>(4, total - 95);
    const int64_t reply = std::max<int64_t>(2, words_n / 3);
    records.push_back({{"id", "varlen-" + std::to_string(i)},
                       {"image", fmt::format("train/{:06d}.png", i % 512)},
                       {"conversations",
                        {{{"from", "human"}, {"value", "<image>\n" + text(words_n - reply)}},
                         {{"from", "gpt"}, {"value", text(reply)}}}}});
  }
  std::ofstream(dir / "varlen_train.json") << records.dump();
}

void run_case(const Case& c, double bench_start_rss, const std::filesystem::path& runs,
              const Options& o) {
  const double block_start_max_rss = max_rss_bytes();
  Config config = c.config;
  // The schedule spans the warm-up, timed and profiled steps.
  config.train.max_steps = c.warmup + c.steps + o.profile;
  config.train.save_every = 0;
  config.train.log_every = config.train.max_steps + 1;
  config.run.output_dir = (runs / c.name).string();
  const bool dpo = find_stage(config.train.stage).needs_reference;
  // The trainer's own setup (for dpo a frozen reference of the same seed) and its step.
  Trainer trainer(config);
  trainer.setup();
  MultimodalModelImpl& model = trainer.model();
  int64_t n_trainable = 0, n_total = 0, connector_params = 0;
  Trains tr;
  for (const auto& item : model.named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    n_total += p.numel();
    if (p.requires_grad()) n_trainable += p.numel();
    const bool grad = p.requires_grad();
    if (name.rfind("vision_tower.", 0) == 0) tr.vision |= grad;
    if (name.rfind("multi_modal_projector.", 0) == 0) {
      tr.connector |= grad;
      if (p.dim() >= 2) connector_params += p.numel();
    }
    if (name.rfind("language_model.model.", 0) == 0) tr.llm |= grad;
    if (name.rfind("language_model.lm_head.", 0) == 0) tr.lm_head |= grad;
  }
  if (config.model.llm.tie_word_embeddings) tr.lm_head = tr.llm;
  const int64_t Q = model.image_tokens();
  const auto& tc = config.train;

  // One Trainer::step, its phases as the step times them, the micro-batches' wait as data.
  auto run_step = [&](Totals* acc) {
    Phases ph;
    const auto t = Clock::now();
    const std::vector<Batch> micro = trainer.next_micro_batches();
    ph.data = seconds_since(t);
    const StepResult r = trainer.step(micro);
    ph.forward = r.forward_s, ph.backward = r.backward_s, ph.optimizer = r.optimizer_s;
    if (!acc) return;
    for (const auto& b : micro) {
      const int64_t rows = b.input_ids.size(0), T = b.input_ids.size(1);
      const int64_t images = b.pixel_values.defined() ? b.pixel_values.size(0) : 0;
      // The decoder skips padding unless the rows are packed (then every position runs).
      const int64_t real = config.data.packing ? rows * T : b.tokens;
      const auto f = step_flops(config.model, tr, connector_params, rows, T, real, images, Q,
                                b.supervised_tokens, dpo);
      acc->flops.forward += f.forward;
      acc->flops.backward += f.backward;
      acc->rows += rows;
      acc->items += dpo ? b.pairs : rows;
      acc->positions += rows * T;
      acc->unpacked += b.unpacked_positions;
      acc->tokens += b.tokens;
      acc->supervised += b.supervised_tokens;
    }
    if (acc->steps == 0) acc->first_loss = r.loss;
    acc->last_loss = r.loss;
    ++acc->steps;
    acc->t.data += ph.data;
    acc->t.forward += ph.forward;
    acc->t.backward += ph.backward;
    acc->t.optimizer += ph.optimizer;
  };

  Totals warm;
  for (int64_t i = 0; i < c.warmup; ++i) run_step(&warm);
  // The GEMM reference, right before the timed steps: the LLM's d x d product over the step's
  // positions (the warm-up's mean; one micro-batch's worth), and 1024^3.
  const int64_t d = config.model.llm.hidden;
  const int64_t M =
      warm.steps > 0
          ? std::max<int64_t>(1, warm.positions / std::max<int64_t>(1, warm.steps) / tc.grad_accum)
          : tc.batch_size * 128;
  const double gemm_model = gemm_gflops(M, d, d);
  const double gemm_1024 = gemm_gflops(1024, 1024, 1024);

  Totals tot;
  const auto wall_start = Clock::now();
  for (int64_t i = 0; i < c.steps; ++i) run_step(&tot);
  tot.wall = seconds_since(wall_start);
  const double block_max_rss = max_rss_bytes();
  const double rss_now = rss_bytes();

  const auto& v = config.model.vision;
  const auto& l = config.model.llm;
  const double n = static_cast<double>(tot.steps);
  const double ms = 1000.0 / n;
  const auto pct = [&](double x) { return tot.t.total() > 0 ? 100.0 * x / tot.t.total() : 0.0; };
  const double fl = tot.flops.forward + tot.flops.backward;
  const double fb = tot.t.forward + tot.t.backward;
  std::printf("== %s: %s\n", c.name.c_str(), c.title.c_str());
  std::printf(
      "  model       vision %lldpx/%lld hidden %lld x%lld layers, connector %s, LLM d=%lld x%lld "
      "layers, heads %lld/%lld kv, ffn %lld, vocab %lld\n",
      static_cast<long long>(v.image_size), static_cast<long long>(v.patch_size),
      static_cast<long long>(v.hidden), static_cast<long long>(v.layers),
      config.model.connector.type.c_str(), static_cast<long long>(l.hidden),
      static_cast<long long>(l.layers), static_cast<long long>(l.heads),
      static_cast<long long>(l.kv_heads), static_cast<long long>(l.intermediate),
      static_cast<long long>(l.vocab));
  std::printf(
      "  params      %.3f M trainable of %.3f M (%s)%s\n", static_cast<double>(n_trainable) / 1e6,
      static_cast<double>(n_total) / 1e6,
      [&] {
        std::string s;
        for (const auto& g : tc.trainable) s += (s.empty() ? "" : ", ") + g;
        return s;
      }()
          .c_str(),
      dpo ? " + a frozen reference of the same size" : "");
  std::printf(
      "  per step    %lld %s (%lld rows), %.0f positions (mean T %.1f), %.0f real tokens, %.0f "
      "supervised; %lld warm-up + %lld timed steps\n",
      static_cast<long long>(tc.batch_size * tc.grad_accum), dpo ? "pairs" : "samples",
      static_cast<long long>(tot.rows / tot.steps), static_cast<double>(tot.positions) / n,
      static_cast<double>(tot.positions) / static_cast<double>(tot.rows),
      static_cast<double>(tot.tokens) / n, static_cast<double>(tot.supervised) / n,
      static_cast<long long>(c.warmup), static_cast<long long>(c.steps));
  char pairs[64] = "";
  if (dpo)
    std::snprintf(pairs, sizeof pairs, " (%.1f pairs/s)",
                  static_cast<double>(tot.items) / tot.wall);
  std::printf(
      "  throughput  %.0f tokens/s (real, non-pad), %.1f samples/s%s, %.0f positions/s (with "
      "padding)\n",
      static_cast<double>(tot.tokens) / tot.wall, static_cast<double>(tot.rows) / tot.wall, pairs,
      static_cast<double>(tot.positions) / tot.wall);
  std::printf(
      "  ms/step     %.1f = data %.1f (%.0f%%) + forward %.1f (%.0f%%) + backward %.1f (%.0f%%) + "
      "optimizer %.1f (%.0f%%)\n",
      tot.t.total() * ms, tot.t.data * ms, pct(tot.t.data), tot.t.forward * ms, pct(tot.t.forward),
      tot.t.backward * ms, pct(tot.t.backward), tot.t.optimizer * ms, pct(tot.t.optimizer));
  std::printf(
      "  memory      peak RSS %.0f MiB (process max; +%.0f MiB over the bench start, +%.0f MiB "
      "during this block), RSS now %.0f MiB (CPU resident memory)\n",
      block_max_rss / kMiB, (block_max_rss - bench_start_rss) / kMiB,
      (block_max_rss - block_start_max_rss) / kMiB, rss_now / kMiB);
  std::printf("  FLOPs       %.2f GFLOP/step estimated (forward %.2f%s, backward %.2f)\n",
              fl / n / 1e9, tot.flops.forward / n / 1e9, dpo ? " incl. the reference's" : "",
              tot.flops.backward / n / 1e9);
  std::printf(
      "  achieved    %.1f GFLOP/s over forward+backward, %.1f GFLOP/s over the whole step\n",
      fl / fb / 1e9, fl / tot.wall / 1e9);
  std::printf(
      "  GEMM ref    fp32 mm %lldx%lldx%lld %.1f GFLOP/s, 1024^3 %.1f GFLOP/s -> forward+backward "
      "at %.2f / %.2f of them\n",
      static_cast<long long>(M), static_cast<long long>(d), static_cast<long long>(d), gemm_model,
      gemm_1024, fl / fb / 1e9 / gemm_model, fl / fb / 1e9 / gemm_1024);
  std::printf("  loss        %.4f (first timed step) -> %.4f (last)\n", tot.first_loss,
              tot.last_loss);
  std::printf("  padding     %.1f%% of positions (%.1f%% unpacked)%s\n",
              100.0 * (1.0 - static_cast<double>(tot.tokens) / static_cast<double>(tot.positions)),
              100.0 * (1.0 - static_cast<double>(tot.tokens) /
                                 static_cast<double>(std::max<int64_t>(1, tot.unpacked))),
              config.data.packing ? " (data.packing)" : "");
  if (c.eager) {
    // What bench/train_eager.py needs to run the same step (scripts/bench passes it on): the
    // same sizes; a fixed batch x length with the same share of supervised positions, compared
    // in positions/s, or (the variable-length blocks) the samples' own lengths, padded per batch
    // by eager and compared in real tokens/s.
    std::string shape;
    if (c.eager_lengths) {
      const auto path = std::filesystem::path(o.eager_dir) / ("mllm-eager-" + c.name + ".json");
      write_lengths(config, Q, path);
      shape = fmt::format("--lengths {} --batch 16 --unit tokens --cpp-per-s {:.1f}", path.string(),
                          static_cast<double>(tot.tokens) / tot.wall);
    } else {
      shape =
          fmt::format("--batch {} --seq {} --supervised {:.4f} --unit positions --cpp-per-s {:.1f}",
                      tot.rows / tot.steps,
                      static_cast<int64_t>(
                          static_cast<double>(tot.positions) / static_cast<double>(tot.rows) + 0.5),
                      static_cast<double>(tot.supervised) / static_cast<double>(tot.positions),
                      static_cast<double>(tot.positions) / tot.wall);
    }
    std::printf(
        "  eager-args  --name %s --hidden %lld --layers %lld --heads %lld --kv-heads %lld "
        "--intermediate %lld --vocab %lld --image %lld --patch %lld --v-hidden %lld --v-layers "
        "%lld --v-heads %lld --v-inter %lld --feature-layer %lld --image-tokens %lld %s --steps "
        "%lld --warmup %lld --cpp-gemm-gflops %.1f --target %g\n",
        c.name.c_str(), static_cast<long long>(l.hidden), static_cast<long long>(l.layers),
        static_cast<long long>(l.heads), static_cast<long long>(l.kv_heads),
        static_cast<long long>(l.intermediate), static_cast<long long>(l.vocab),
        static_cast<long long>(v.image_size), static_cast<long long>(v.patch_size),
        static_cast<long long>(v.hidden), static_cast<long long>(v.layers),
        static_cast<long long>(v.heads), static_cast<long long>(v.intermediate),
        static_cast<long long>(v.feature_layer), static_cast<long long>(Q), shape.c_str(),
        static_cast<long long>(c.steps), static_cast<long long>(c.warmup), gemm_1024,
        c.eager_target);
  }
  if (o.profile > 0) {
    const auto trace = runs / (c.name + "-profile.json");
    {
      torch::autograd::profiler::RecordProfile guard(trace.string());
      for (int64_t i = 0; i < o.profile; ++i) run_step(nullptr);
    }
    print_top_ops(trace, o.profile);
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  spdlog::set_level(spdlog::level::warn);
  const double start_rss = max_rss_bytes();
  const int threads = configure_threads(o.threads);
  std::printf("LibTorch %s, %d intra-op threads, %lld loader workers (CPU), BLAS %s%s\n",
              TORCH_VERSION, threads, static_cast<long long>(o.workers),
              blas_info().describe().c_str(),
              std::getenv("OPENBLAS_CORETYPE") ? " (OPENBLAS_CORETYPE set)" : "");

  const auto dir = std::filesystem::temp_directory_path() /
                   ("mllm-bench-train-" + std::to_string(static_cast<long long>(getpid())));
  std::filesystem::remove_all(dir);
  data::ShapesWorldOptions so;
  so.train = 512;
  so.val = 8;
  so.image_size = 64;
  data::generate_shapes_world(dir, so);

  // configs/shapes/stage1_pretrain.yaml's sizes (its LLM, from stage 0, as stage0_text.yaml).
  Config base;
  base.run.seed = 0;
  base.run.threads = o.threads;
  auto& v = base.model.vision;
  v.image_size = 64, v.patch_size = 8, v.hidden = 64, v.layers = 3, v.heads = 4,
  v.intermediate = 256, v.feature_layer = -2, v.select = "patch";
  auto& l = base.model.llm;
  l.hidden = 128, l.layers = 4, l.heads = 4, l.kv_heads = 2, l.intermediate = 352, l.vocab = 128;
  base.model.connector.type = "mlp2x_gelu";
  base.model.tokenizer = (dir / "tokenizer.json").string();
  base.data.image.size = 64;
  base.data.image.aspect = "pad";
  base.data.workers = o.workers;
  base.data.train.image_root = (dir / "images").string();
  base.train.weight_decay = 0.0;
  base.train.clip_grad_norm = 1.0;
  base.train.schedule = "cosine";
  if (o.bf16) base.train.precision = "bf16";

  std::vector<Case> cases;
  {
    Case c{"stage1", "ShapesWorld stage 1 (pretrain: captions, plain, connector trains)", base,
           o.warmup, o.steps};
    auto& k = c.config;
    k.data.train.path = (dir / "captions_train.json").string();
    k.data.template_name = "plain";
    k.data.max_length = 128;
    k.train.stage = "pretrain";
    k.train.trainable = {"multi_modal_projector.*"};
    k.train.batch_size = 32, k.train.lr = 2e-3, k.train.warmup_ratio = 0.03;
    cases.push_back(c);
  }
  Config instruct = base;
  instruct.data.train.path = (dir / "instruct_train.json").string();
  instruct.data.template_name = "vicuna_v1";
  instruct.data.max_length = 192;
  instruct.train.stage = "instruct";
  instruct.train.trainable = {"multi_modal_projector.*", "language_model.*"};
  instruct.train.batch_size = 32, instruct.train.lr = 1e-3, instruct.train.warmup_ratio = 0.03;
  cases.push_back({"stage2", "ShapesWorld stage 2 (instruct, vicuna_v1, connector + LLM train)",
                   instruct, o.warmup, o.steps, true, 1.3});
  {
    Case c{"stage3", "ShapesWorld stage 3 (DPO on preference pairs, frozen reference)", instruct,
           o.warmup, o.steps};
    auto& k = c.config;
    k.data.train.format = "preference_json";
    k.data.train.path = (dir / "preference_train.json").string();
    k.train.stage = "dpo";
    k.train.batch_size = 16, k.train.lr = 1e-4, k.train.warmup_ratio = 0.1;
    cases.push_back(c);
  }
  {
    Case c{"d1024", "d=1024 LLM, stage-2 setting (instruct, connector + LLM train, batch 8)",
           instruct, o.big_warmup, o.big_steps};
    auto& b = c.config.model.llm;
    b.hidden = 1024, b.layers = o.big_layers, b.heads = 16, b.kv_heads = o.big_kv_heads,
    b.intermediate = 2816;
    // ShapesWorld's vocabulary, padded to a multiple of 64 (a 32000-row head would only reach the
    // supervised positions anyway: objectives.cpp).
    b.vocab = (load_tokenizer(base.model.tokenizer)->vocab_size() + 63) / 64 * 64;
    c.config.train.batch_size = 8;
    c.eager = true, c.eager_target = 1.3;
    cases.push_back(c);
  }
  {
    // A 32k vocabulary, few supervised positions: the LM head's work is what eager wastes.
    Case c{"vocab32k", "32k-vocabulary LLM d=256, stage-2 setting (instruct, batch 16)", instruct,
           o.warmup, o.steps};
    auto& b = c.config.model.llm;
    b.hidden = 256, b.layers = 4, b.heads = 8, b.kv_heads = 4, b.intermediate = 704,
    b.vocab = 32000;
    c.config.train.batch_size = 16;
    c.eager = true, c.eager_target = 4.0;
    cases.push_back(c);
  }
  {
    // Variable lengths (llava_v1_5_mix665k-like), packed into rows of 2048; eager pads.
    // 64 samples a step: packing a batch leaves its last row part-empty, which a bigger batch
    // dilutes (16: 13% padding, 32: 6%, 64: 4%). Eager pads batches of 16 (more would pad more).
    write_varlen_records(dir, 512);
    Case c{"varlen", "variable-length samples (~100-2048 tokens), packed into rows of 2048",
           instruct, std::min<int64_t>(o.warmup, 1), std::min<int64_t>(o.steps, 4)};
    auto& k = c.config;
    k.data.train.path = (dir / "varlen_train.json").string();
    k.data.max_length = 2048;
    k.data.packing = true;
    k.model.llm.max_position = 2048;
    k.train.batch_size = 64;
    c.eager = true, c.eager_target = 5.0, c.eager_lengths = true;
    cases.push_back(c);
  }
  {
    // The same samples unpacked, as eager runs them: batches of 16 padded to their longest (the
    // padding skipped by the projections and MLPs, attention on the padded grid). No target.
    Case c{"unpacked",
           "the variable-length samples unpacked, batches of 16 padded to their longest", instruct,
           std::min<int64_t>(o.warmup, 1), std::min<int64_t>(o.steps, 4)};
    auto& k = c.config;
    k.data.train.path = (dir / "varlen_train.json").string();
    k.data.max_length = 2048;
    k.model.llm.max_position = 2048;
    k.train.batch_size = 16;
    c.eager = true, c.eager_lengths = true;
    cases.push_back(c);
  }

  if (o.gpu) {
    // A 0.5B-class LLM (Qwen2-0.5B's shape: d=896 x24, 14 heads / 2 kv, ffn 4864, 151936 ids)
    // in the stage-2 setting: what MFU looks like at a real model's proportions.
    Case c{"qwen05b", "0.5B-class LLM (Qwen2-0.5B shape), stage-2 setting (batch 16)", instruct,
           o.big_warmup, o.big_steps};
    auto& b = c.config.model.llm;
    b.type = "qwen2";
    b.hidden = 896, b.layers = 24, b.heads = 14, b.kv_heads = 2, b.intermediate = 4864,
    b.vocab = 151936, b.tie_word_embeddings = true;
    c.config.train.batch_size = 16;
    cases.push_back(c);
  }
  for (const auto& c : cases)
    if (o.only.empty() || c.name.find(o.only) != std::string::npos)
      run_case(c, start_rss, dir / "runs", o);
  std::filesystem::remove_all(dir);
  return 0;
}
