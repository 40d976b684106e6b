// Graceful stop on SIGTERM / SIGINT, for preemptible clusters (Slurm sends SIGTERM, then SIGKILL
// after a grace period). While a StopSignals is alive, the first SIGTERM or SIGINT only sets a flag
// that the training loop reads after each step (it then saves a checkpoint and exits 0); a second
// SIGINT (Ctrl-C twice) aborts the process at once. The previous handlers come back on destruction.
#pragma once

namespace mllm {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  bool requested() const;
  // "SIGTERM" / "SIGINT" once requested, else "".
  const char* name() const;
};

}  // namespace mllm
