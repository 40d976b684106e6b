// A data mixture (data.train as a list of sources), as LLaMA-Factory's and ms-swift's dataset
// mixing do: each source has its own format, image_root and (optionally) chat template, and either
// a `weight` — its share of an epoch — or `epochs` — how many passes over it an epoch makes.
//
// An epoch holds sum(epochs_i x n_i) items from the `epochs` sources plus, shared by the weighted
// sources in proportion to their weights (largest remainders, so the counts add up exactly), as
// many items as those sources hold together. Source i's items are drawn from its own stream of
// fresh permutations (so a source smaller than its share repeats, one larger is subsampled, and
// the next epoch continues where this one stopped), then all are shuffled together. The order is a
// pure function of (seed, epoch): a checkpoint's (epoch, position) resumes it exactly, and under
// data parallel each rank takes its disjoint run of each global batch, as with one source.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/datasets.h"

namespace mllm {

class MixtureSource final : public SampleSource {
 public:
  struct Part {
    std::string name;  // for logs and metrics: the file's name
    std::unique_ptr<SampleSource> data;
    double weight = 0, epochs = 0;  // one of them > 0
  };
  explicit MixtureSource(std::vector<Part> parts);

  size_t size() const override { return offsets_.back(); }
  int64_t length_hint(size_t i) const override;
  int64_t samples_per_item() const override { return parts_.front().data->samples_per_item(); }
  std::optional<std::vector<Sample>> try_item(size_t i) const override;
  DatasetStats stats() const override;
  int64_t epoch_size() const override { return epoch_size_; }
  std::vector<int64_t> epoch_order(int64_t epoch, uint64_t seed) const override;
  size_t sources() const override { return parts_.size(); }
  size_t source_of(size_t i) const override;

  const std::vector<int64_t>& counts() const { return counts_; }  // items per source per epoch
  const std::string& name(size_t source) const { return parts_[source].name; }
  const SampleSource& part(size_t source) const { return *parts_[source].data; }

 private:
  std::vector<Part> parts_;
  std::vector<size_t> offsets_;  // item index where each source starts; back() = size()
  std::vector<int64_t> counts_;
  int64_t epoch_size_ = 0;
};

}  // namespace mllm
