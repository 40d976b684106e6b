#include <catch2/catch.hpp>

#include <map>
#include <set>

#include "core/blas.h"
#include "core/dist_env.h"
#include "core/error.h"

using namespace mllm;

namespace {

DistEnv read(const std::map<std::string, std::string>& vars) {
  return dist_env_from_environment([&](const std::string& k) -> std::optional<std::string> {
    const auto it = vars.find(k);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

}  // namespace

TEST_CASE("dist env: nothing set is one process") {
  const auto e = read({});
  CHECK_FALSE(e.distributed());
  CHECK(e.world_size == 1);
  CHECK(e.rank == 0);
  CHECK(e.source == "single");
}

TEST_CASE("dist env: torchrun's variables") {
  const auto e = read({{"RANK", "5"},
                       {"WORLD_SIZE", "8"},
                       {"LOCAL_RANK", "1"},
                       {"LOCAL_WORLD_SIZE", "4"},
                       {"MASTER_ADDR", "node0"},
                       {"MASTER_PORT", "29400"},
                       // torchrun inside a Slurm job: torchrun's ranks win
                       {"SLURM_PROCID", "0"},
                       {"SLURM_NTASKS", "2"}});
  CHECK(e.distributed());
  CHECK(e.source == "torchrun");
  CHECK(e.rank == 5);
  CHECK(e.world_size == 8);
  CHECK(e.local_rank == 1);
  CHECK(e.local_world_size == 4);
  CHECK(e.master_addr == "node0");
  CHECK(e.master_port == 29400);
}

TEST_CASE("dist env: Slurm's srun variables stand in, master from the node list") {
  const auto e = read({{"SLURM_PROCID", "3"},
                       {"SLURM_NTASKS", "4"},
                       {"SLURM_LOCALID", "1"},
                       {"SLURM_NTASKS_PER_NODE", "2(x2)"},
                       {"SLURM_JOB_NODELIST", "gpu[07-08]"}});
  CHECK(e.source == "slurm");
  CHECK(e.rank == 3);
  CHECK(e.world_size == 4);
  CHECK(e.local_rank == 1);
  CHECK(e.local_world_size == 2);
  CHECK(e.master_addr == "gpu07");
  CHECK(e.master_port == 29500);
  CHECK(read({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"MASTER_ADDR", "10.0.0.2"}})
            .master_addr == "10.0.0.2");
}

TEST_CASE("dist env: Slurm node lists") {
  CHECK(first_slurm_host("node7") == "node7");
  CHECK(first_slurm_host("a1,b2") == "a1");
  CHECK(first_slurm_host("gpu[03-05,07],cpu1") == "gpu03");
  CHECK(first_slurm_host("rack1-n[9,10]") == "rack1-n9");
}

TEST_CASE("dist env: malformed variables name themselves") {
  CHECK_THROWS_AS(read({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), ConfigError);
  CHECK_THROWS_WITH(read({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), Catch::Contains("RANK='2'"));
  CHECK_THROWS_WITH(read({{"WORLD_SIZE", "2"}}), Catch::Contains("RANK is not"));
  CHECK_THROWS_WITH(read({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}),
                    Catch::Contains("MASTER_PORT"));
}

TEST_CASE("blas: a generic OpenBLAS core on a CPU with AVX-512 or AVX2 is reported with the fix") {
  const std::set<std::string> avx512 = {"sse4_2",  "avx",      "avx2",     "fma",
                                        "avx512f", "avx512bw", "avx512vl", "avx512dq"};
  const std::set<std::string> avx2 = {"sse4_2", "avx", "avx2", "fma"};
  auto b = mllm::classify_blas("Prescott", avx512);
  CHECK(b.slow);
  CHECK(b.cpu_best == "SkylakeX");
  CHECK(b.describe() == "OpenBLAS Prescott");
  CHECK(mllm::classify_blas("Prescott", avx2).cpu_best == "Haswell");
  CHECK(mllm::classify_blas("Prescott", avx2).slow);
  CHECK(mllm::classify_blas("Sandybridge", avx512).slow);
  CHECK_FALSE(mllm::classify_blas("SkylakeX", avx512).slow);
  CHECK_FALSE(mllm::classify_blas("Haswell", avx2).slow);
  CHECK_FALSE(mllm::classify_blas("Zen", avx2).slow);
  CHECK_FALSE(mllm::classify_blas("Prescott", {"sse4_2"}).slow);  // nothing better to use
  CHECK_FALSE(mllm::classify_blas("", avx512).slow);              // not OpenBLAS
  CHECK(mllm::classify_blas("", avx512).describe() == "not OpenBLAS");
}
