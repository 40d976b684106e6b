// Where this process sits in a data-parallel job, read from the environment its launcher set up:
// torchrun (and scripts/launch) export RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR and MASTER_PORT; under Slurm's srun, SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
// the job's node list stand in for any that are missing. No LibTorch here.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace mllm {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;  // ranks on this node (they share its cores)
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;        // torchrun's default
  std::string source = "single";  // "single" | "torchrun" | "slurm": where the ranks came from

  bool distributed() const { return world_size > 1; }
};

// Reads the variables through `getenv` (std::getenv by default; tests pass a map). A variable that
// is set but malformed (RANK=x, RANK >= WORLD_SIZE, a port out of range) is a ConfigError naming
// it.
DistEnv dist_env_from_environment(
    const std::function<std::optional<std::string>(const std::string&)>& getenv = {});

// The first host of a Slurm node list: "gpu[03-05,07],cpu1" -> "gpu03", "node7" -> "node7".
std::string first_slurm_host(const std::string& nodelist);

}  // namespace mllm
