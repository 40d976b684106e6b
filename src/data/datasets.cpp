#include "data/datasets.h"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "data/chat_template.h"

namespace mllm {

namespace {

// Tokenizes one record; throws Error(reason) when it cannot be used.
Sample make_sample(const nlohmann::json& rec, const DataConfig& data,
                   const DataSourceConfig& source, const Tokenizer& tok, int64_t image_tokens) {
  if (!rec.is_object()) throw Error("a record must be a JSON object");
  Sample s;
  if (rec.contains("id"))
    s.id = rec["id"].is_string() ? rec["id"].get<std::string>() : rec["id"].dump();
  if (!rec.contains("conversations") || !rec["conversations"].is_array())
    throw Error("missing \"conversations\" array");
  std::vector<Turn> turns;
  for (const auto& t : rec["conversations"]) {
    if (!t.is_object() || !t.contains("from") || !t.contains("value") || !t["from"].is_string() ||
        !t["value"].is_string())
      throw Error("each turn needs string \"from\" and \"value\"");
    turns.push_back({t["from"].get<std::string>(), t["value"].get<std::string>()});
  }
  const bool use_images = template_uses_images(data.template_name);
  const TemplateTokens tt{tok.bos_id() >= 0 ? tok.id_to_token(tok.bos_id()) : "",
                          tok.eos_id() >= 0 ? tok.id_to_token(tok.eos_id()) : "", "<image>"};
  if (rec.contains("image") && use_images) {
    if (!rec["image"].is_string()) throw Error("\"image\" must be a string path");
    s.image = std::filesystem::path(source.image_root) / rec["image"].get<std::string>();
  }
  const auto pieces = render_template(data.template_name, turns, tt);
  int64_t images_in_text = 0;
  for (const auto& p : pieces) {
    for (int64_t id : tok.encode(p.text)) {
      if (id == tok.image_id()) {
        ++images_in_text;
        s.input_ids.insert(s.input_ids.end(), static_cast<size_t>(image_tokens), id);
        s.labels.insert(s.labels.end(), static_cast<size_t>(image_tokens), kIgnoreIndex);
      } else {
        s.input_ids.push_back(id);
        s.labels.push_back(p.supervised ? id : kIgnoreIndex);
      }
    }
  }
  const int64_t want_images = s.image.empty() ? 0 : 1;
  if (images_in_text != want_images)
    throw Error("the text has " + std::to_string(images_in_text) +
                " <image> tokens but the record has " + std::to_string(want_images) + " image");
  const auto max_len = static_cast<size_t>(data.max_length);
  if (s.input_ids.size() > max_len) {
    // Truncate the tail (as LLaVA does at model_max_length), but never inside an image.
    const bool cuts_image = std::find(s.input_ids.begin() + static_cast<long>(max_len),
                                      s.input_ids.end(), tok.image_id()) != s.input_ids.end();
    if (cuts_image)
      throw Error(std::to_string(s.input_ids.size()) + " tokens exceed data.max_length=" +
                  std::to_string(max_len) + " and truncation would cut the image");
    s.input_ids.resize(max_len);
    s.labels.resize(max_len);
  }
  if (std::all_of(s.labels.begin(), s.labels.end(), [](int64_t l) { return l == kIgnoreIndex; }))
    throw Error("no supervised tokens (empty response, or all truncated by data.max_length=" +
                std::to_string(max_len) + ")");
  return s;
}

}  // namespace

ConversationDataset::ConversationDataset(const DataSourceConfig& source, const DataConfig& data,
                                         const Tokenizer& tokenizer, int64_t image_tokens,
                                         const std::string& key) {
  const std::string file = source.path;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(file));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(file + ": malformed JSON (" + key + ".path): " + e.what());
  }
  if (!j.is_array()) throw Error(file + ": expected a JSON array of records (" + key + ".path)");
  if (tokenizer.image_id() < 0 && template_uses_images(data.template_name))
    throw Error(tokenizer.path().string() + ": the tokenizer has no <image> token");
  const size_t limit = source.max_samples > 0 ? static_cast<size_t>(source.max_samples) : j.size();
  for (size_t i = 0; i < j.size() && samples_.size() < limit; ++i) {
    try {
      samples_.push_back(make_sample(j[i], data, source, tokenizer, image_tokens));
    } catch (const Error& e) {
      std::string id =
          j[i].is_object() && j[i].contains("id") ? " (id " + j[i]["id"].dump() + ")" : "";
      const std::string msg = file + ": record " + std::to_string(i) + id + ": " + e.what();
      if (data.on_bad_record == "error")
        throw Error(msg + " (set data.on_bad_record=skip to skip such records)");
      if (skipped_ < 5) spdlog::warn("skipping {}", msg);
      ++skipped_;
    }
  }
  if (skipped_ > 0) spdlog::warn("{}: skipped {} bad records", file, skipped_);
  if (samples_.empty()) throw Error(file + ": no usable records (" + key + ")");
}

int64_t ConversationDataset::supervised_tokens() const {
  int64_t n = 0;
  for (const auto& s : samples_)
    for (int64_t l : s.labels) n += l != kIgnoreIndex;
  return n;
}

}  // namespace mllm
