#include "data/loader.h"

#include <algorithm>

#include "core/error.h"
#include "data/sampler.h"

namespace mllm {

LoaderOptions loader_options(const Config& config, int64_t pad_id) {
  LoaderOptions lo;
  lo.batch_size = config.train.batch_size;
  lo.grad_accum = config.train.grad_accum;
  lo.workers = config.data.workers;
  lo.prefetch = config.data.prefetch;
  lo.group_by_length = config.data.group_by_length;
  lo.skip_bad_images = config.data.on_bad_record == "skip";
  lo.pack_length = config.data.packing ? config.data.max_length : 0;
  lo.pad_id = pad_id;
  lo.seed = static_cast<uint64_t>(config.run.seed);
  return lo;
}

std::vector<std::vector<int64_t>> plan_epoch(const SampleSource& data, const LoaderOptions& o,
                                             int64_t epoch) {
  const int64_t N = data.epoch_size();
  const int64_t per_step = o.samples_per_step();
  std::vector<int64_t> order = data.epoch_order(epoch, o.seed);
  if (o.group_by_length) {
    const int64_t mega = per_step * 50;
    for (int64_t b = 0; b < N; b += mega) {
      auto first = order.begin() + b, last = order.begin() + std::min(N, b + mega);
      std::stable_sort(first, last, [&](int64_t x, int64_t y) {
        return data.length_hint(static_cast<size_t>(x)) > data.length_hint(static_cast<size_t>(y));
      });
    }
  }
  std::vector<std::vector<int64_t>> batches;
  for (int64_t step = 0; (step + 1) * per_step <= N; ++step)
    for (int64_t m = 0; m < o.grad_accum; ++m) {
      const auto begin =
          order.begin() + step * per_step + m * o.global_batch() + o.rank * o.batch_size;
      batches.emplace_back(begin, begin + o.batch_size);
    }
  return batches;
}

Batch collate_items(const SampleSource& data, const std::vector<int64_t>& indices,
                    const ImageTransform& transform, int64_t pad_id, bool skip_bad_images,
                    int64_t* bad_images, int64_t* bad_records, int64_t pack_length) {
  // Tokenize here, on the worker: a bad record is an error or (skip mode) leaves the batch.
  const auto K = static_cast<size_t>(data.samples_per_item());
  std::vector<std::vector<Sample>> items;
  items.reserve(indices.size());
  for (int64_t i : indices) {
    auto s = data.try_item(static_cast<size_t>(i));
    if (s)
      items.push_back(std::move(*s));
    else if (bad_records)
      ++*bad_records;
  }
  if (items.empty())
    throw Error("[DataLoader] every sample of a batch was a bad record (data.on_bad_record=skip)");
  std::vector<const Sample*> rows;
  for (size_t k = 0; k < K; ++k)
    for (const auto& item : items) rows.push_back(&item[k]);
  int64_t dropped = 0;
  if (K > 1 && pack_length > 0)
    throw Error("[DataLoader] preference pairs are not packed (data.packing)");
  Batch b = collate(rows, transform, pad_id, skip_bad_images, &dropped, pack_length);
  if (K > 1) {
    // The samples of an item share its image, so an unreadable one drops all K rows together.
    if (dropped % static_cast<int64_t>(K) != 0 || b.input_ids.size(0) % static_cast<int64_t>(K))
      throw Error("[DataLoader] the samples of a preference pair lost their pairing");
    dropped /= static_cast<int64_t>(K);
    b.pairs = b.input_ids.size(0) / static_cast<int64_t>(K);
  }
  if (bad_images) *bad_images += dropped;
  if (data.sources() > 1) {
    b.source_items.assign(data.sources(), 0);
    for (int64_t i : indices) ++b.source_items[data.source_of(static_cast<size_t>(i))];
  }
  return b;
}

DataLoader::DataLoader(const SampleSource& data, const ImageTransform& transform,
                       LoaderOptions options, LoaderPosition start)
    : data_(data), transform_(transform), options_(options), consumed_(start), cursor_(start) {
  if (options_.world_size < 1 || options_.rank < 0 || options_.rank >= options_.world_size)
    throw Error("[DataLoader] rank " + std::to_string(options_.rank) + " is not in a world of " +
                std::to_string(options_.world_size));
  if (steps_per_epoch() == 0)
    throw Error("[DataLoader] " + std::to_string(data.epoch_size()) +
                " samples are fewer than one step (" + std::to_string(options_.samples_per_step()) +
                ")");
  for (int64_t i = 0; i < options_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  space_cv_.notify_all();
  ready_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

int64_t DataLoader::steps_per_epoch() const {
  return data_.epoch_size() / options_.samples_per_step();
}

int64_t DataLoader::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

int64_t DataLoader::dropped_records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_records_;
}

DataLoader::Item DataLoader::plan_next() {
  const int64_t per_step = options_.samples_per_step();
  // A new epoch starts where a whole step no longer fits (checked at step boundaries only).
  if (cursor_.position % per_step == 0 && cursor_.position + per_step > data_.epoch_size()) {
    ++cursor_.epoch;
    cursor_.position = 0;
  }
  if (plan_epoch_ != cursor_.epoch) {
    epoch_plan_ = plan_epoch(data_, options_, cursor_.epoch);
    plan_epoch_ = cursor_.epoch;
  }
  Item item;
  item.samples = epoch_plan_[static_cast<size_t>(cursor_.position / options_.global_batch())];
  cursor_.position += options_.global_batch();
  item.after = cursor_;
  return item;
}

DataLoader::Built DataLoader::build(const Item& item) const {
  Built out;
  out.batch =
      collate_items(data_, item.samples, transform_, options_.pad_id, options_.skip_bad_images,
                    &out.bad_images, &out.bad_records, options_.pack_length);
  out.after = item.after;
  return out;
}

void DataLoader::count(const Built& built) {
  std::lock_guard<std::mutex> lock(mu_);
  dropped_ += built.bad_images;
  dropped_records_ += built.bad_records;
  consumed_ = built.after;
}

void DataLoader::worker_loop() {
  for (;;) {
    Item item;
    int64_t seq;
    {
      std::unique_lock<std::mutex> lock(mu_);
      space_cv_.wait(lock, [&] {
        return stop_ || next_seq_ < consumer_seq_ +
                                        options_.workers * std::max<int64_t>(1, options_.prefetch);
      });
      if (stop_ || error_) return;
      seq = next_seq_++;
      item = plan_next();
    }
    try {
      Built b = build(item);
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(seq, std::move(b));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_ || seq < error_seq_) error_ = std::current_exception(), error_seq_ = seq;
    }
    ready_cv_.notify_all();
  }
}

Batch DataLoader::next() {
  if (threads_.empty()) {
    Built b = build(plan_next());
    count(b);
    return std::move(b.batch);
  }
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t seq = consumer_seq_;
  ready_cv_.wait(lock, [&] { return ready_.count(seq) || (error_ && error_seq_ <= seq); });
  if (!ready_.count(seq)) std::rethrow_exception(error_);
  Built b = std::move(ready_.at(seq));
  ready_.erase(seq);
  ++consumer_seq_;
  lock.unlock();
  space_cv_.notify_all();
  count(b);
  return std::move(b.batch);
}

}  // namespace mllm
