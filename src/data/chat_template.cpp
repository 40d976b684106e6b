#include "data/chat_template.h"

#include "core/error.h"

namespace mllm {

bool template_uses_images(const std::string& name) {
  return name != "text";
}

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \n\t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \n\t");
  return s.substr(b, e - b + 1);
}

void check_roles(const std::vector<Turn>& turns) {
  if (turns.empty()) throw Error("no conversation turns");
  for (size_t i = 0; i < turns.size(); ++i) {
    const char* want = i % 2 == 0 ? "human" : "gpt";
    if (turns[i].from != want)
      throw Error("turn " + std::to_string(i) + " is from '" + turns[i].from + "', expected '" +
                  want + "' (turns alternate human, gpt)");
  }
}

}  // namespace

std::vector<TemplatePiece> render_template(const std::string& name, const std::vector<Turn>& turns,
                                           const TemplateTokens& t) {
  check_roles(turns);
  std::vector<TemplatePiece> out;
  if (name == "plain") {
    if (turns.size() != 2)
      throw Error("the plain template takes one human and one gpt turn (got " +
                  std::to_string(turns.size()) + " turns)");
    out.push_back({t.bos, false});
    if (turns[0].value.find(t.image) != std::string::npos) out.push_back({t.image, false});
    out.push_back({trim(turns[1].value), true});
    out.push_back({t.eos, true});
    return out;
  }
  if (name == "text") {
    out.push_back({t.bos, false});
    for (size_t i = 0; i + 1 < turns.size(); i += 2) {
      std::string question = turns[i].value;
      for (size_t p; (p = question.find(t.image)) != std::string::npos;)
        question.erase(p, t.image.size());
      out.push_back({trim(question) + " ", false});
      out.push_back({trim(turns[i + 1].value), true});
      out.push_back({t.eos, true});
    }
    return out;
  }
  throw Error("unknown template '" + name + "'");
}

}  // namespace mllm
