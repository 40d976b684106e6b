#include "train/distributed.h"

#include <spdlog/spdlog.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>

#include "core/torch_compat.h"

namespace mllm {

namespace {

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

namespace {
class NoGradientSync final : public GradientSync {
 public:
  void prepare(bool) override {}
  void finish() override {}
  size_t buckets() const override { return 0; }
};
}  // namespace

std::unique_ptr<GradientSync> SingleProcess::gradient_sync(std::vector<torch::Tensor>, double) {
  return std::make_unique<NoGradientSync>();
}

PendingCollective SingleProcess::reduce_scatter(torch::Tensor full, torch::Tensor mine,
                                                const std::string&) {
  torch::NoGradGuard no_grad;
  mine.copy_(full.narrow(0, 0, mine.numel()));
  return [] {};
}

PendingCollective SingleProcess::all_gather(torch::Tensor mine, torch::Tensor full,
                                            const std::string&) {
  torch::NoGradGuard no_grad;
  if (!mine.is_same(full)) full.narrow(0, 0, mine.numel()).copy_(mine);
  return [] {};
}

std::unique_ptr<Collectives> join_job(const DistEnv& env, const DistributedConfig& config,
                                      const torch::Device& device) {
  if (auto pg = ProcessGroup::create(env, config, device)) return pg;
  return std::make_unique<SingleProcess>();
}

std::string ProcessGroup::describe() const {
  return fmt::format("data parallel: {} ranks ({}, {} backend, rendezvous {}:{}; launched by {})",
                     env_.world_size,
                     env_.local_world_size == env_.world_size ? "one node" : "several nodes",
                     backend_name_, env_.master_addr, env_.master_port, env_.source);
}

std::unique_ptr<GradientSync> ProcessGroup::gradient_sync(std::vector<torch::Tensor> params,
                                                          double bucket_mb) {
  return std::make_unique<GradientReducer>(*this, std::move(params), bucket_mb);
}

std::unique_ptr<ProcessGroup> ProcessGroup::create(const DistEnv& env,
                                                   const DistributedConfig& config,
                                                   const torch::Device& device) {
  if (!env.distributed()) return nullptr;
  std::unique_ptr<ProcessGroup> pg(new ProcessGroup());
  pg->env_ = env;
  pg->timeout_s_ = config.timeout;
  pg->device_ = device;
  std::string backend = config.backend;
  if (backend == "auto") backend = device.is_cuda() ? "nccl" : "gloo";
  pg->backend_name_ = backend;
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(env.master_port);
    opts.isServer = env.rank == 0;
    opts.numWorkers = static_cast<size_t>(env.world_size);
    opts.waitWorkers = true;
    opts.timeout = to_ms(config.timeout);
    pg->store_ = c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts);
  } catch (const std::exception& e) {
    throw DistributedError(
        "distributed: rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
        " could not join the rendezvous at " + where +
        " within run.distributed.timeout=" + fmt::format("{:g}", config.timeout) +
        "s (are all ranks started, MASTER_ADDR/MASTER_PORT the same on every "
        "rank, the port free on rank 0?): " +
        e.what());
  }
  try {
    if (backend == "gloo") {
#ifdef USE_C10D_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(to_ms(config.timeout));
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (is_loopback(env.master_addr))
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      pg->backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(pg->store_, env.rank,
                                                                 env.world_size, options);
      pg->grad_backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>("gradients/", pg->store_), env.rank,
          env.world_size, options);
#else
      throw ConfigError("run.distributed.backend: this LibTorch was built without Gloo");
#endif
    } else {
#ifdef USE_C10D_NCCL
      if (!device.is_cuda())
        throw ConfigError("run.distributed.backend: nccl needs a CUDA device (run.device is " +
                          device.str() + ")");
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = to_ms(config.timeout);
      pg->backend_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg->store_, env.rank,
                                                                 env.world_size, options);
      pg->grad_backend_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>("gradients/", pg->store_), env.rank,
          env.world_size, options);
#else
      throw ConfigError(
          "run.distributed.backend: this LibTorch was built without NCCL (USE_C10D_NCCL); use "
          "gloo");
#endif
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError("distributed: rank " + std::to_string(env.rank) +
                           " could not build the " + backend + " process group of " +
                           std::to_string(env.world_size) + " ranks (rendezvous " + where +
                           "): " + e.what());
  }
  return pg;
}

ProcessGroup::~ProcessGroup() = default;

torch::Device ProcessGroup::comm_device() const {
  return backend_name_ == "nccl" ? device_ : torch::Device(torch::kCPU);
}

void ProcessGroup::fail(const std::string& what, const std::exception& e) const {
  // c10's what() carries a C++ backtrace: the reason alone belongs in the message.
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  std::string reason = c10 ? c10->what_without_backtrace() : e.what();
  while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' ')) reason.pop_back();
  throw DistributedError(fmt::format(
      "distributed: rank {} of {}: {} failed at {}: {}. Another rank died or stopped answering "
      "(run.distributed.timeout={:g}s); the checkpoints written so far are intact: relaunch all "
      "ranks with --resume auto",
      env_.rank, env_.world_size, what, context_, reason, timeout_s_));
}

void ProcessGroup::wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
  try {
    work->wait(to_ms(timeout_s_));
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

c10::intrusive_ptr<c10d::Work> ProcessGroup::sum_async(torch::Tensor& flat,
                                                       const std::string& what) {
  try {
    std::vector<torch::Tensor> tensors{flat};
    return backend_->allreduce(tensors, c10d::AllreduceOptions{});
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

PendingCollective ProcessGroup::reduce_scatter(torch::Tensor full, torch::Tensor mine,
                                               const std::string& what) {
  try {
    if (backend_name_ == "nccl") {
      auto work = grad_backend_->_reduce_scatter_base(mine, full, c10d::ReduceScatterOptions{});
      return [this, work, what] { wait(work, what); };
    }
    std::vector<torch::Tensor> tensors{full};
    auto work = grad_backend_->allreduce(tensors, c10d::AllreduceOptions{});
    return [this, work, what, full, mine] {
      wait(work, what);
      torch::NoGradGuard no_grad;
      mine.copy_(full.narrow(0, rank() * mine.numel(), mine.numel()));
    };
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

PendingCollective ProcessGroup::all_gather(torch::Tensor mine, torch::Tensor full,
                                           const std::string& what) {
  try {
    if (backend_name_ == "nccl") {
      auto work = backend_->_allgather_base(full, mine, c10d::AllgatherOptions{});
      return [this, work, what] { wait(work, what); };
    }
    std::vector<std::vector<torch::Tensor>> outputs(1);
    for (int r = 0; r < world_size(); ++r)
      outputs[0].push_back(full.narrow(0, r * mine.numel(), mine.numel()));
    std::vector<torch::Tensor> inputs{mine};
    auto work = backend_->allgather(outputs, inputs, c10d::AllgatherOptions{});
    return [this, work, what] { wait(work, what); };
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

std::vector<double> ProcessGroup::sum(std::vector<double> values, const std::string& what) {
  if (values.empty()) return values;
  auto t = torch::tensor(values, torch::dtype(torch::kFloat64)).to(comm_device());
  wait(sum_async(t, what), what);
  t = t.cpu();
  const double* p = t.data_ptr<double>();
  return std::vector<double>(p, p + values.size());
}

void ProcessGroup::broadcast(const std::vector<torch::Tensor>& tensors, const std::string& what,
                             double chunk_mb) {
  // Flattened into fp32 chunks (fp64 stays fp64): lossless for bf16/fp16/fp32, and Gloo rejects
  // bf16.
  const auto chunk_bytes = static_cast<int64_t>(chunk_mb * 1024 * 1024);
  torch::NoGradGuard no_grad;
  for (const auto dtype : {torch::kFloat32, torch::kFloat64}) {
    std::vector<torch::Tensor> group;
    for (const auto& t : tensors) {
      if (!t.defined() || !t.is_floating_point()) continue;
      if ((t.scalar_type() == torch::kFloat64) != (dtype == torch::kFloat64)) continue;
      group.push_back(t);
    }
    const int64_t elem = dtype == torch::kFloat64 ? 8 : 4;
    for (size_t i = 0; i < group.size();) {
      size_t j = i;
      int64_t n = 0;
      while (j < group.size() && (j == i || (n + group[j].numel()) * elem <= chunk_bytes))
        n += group[j++].numel();
      std::vector<torch::Tensor> parts;
      for (size_t k = i; k < j; ++k)
        parts.push_back(group[k].detach().reshape({-1}).to(comm_device(), dtype));
      auto flat = torch::cat(parts);
      std::vector<torch::Tensor> list{flat};
      c10d::BroadcastOptions opts;
      opts.rootRank = 0;
      try {
        wait(backend_->broadcast(list, opts), what);
      } catch (const DistributedError&) {
        throw;
      } catch (const std::exception& e) {
        fail(what, e);
      }
      int64_t off = 0;
      for (size_t k = i; k < j; ++k) {
        auto& t = group[k];
        t.detach().copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
      i = j;
    }
  }
}

std::string ProcessGroup::broadcast_string(const std::string& value, const std::string& what) {
  auto size = torch::tensor({static_cast<double>(value.size())}, torch::kFloat64);
  broadcast({size}, what);
  const auto n = static_cast<int64_t>(size.item<double>());
  // Bytes as doubles: exact, and the one dtype every backend takes.
  auto bytes = torch::zeros({std::max<int64_t>(1, n)}, torch::kFloat64);
  if (is_main())
    for (int64_t i = 0; i < n; ++i)
      bytes[i] = static_cast<double>(static_cast<unsigned char>(value[static_cast<size_t>(i)]));
  broadcast({bytes}, what);
  std::string out(static_cast<size_t>(n), '\0');
  const auto acc = bytes.accessor<double, 1>();
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<char>(acc[i]);
  return out;
}

void ProcessGroup::barrier(const std::string& what) {
  // An all-reduce of one number: a barrier that honours the timeout on every backend.
  sum(0.0, what);
}

GradientReducer::GradientReducer(ProcessGroup& group, std::vector<torch::Tensor> params,
                                 double bucket_mb)
    : group_(group), params_(std::move(params)) {
  const auto cap = static_cast<int64_t>(bucket_mb * 1024 * 1024);
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  arrived_.assign(params_.size(), false);
  // Reverse registration order: the output side of the model produces its gradients first.
  int64_t bytes = 0;
  for (size_t r = params_.size(); r-- > 0;) {
    const int64_t size = params_[r].numel() * 4;
    if (buckets_.empty() || (bytes > 0 && bytes + size > cap)) {
      buckets_.emplace_back();
      bytes = 0;
    }
    auto& b = buckets_.back();
    slot_of_[r] = b.params.size();
    b.offsets.push_back(bytes / 4);
    b.params.push_back(r);
    bucket_of_[r] = buckets_.size() - 1;
    bytes += size;
  }
  for (auto& b : buckets_) {
    int64_t n = 0;
    for (size_t i : b.params) n += params_[i].numel();
    b.flat = torch::zeros({n}, torch::dtype(torch::kFloat32).device(params_[b.params[0]].device()));
  }
  for (size_t i = 0; i < params_.size(); ++i)
    hooks_.push_back(params_[i].register_hook([this, i](torch::Tensor grad) { on_grad(i, grad); }));
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < params_.size(); ++i) params_[i].remove_hook(hooks_[i]);
}

void GradientReducer::prepare(bool sync) {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = sync;
  next_launch_ = 0;
  std::fill(arrived_.begin(), arrived_.end(), false);
  for (auto& b : buckets_) {
    b.pending = b.params.size();
    b.work.reset();
  }
}

void GradientReducer::on_grad(size_t index, const torch::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_ || arrived_[index]) return;
  // The hook sees this backward's gradient before it is added to .grad: the bucket takes the sum
  // (earlier micro-batches' accumulation + this one).
  torch::NoGradGuard no_grad;
  const auto& p = params_[index];
  auto& b = buckets_[bucket_of_[index]];
  const size_t k = slot_of_[index];
  auto slot = b.flat.narrow(0, b.offsets[k], p.numel()).view(p.sizes());
  if (p.grad().defined())
    slot.copy_(p.grad() + grad);
  else
    slot.copy_(grad);
  arrived_[index] = true;
  --b.pending;
  launch_ready();
}

void GradientReducer::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    auto& b = buckets_[next_launch_];
    b.work = group_.sum_async(b.flat,
                              "gradient all-reduce (bucket " + std::to_string(next_launch_) + ")");
    ++next_launch_;
  }
}

void GradientReducer::finish() {
  torch::NoGradGuard no_grad;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Parameters no hook reached (no gradient here this step) contribute what .grad holds, or 0.
    for (size_t i = 0; i < params_.size(); ++i) {
      if (arrived_[i]) continue;
      auto& b = buckets_[bucket_of_[i]];
      const size_t k = slot_of_[i];
      auto slot = b.flat.narrow(0, b.offsets[k], params_[i].numel());
      if (params_[i].grad().defined())
        slot.copy_(params_[i].grad().reshape({-1}));
      else
        slot.zero_();
      arrived_[i] = true;
      --b.pending;
    }
    launch_ready();
    armed_ = false;
  }
  for (size_t n = 0; n < buckets_.size(); ++n) {
    auto& b = buckets_[n];
    group_.wait(b.work, "gradient all-reduce (bucket " + std::to_string(n) + ")");
    for (size_t k = 0; k < b.params.size(); ++k) {
      auto& p = params_[b.params[k]];
      auto sum = b.flat.narrow(0, b.offsets[k], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(sum);
      else
        p.mutable_grad() = sum.to(p.dtype()).clone();
    }
    b.work.reset();
  }
}

}  // namespace mllm
