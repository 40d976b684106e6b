#include "train/sharding.h"

#include <spdlog/spdlog.h>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/safetensors.h"

namespace mllm {

namespace fs = std::filesystem;

namespace {
constexpr const char* kLayoutMagic = "mllm-train-sharded-state";
constexpr int kLayoutVersion = 1;
const char* const kStates[] = {"master", "exp_avg", "exp_avg_sq"};

std::string shard_file(int64_t rank, int64_t world) {
  return fmt::format("shard-{:05d}-of-{:05d}.safetensors", rank, world);
}
}  // namespace

ShardLevel parse_shard_level(const std::string& name) {
  if (name == "none") return ShardLevel::none;
  if (name == "optimizer") return ShardLevel::optimizer;
  if (name == "gradients") return ShardLevel::gradients;
  if (name == "parameters") return ShardLevel::parameters;
  throw ConfigError("train.sharding: '" + name +
                    "' is not one of none, optimizer, gradients, parameters");
}

const char* shard_level_name(ShardLevel level) {
  switch (level) {
    case ShardLevel::optimizer:
      return "optimizer";
    case ShardLevel::gradients:
      return "gradients";
    case ShardLevel::parameters:
      return "parameters";
    default:
      return "none";
  }
}

const char* zero_stage_name(ShardLevel level) {
  switch (level) {
    case ShardLevel::optimizer:
      return "ZeRO-1";
    case ShardLevel::gradients:
      return "ZeRO-2";
    case ShardLevel::parameters:
      return "ZeRO-3";
    default:
      return "";
  }
}

struct ShardedTraining::Bucket {
  std::vector<size_t> params;  // indices into params_
  int64_t layer = -1;          // level parameters: the decoder layer, -1 the root
  int64_t numel = 0, padded = 0, shard = 0;
  torch::Tensor full;    // whole weights: always (levels optimizer, gradients), or while gathered
  torch::Tensor master;  // this rank's slice of the weights (a view of `full` below level 3)
  torch::Tensor grad;    // this rank's slice of the step's gradient
  torch::Tensor exp_avg, exp_avg_sq;
  struct DecayRun {
    int64_t begin, length;  // within this rank's slice
    double weight_decay;
  };
  std::vector<DecayRun> decay;
  // During a backward: the gradients as they arrive, and their reduction.
  torch::Tensor grad_full, reduced;
  size_t pending = 0;
  PendingCollective reducing;
  // Level parameters.
  enum class State { released, gathering, whole } state = State::whole;
  PendingCollective gathering;
};

// Runs after a parameter's gradient accumulator (the gradient is in .grad): the trainer's hook
// into backward, as DDP's reducer has.
struct ShardedTraining::Hook final : torch::autograd::FunctionPostHook {
  Hook(ShardedTraining* self, size_t index) : self(self), index(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    self->on_grad(index);
    return outputs;
  }
  ShardedTraining* self;
  size_t index;
};

ShardedTraining::ShardedTraining(Collectives& group, ShardLevel level,
                                 std::vector<ShardedParam> params, AdamWSettings adam,
                                 double bucket_mb)
    : group_(group), level_(level), params_(std::move(params)), adam_(adam) {
  if (params_.empty()) throw ConfigError("train.sharding: the run trains no parameters");
  const int64_t W = group_.world_size(), r = group_.rank();
  const auto device = params_.front().param.device();
  for (const auto& p : params_)
    if (p.param.scalar_type() != torch::kFloat32 || p.param.device() != device)
      throw ConfigError(
          "train.sharding: " + p.name + " is " + std::string(c10::toString(p.param.scalar_type())) +
          " on " + p.param.device().str() + "; sharded training keeps fp32 weights on one device");
  // Buckets, in the order backward completes them.
  const auto cap = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024 / 4));
  // Buckets of about bucket_mb over `order`, starting a fresh one.
  auto by_size = [&](const std::vector<size_t>& order) {
    int64_t n = 0;
    bool fresh = true;
    for (size_t i : order) {
      const int64_t size = params_[i].param.numel();
      if (fresh || (n > 0 && n + size > cap)) {
        buckets_.emplace_back();
        n = 0;
        fresh = false;
      }
      buckets_.back().params.push_back(i);
      n += size;
    }
  };
  std::vector<size_t> reverse;
  for (size_t i = params_.size(); i-- > 0;) reverse.push_back(i);
  if (level_ == ShardLevel::parameters) {
    int64_t layers = 0;
    for (const auto& p : params_) layers = std::max(layers, p.layer + 1);
    layer_bucket_.assign(static_cast<size_t>(layers), -1);
    for (int64_t l = layers; l-- > 0;) {
      Bucket b;
      b.layer = l;
      for (size_t i = 0; i < params_.size(); ++i)
        if (params_[i].layer == l) b.params.push_back(i);
      if (b.params.empty()) continue;
      layer_bucket_[static_cast<size_t>(l)] = static_cast<int64_t>(buckets_.size());
      buckets_.push_back(std::move(b));
    }
    std::vector<size_t> root;
    for (size_t i : reverse)
      if (params_[i].layer < 0) root.push_back(i);
    const size_t first_root = buckets_.size();
    by_size(root);
    for (size_t b = first_root; b < buckets_.size(); ++b) root_buckets_.push_back(b);
  } else {
    by_size(reverse);
  }
  // The layout, this rank's slices, and the hooks.
  bucket_of_.assign(params_.size(), 0);
  offset_of_.assign(params_.size(), 0);
  arrived_.assign(params_.size(), false);
  torch::NoGradGuard no_grad;
  const auto f32 = torch::dtype(torch::kFloat32).device(device);
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    auto& b = buckets_[bi];
    for (size_t i : b.params) {
      bucket_of_[i] = bi;
      offset_of_[i] = static_cast<size_t>(b.numel);
      b.numel += params_[i].param.numel();
    }
    b.padded = (b.numel + W - 1) / W * W;
    b.shard = b.padded / W;
    b.full = torch::zeros({b.padded}, f32);
    for (size_t i : b.params)
      b.full.narrow(0, static_cast<int64_t>(offset_of_[i]), params_[i].param.numel())
          .copy_(params_[i].param.reshape({-1}));
    b.master = b.full.narrow(0, r * b.shard, b.shard);
    if (level_ == ShardLevel::parameters) b.master = b.master.clone();
    b.grad = torch::zeros({b.shard}, f32);
    b.exp_avg = torch::zeros({b.shard}, f32);
    b.exp_avg_sq = torch::zeros({b.shard}, f32);
    const int64_t lo = r * b.shard, hi = lo + b.shard;
    for (size_t i : b.params) {
      const auto off = static_cast<int64_t>(offset_of_[i]);
      const int64_t begin = std::max(lo, off), end = std::min(hi, off + params_[i].param.numel());
      if (begin < end && params_[i].weight_decay != 0)
        b.decay.push_back({begin - lo, end - begin, params_[i].weight_decay});
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) shapes_.push_back(params_[i].param.sizes().vec());
  // The accumulators are made while every parameter has its whole shape (they record it).
  for (size_t i = 0; i < params_.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[i].param);
    hook_keys_.push_back(acc->add_post_hook(std::make_unique<Hook>(this, i)));
    accumulators_.push_back(std::move(acc));
  }
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    if (level_ == ShardLevel::parameters)
      release(bi);
    else
      attach_views(bi);
  }
}

ShardedTraining::~ShardedTraining() {
  for (size_t i = 0; i < accumulators_.size(); ++i) accumulators_[i]->del_post_hook(hook_keys_[i]);
}

size_t ShardedTraining::buckets() const {
  return buckets_.size();
}

void ShardedTraining::attach_views(size_t bi) {
  auto& b = buckets_[bi];
  for (size_t i : b.params)
    params_[i].param.set_data(
        b.full.narrow(0, static_cast<int64_t>(offset_of_[i]), c10::multiply_integers(shapes_[i]))
            .view(shapes_[i]));
}

void ShardedTraining::release(size_t bi) {
  auto& b = buckets_[bi];
  if (b.state == Bucket::State::gathering) finish_gather(bi);
  for (size_t i : b.params) params_[i].param.set_data(torch::empty({0}, b.master.options()));
  b.full = torch::Tensor();
  b.state = Bucket::State::released;
}

void ShardedTraining::gather(size_t bi, bool wait) {
  auto& b = buckets_[bi];
  if (b.state == Bucket::State::released) {
    b.full = torch::empty({b.padded}, b.master.options());
    b.gathering = group_.all_gather(b.master, b.full,
                                    "weight all-gather (bucket " + std::to_string(bi) + ")");
    b.state = Bucket::State::gathering;
  }
  if (wait) finish_gather(bi);
}

void ShardedTraining::finish_gather(size_t bi) {
  auto& b = buckets_[bi];
  if (b.state != Bucket::State::gathering) return;
  b.gathering();
  b.gathering = nullptr;
  attach_views(bi);
  b.state = Bucket::State::whole;
}

void ShardedTraining::zero_grad() {
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) b.grad.zero_();
  for (auto& p : params_)
    if (p.param.grad().defined()) p.param.mutable_grad().reset();
  collecting_ = false;
}

void ShardedTraining::begin_micro_batch(bool last) {
  last_micro_ = last;
  // ZeRO-1 keeps whole gradients while a step's micro-batches accumulate and reduces once; ZeRO-2
  // and -3 reduce after every micro-batch and keep only their slice.
  collecting_ = level_ != ShardLevel::optimizer || last;
  if (collecting_) {
    std::fill(arrived_.begin(), arrived_.end(), false);
    next_launch_ = next_finish_ = 0;
    for (auto& b : buckets_) b.pending = b.params.size();
  }
  if (level_ == ShardLevel::parameters && !all_gathered_) {
    for (size_t b : root_buckets_) gather(b, false);
    for (size_t b : root_buckets_) finish_gather(b);
  }
}

void ShardedTraining::on_grad(size_t index) {
  if (!collecting_ || arrived_[index]) return;
  torch::NoGradGuard no_grad;
  auto& p = params_[index].param;
  const size_t bi = bucket_of_[index];
  auto& b = buckets_[bi];
  if (!b.grad_full.defined()) b.grad_full = torch::zeros({b.padded}, b.master.options());
  if (p.grad().defined()) {
    b.grad_full.narrow(0, static_cast<int64_t>(offset_of_[index]), p.grad().numel())
        .copy_(p.grad().reshape({-1}));
    p.mutable_grad().reset();  // from here on only the bucket holds it
  }
  arrived_[index] = true;
  if (--b.pending == 0) {
    // A layer's backward is over once all its gradients are in: its weights can go.
    if (level_ == ShardLevel::parameters && b.layer >= 0) release(bi);
    launch_ready();
  }
}

void ShardedTraining::launch_ready() {
  // In bucket order on every rank, as the backends require: a bucket waits for the ones before it.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    auto& b = buckets_[next_launch_];
    if (!b.grad_full.defined()) b.grad_full = torch::zeros({b.padded}, b.master.options());
    b.reduced = torch::empty({b.shard}, b.master.options());
    b.reducing = group_.reduce_scatter(
        b.grad_full, b.reduced,
        "gradient reduce-scatter (bucket " + std::to_string(next_launch_) + ")");
    ++next_launch_;
    // A bounded number in flight: the whole gradients of a bucket live only until its reduction
    // is in, so a rank never holds all of them at once (ZeRO-2's point).
    while (next_launch_ - next_finish_ > kInFlight) finish_reduce(next_finish_++);
  }
}

void ShardedTraining::finish_reduce(size_t bi) {
  auto& b = buckets_[bi];
  b.reducing();
  b.reducing = nullptr;
  b.grad.add_(b.reduced);
  b.reduced = b.grad_full = torch::Tensor();
}

void ShardedTraining::end_micro_batch() {
  torch::NoGradGuard no_grad;
  if (collecting_) {
    // Parameters without a gradient from this backward (an unused expert) contribute what .grad
    // holds from earlier micro-batches, or zeros.
    for (size_t i = 0; i < params_.size(); ++i) {
      if (!arrived_[i]) on_grad(i);
    }
    launch_ready();
    while (next_finish_ < buckets_.size()) finish_reduce(next_finish_++);
    collecting_ = false;
  }
  if (level_ == ShardLevel::parameters && !all_gathered_) {
    for (size_t bi = 0; bi < buckets_.size(); ++bi) {
      const bool root = buckets_[bi].layer < 0;
      if (buckets_[bi].state != Bucket::State::released && (!root || last_micro_)) release(bi);
    }
  }
}

double ShardedTraining::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  auto squares = torch::zeros({}, buckets_.front().grad.options().dtype(torch::kFloat64));
  for (const auto& b : buckets_) squares += b.grad.square().sum(torch::kFloat64);
  const double norm = std::sqrt(group_.sum(squares.item<double>(), "the gradient norm"));
  // torch.nn.utils.clip_grad_norm_'s coefficient.
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1)
    for (auto& b : buckets_) b.grad.mul_(coef);
  return norm;
}

void ShardedTraining::step(double lr) {
  torch::NoGradGuard no_grad;
  ++adam_step_;
  // torch::optim::AdamW's update (decoupled weight decay, bias-corrected moments), element for
  // element on this rank's slices.
  const double bc1 = 1 - std::pow(adam_.beta1, static_cast<double>(adam_step_));
  const double bc2 = 1 - std::pow(adam_.beta2, static_cast<double>(adam_step_));
  for (auto& b : buckets_) {
    for (const auto& run : b.decay)
      b.master.narrow(0, run.begin, run.length).mul_(1 - lr * run.weight_decay);
    b.exp_avg.mul_(adam_.beta1).add_(b.grad, 1 - adam_.beta1);
    b.exp_avg_sq.mul_(adam_.beta2).addcmul_(b.grad, b.grad, 1 - adam_.beta2);
    const auto denom = (b.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(adam_.eps);
    b.master.addcdiv_(b.exp_avg, denom, -lr / bc1);
  }
  if (level_ == ShardLevel::parameters) return;  // gathered when next needed
  std::vector<PendingCollective> gathers;
  for (size_t bi = 0; bi < buckets_.size(); ++bi)
    gathers.push_back(group_.all_gather(buckets_[bi].master, buckets_[bi].full,
                                        "weight all-gather (bucket " + std::to_string(bi) + ")"));
  for (auto& g : gathers) g();
}

void ShardedTraining::gather_all() {
  if (level_ != ShardLevel::parameters || all_gathered_) return;
  for (size_t b = 0; b < buckets_.size(); ++b) gather(b, false);
  for (size_t b = 0; b < buckets_.size(); ++b) finish_gather(b);
  all_gathered_ = true;
}

void ShardedTraining::release_all() {
  if (level_ != ShardLevel::parameters || !all_gathered_) return;
  for (size_t b = 0; b < buckets_.size(); ++b) release(b);
  all_gathered_ = false;
}

void ShardedTraining::before_layer(int64_t index) {
  if (all_gathered_ || index < 0 || index >= static_cast<int64_t>(layer_bucket_.size())) return;
  const int64_t b = layer_bucket_[static_cast<size_t>(index)];
  if (b >= 0) gather(static_cast<size_t>(b), true);
  // The next layer's gather travels while this one computes.
  for (auto next = static_cast<size_t>(index) + 1; next < layer_bucket_.size(); ++next)
    if (layer_bucket_[next] >= 0) {
      gather(static_cast<size_t>(layer_bucket_[next]), false);
      break;
    }
}

at::Tensor ShardedTraining::after_layer(int64_t index, at::Tensor output) {
  if (all_gathered_ || index < 0 || index >= static_cast<int64_t>(layer_bucket_.size()))
    return output;
  const int64_t b = layer_bucket_[static_cast<size_t>(index)];
  if (b < 0) return output;
  release(static_cast<size_t>(b));
  if (torch::GradMode::is_enabled() && output.requires_grad()) {
    // Backward reaches the layer when the gradient of its output is ready: gather its weights
    // (and start the gather of the layer below) before any of its backward runs.
    output.register_hook([this, index](const at::Tensor&) {
      gather(static_cast<size_t>(layer_bucket_[static_cast<size_t>(index)]), true);
      for (auto below = index; below-- > 0;)
        if (layer_bucket_[static_cast<size_t>(below)] >= 0) {
          gather(static_cast<size_t>(layer_bucket_[static_cast<size_t>(below)]), false);
          break;
        }
    });
  }
  return output;
}

ShardBytes ShardedTraining::bytes() const {
  ShardBytes out;
  for (const auto& b : buckets_) {
    if (level_ != ShardLevel::parameters) out.weights += b.padded * 4;
    if (level_ == ShardLevel::parameters) out.master += b.shard * 4;
    out.gradients += b.shard * 4;
    out.optimizer += 2 * b.shard * 4;
  }
  if (level_ == ShardLevel::optimizer)  // the whole gradients while micro-batches accumulate
    for (const auto& b : buckets_) out.gradients += b.numel * 4;
  return out;
}

int64_t ShardedTraining::unsharded_optimizer_bytes() const {
  int64_t n = 0;
  for (const auto& b : buckets_) n += b.numel;
  return 2 * 4 * n;
}

std::vector<std::string> ShardedTraining::save(const fs::path& dir) const {
  const int64_t W = group_.world_size(), r = group_.rank();
  NamedTensors tensors;
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    const auto& b = buckets_[bi];
    tensors.emplace_back(std::to_string(bi) + ".master", b.master);
    tensors.emplace_back(std::to_string(bi) + ".exp_avg", b.exp_avg);
    tensors.emplace_back(std::to_string(bi) + ".exp_avg_sq", b.exp_avg_sq);
  }
  save_safetensors(
      dir / shard_file(r, W), tensors,
      {{"format", kLayoutMagic}, {"rank", std::to_string(r)}, {"world_size", std::to_string(W)}});
  if (r != 0) return {shard_file(r, W)};
  nlohmann::json buckets = nlohmann::json::array();
  for (const auto& b : buckets_) {
    nlohmann::json ps = nlohmann::json::array();
    for (size_t i : b.params)
      ps.push_back({{"name", params_[i].name}, {"shape", shapes_[i]}, {"offset", offset_of_[i]}});
    buckets.push_back(
        {{"numel", b.numel}, {"padded", b.padded}, {"shard", b.shard}, {"params", ps}});
  }
  const nlohmann::json layout = {
      {"format", kLayoutMagic}, {"version", kLayoutVersion}, {"level", shard_level_name(level_)},
      {"world_size", W},        {"adam_step", adam_step_},   {"buckets", buckets}};
  write_file_atomic(dir / "sharding.json", layout.dump(1) + "\n");
  return {shard_file(r, W), "sharding.json"};
}

void ShardedTraining::load(const fs::path& dir) {
  const fs::path layout_file = dir / "sharding.json";
  struct Place {
    size_t bucket;
    int64_t offset, numel;
    std::vector<int64_t> shape;
  };
  std::map<std::string, Place> old;
  std::vector<int64_t> old_shard;
  int64_t old_world = 0;
  try {
    const auto j = nlohmann::json::parse(read_file(layout_file));
    if (!j.is_object() || j.value("format", "") != kLayoutMagic)
      throw Error(layout_file.string() + ": not the layout of a sharded checkpoint");
    if (j.value("version", 0) != kLayoutVersion)
      throw Error(layout_file.string() + ": layout version " + j["version"].dump() +
                  " is not supported (expected " + std::to_string(kLayoutVersion) + ")");
    old_world = j.at("world_size").get<int64_t>();
    adam_step_ = j.at("adam_step").get<int64_t>();
    const auto& bs = j.at("buckets");
    for (size_t b = 0; b < bs.size(); ++b) {
      old_shard.push_back(bs[b].at("shard").get<int64_t>());
      for (const auto& p : bs[b].at("params")) {
        Place place{b, p.at("offset").get<int64_t>(), 1, p.at("shape").get<std::vector<int64_t>>()};
        for (int64_t d : place.shape) place.numel *= d;
        old[p.at("name").get<std::string>()] = place;
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(layout_file.string() + ": malformed (" + json_error_message(e) + ")");
  }
  if (old_world < 1) throw Error(layout_file.string() + ": world_size must be at least 1");
  // The same trainable parameters, with the same shapes.
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto it = old.find(params_[i].name);
    if (it == old.end())
      throw Error(layout_file.string() + ": the checkpoint has no state for " + params_[i].name +
                  ", which this run trains (train.trainable or LoRA differ from the run that "
                  "wrote it)");
    if (it->second.shape != shapes_[i])
      throw Error(layout_file.string() + ": " + params_[i].name + " has shape " +
                  c10::str(c10::IntArrayRef(it->second.shape)) + " in the checkpoint, " +
                  c10::str(c10::IntArrayRef(shapes_[i])) + " in this run");
  }
  if (old.size() != params_.size())
    throw Error(layout_file.string() + ": the checkpoint holds " + std::to_string(old.size()) +
                " trainable tensors, this run trains " + std::to_string(params_.size()) +
                " (train.trainable or LoRA differ from the run that wrote it)");
  // Each old rank's file, opened when first needed (a memory map: only the pieces read are read).
  std::vector<std::unique_ptr<SafetensorsFile>> files(static_cast<size_t>(old_world));
  auto piece = [&](int64_t rank, size_t bucket, const char* state) {
    auto& f = files[static_cast<size_t>(rank)];
    if (!f) f = std::make_unique<SafetensorsFile>(dir / shard_file(rank, old_world));
    const std::string name = std::to_string(bucket) + "." + state;
    auto t = f->get(name);
    if (t.scalar_type() != torch::kFloat32 || t.dim() != 1 || t.size(0) != old_shard[bucket])
      throw Error(f->path().string() + ": " + name + " is not " +
                  std::to_string(old_shard[bucket]) + " fp32 values");
    return t;
  };
  torch::NoGradGuard no_grad;
  const int64_t r = group_.rank();
  for (auto& b : buckets_) {
    const int64_t lo = r * b.shard, hi = lo + b.shard;
    torch::Tensor* dst[] = {&b.master, &b.exp_avg, &b.exp_avg_sq};
    for (auto* t : dst) t->zero_();
    for (size_t i : b.params) {
      const auto off = static_cast<int64_t>(offset_of_[i]);
      const Place& was = old[params_[i].name];
      const int64_t begin = std::max(lo, off), end = std::min(hi, off + was.numel);
      if (begin >= end) continue;
      // Elements [begin - off, end - off) of the parameter: where they were, rank by rank.
      for (int64_t e = begin - off; e < end - off;) {
        const int64_t at = was.offset + e;
        const int64_t shard = old_shard[was.bucket];
        const int64_t rank = at / shard;
        const int64_t n = std::min(end - off - e, (rank + 1) * shard - at);
        for (int s = 0; s < 3; ++s)
          dst[s]
              ->narrow(0, off + e - lo, n)
              .copy_(piece(rank, was.bucket, kStates[s]).narrow(0, at - rank * shard, n));
        e += n;
      }
    }
  }
  if (level_ == ShardLevel::parameters) return;
  std::vector<PendingCollective> gathers;
  for (size_t bi = 0; bi < buckets_.size(); ++bi)
    gathers.push_back(group_.all_gather(buckets_[bi].master, buckets_[bi].full,
                                        "weight all-gather after loading the checkpoint"));
  for (auto& g : gathers) g();
}

}  // namespace mllm
