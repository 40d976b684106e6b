// Fuzz target: the YAML recipe loader with --set overrides (src/core/config.h). The input is a
// recipe, then optionally NUL-separated `key.path=value` overrides. It is read as a training recipe
// (parse_config, the YAML side of load_config) and as an evaluation recipe (parse_eval_config), in
// a scratch folder holding the files and folders the shipped recipes (configs/) name, so those get
// past the file checks. A training recipe that loads must come back the same from its resolved YAML
// (config_to_yaml), as a run's config.yaml does on --resume.
#include <unistd.h>

#include <cstring>
#include <vector>

#include "core/config.h"
#include "fuzz_common.h"

using namespace mllm;

namespace {

// The files and folders configs/*.yaml name, relative to the scratch folder.
const char* kFiles[] = {
    "data/shapes/tokenizer.json",
    "data/shapes/captions_train.json",
    "data/shapes/captions_val.json",
    "data/shapes/instruct_train.json",
    "data/shapes/instruct_val.json",
    "data/shapes/preference_train.json",
    "data/shapes/preference_val.json",
    "data/shapes/questions_val.json",
    "data/llava/llava_v1_5_mix665k.json",
    "data/llava/blip_laion_cc_sbu_558k.json",
    "models/llava-1.5-7b-hf/tokenizer.json",
    "models/llava-onevision-qwen2-0.5b-ov-hf/tokenizer.json",
};
const char* kDirs[] = {
    "data/shapes/images",
    "data/llava/LLaVA-Pretrain/images",
    "runs/shapes-stage0/final",
    "runs/shapes-stage1/final",
    "runs/shapes-stage2/final",
    "runs/llava15-7b-pretrain/final",
    "runs/llava15-qwen2-0.5b-pretrain/final",
    "models/Qwen2-0.5B-Instruct",
    "models/clip-vit-large-patch14-336",
    "models/vicuna-7b-v1.5",
};

// The scratch folder as the working directory while it lives (recipes name paths relative to it).
// A destructor rather than a catch, so an escaping exception keeps the stack of its throw.
struct InScratch {
  std::filesystem::path back = std::filesystem::current_path();
  InScratch() { std::filesystem::current_path(fuzz::state().scratch); }
  ~InScratch() { std::filesystem::current_path(back); }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  fuzz::init("config");
  // libFuzzer writes a crash's input while the reader runs in the scratch folder: make the
  // artifact paths absolute (the current folder when none is given).
  static std::vector<std::string> args;
  static std::vector<char*> pointers;
  bool prefix = false;
  for (int i = 0; i < *argc; ++i) {
    std::string a = (*argv)[i];
    for (const std::string flag : {"-artifact_prefix=", "-exact_artifact_path="}) {
      if (a.rfind(flag, 0) != 0) continue;
      prefix = prefix || flag == "-artifact_prefix=";
      a = flag + std::filesystem::absolute(a.substr(flag.size())).string();
    }
    args.push_back(a);
  }
  if (!prefix) args.push_back("-artifact_prefix=" + std::filesystem::current_path().string() + "/");
  for (auto& a : args) pointers.push_back(a.data());
  pointers.push_back(nullptr);
  *argc = static_cast<int>(args.size());
  *argv = pointers.data();
  const auto& root = fuzz::state().scratch;
  for (const char* d : kDirs) std::filesystem::create_directories(root / d);
  for (const char* f : kFiles) {
    std::filesystem::create_directories((root / f).parent_path());
    fuzz::write_scratch(f, "{}");
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t yaml_size = nul ? static_cast<size_t>(nul - data) : size;
  std::vector<std::string> overrides;
  if (nul) {
    std::string rest(reinterpret_cast<const char*>(nul + 1), size - yaml_size - 1);
    for (size_t b = 0;;) {
      const size_t e = rest.find('\0', b);
      overrides.push_back(rest.substr(b, e == std::string::npos ? e : e - b));
      if (e == std::string::npos) break;
      b = e + 1;
    }
  }
  const auto path = fuzz::write_scratch("recipe.yaml", data, yaml_size);
  {
    const InScratch cwd;
    fuzz::read([&] {
      const Config c = parse_config(path, overrides);
      const std::string yaml = config_to_yaml(c);
      const auto resolved = fuzz::write_scratch("resolved.yaml", yaml);
      Config again;
      try {
        again = parse_config(resolved);
      } catch (const Error& e) {
        fuzz::check(false, std::string("the resolved config does not load: ") + e.what() +
                               "\n--- resolved config:\n" + yaml);
      }
      fuzz::check(config_to_yaml(again) == yaml, "the resolved config reads back differently");
    });
    fuzz::read([&] { parse_eval_config(path, overrides); });
  }
  return 0;
}
