// A Jinja interpreter for the subset that Hugging Face chat templates use, rendering byte for byte
// what Python's jinja2 renders in the environment transformers sets up for them
// (utils/chat_template_utils.py: ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True), the loopcontrols extension, `tojson` as json.dumps(ensure_ascii=False),
// `raise_exception`, `strftime_now`, and the `{% generation %}` block of its AssistantTracker).
//
// The subset: text, {{ }}, {# #}, whitespace control (- and +), {% raw %}; for (with `if`, `else`,
// tuple targets, the loop variable, break/continue), if/elif/else, set (names, namespace
// attributes, tuples, blocks), macro (positional, keyword and default arguments), filter blocks,
// generation; expressions with Python's values and operators, filters, tests, string/list/dict
// methods and the globals namespace, range, dict, raise_exception and strftime_now. Values print as
// Python prints them (repr of floats, lists and dicts). Anything outside the subset (include,
// extends, import, call blocks, %-formatting of strings, ...) is an error naming the template, the
// line and the construct, at parse time where the construct is syntactic.
//
// Jinja's semantics followed here are jinja2 3.1's (lexer.py for the whitespace rules, parser.py
// for precedence, runtime.py for loops and Undefined, filters.py/tests.py/sandbox.py for the
// built-ins); tests/data/test_jinja.cpp checks them against renderings made by python3-jinja2.
// No LibTorch here.
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace mllm::jinja {

struct Node;

// A parsed template. Parsing is done once; render() may be called from several threads.
class Template {
 public:
  // `name` is what errors call the template (e.g. ".../tokenizer_config.json chat_template").
  // Throws mllm::Error naming the template, line and construct when `source` does not parse or uses
  // a construct outside the subset.
  Template(std::string source, std::string name);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  struct Options {
    // What strftime_now formats; 0 = the current time.
    std::time_t now = 0;
  };

  struct Output {
    std::string text;
    // Byte spans [begin, end) of `text` written inside {% generation %} blocks, in order.
    std::vector<std::pair<size_t, size_t>> generation;
  };

  // Renders with the keys of `context` (a JSON object; key order kept as given) as variables.
  // Throws mllm::Error naming the template and line: raise_exception's message, an undefined
  // value used where jinja2 raises, a type error.
  Output render(const nlohmann::ordered_json& context, const Options& options) const;
  Output render(const nlohmann::ordered_json& context) const { return render(context, Options{}); }

  const std::string& name() const { return name_; }
  // Whether the template has {% generation %} blocks (transformers' assistant masks).
  bool has_generation() const { return has_generation_; }
  // The string literals of the template, in order: what it can write besides the variables.
  const std::vector<std::string>& literals() const { return literals_; }

 private:
  std::string name_;
  std::unique_ptr<Node> root_;
  bool has_generation_ = false;
  std::vector<std::string> literals_;
};

}  // namespace mllm::jinja
