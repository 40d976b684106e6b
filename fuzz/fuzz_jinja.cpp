// Fuzz target: the chat-template interpreter (src/data/jinja.h), which runs the template a
// tokenizer_config.json brings. The input is a template; it is parsed and rendered over a short
// conversation with add_generation_prompt off and on. A template may be refused only with
// mllm::Error (a syntax error, a construct outside the subset, raise_exception, a limit), never
// by a crash, a hang or another exception; a {% generation %} span must lie inside the text.
#include <nlohmann/json.hpp>

#include "data/jinja.h"
#include "fuzz_common.h"

using namespace mllm;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init("jinja");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  nlohmann::ordered_json context = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}},
        {{"role", "user"}, {"content", "<image>\nWhat is \xC3\xA9?"}},
        {{"role", "assistant"}, {"content", "<think>\nhm\n</think>\n\nA letter."}}}},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"tools", nullptr}};
  fuzz::read([&] {
    const jinja::Template t(source, "fuzz");
    for (const bool gen : {false, true}) {
      context["add_generation_prompt"] = gen;
      const auto out = t.render(context);
      for (const auto& [b, e] : out.generation)
        fuzz::check(b <= e && e <= out.text.size(), "a generation span outside the text");
    }
  });
  return 0;
}
