// Data parallelism on LibTorch's c10d, the engine torch.distributed runs on: a TCPStore for the
// rendezvous at MASTER_ADDR:MASTER_PORT and ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA) for
// the collectives. Every rank holds the whole model and a slice of each global batch; gradients are
// summed across ranks in buckets while backward still runs (GradientReducer), so after a step every
// rank holds the same weights — the weights one process would have after the same global batch.
//
// Failure: every collective waits at most run.distributed.timeout seconds. A rank that died (its
// sockets close) or hung (it stops answering) makes the others fail their next collective with a
// DistributedError naming the operation and the step, instead of hanging; the checkpoints written
// so far stay intact and `--resume auto` continues from the newest.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config.h"
#include "core/dist_env.h"
#include "core/error.h"
#include "core/torch_compat.h"

namespace c10d {
class Store;
class Work;
}  // namespace c10d

namespace mllm {

// A collective failed or timed out: another rank died, hung, or the rendezvous never completed.
class DistributedError : public Error {
 public:
  explicit DistributedError(const std::string& what) : Error(what) {}
};

// Gradients of the trainable parameters made equal across ranks during a step's backward passes.
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  // Before each backward of a step: only the last (sync = true) reduces; the earlier ones
  // accumulate locally, as DDP's no_sync.
  virtual void prepare(bool sync) = 0;
  // After the synchronising backward: every rank's .grad holds the sum.
  virtual void finish() = 0;
  virtual size_t buckets() const = 0;
};

// A collective that has started: calling it waits for the result (and throws DistributedError if
// the collective fails or times out).
using PendingCollective = std::function<void()>;

// What the trainer asks of the processes it runs in: one process (SingleProcess, where every
// collective returns its input) or one rank of many (ProcessGroup). Every rank must call the
// same collectives in the same order; `what` names the operation in errors.
class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  bool is_main() const { return rank() == 0; }
  // One line on the job for the log ("" for a single process).
  virtual std::string describe() const = 0;
  // What the run is doing ("step 12"): named in the error of a collective that fails.
  virtual void set_context(std::string context) = 0;

  // Element-wise sums across ranks (as doubles: exact for counts).
  virtual std::vector<double> sum(std::vector<double> values, const std::string& what) = 0;
  double sum(double value, const std::string& what) {
    return sum(std::vector<double>{value}, what)[0];
  }
  // Rank 0's tensors, in place on every rank (floating tensors; any dtype, any device).
  virtual void broadcast(const std::vector<torch::Tensor>& tensors, const std::string& what,
                         double chunk_mb = 64) = 0;
  // Rank 0's string on every rank.
  virtual std::string broadcast_string(const std::string& value, const std::string& what) = 0;
  virtual void barrier(const std::string& what) = 0;
  // Sums the gradients of `params` across ranks (nothing to do for one process).
  virtual std::unique_ptr<GradientSync> gradient_sync(std::vector<torch::Tensor> params,
                                                      double bucket_mb) = 0;

  // For sharded training (train/sharding.h). `full` holds world_size() equal chunks; rank r's
  // chunk is `mine`'s size. Both start now and finish when the returned PendingCollective is
  // called; each kind goes in its own stream, so that gradients reduced during backward never
  // interleave with weights gathered during backward.
  // reduce_scatter: `mine` = this rank's chunk of the sum over ranks of `full` (left as scratch).
  virtual PendingCollective reduce_scatter(torch::Tensor full, torch::Tensor mine,
                                           const std::string& what) = 0;
  // all_gather: `full` = every rank's `mine`, in rank order (`mine` may be a view of `full`).
  virtual PendingCollective all_gather(torch::Tensor mine, torch::Tensor full,
                                       const std::string& what) = 0;
};

// A job of one process: rank 0 of 1.
class SingleProcess final : public Collectives {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string describe() const override { return ""; }
  void set_context(std::string) override {}
  std::vector<double> sum(std::vector<double> values, const std::string&) override {
    return values;
  }
  void broadcast(const std::vector<torch::Tensor>&, const std::string&, double) override {}
  std::string broadcast_string(const std::string& value, const std::string&) override {
    return value;
  }
  void barrier(const std::string&) override {}
  std::unique_ptr<GradientSync> gradient_sync(std::vector<torch::Tensor>, double) override;
  PendingCollective reduce_scatter(torch::Tensor full, torch::Tensor mine,
                                   const std::string&) override;
  PendingCollective all_gather(torch::Tensor mine, torch::Tensor full, const std::string&) override;
};

// Joins the job `env` describes: a ProcessGroup when this process is one rank of several, else a
// SingleProcess.
std::unique_ptr<Collectives> join_job(const DistEnv& env, const DistributedConfig& config,
                                      const torch::Device& device);

class ProcessGroup final : public Collectives {
 public:
  // Joins the job `env` describes (nullptr when it is a single process): connects to the store
  // (rank 0 serves it), then builds the backend ("auto": nccl for a CUDA device, gloo otherwise).
  static std::unique_ptr<ProcessGroup> create(const DistEnv& env, const DistributedConfig& config,
                                              const torch::Device& device);
  ~ProcessGroup() override;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }
  std::string describe() const override;
  const DistEnv& env() const { return env_; }
  const std::string& backend() const { return backend_name_; }
  double timeout_seconds() const { return timeout_s_; }
  void set_context(std::string context) override { context_ = std::move(context); }

  std::vector<double> sum(std::vector<double> values, const std::string& what) override;
  using Collectives::sum;
  void broadcast(const std::vector<torch::Tensor>& tensors, const std::string& what,
                 double chunk_mb = 64) override;
  std::string broadcast_string(const std::string& value, const std::string& what) override;
  void barrier(const std::string& what) override;
  std::unique_ptr<GradientSync> gradient_sync(std::vector<torch::Tensor> params,
                                              double bucket_mb) override;
  // NCCL has both natively; Gloo (1.13) has neither as such: reduce_scatter is an all-reduce of
  // which each rank keeps its chunk (the same result, W/2 times the traffic), all_gather is Gloo's
  // list all-gather.
  PendingCollective reduce_scatter(torch::Tensor full, torch::Tensor mine,
                                   const std::string& what) override;
  PendingCollective all_gather(torch::Tensor mine, torch::Tensor full,
                               const std::string& what) override;

  // For GradientReducer: an in-place sum started now, finished by wait().
  c10::intrusive_ptr<c10d::Work> sum_async(torch::Tensor& flat, const std::string& what);
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);

 private:
  ProcessGroup() = default;
  [[noreturn]] void fail(const std::string& what, const std::exception& e) const;
  // Tensors the backend communicates in place: CPU for gloo, this rank's GPU for nccl.
  torch::Device comm_device() const;

  DistEnv env_;
  std::string backend_name_;
  double timeout_s_ = 0;
  std::string context_ = "start-up";
  torch::Device device_ = torch::kCPU;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<CommBackend> backend_;
  // The second stream: reduce_scatter's (a process group of its own over the same store).
  c10::intrusive_ptr<CommBackend> grad_backend_;
};

// Sums the gradients of `params` across ranks, DDP style: parameters are grouped into buckets of
// about bucket_mb (in reverse order of registration, roughly the order backward produces them);
// during the synchronising backward a hook copies each gradient into its bucket as it is produced,
// and a bucket whose gradients are all in is summed asynchronously right away — buckets start in
// the same order on every rank, which the backends require. finish() sums what no hook reached
// (a parameter without a gradient on this rank: an unused expert), waits, and writes the sums into
// .grad. Summing (not averaging) is right because every rank divides its loss by the global
// token count.
class GradientReducer final : public GradientSync {
 public:
  GradientReducer(ProcessGroup& group, std::vector<torch::Tensor> params, double bucket_mb);
  ~GradientReducer() override;
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  void prepare(bool sync) override;
  void finish() override;
  size_t buckets() const override { return buckets_.size(); }

 private:
  struct Bucket {
    torch::Tensor flat;            // fp32, on the parameters' device
    std::vector<size_t> params;    // indices into params_
    std::vector<int64_t> offsets;  // of each parameter in flat
    size_t pending = 0;            // gradients still to arrive this step
    c10::intrusive_ptr<c10d::Work> work;
  };
  void on_grad(size_t index, const torch::Tensor& grad);
  void launch_ready();  // starts the buckets that are complete, in order

  ProcessGroup& group_;
  std::vector<torch::Tensor> params_;
  std::vector<unsigned> hooks_;
  std::vector<size_t> bucket_of_, slot_of_;  // each parameter's bucket and place in it
  std::vector<bool> arrived_;
  std::vector<Bucket> buckets_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  std::mutex mu_;
};

}  // namespace mllm
