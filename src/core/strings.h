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

// `s` with the characters HTML gives meaning to escaped, as markupsafe (jinja2's `escape`) does:
// & < > " ' -> &amp; &lt; &gt; &#34; &#39;.
inline std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace mllm
