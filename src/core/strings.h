// String helpers every layer uses: one definition each.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mllm {

// `s` without the leading and trailing characters in `chars` (ASCII whitespace by default).
inline std::string trim(std::string_view s, std::string_view chars = " \t\n\r\f\v") {
  const auto b = s.find_first_not_of(chars);
  if (b == std::string_view::npos) return "";
  return std::string(s.substr(b, s.find_last_not_of(chars) - b + 1));
}

// The items of `v` with `sep` between them.
inline std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

}  // namespace mllm
