#include "core/dist_env.h"

#include <cstdlib>

#include "core/error.h"

namespace mllm {

namespace {

int parse_int(const std::string& name, const std::string& value, long lo, long hi) {
  size_t used = 0;
  long v = 0;
  try {
    v = std::stol(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size() || v < lo || v > hi)
    throw ConfigError("environment variable " + name + "='" + value +
                      "': expected an integer in [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + "]");
  return static_cast<int>(v);
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // Hosts are separated by commas outside brackets; a bracket holds ranges of suffixes.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == ',' && depth == 0) break;
    if (c == '[') ++depth;
    if (c == ']') --depth;
    first += c;
  }
  const auto open = first.find('[');
  if (open == std::string::npos) return first;
  const std::string prefix = first.substr(0, open);
  std::string suffix = first.substr(open + 1);
  suffix = suffix.substr(0, suffix.find_first_of(",-]"));
  return prefix + suffix;
}

DistEnv dist_env_from_environment(
    const std::function<std::optional<std::string>(const std::string&)>& getenv_fn) {
  auto get = [&](const std::string& name) -> std::optional<std::string> {
    if (getenv_fn) return getenv_fn(name);
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
  DistEnv env;
  const auto world = get("WORLD_SIZE");
  const auto slurm_world = get("SLURM_NTASKS");
  if (world) {
    env.source = "torchrun";
    env.world_size = parse_int("WORLD_SIZE", *world, 1, 1 << 20);
    const auto rank = get("RANK");
    if (!rank && env.world_size > 1)
      throw ConfigError("environment variable WORLD_SIZE=" + *world +
                        " is set but RANK is not: launch with torchrun or scripts/launch, which "
                        "set both");
    env.rank = rank ? parse_int("RANK", *rank, 0, env.world_size - 1) : 0;
    const auto local = get("LOCAL_RANK");
    env.local_rank = local ? parse_int("LOCAL_RANK", *local, 0, 1 << 20) : env.rank;
    const auto local_world = get("LOCAL_WORLD_SIZE");
    env.local_world_size =
        local_world ? parse_int("LOCAL_WORLD_SIZE", *local_world, 1, 1 << 20) : env.world_size;
  } else if (slurm_world && get("SLURM_PROCID")) {
    env.source = "slurm";
    env.world_size = parse_int("SLURM_NTASKS", *slurm_world, 1, 1 << 20);
    env.rank = parse_int("SLURM_PROCID", *get("SLURM_PROCID"), 0, env.world_size - 1);
    const auto local = get("SLURM_LOCALID");
    env.local_rank = local ? parse_int("SLURM_LOCALID", *local, 0, 1 << 20) : 0;
    // SLURM_NTASKS_PER_NODE may read "4(x2)" on uneven allocations: its leading number will do.
    if (const auto per_node = get("SLURM_NTASKS_PER_NODE"); per_node && !per_node->empty()) {
      const auto digits = per_node->substr(0, per_node->find_first_not_of("0123456789"));
      env.local_world_size =
          digits.empty() ? 1 : parse_int("SLURM_NTASKS_PER_NODE", digits, 1, 1 << 20);
    }
    auto nodes = get("SLURM_JOB_NODELIST");
    if (!nodes) nodes = get("SLURM_NODELIST");
    if (nodes && !nodes->empty()) env.master_addr = first_slurm_host(*nodes);
  }
  if (const auto addr = get("MASTER_ADDR"); addr && !addr->empty()) env.master_addr = *addr;
  if (const auto port = get("MASTER_PORT"); port && !port->empty())
    env.master_port = parse_int("MASTER_PORT", *port, 1, 65535);
  return env;
}

}  // namespace mllm
