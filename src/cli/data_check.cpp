// `mllm data check --config X`: streams the configured datasets as training would — records,
// template, tokenizer, image files — and reports what it finds without training: records kept and
// skipped (by reason), truncated samples, images found / missing / corrupt, token-length
// percentiles. Bad records are counted, not fatal, so one run shows every kind of problem.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "core/config.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/collator.h"
#include "data/datasets.h"
#include "data/image_transform.h"
#include "data/tokenizer/tokenizer.h"
#include "models/connectors/connector.h"
#include "models/vision/clip_vit.h"
#include "train/recipe.h"

namespace mllm::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The padding fraction of batches of `batch` consecutive samples, unpacked (each padded to the
// batch's longest) and packed into rows of `pack_length` (data/collator.h pack_rows; 0: not
// shown).
void print_padding(const std::vector<int64_t>& lengths, int64_t batch, int64_t pack_length) {
  double tokens = 0, unpacked = 0, packed = 0;
  for (size_t i = 0; i < lengths.size(); i += static_cast<size_t>(batch)) {
    const std::vector<int64_t> b(
        lengths.begin() + static_cast<std::ptrdiff_t>(i),
        lengths.begin() +
            static_cast<std::ptrdiff_t>(std::min(lengths.size(), i + static_cast<size_t>(batch))));
    int64_t longest = 0;
    for (int64_t n : b) tokens += static_cast<double>(n), longest = std::max(longest, n);
    unpacked += static_cast<double>(b.size()) * static_cast<double>(longest);
    if (pack_length <= 0) continue;
    const auto rows = pack_rows(b, pack_length);
    int64_t row_max = 0;
    for (const auto& row : rows) {
      int64_t n = 0;
      for (size_t k : row) n += b[k];
      row_max = std::max(row_max, n);
    }
    packed += static_cast<double>(rows.size()) * static_cast<double>(row_max);
  }
  if (tokens <= 0) return;
  std::printf("  padding in batches of %lld (file order): %.1f%% of positions unpacked",
              static_cast<long long>(batch), 100.0 * (1.0 - tokens / unpacked));
  if (pack_length > 0)
    std::printf(", %.1f%% packed into rows of %lld (data.packing)", 100.0 * (1.0 - tokens / packed),
                static_cast<long long>(pack_length));
  std::printf("\n");
}

void check_source(const std::string& key, const DataSourceConfig& source, DataConfig data,
                  const Tokenizer& tok, const ImageTokens& Q, int64_t batch_size) {
  if (source.path.empty()) return;
  if (!source.template_name.empty()) data.template_name = source.template_name;
  data.on_bad_record = "skip";  // count every problem instead of stopping at the first
  std::unique_ptr<SampleSource> ds;
  if (source.format.rfind("preference", 0) == 0)
    ds = std::make_unique<PreferenceDataset>(source, data, tok, Q, key);
  else
    ds = std::make_unique<ConversationDataset>(source, data, tok, Q, key);
  // Tokenize everything (what the loader's workers do during training), timing it. A preference
  // pair counts as its two samples (chosen, rejected), which share one image.
  std::vector<int64_t> lengths;
  std::vector<std::filesystem::path> images, videos;
  int64_t text_only = 0;
  int64_t tokens = 0;
  auto t0 = std::chrono::steady_clock::now();
  Progress progress(key + ": tokenizing", static_cast<int64_t>(ds->size()), "records");
  for (size_t i = 0; i < ds->size(); ++i) {
    progress.update(static_cast<int64_t>(i));
    const auto item = ds->try_item(i);
    if (!item) continue;
    for (const Sample& sample : *item) {
      lengths.push_back(static_cast<int64_t>(sample.input_ids.size()));
      tokens += lengths.back();
    }
    for (const Visual& v : item->front().visuals) {
      if (v.kind == Visual::Kind::video_file)
        videos.push_back(v.files.at(0));
      else
        images.insert(images.end(), v.files.begin(), v.files.end());
    }
    if (item->front().visuals.empty()) ++text_only;
  }
  progress.finish();
  const double tok_s = seconds_since(t0);
  const DatasetStats st = ds->stats();
  std::printf("%s: %s\n", key.c_str(), source.path.c_str());
  std::printf("  records %lld: %zu kept, %lld skipped, %lld truncated to data.max_length=%lld\n",
              static_cast<long long>(st.records),
              lengths.size() / static_cast<size_t>(ds->samples_per_item()),
              static_cast<long long>(st.skipped), static_cast<long long>(st.truncated),
              static_cast<long long>(data.max_length));
  for (const auto& [why, n] : st.skip_reasons)
    std::printf("    skipped: %-50s %lld\n", why.c_str(), static_cast<long long>(n));
  if (data.template_name == "hf")
    std::printf(
        "  chat template: %lld replies in %lld records carry no loss (the template renders "
        "them differently once later turns follow); %lld records' prompts end inside a "
        "token\n",
        static_cast<long long>(st.unrendered_replies),
        static_cast<long long>(st.records_with_unrendered),
        static_cast<long long>(st.prompt_boundary_mismatches));
  std::printf("  tokenized at %.0f tokens/s (one thread)\n",
              tok_s > 0 ? static_cast<double>(tokens) / tok_s : 0.0);
  int64_t corrupt = 0;
  t0 = std::chrono::steady_clock::now();
  for (const auto& image : images) {
    try {
      ImageTransform::decode(image, data.image.max_pixels);
    } catch (const Error& e) {
      if (corrupt++ < 5) spdlog::warn("{}", e.what());
    }
  }
  const double s = seconds_since(t0);
  const int64_t missing =
      st.skip_reasons.count("image not found") ? st.skip_reasons.at("image not found") : 0;
  const auto with_image = static_cast<int64_t>(images.size());
  const size_t per_item = static_cast<size_t>(ds->samples_per_item());
  std::printf(
      "  images: %lld found (%lld corrupt), %lld missing; %lld text-only samples; decoded at %.0f "
      "images/s\n",
      static_cast<long long>(with_image), static_cast<long long>(corrupt),
      static_cast<long long>(missing),
      static_cast<long long>(text_only * static_cast<int64_t>(per_item)),
      s > 0 ? static_cast<double>(with_image) / s : 0.0);
  if (!videos.empty()) {
    int64_t unreadable = 0;
    const ImageTransform first_frame(data.image, 32);
    for (const auto& v : videos) {
      try {
        first_frame.load_video(v, 1);
      } catch (const Error& e) {
        if (unreadable++ < 5) spdlog::warn("{}", e.what());
      }
    }
    std::printf("  videos: %zu found (%lld unreadable)\n", videos.size(),
                static_cast<long long>(unreadable));
  }
  if (lengths.empty()) return;
  // Preference pairs are never packed (their rows are scored against each other).
  print_padding(lengths, batch_size * static_cast<int64_t>(per_item),
                per_item == 1 ? data.max_length : 0);
  std::sort(lengths.begin(), lengths.end());
  auto pct = [&](double p) {
    return static_cast<long long>(
        lengths[static_cast<size_t>(p * static_cast<double>(lengths.size() - 1))]);
  };
  std::printf(
      "  tokens per sample: p50 %lld, p90 %lld, p99 %lld, max %lld (image = %lld tokens%s)\n",
      pct(0.5), pct(0.9), pct(0.99), static_cast<long long>(lengths.back()),
      static_cast<long long>(Q.per_image), Q.anyres() ? " per crop, AnyRes" : "");
}

}  // namespace

int run_data_check(const std::string& config_path, const std::vector<std::string>& overrides) {
  const Config c = load_config(config_path, overrides);
  const auto tok = load_tokenizer(c.model.tokenizer);
  tok->set_chat_template_file(c.data.chat_template);
  // Tokens per image come from the connector, built alone and without the parts it adds to each
  // LLM layer (for a real model, those would be billions of parameters to count to 1).
  const int64_t P = ClipVisionModelImpl(c.model.vision).num_feature_tokens();
  LlmConfig no_layers = c.model.llm;
  no_layers.layers = 0;
  const int64_t per_image =
      make_connector({c.model.vision.hidden, c.model.llm.hidden, P, c.model.connector, no_layers})
          ->output_tokens();
  const ImageTokens Q(per_image, anyres_pinpoints(c.model.vision.anyres, c.model.vision.image_size),
                      c.model.vision.image_size);
  std::printf("tokenizer %s: %lld ids; template %s\n", c.model.tokenizer.c_str(),
              static_cast<long long>(tok->vocab_size()), c.data.template_name.c_str());
  if (c.data.mixture.empty())
    check_source("data.train", c.data.train, c.data, *tok, Q, c.train.batch_size);
  for (size_t i = 0; i < c.data.mixture.size(); ++i)
    check_source("data.train[" + std::to_string(i) + "]", c.data.mixture[i], c.data, *tok, Q,
                 c.train.batch_size);
  check_source("data.eval", c.data.eval, c.data, *tok, Q, c.train.batch_size);
  return 0;
}

}  // namespace mllm::cli
