// Batches for the trainer, prepared ahead of it by worker threads (tokenization, image decoding
// and collation), delivered strictly in plan order: the sequence of batches depends only on the
// seed, the epoch and the starting position — never on the number of workers or on timing. An
// epoch is a fresh permutation of the samples (EpochSampler); with group_by_length, each megabatch
// of 50 steps' worth of samples is sorted by estimated length (longest first;
// ConversationDataset::length_hint), as HF's LengthGroupedSampler does, so batches waste less
// padding. A step takes grad_accum micro-batches; an epoch ends when a whole
// step no longer fits (incomplete last steps are dropped).
//
// Items of several samples (preference pairs) become rows grouped by position: a micro-batch of
// P pairs is rows 0..P-1 chosen and P..2P-1 rejected (Batch::pairs = P), so both sides go through
// the model in one forward, as TRL's concatenated_forward does.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "data/collator.h"
#include "data/datasets.h"
#include "data/image_transform.h"

namespace mllm {

struct LoaderOptions {
  int64_t batch_size = 1;  // micro-batch
  int64_t grad_accum = 1;  // micro-batches per step
  int64_t workers = 0;     // 0 = collate on the calling thread
  int64_t prefetch = 2;    // batches prepared ahead, per worker
  bool group_by_length = false;
  bool skip_bad_images = false;
  int64_t pack_length = 0;  // > 0: samples packed into rows of this many tokens (data.packing)
  int64_t pad_id = 0;
  uint64_t seed = 0;
  // Data parallelism: each global micro-batch holds batch_size x world_size samples, of which this
  // rank takes the rank-th run of batch_size. Positions count global samples, so they agree on
  // every rank and a checkpoint resumes the same way whoever wrote it.
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t global_batch() const { return batch_size * world_size; }  // per micro-batch
  int64_t samples_per_step() const { return batch_size * grad_accum * world_size; }
};

// The loader settings a run's config asks for (train.batch_size / grad_accum, data.workers /
// prefetch / group_by_length / on_bad_record / packing, run.seed).
LoaderOptions loader_options(const Config& config, int64_t pad_id);

// Where the loader stands: the epoch and the samples of it already handed out.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t position = 0;
};

// This rank's samples of every micro-batch of an epoch, in order (a pure function of seed, epoch,
// rank and world size).
std::vector<std::vector<int64_t>> plan_epoch(const SampleSource& data, const LoaderOptions& options,
                                             int64_t epoch);

// The batch of items `indices` (what a worker builds; also used for evaluation). Bad records are
// left out under data.on_bad_record=skip and counted in *bad_records; unreadable images likewise
// with skip_bad_images (a pair's two rows share the image, so they leave together).
Batch collate_items(const SampleSource& data, const std::vector<int64_t>& indices,
                    const ImageTransform& transform, int64_t pad_id, bool skip_bad_images,
                    int64_t* bad_images, int64_t* bad_records, int64_t pack_length = 0);

class DataLoader {
 public:
  DataLoader(const SampleSource& data, const ImageTransform& transform, LoaderOptions options,
             LoaderPosition start = {});
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next micro-batch, in plan order; blocks until it is ready. Errors from a worker (a corrupt
  // image, say) are rethrown here, on the trainer's thread.
  Batch next();
  // The position after the batches handed out so far (what a checkpoint stores).
  LoaderPosition position() const {
    std::lock_guard<std::mutex> lock(mu_);
    return consumed_;
  }
  int64_t steps_per_epoch() const;
  // Of the batches handed out: samples dropped for unreadable images, and as bad records found
  // when tokenized (both under data.on_bad_record=skip).
  int64_t dropped() const;
  int64_t dropped_records() const;

 private:
  struct Item {
    std::vector<int64_t> samples;
    LoaderPosition after;
  };
  struct Built {
    Batch batch;
    LoaderPosition after;
    int64_t bad_images = 0, bad_records = 0;
  };
  Item plan_next();  // the next item of the plan (advances the producer cursor)
  Built build(const Item& item) const;
  void count(const Built& built);  // a batch handed out
  void worker_loop();

  const SampleSource& data_;
  const ImageTransform& transform_;
  LoaderOptions options_;
  LoaderPosition consumed_;

  // Producer side of the plan.
  LoaderPosition cursor_;
  std::vector<std::vector<int64_t>> epoch_plan_;
  int64_t plan_epoch_ = -1;
  int64_t next_seq_ = 0;  // next sequence number to hand to a worker

  mutable std::mutex mu_;
  std::condition_variable ready_cv_, space_cv_;
  std::map<int64_t, Built> ready_;
  std::exception_ptr error_;
  int64_t error_seq_ = -1;
  int64_t consumer_seq_ = 0;
  int64_t dropped_ = 0, dropped_records_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace mllm
