#include "data/mixture.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "data/sampler.h"

namespace mllm {

MixtureSource::MixtureSource(std::vector<Part> parts) : parts_(std::move(parts)) {
  if (parts_.empty()) throw Error("[MixtureSource] no sources");
  offsets_.push_back(0);
  for (const auto& p : parts_) {
    if (p.data->samples_per_item() != parts_.front().data->samples_per_item())
      throw Error("[MixtureSource] " + p.name + " mixes preference pairs with conversations");
    offsets_.push_back(offsets_.back() + p.data->size());
  }
  // Passes first, then the weighted sources share what they hold together by their weights.
  counts_.assign(parts_.size(), 0);
  double weights = 0;
  int64_t weighted_items = 0;
  for (size_t i = 0; i < parts_.size(); ++i) {
    const auto n = static_cast<double>(parts_[i].data->size());
    if (parts_[i].epochs > 0) {
      counts_[i] = static_cast<int64_t>(std::llround(parts_[i].epochs * n));
    } else {
      weights += parts_[i].weight;
      weighted_items += static_cast<int64_t>(parts_[i].data->size());
    }
  }
  if (weights > 0) {
    // Largest remainders: the shares add up to weighted_items exactly.
    std::vector<std::pair<double, size_t>> rest;
    int64_t given = 0;
    for (size_t i = 0; i < parts_.size(); ++i) {
      if (parts_[i].epochs > 0) continue;
      const double share = parts_[i].weight / weights * static_cast<double>(weighted_items);
      counts_[i] = static_cast<int64_t>(std::floor(share));
      given += counts_[i];
      rest.emplace_back(share - std::floor(share), i);
    }
    std::stable_sort(rest.begin(), rest.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t k = 0; given < weighted_items; ++k, ++given)
      ++counts_[rest[k % rest.size()].second];
  }
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (counts_[i] > 0 && parts_[i].data->size() == 0)
      throw Error("[MixtureSource] " + parts_[i].name + " has no usable records");
    epoch_size_ += counts_[i];
  }
}

size_t MixtureSource::source_of(size_t i) const {
  return static_cast<size_t>(std::upper_bound(offsets_.begin(), offsets_.end(), i) -
                             offsets_.begin()) -
         1;
}

int64_t MixtureSource::length_hint(size_t i) const {
  const size_t s = source_of(i);
  return parts_[s].data->length_hint(i - offsets_[s]);
}

std::optional<std::vector<Sample>> MixtureSource::try_item(size_t i) const {
  const size_t s = source_of(i);
  return parts_[s].data->try_item(i - offsets_[s]);
}

DatasetStats MixtureSource::stats() const {
  DatasetStats out;
  for (const auto& p : parts_) {
    const auto st = p.data->stats();
    out.records += st.records;
    out.skipped += st.skipped;
    out.truncated += st.truncated;
    out.unrendered_replies += st.unrendered_replies;
    out.records_with_unrendered += st.records_with_unrendered;
    out.prompt_boundary_mismatches += st.prompt_boundary_mismatches;
    for (const auto& [why, n] : st.skip_reasons) out.skip_reasons[why] += n;
  }
  return out;
}

std::vector<int64_t> MixtureSource::epoch_order(int64_t epoch, uint64_t seed) const {
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(epoch_size_));
  for (size_t i = 0; i < parts_.size(); ++i) {
    const auto n = static_cast<int64_t>(parts_[i].data->size());
    if (counts_[i] == 0) continue;
    // Source i's stream: its permutation for pass 0, then pass 1, ...; this epoch takes stream
    // positions [epoch x count, (epoch + 1) x count).
    const EpochSampler passes(n, seed * 7919ULL + 104729ULL * (i + 1));
    int64_t pass = -1;
    std::vector<int64_t> perm;
    for (int64_t k = epoch * counts_[i]; k < (epoch + 1) * counts_[i]; ++k) {
      if (k / n != pass) perm = passes.order(pass = k / n);
      order.push_back(static_cast<int64_t>(offsets_[i]) + perm[static_cast<size_t>(k % n)]);
    }
  }
  Rng rng(seed * 1000003ULL + static_cast<uint64_t>(epoch));
  rng.shuffle(order);
  return order;
}

}  // namespace mllm
