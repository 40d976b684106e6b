// Reading (record by record), validating and tokenizing dataset records; see datasets.h for the
// formats. At load, per record: read its turns, place the <image> as LLaVA does, render the
// template. On demand (RecordTokenizer): tokenize the whole string once with offsets, label the
// tokens inside the supervised spans, expand <image> to Q ids, truncate.
#include "data/datasets.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <tuple>

#include "core/error.h"
#include "data/chat_template.h"
#include "data/formats.h"
#include "data/image_header.h"
#include "data/sampler.h"

namespace mllm {

namespace {

using Json = nlohmann::json;

// Calls fn for each non-blank line; stops when fn returns false.
void read_jsonl(const std::string& file, const std::function<bool(const RawRecord&)>& fn) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file + ": cannot read (does the file exist?)");
  RawRecord r;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    r.line = n;
    r.text = std::move(line);
    if (!fn(r)) return;
    ++r.index;
  }
}

// Splits a top-level JSON array into its elements' texts without parsing them, tracking strings
// and nesting only, so memory holds one record at a time. Structural damage (no '[', a record cut
// off by the end of the file) is an Error: nothing after it can be trusted.
class JsonArraySplitter {
 public:
  JsonArraySplitter(const std::string& file, std::istream& in) : file_(file), buf_(*in.rdbuf()) {}

  void run(const std::function<bool(const RawRecord&)>& fn) {
    skip_ws();
    if (peek() == 0xEF) {  // UTF-8 byte order mark
      get(), get(), get();
      skip_ws();
    }
    const int first = get();
    if (first != '[')
      throw Error(file_ + ": expected a JSON array of records" +
                  (first == '{' ? std::string(" (for one record per line name the file .jsonl or "
                                              "set format: llava_jsonl)")
                                : std::string()));
    RawRecord r;
    for (bool need_comma = false;; need_comma = true) {
      skip_ws();
      int c = peek();
      if (c == ']') break;
      if (need_comma) {
        if (c != ',') fail("expected ',' or ']' after record " + std::to_string(r.index - 1));
        get();
        skip_ws();
      }
      r.line = line_;
      r.text.clear();
      read_value(r.text, r.index);
      if (!fn(r)) return;
      ++r.index;
    }
  }

 private:
  int peek() { return buf_.sgetc(); }
  int get() {
    const int c = buf_.sbumpc();
    if (c == '\n') ++line_;
    return c;
  }
  void skip_ws() {
    for (int c; (c = peek()) == ' ' || c == '\n' || c == '\t' || c == '\r';) get();
  }
  [[noreturn]] void fail(const std::string& what) {
    throw Error(file_ + ":" + std::to_string(line_) + ": malformed JSON: " + what);
  }

  void read_value(std::string& out, size_t index) {
    const size_t start_line = line_;
    int depth = 0;
    bool in_string = false, escaped = false;
    for (;;) {
      const int c = peek();
      if (c == std::char_traits<char>::eof())
        fail("the file ends inside record " + std::to_string(index) + " (it starts at line " +
             std::to_string(start_line) + ")");
      if (!in_string && depth == 0 && !out.empty() &&
          (c == ',' || c == ']' || c == ' ' || c == '\n' || c == '\t' || c == '\r'))
        return;  // the end of a scalar element
      out.push_back(static_cast<char>(get()));
      if (in_string) {
        if (escaped) {
          escaped = false;
        } else if (c == '\\') {
          escaped = true;
        } else if (c == '"') {
          in_string = false;
          if (depth == 0) return;
        }
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if (c == '}' || c == ']') {
        if (--depth <= 0) return;
      }
    }
  }

  std::string file_;
  std::streambuf& buf_;
  size_t line_ = 1;
};

void for_each_record(const DataSourceConfig& source,
                     const std::function<bool(const RawRecord&)>& fn) {
  for_each_json_record(source.path, is_jsonl_source(source), fn);
}

std::string record_id(const Json& rec) {
  if (!rec.is_object() || !rec.contains("id")) return "";
  return rec["id"].is_string() ? rec["id"].get<std::string>() : rec["id"].dump();
}

}  // namespace

namespace {

// What loading every record needs: settings, tokenizer, counters.
struct Context {
  const DataSourceConfig& source;
  const DataConfig& data;
  const Tokenizer& tok;
  std::string key;
  DatasetStats& stats;
  const TemplateTokens tt;
  bool use_images;

  Context(const DataSourceConfig& s, const DataConfig& d, const Tokenizer& t, const std::string& k,
          DatasetStats& st)
      : source(s),
        data(d),
        tok(t),
        key(k),
        stats(st),
        tt(template_tokens(t, d.template_name, d.system)) {
    use_images = template_uses_images(data.template_name);
    if (use_images && tok.image_id() < 0)
      throw Error(tok.path().string() + ": the tokenizer has no <image> token (data.template=" +
                  data.template_name + " keeps images)");
    if (tt.eos.empty())
      throw Error(tok.path().string() +
                  ": the tokenizer has no EOS token (templates end replies "
                  "with it)");
  }

  // Parses each record and hands it to `make`; a bad record (make throws Error) is an error naming
  // file, line, record and id, or skipped and counted. Stops at source.max_samples kept records.
  void run(const std::function<bool(const Json&, const RawRecord&)>& make) {
    int64_t kept = 0;
    for_each_record(source, [&](const RawRecord& raw) {
      ++stats.records;
      Json rec;
      try {
        try {
          rec = Json::parse(raw.text);
        } catch (const Json::exception& e) {
          throw Error(std::string("malformed JSON: ") + e.what());
        }
        if (!rec.is_object()) throw Error("a record must be a JSON object");
        // A field of the wrong type deep inside (a turn's "value" that is a number) surfaces as
        // a json exception: a bad record like any other, skipped and counted in skip mode.
        try {
          if (make(rec, raw)) ++kept;
        } catch (const Json::exception& e) {
          throw Error("malformed record: " + json_error_message(e));
        } catch (const std::bad_alloc&) {
          throw Error("record too large to hold in memory");
        }
      } catch (const Error& e) {
        const std::string id = record_id(rec);
        const std::string msg = source.path + ":" + std::to_string(raw.line) + ": record " +
                                std::to_string(raw.index) +
                                (id.empty() ? "" : " (id \"" + id + "\")") + ": " + e.what();
        if (data.on_bad_record == "error")
          throw Error(msg + " (set data.on_bad_record=skip to skip such records)");
        if (stats.skipped < 5) spdlog::warn("skipping {}", msg);
        ++stats.skipped;
        const std::string why = e.what();
        ++stats.skip_reasons[why.substr(0, why.find(':'))];
      }
      return source.max_samples <= 0 || kept < source.max_samples;
    });
    if (stats.skipped > 0)
      spdlog::warn("{}: skipped {} bad records of {}", source.path, stats.skipped, stats.records);
    if (stats.unrendered_replies > 0)
      spdlog::warn(
          "{}: {} replies in {} of {} records carry no loss: the chat template renders "
          "them differently once later turns follow (Qwen3 drops earlier <think> "
          "blocks), so no rendering of them is what trains; a template with "
          "{{% generation %}} blocks marks replies itself",
          source.path, stats.unrendered_replies, stats.records_with_unrendered, stats.records);
    if (kept == 0) throw Error(source.path + ": no usable records (" + key + ")");
  }

  // A path of the record (an image, a video, a frame) under image_root; the file must exist.
  std::filesystem::path visual_path(const Json& v, const char* what) const {
    if (!v.is_string() || v.get<std::string>().empty())
      throw Error(std::string("\"") + what + "\" must be a non-empty string path");
    const auto path =
        image_under_root(source.image_root, v.get<std::string>(), data.allow_outside_image_root,
                         key + ".image_root", "data.allow_outside_image_root");
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      throw Error(std::string(what) + " not found: " + path.string() +
                  (source.image_root.empty() ? " (" + key + ".image_root is not set)" : ""));
    return path;
  }

  // The record's images and video, in tag order: "image" (a path or a list), TRL's "images", or
  // "video" (a clip, or a list of frame files of which data.video.frames are taken uniformly).
  // Empty when it has none or the template drops images. Files must exist; decoding waits for the
  // collator.
  std::vector<Visual> visuals(const Json& rec) const {
    const auto given = [&](const char* k) { return rec.contains(k) && !rec[k].is_null(); };
    const int kinds = given("image") + given("images") + given("video");
    if (kinds > 1)
      throw Error("a record holds one of \"image\", \"images\" or \"video\", not several");
    std::vector<Visual> out;
    if (given("video")) {
      const Json& v = rec["video"];
      Visual vis;
      if (v.is_array()) {
        if (v.empty()) throw Error("\"video\" is an empty list of frames");
        vis.kind = Visual::Kind::video_frames;
        // LLaVA-OneVision's uniform sampling: np.linspace(0, n - 1, frames) truncated to ints.
        const auto n = static_cast<int64_t>(v.size());
        for (int64_t f = 0; f < data.video.frames; ++f) {
          const int64_t at =
              data.video.frames == 1
                  ? 0
                  : static_cast<int64_t>(static_cast<double>(n - 1) * static_cast<double>(f) /
                                         static_cast<double>(data.video.frames - 1));
          vis.files.push_back(visual_path(v[static_cast<size_t>(at)], "video frame"));
        }
      } else {
        vis.kind = Visual::Kind::video_file;
        vis.files.push_back(visual_path(v, "video"));
      }
      vis.frames = data.video.frames;
      vis.pool = data.video.pool;
      if (use_images) out.push_back(std::move(vis));
      return out;
    }
    const char* k = given("image") ? "image" : "images";
    if (!given(k)) return out;
    const Json& v = rec[k];
    if (!v.is_array() && std::string(k) == "images")
      throw Error("\"images\" must be a list of paths");
    if (!use_images) return out;
    for (const Json& item : v.is_array() ? v : Json::array({v})) {
      Visual vis;
      vis.files.push_back(visual_path(item, "image"));
      out.push_back(std::move(vis));
    }
    return out;
  }

  void place_image(std::vector<Turn>& turns, size_t visuals) const {
    place_image_tag(turns, visuals, use_images, tt.image);
  }

  // Renders a conversation that ends with a reply into a record. With last_reply_only
  // (preference pairs) earlier replies are prompt, not supervised.
  Record render(const std::vector<Turn>& turns, const std::vector<Visual>& visuals,
                const std::string& id, const RawRecord& raw, bool last_reply_only = false) const {
    if (turns.empty()) throw Error("no conversation turns");
    const std::string& last = turns.back().from;
    if (last != "gpt" && last != "assistant")
      throw Error("no response: the conversation ends with a '" + last + "' turn");
    RenderedConversation r = render_template(data.template_name, turns, tt);
    if (r.inconsistent_replies > 0) {
      stats.unrendered_replies += r.inconsistent_replies;
      ++stats.records_with_unrendered;
    }
    if (r.supervised.empty())
      throw Error("no reply the chat template renders the same way in the whole conversation");
    if (last_reply_only && r.supervised.size() > 1) {
      r.supervised.erase(r.supervised.begin(), r.supervised.end() - 1);
      if (!r.prompt_ends.empty())
        r.prompt_ends.erase(r.prompt_ends.begin(), r.prompt_ends.end() - 1);
    }
    Record rec;
    rec.id = id;
    rec.text = std::move(r.text);
    rec.supervised = std::move(r.supervised);
    rec.prompt_ends = std::move(r.prompt_ends);
    rec.visuals = visuals;
    rec.line = raw.line;
    rec.index = raw.index;
    return rec;
  }
};

// One turn: {"from", "value"} (LLaVA) or {"role", "content"} (OpenAI / TRL).
Turn read_turn(const Json& t, const std::string& image_tag) {
  if (t.is_object() && t.contains("from") && t["from"].is_string() && t.contains("value") &&
      t["value"].is_string())
    return {t["from"].get<std::string>(), t["value"].get<std::string>()};
  if (t.is_object() && t.contains("role") && t["role"].is_string() && t.contains("content"))
    return {t["role"].get<std::string>(), content_text(t["content"], image_tag)};
  throw Error("each turn needs string \"from\" and \"value\" (or \"role\" and \"content\")");
}

std::vector<Turn> read_turns(const Json& list, const std::string& field,
                             const std::string& image_tag) {
  if (!list.is_array()) throw Error("\"" + field + "\" must be a list of turns");
  std::vector<Turn> turns;
  for (const auto& t : list) turns.push_back(read_turn(t, image_tag));
  return turns;
}

// A preference side: a reply string, one message, or a list of messages.
std::vector<Turn> read_reply(const Json& v, const std::string& field,
                             const std::string& image_tag) {
  if (v.is_string()) return {{"gpt", v.get<std::string>()}};
  if (v.is_object()) return {read_turn(v, image_tag)};
  if (v.is_array()) return read_turns(v, field, image_tag);
  throw Error("\"" + field + "\" must be a string, a message or a list of messages");
}

}  // namespace

std::filesystem::path image_under_root(const std::string& root, const std::string& image,
                                       bool allow_outside, const std::string& key,
                                       const char* allow_key) {
  const std::filesystem::path rel(image);
  if (!allow_outside) {
    const auto normal = rel.lexically_normal();
    if (rel.has_root_name() || rel.has_root_directory() ||
        (!normal.empty() && *normal.begin() == ".."))
      throw Error("image outside " + key + ": " + image +
                  (allow_key ? std::string(" (set ") + allow_key + ": true to allow it)" : ""));
  }
  return std::filesystem::path(root) / rel;
}

void place_image_tag(std::vector<Turn>& turns, size_t images, bool use_images,
                     const std::string& tag) {
  if (!use_images) return;  // the template removes the tags
  if (turns.empty()) throw Error("no conversation turns (the list is empty)");
  size_t count = 0, at = 0;
  for (size_t i = 0; i < turns.size(); ++i)
    for (size_t p = 0; (p = turns[i].value.find(tag, p)) != std::string::npos; p += tag.size()) {
      ++count, at = i;
      if (turns[i].from != "human" && turns[i].from != "user")
        throw Error(tag + " in a '" + turns[i].from + "' turn; it belongs in a human turn");
    }
  if (count == 0 && images > 0)
    throw Error("the record has an image but no " + tag +
                " in its turns (LLaVA's data always marks where it goes)");
  if (count > 0 && images == 0) throw Error(tag + " in the text but the record has no \"image\"");
  if (count != images)
    throw Error(std::to_string(count) + " " + tag + " tags for " + std::to_string(images) +
                " images (a video counts as one): each needs its own tag");
  // One image goes to the front of its turn, as LLaVA's preprocess_multimodal puts it; several
  // stay where the record places them (LLaVA-OneVision's interleaved images).
  if (count == 1) turns[at].value = move_image_to_front(turns[at].value, tag);
}

std::vector<Turn> conversation_turns(const nlohmann::json& conversations, size_t images,
                                     bool use_images, const std::string& image_tag) {
  std::vector<Turn> turns = read_turns(conversations, "conversations", image_tag);
  place_image_tag(turns, images, use_images, image_tag);
  return turns;
}

void for_each_json_record(const std::string& path, bool jsonl,
                          const std::function<bool(const RawRecord&)>& fn) {
  if (jsonl) return read_jsonl(path, fn);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read (does the file exist?)");
  JsonArraySplitter(path, in).run(fn);
}

bool is_jsonl_source(const DataSourceConfig& source) {
  const auto& f = source.format;
  return (f.size() > 6 && f.compare(f.size() - 6, 6, "_jsonl") == 0) ||
         std::filesystem::path(source.path).extension() == ".jsonl";
}

std::vector<bool> supervised_token_mask(const std::vector<std::pair<size_t, size_t>>& offsets,
                                        const std::vector<std::pair<size_t, size_t>>& spans) {
  std::vector<bool> mask(offsets.size(), false);
  size_t span = 0;
  for (size_t i = 0; i < offsets.size(); ++i) {
    const auto [b, e] = offsets[i];
    while (span < spans.size() && spans[span].second <= b) ++span;
    mask[i] = span < spans.size() && (e > b ? spans[span].first < e : spans[span].first <= b);
  }
  return mask;
}

RecordTokenizer::RecordTokenizer(const DataSourceConfig& source, const DataConfig& data,
                                 const Tokenizer& tokenizer, const ImageTokens& image_tokens)
    : file_(source.path),
      tok_(tokenizer),
      image_tokens_(image_tokens),
      frame_tokens_(image_tokens.per_image),
      frames_(data.video.frames),
      max_length_(data.max_length),
      skip_bad_(data.on_bad_record == "skip"),
      use_images_(template_uses_images(data.template_name)) {
  if (data.video.pool > 1) {
    // A frame's tokens form a side x side grid; pooling keeps ceil(side / pool)^2 of them.
    const int64_t side = image_tokens.side();
    if (side * side != image_tokens.per_image)
      throw ConfigError("data.video.pool: " + std::to_string(data.video.pool) +
                        " needs a square grid of image tokens; the connector gives " +
                        std::to_string(image_tokens.per_image) + " per image");
    const int64_t pooled = (side + data.video.pool - 1) / data.video.pool;
    frame_tokens_ = pooled * pooled;
  }
}

int64_t RecordTokenizer::visual_tokens(const Visual& v) const {
  return v.video() ? frames_ * frame_tokens_ : image_tokens_.of_image({v.height, v.width});
}

void RecordTokenizer::measure(std::vector<Visual>& visuals) const {
  if (image_tokens_.anyres())
    for (auto& v : visuals)
      if (!v.video()) std::tie(v.height, v.width) = image_file_size(v.files.at(0));
  if (const int64_t need = visual_tokens(visuals); need > max_length_)
    throw Error("too long: the images alone take " + std::to_string(need) +
                " tokens, over data.max_length=" + std::to_string(max_length_));
}

int64_t RecordTokenizer::visual_tokens(const std::vector<Visual>& vs) const {
  int64_t n = 0;
  for (const auto& v : vs) n += visual_tokens(v);
  return n;
}

void RecordTokenizer::resize(size_t slots) {
  status_ = std::make_unique<std::atomic<uint8_t>[]>(slots);
  for (size_t i = 0; i < slots; ++i) status_[i] = 0;
}

void RecordTokenizer::mark(size_t slot, uint8_t status, const std::string& reason) const {
  // Statuses only rise (fine < truncated < bad), so each record is counted once per kind.
  uint8_t old = status_[slot].load();
  while (old < status && !status_[slot].compare_exchange_weak(old, status)) {
  }
  if (old >= status) return;
  if (status == 2) ++truncated_;
  if (status == 3) {
    ++bad_;
    std::lock_guard<std::mutex> lock(reasons_mu_);
    ++reasons_[reason.substr(0, reason.find(':'))];
  }
}

std::string RecordTokenizer::where(const Record& r) const {
  return file_ + ":" + std::to_string(r.line) + ": record " + std::to_string(r.index) +
         (r.id.empty() ? "" : " (id \"" + r.id + "\")");
}

Sample RecordTokenizer::tokenize_unlabelled(const Record& r, bool& truncated, bool check_boundaries,
                                            bool& boundary_mismatch) const {
  const auto max_len = static_cast<size_t>(max_length_);
  // (The visual-token budget was checked when the record was loaded: measure.)
  const Encoding enc = tok_.encode_with_offsets(r.text);
  // An hf template's prompt must end on a token boundary, or it does not tokenize as a prefix of
  // the whole conversation (LLaVA's "tokenization mismatch"); the span still comes from the text.
  boundary_mismatch =
      check_boundaries && std::any_of(r.prompt_ends.begin(), r.prompt_ends.end(), [&](size_t p) {
        return std::any_of(enc.offsets.begin(), enc.offsets.end(),
                           [&](const auto& o) { return o.first < p && p < o.second; });
      });
  Sample s;
  s.id = r.id;
  s.visuals = r.visuals;
  const std::vector<bool> supervised = supervised_token_mask(enc.offsets, r.supervised);
  size_t images = 0, images_end = 0;  // where the last image's tokens end
  for (size_t i = 0; i < enc.ids.size(); ++i) {
    const int64_t id_i = enc.ids[i];
    if (id_i == tok_.image_id() && use_images_) {
      if (images < r.visuals.size()) {
        const auto n = static_cast<size_t>(visual_tokens(r.visuals[images]));
        s.input_ids.insert(s.input_ids.end(), n, id_i);
        s.labels.insert(s.labels.end(), n, kIgnoreIndex);
        images_end = s.input_ids.size();
      }
      ++images;
      continue;
    }
    s.input_ids.push_back(id_i);
    s.labels.push_back(supervised[i] ? id_i : kIgnoreIndex);
  }
  if (images != r.visuals.size())
    throw Error("<image> tokens: the tokenized text has " + std::to_string(images) + " for " +
                std::to_string(r.visuals.size()) + (r.visuals.size() == 1 ? " image" : " images"));

  const size_t T = s.input_ids.size();
  truncated = false;
  if (T > max_len) {
    // Cut the tail, as LLaVA does at model_max_length, but never inside (or before) an image.
    if (images_end > max_len)
      throw Error("too long: " + std::to_string(T) + " tokens exceed data.max_length=" +
                  std::to_string(max_len) + " and truncation would cut an image");
    s.input_ids.resize(max_len);
    s.labels.resize(max_len);
    truncated = true;
  }
  if (std::all_of(s.labels.begin(), s.labels.end(), [](int64_t l) { return l == kIgnoreIndex; }))
    throw Error(truncated ? "too long: " + std::to_string(T) +
                                " tokens exceed data.max_length=" + std::to_string(max_len) +
                                " and truncation leaves nothing supervised"
                          : std::string("no supervised tokens (empty response)"));
  return s;
}

Sample RecordTokenizer::tokenize(const Record& r, size_t slot) const {
  bool truncated = false, boundary_mismatch = false;
  try {
    // Counted once per record: checked on its first tokenization only.
    Sample s = tokenize_unlabelled(r, truncated, status_[slot].load() == 0, boundary_mismatch);
    if (boundary_mismatch && ++boundary_ == 1)
      spdlog::warn(
          "{}: the chat template's prompt ends inside a token, so it does not tokenize as "
          "a prefix of the conversation; the loss still starts where the rendering says "
          "(counted: mllm data check reports how many records)",
          where(r));
    mark(slot, truncated ? 2 : 1);
    return s;
  } catch (const Error& e) {
    mark(slot, 3, e.what());
    throw Error(where(r) + ": " + e.what() +
                (skip_bad_ ? "" : " (set data.on_bad_record=skip to skip such records)"));
  }
}

std::optional<Sample> RecordTokenizer::try_tokenize(const Record& r, size_t slot) const {
  if (!skip_bad_) return tokenize(r, slot);
  try {
    return tokenize(r, slot);
  } catch (const Error& e) {
    if (bad_.load() <= 5) spdlog::warn("skipping {}", e.what());
    return std::nullopt;
  }
}

DatasetStats RecordTokenizer::merged(const DatasetStats& loaded) const {
  DatasetStats s = loaded;
  s.skipped += bad_.load();
  s.truncated += truncated_.load();
  s.prompt_boundary_mismatches += boundary_.load();
  std::lock_guard<std::mutex> lock(reasons_mu_);
  for (const auto& [why, n] : reasons_) s.skip_reasons[why] += n;
  return s;
}

ConversationDataset::ConversationDataset(const DataSourceConfig& source, const DataConfig& data,
                                         const Tokenizer& tokenizer,
                                         const ImageTokens& image_tokens, const std::string& key) {
  if (source.format.rfind("preference", 0) == 0)
    throw Error(key + ".format=" + source.format +
                ": preference pairs are read by the DPO stage, not as conversations");
  Context ctx(source, data, tokenizer, key, loaded_);
  tokenizer_ = std::make_unique<RecordTokenizer>(source, data, tokenizer, image_tokens);
  const std::string layout = layout_of_format(source.format);
  const SharegptNames names = layout == "sharegpt" ? sharegpt_names(source.path) : SharegptNames{};
  ctx.run([&](const Json& given, const RawRecord& raw) {
    const Json rec = to_llava_record(layout, given, false, names);
    if (!rec.contains("conversations")) throw Error("missing \"conversations\" list");
    auto visuals = ctx.visuals(rec);
    tokenizer_->measure(visuals);
    const std::vector<Turn> turns =
        conversation_turns(rec["conversations"], visuals.size(), ctx.use_images, ctx.tt.image);
    records_.push_back(ctx.render(turns, visuals, record_id(rec), raw));
    return true;
  });
  records_.shrink_to_fit();
  tokenizer_->resize(records_.size());
}

int64_t ConversationDataset::length_hint(size_t i) const {
  const Record& r = records_[i];
  return static_cast<int64_t>(r.text.size() / 4) + tokenizer_->visual_tokens(r.visuals);
}

std::optional<std::vector<Sample>> ConversationDataset::try_item(size_t i) const {
  auto s = try_sample(i);
  if (!s) return std::nullopt;
  std::vector<Sample> out;
  out.push_back(std::move(*s));
  return out;
}

PreferenceDataset::PreferenceDataset(const DataSourceConfig& source, const DataConfig& data,
                                     const Tokenizer& tokenizer, const ImageTokens& image_tokens,
                                     const std::string& key) {
  Context ctx(source, data, tokenizer, key, loaded_);
  tokenizer_ = std::make_unique<RecordTokenizer>(source, data, tokenizer, image_tokens);
  const std::string& tag = ctx.tt.image;
  const std::string layout = layout_of_format(source.format);
  const SharegptNames names = layout == "sharegpt" ? sharegpt_names(source.path) : SharegptNames{};
  ctx.run([&](const Json& given, const RawRecord& raw) {
    const Json rec = to_llava_record(layout, given, true, names);
    if (!rec.contains("chosen") || !rec.contains("rejected"))
      throw Error("a preference record needs \"chosen\" and \"rejected\"");
    std::vector<Turn> prompt;
    if (rec.contains("prompt")) {
      const Json& p = rec["prompt"];
      if (p.is_string())
        prompt.push_back({"human", p.get<std::string>()});
      else
        prompt = read_turns(p, "prompt", tag);
    } else if (rec.contains("conversations")) {
      prompt = read_turns(rec["conversations"], "conversations", tag);
    }
    std::vector<Turn> chosen = prompt, rejected = prompt;
    for (auto& t : read_reply(rec["chosen"], "chosen", tag)) chosen.push_back(t);
    for (auto& t : read_reply(rec["rejected"], "rejected", tag)) rejected.push_back(t);
    // Both must be the same prompt plus one reply each (TRL's implicit prompt is this prefix).
    bool same_prompt = chosen.size() == rejected.size() && chosen.size() >= 2;
    for (size_t i = 0; same_prompt && i + 1 < chosen.size(); ++i)
      same_prompt = chosen[i].from == rejected[i].from && chosen[i].value == rejected[i].value;
    if (!same_prompt)
      throw Error("\"chosen\" and \"rejected\" must share the prompt and differ in the last reply");
    auto visuals = ctx.visuals(rec);
    tokenizer_->measure(visuals);
    ctx.place_image(chosen, visuals.size());
    ctx.place_image(rejected, visuals.size());
    const std::string id = record_id(rec);
    pairs_.emplace_back(ctx.render(chosen, visuals, id, raw, true),
                        ctx.render(rejected, visuals, id, raw, true));
    return true;
  });
  pairs_.shrink_to_fit();
  tokenizer_->resize(pairs_.size());
}

PreferenceSample PreferenceDataset::sample(size_t i) const {
  PreferenceSample p;
  p.chosen = tokenizer_->tokenize(pairs_[i].first, i);
  p.rejected = tokenizer_->tokenize(pairs_[i].second, i);
  return p;
}

std::optional<PreferenceSample> PreferenceDataset::try_sample(size_t i) const {
  auto chosen = tokenizer_->try_tokenize(pairs_[i].first, i);
  if (!chosen) return std::nullopt;
  auto rejected = tokenizer_->try_tokenize(pairs_[i].second, i);
  if (!rejected) return std::nullopt;
  return PreferenceSample{std::move(*chosen), std::move(*rejected)};
}

int64_t PreferenceDataset::length_hint(size_t i) const {
  const auto& [c, r] = pairs_[i];
  return static_cast<int64_t>(std::max(c.text.size(), r.text.size()) / 4) +
         tokenizer_->visual_tokens(c.visuals);
}

std::optional<std::vector<Sample>> PreferenceDataset::try_item(size_t i) const {
  auto p = try_sample(i);
  if (!p) return std::nullopt;
  std::vector<Sample> out;
  out.push_back(std::move(p->chosen));
  out.push_back(std::move(p->rejected));
  return out;
}

std::vector<int64_t> SampleSource::epoch_order(int64_t epoch, uint64_t seed) const {
  return EpochSampler(static_cast<int64_t>(size()), seed).order(epoch);
}

}  // namespace mllm
