// Errors the user can act on. Every message names what went wrong and where: the file, the key path
// or the line. The CLI maps ConfigError (and usage errors) to exit code 2, everything else to 1.
#pragma once

#include <stdexcept>
#include <string>

namespace mllm {

// A runtime failure: missing file, corrupt image, malformed safetensors, diverged run.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// The user's recipe or command line is wrong: unknown key, wrong type, value out of range.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what) : Error(what) {}
};

// nlohmann::json's what() without its "[json.exception.type_error.302] " tag: "type must be
// string, but is number". For messages that name the file and record themselves.
inline std::string json_error_message(const std::exception& e) {
  const std::string w = e.what();
  if (w.rfind("[json.exception.", 0) != 0) return w;
  const auto close = w.find("] ");
  return close == std::string::npos ? w : w.substr(close + 2);
}

}  // namespace mllm
