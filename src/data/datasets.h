// Datasets of LLaVA-format records. Loading reads, validates and renders every record through the
// conversation template (chat_template.h) and keeps the rendered text; tokenization happens on
// demand, in the loader's worker threads (sample(i) is thread-safe), as LLaVA's lazy dataset does.
// Each <image> in the text becomes Q placeholder ids (Q = the connector's tokens per image, as
// transformers' LlavaProcessor does), or, for a video, frames x the (pooled) tokens of a frame.
// Images are only checked to exist at load; the collator decodes them per batch.
//
// What can only be known after tokenizing (a record too long to truncate without cutting the image
// or every supervised token) is found when the record is first tokenized: sample(i) throws an Error
// naming file, line, record and id; try_sample(i) honours data.on_bad_record. The counters in
// stats() include such records once they have been seen. `mllm data check` tokenizes everything
// up front.
//
// Files: a JSON array of records or JSONL (one record per line), chosen by a ".jsonl" extension or
// data.*.format = llava_jsonl / preference_jsonl. Both are read record by record (an array is split
// into its top-level elements by a small scanner), so a multi-GB file is never held as one JSON
// value; only the token ids are kept.
//
// Conversation records (llava_json; the layout of LLaVA-1.5's llava_v1_5_mix665k.json):
//   {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
//    "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
//                      {"from": "gpt", "value": "The bus in the image is white and red."}, ...]}
//   "image" is optional (text-only records use no image tokens) and relative to image_root. The
//   single <image> may be anywhere in a human turn: as LLaVA's preprocess_multimodal does, it is
//   moved to the front ("<image>\n" + the rest). Turns may also be {"role", "content"}.
//   Several images (LLaVA-OneVision): "image": ["a.jpg", "b.jpg"] (or TRL's "images") with as many
//   <image> tags, each standing where it is. A video (LLaVA-Video / OneVision): "video": "clip.mp4"
//   or a list of frame files, with one <image> tag for the whole clip (data.video: frames sampled
//   uniformly, each encoded as an image, optionally pooled). The images' tokens must fit in
//   data.max_length (checked at load) and truncation never cuts one.
//
// Preference records (preference_json), each a prompt with a chosen and a rejected reply:
//   ShapesWorld / RLAIF-V style:  {"id", "image", "prompt": "<image>\nQ", "chosen": "A",
//                                  "rejected": "B"}
//   LLaVA conversation prompt:    {"id", "image", "conversations": [human, gpt, ..., human],
//                                  "chosen": "A", "rejected": "B"}
//   TRL conversational:           {"prompt": [{"role": "user", "content": ...}, ...],
//                                  "chosen": [{"role": "assistant", "content": ...}],
//                                  "rejected": [...], "images": ["x.jpg"]}
//                                 or without "prompt", chosen/rejected being whole conversations
//                                 that share all but their last message (TRL's implicit prompt).
//   "content" may be a string or TRL's list of {"type": "image"} / {"type": "text", "text"} parts.
//
// Bad records (malformed JSON, missing image file, <image> without an image or an image without
// <image>, no reply, too long to truncate without cutting the image or every supervised token)
// raise an Error naming the file, line (JSONL), record index, id and reason; with
// data.on_bad_record=skip they are counted in skipped() instead.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/anyres.h"
#include "core/config.h"
#include "data/chat_template.h"
#include "data/tokenizer/tokenizer.h"

namespace mllm {

constexpr int64_t kIgnoreIndex = -100;

// One visual input of a record, in the order of its <image> tags: an image, or a video whose
// data.video.frames frames (sampled uniformly) are each encoded as an image. A video is one tag.
struct Visual {
  enum class Kind { image, video_file, video_frames };
  Kind kind = Kind::image;
  // image: its file; video_file: the clip (decoded by OpenCV's VideoCapture when collated);
  // video_frames: the sampled frame files, in order.
  std::vector<std::filesystem::path> files;
  int64_t frames = 1;  // images it becomes (data.video.frames for a video)
  int64_t pool = 1;    // a video frame's token grid is pooled pool x pool (data.video.pool)
  // An image's size in pixels, read from its header at load when AnyRes is on (its token count
  // depends on it); 0 otherwise.
  int64_t height = 0, width = 0;
  bool video() const { return kind != Kind::image; }
};

struct Sample {
  std::string id;
  std::vector<int64_t> input_ids;  // (T)
  std::vector<int64_t> labels;     // (T), kIgnoreIndex where there is no loss
  std::vector<Visual> visuals;     // in placeholder order; empty for text-only samples
};

// Counters shared by the dataset kinds, for logs and metrics.jsonl.
struct DatasetStats {
  int64_t records = 0;                          // records read (kept + skipped)
  int64_t skipped = 0;                          // bad records skipped under on_bad_record=skip
  int64_t truncated = 0;                        // samples cut to data.max_length (seen so far)
  std::map<std::string, int64_t> skip_reasons;  // reason (text before the first ':') -> count
  // data.template: hf only (data/chat_template.h): replies without loss because the template
  // renders them differently once later turns follow, and the records that have such replies;
  // records whose rendered prompt ends inside a token (seen so far).
  int64_t unrendered_replies = 0;
  int64_t records_with_unrendered = 0;
  int64_t prompt_boundary_mismatches = 0;
};

// A record as loaded: the rendered conversation, waiting to be tokenized, and where it came from.
struct Record {
  std::string id;
  std::string text;                                   // the rendered template
  std::vector<std::pair<size_t, size_t>> supervised;  // byte spans of `text` with the loss
  std::vector<size_t> prompt_ends;  // hf template: where each span's rendered prompt ends
  std::vector<Visual> visuals;      // empty for text-only records
  size_t line = 0;                  // 1-based line the record starts on
  size_t index = 0;                 // 0-based record index in the file
};

// Turns records into samples (thread-safe) and keeps the counters of what that finds.
class RecordTokenizer {
 public:
  RecordTokenizer(const DataSourceConfig& source, const DataConfig& data,
                  const Tokenizer& tokenizer, const ImageTokens& image_tokens);
  RecordTokenizer(const RecordTokenizer&) = delete;
  RecordTokenizer& operator=(const RecordTokenizer&) = delete;

  // Tokenizes record `r` (slot `slot` of the status table). Throws Error naming the record.
  Sample tokenize(const Record& r, size_t slot) const;
  // The placeholder ids a visual takes: image_tokens for an image (with AnyRes, for its size); for
  // a video, data.video.frames times a frame's (pooled) tokens.
  int64_t visual_tokens(const Visual& v) const;
  int64_t visual_tokens(const std::vector<Visual>& vs) const;
  // As tokenize, but under on_bad_record=skip a bad record gives nullopt (counted, logged once).
  std::optional<Sample> try_tokenize(const Record& r, size_t slot) const;
  void resize(size_t slots);
  // `loaded` (the counters of loading) plus what tokenization has found so far.
  DatasetStats merged(const DatasetStats& loaded) const;

  const Tokenizer& tokenizer() const { return tok_; }
  const ImageTokens& image_tokens() const { return image_tokens_; }
  // At load: reads each image's size from its header when AnyRes is on (an unreadable image is a
  // bad record), then checks the visual-token budget (the images alone must fit data.max_length).
  void measure(std::vector<Visual>& visuals) const;
  bool use_images() const { return use_images_; }

 private:
  // check_boundaries: whether to look for an hf prompt that ends inside a token
  // (boundary_mismatch).
  Sample tokenize_unlabelled(const Record& r, bool& truncated, bool check_boundaries,
                             bool& boundary_mismatch) const;
  std::string where(const Record& r) const;
  void mark(size_t slot, uint8_t status, const std::string& reason = {}) const;

  std::string file_;
  const Tokenizer& tok_;
  ImageTokens image_tokens_;
  int64_t frame_tokens_;  // a video frame's tokens after data.video.pool
  int64_t frames_;        // data.video.frames
  int64_t max_length_;
  bool skip_bad_;
  bool use_images_;
  // Per record: 0 not yet tokenized, 1 fine, 2 truncated, 3 bad (each counted once).
  std::unique_ptr<std::atomic<uint8_t>[]> status_;
  mutable std::atomic<int64_t> truncated_{0}, bad_{0}, boundary_{0};
  mutable std::mutex reasons_mu_;
  mutable std::map<std::string, int64_t> reasons_;
};

// Which tokens of an encoding carry the loss: those whose bytes overlap a supervised byte span
// (a SentencePiece "▁The" that starts at the space before a reply belongs to the reply, as in
// LLaVA). `spans` are sorted and non-overlapping.
std::vector<bool> supervised_token_mask(const std::vector<std::pair<size_t, size_t>>& offsets,
                                        const std::vector<std::pair<size_t, size_t>>& spans);

// What the loader batches: items of one sample (a conversation) or of several (a preference pair:
// chosen, rejected), indexed 0..size()-1.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual size_t size() const = 0;
  // A cheap estimate of item i's length in tokens (its longest sample), for length grouping.
  virtual int64_t length_hint(size_t i) const = 0;
  virtual int64_t samples_per_item() const = 0;
  // Item i's samples, tokenized now (thread-safe); nullopt for a bad record under
  // data.on_bad_record=skip (counted), an Error naming it otherwise.
  virtual std::optional<std::vector<Sample>> try_item(size_t i) const = 0;
  virtual DatasetStats stats() const = 0;
  // An epoch: how many items it visits and in what order (a pure function of seed and epoch).
  // Here, every item once in a fresh permutation (EpochSampler); a mixture composes its own
  // (data/mixture.h).
  virtual int64_t epoch_size() const { return static_cast<int64_t>(size()); }
  virtual std::vector<int64_t> epoch_order(int64_t epoch, uint64_t seed) const;
  // The sources of a mixture (1 otherwise) and which one item i comes from.
  virtual size_t sources() const { return 1; }
  virtual size_t source_of(size_t) const { return 0; }
};

class ConversationDataset : public SampleSource {
 public:
  // `key` names the config section ("data.train") for error messages. The tokenizer must outlive
  // the dataset.
  ConversationDataset(const DataSourceConfig& source, const DataConfig& data,
                      const Tokenizer& tokenizer, const ImageTokens& image_tokens,
                      const std::string& key);

  size_t size() const override { return records_.size(); }
  // Sample i, tokenized now (thread-safe). A bad record throws an Error naming it.
  Sample sample(size_t i) const { return tokenizer_->tokenize(records_[i], i); }
  // As sample(i), but under data.on_bad_record=skip a bad record gives nullopt (and is counted).
  std::optional<Sample> try_sample(size_t i) const {
    return tokenizer_->try_tokenize(records_[i], i);
  }
  const Record& record(size_t i) const { return records_[i]; }
  // A cheap estimate of sample i's length in tokens (for length-grouped batching, before anything
  // is tokenized; LLaVA groups by a word count likewise): text bytes / 4, plus Q for an image.
  int64_t length_hint(size_t i) const override;
  int64_t samples_per_item() const override { return 1; }
  std::optional<std::vector<Sample>> try_item(size_t i) const override;
  int64_t skipped() const { return stats().skipped; }
  int64_t truncated() const { return stats().truncated; }
  DatasetStats stats() const override { return tokenizer_->merged(loaded_); }

 private:
  std::vector<Record> records_;
  DatasetStats loaded_;
  std::unique_ptr<RecordTokenizer> tokenizer_;
};

// One preference pair. Both samples hold the same prompt tokens followed by their own reply; the
// labels supervise the reply (and its end-of-turn marker) only. Both carry the record's id/image.
struct PreferenceSample {
  Sample chosen;
  Sample rejected;
};

class PreferenceDataset : public SampleSource {
 public:
  PreferenceDataset(const DataSourceConfig& source, const DataConfig& data,
                    const Tokenizer& tokenizer, const ImageTokens& image_tokens,
                    const std::string& key);

  size_t size() const override { return pairs_.size(); }
  int64_t length_hint(size_t i) const override;
  int64_t samples_per_item() const override { return 2; }
  // Pair i as {chosen, rejected}.
  std::optional<std::vector<Sample>> try_item(size_t i) const override;
  // Pair i, both sides tokenized now (thread-safe); a bad side throws an Error naming the record.
  PreferenceSample sample(size_t i) const;
  // Under data.on_bad_record=skip a pair with a bad side gives nullopt (and is counted).
  std::optional<PreferenceSample> try_sample(size_t i) const;
  int64_t skipped() const { return stats().skipped; }
  int64_t truncated() const { return stats().truncated; }
  DatasetStats stats() const override { return tokenizer_->merged(loaded_); }

 private:
  std::vector<std::pair<Record, Record>> pairs_;  // chosen, rejected
  DatasetStats loaded_;
  std::unique_ptr<RecordTokenizer> tokenizer_;
};

// Whether `source` is read as JSONL: format llava_jsonl / preference_jsonl or a .jsonl path.
bool is_jsonl_source(const DataSourceConfig& source);

// A record's "conversations" list as training reads it (and `mllm tokenize --template` shows it):
// each turn in either layout ({"from", "value"} or {"role", "content"}), the image tags counted
// against the record's images (a video is one) and, for a single image, moved to the front of its
// turn. With `use_images` false (templates that drop images) the tags are left alone. Throws
// Error saying what is wrong.
std::vector<Turn> conversation_turns(const nlohmann::json& conversations, size_t images,
                                     bool use_images, const std::string& image_tag);
// `image` (a record's path) under `root`. Unless allowed, a path that leaves the root (absolute,
// or climbing above it with ..) is an Error naming `key` (and the option `allow_key` that allows
// it, if any): a downloaded dataset must not read arbitrary files of the machine.
std::filesystem::path image_under_root(const std::string& root, const std::string& image,
                                       bool allow_outside, const std::string& key,
                                       const char* allow_key = nullptr);

// The tag part of that, on turns already read (preference pairs).
void place_image_tag(std::vector<Turn>& turns, size_t images, bool use_images,
                     const std::string& tag);

// One record's text with where it came from.
struct RawRecord {
  size_t index = 0;  // 0-based position among the file's records
  size_t line = 0;   // 1-based line it starts on
  std::string text;
};

// Calls fn with each record of a JSON array file (split without parsing, one record in memory at a
// time) or of a JSONL file (each non-blank line); stops when fn returns false. Structural damage
// is an Error naming the file and line.
void for_each_json_record(const std::string& path, bool jsonl,
                          const std::function<bool(const RawRecord&)>& fn);

}  // namespace mllm
