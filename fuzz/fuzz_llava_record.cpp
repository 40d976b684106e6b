// Fuzz target: LLaVA records through the conversation template, tokenised as training does
// (src/data/datasets.h, src/data/chat_template.h). The first input byte chooses the settings (see
// Settings); the rest is the data file: a JSON array of records or JSONL, conversations or
// preference pairs. Every record that loads is tokenised; each sample must fit data.max_length,
// have one label per id (each the id or ignored), something supervised, and the image's Q
// placeholder ids exactly when the record has an image.
#include <algorithm>

#include "data/chat_template.h"
#include "data/datasets.h"
#include "fuzz_common.h"

using namespace mllm;

namespace {

constexpr int64_t kImageTokens = 3;  // Q
// Tokenizers the records are tokenised with: ShapesWorld's WordLevel and a byte-level BPE.
const char* kTokenizers[] = {"shapes_wordlevel.json", "bytelevel_bpe.json"};
// Image files present under image_root (records may name others: "image not found").
const char* kImages[] = {"a.png", "b.jpg", "coco/train2017/000000033471.jpg"};

std::unique_ptr<Tokenizer> g_tokenizers[2];
constexpr int64_t kMaxLengths[] = {128, 512, 32, 8};

// The first byte b: template b % 5, JSONL (b / 5) % 2, preference pairs (b / 10) % 2, tokenizer
// (b / 20) % 2, on_bad_record=skip (b / 40) % 2, max_length {128, 512, 32, 8}[(b / 80) % 4].
struct Settings {
  explicit Settings(uint8_t b)
      : template_name(template_names()[b % 5]),
        jsonl((b / 5) % 2),
        preference((b / 10) % 2),
        tokenizer((b / 20) % 2),
        skip((b / 40) % 2),
        max_length(kMaxLengths[(b / 80) % 4]) {}
  std::string template_name;
  bool jsonl, preference;
  int tokenizer;
  bool skip;
  int64_t max_length;
};

void check_sample(const Sample& s, const Settings& o, const Tokenizer& tok) {
  const size_t T = s.input_ids.size();
  fuzz::check(T == s.labels.size(), "one label per id");
  fuzz::check(T > 0 && T <= static_cast<size_t>(o.max_length),
              "length " + std::to_string(T) + " outside (0, max_length]");
  bool supervised = false;
  for (size_t i = 0; i < T; ++i) {
    fuzz::check(s.labels[i] == kIgnoreIndex || s.labels[i] == s.input_ids[i],
                "label " + std::to_string(i) + " is neither ignored nor its id");
    supervised = supervised || s.labels[i] != kIgnoreIndex;
  }
  fuzz::check(supervised, "nothing supervised");
  if (!template_uses_images(o.template_name)) return;
  const auto images = std::count(s.input_ids.begin(), s.input_ids.end(), tok.image_id());
  // Q per image, frames x Q per video (data.video's defaults: 8 frames, no pooling).
  int64_t want = 0;
  for (const auto& v : s.visuals)
    want += v.video() ? VideoConfig().frames * kImageTokens : kImageTokens;
  fuzz::check(images == want, std::to_string(images) + " image placeholder ids for " +
                                  std::to_string(s.visuals.size()) + " images or videos");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init("llava_record");
  for (int i = 0; i < 2; ++i)
    g_tokenizers[i] = load_tokenizer(std::string(MLLM_FUZZ_DIR "/tokenizers/") + kTokenizers[i]);
  for (const char* image : kImages) {
    std::filesystem::create_directories((fuzz::state().scratch / "images" / image).parent_path());
    fuzz::write_scratch("images/" + std::string(image), "");
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Settings o(data[0]);
  const auto path =
      fuzz::write_scratch(o.jsonl ? "records.jsonl" : "records.json", data + 1, size - 1);
  DataSourceConfig source;
  source.format =
      std::string(o.preference ? "preference" : "llava") + (o.jsonl ? "_jsonl" : "_json");
  source.path = path.string();
  source.image_root = (fuzz::state().scratch / "images").string();
  DataConfig config;
  config.template_name = o.template_name;
  config.max_length = o.max_length;
  config.on_bad_record = o.skip ? "skip" : "error";
  const Tokenizer& tok = *g_tokenizers[o.tokenizer];
  fuzz::read([&] {
    if (o.preference) {
      const PreferenceDataset ds(source, config, tok, kImageTokens, "data.train");
      for (size_t i = 0; i < ds.size(); ++i) {
        ds.length_hint(i);
        if (auto p = o.skip ? ds.try_sample(i) : std::optional(ds.sample(i))) {
          check_sample(p->chosen, o, tok);
          check_sample(p->rejected, o, tok);
        }
      }
      ds.stats();
    } else {
      const ConversationDataset ds(source, config, tok, kImageTokens, "data.train");
      for (size_t i = 0; i < ds.size(); ++i) {
        ds.length_hint(i);
        if (auto s = o.skip ? ds.try_sample(i) : std::optional(ds.sample(i)))
          check_sample(*s, o, tok);
      }
      ds.stats();
    }
  });
  return 0;
}
