// The order in which a run visits its samples: a fresh permutation per epoch, a pure function of
// (seed, epoch), so a resumed run regenerates exactly the order it was interrupted in and continues
// from the stored position. Incomplete last batches are dropped (constant shapes per step).
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

#include "core/rng.h"

namespace mllm {

class EpochSampler {
 public:
  EpochSampler(int64_t size, uint64_t seed, bool shuffle = true)
      : size_(size), seed_(seed), shuffle_(shuffle) {}

  std::vector<int64_t> order(int64_t epoch) const {
    std::vector<int64_t> idx(static_cast<size_t>(size_));
    std::iota(idx.begin(), idx.end(), 0);
    if (shuffle_) {
      Rng rng(seed_ * 1000003ULL + static_cast<uint64_t>(epoch));
      rng.shuffle(idx);
    }
    return idx;
  }
  int64_t size() const { return size_; }

 private:
  int64_t size_;
  uint64_t seed_;
  bool shuffle_;
};

}  // namespace mllm
