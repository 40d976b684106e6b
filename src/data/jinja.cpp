// See jinja.h. The file reads top to bottom: values and how Python prints them, the lexer (jinja2's
// whitespace rules), the parser (jinja2's precedence), the interpreter, the built-in filters, tests
// and methods.
#include "data/jinja.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <unordered_map>

#include "core/error.h"
#include "core/strings.h"

namespace mllm::jinja {

namespace {

// ---------------------------------------------------------------------------------------------
// Values: Python's, as jinja2 hands them around.

struct Value;
using List = std::vector<Value>;
struct Dict;
struct Interp;

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

using Fn = std::function<Value(Interp&, Args&)>;

struct Value {
  enum class Kind { undefined, none, boolean, integer, floating, string, list, dict, function };
  Kind kind = Kind::undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // string; for undefined, the hint jinja2 would raise with
  std::shared_ptr<List> list;
  bool tuple = false;  // a list that prints as a tuple
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Fn> fn;
  std::string fn_name;

  static Value undef(std::string hint = "") {
    Value v;
    v.s = std::move(hint);
    return v;
  }
  static Value none() {
    Value v;
    v.kind = Kind::none;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = Kind::boolean;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = Kind::integer;
    v.i = x;
    return v;
  }
  static Value floating(double x) {
    Value v;
    v.kind = Kind::floating;
    v.f = x;
    return v;
  }
  static Value str(std::string x) {
    Value v;
    v.kind = Kind::string;
    v.s = std::move(x);
    return v;
  }
  static Value make_list(List items, bool tuple = false) {
    Value v;
    v.kind = Kind::list;
    v.list = std::make_shared<List>(std::move(items));
    v.tuple = tuple;
    return v;
  }
  static Value make_dict(std::shared_ptr<Dict> d) {
    Value v;
    v.kind = Kind::dict;
    v.dict = std::move(d);
    return v;
  }
  static Value function(std::string name, Fn f) {
    Value v;
    v.kind = Kind::function;
    v.fn = std::make_shared<Fn>(std::move(f));
    v.fn_name = std::move(name);
    return v;
  }

  bool is_undefined() const { return kind == Kind::undefined; }
  bool is_none() const { return kind == Kind::none; }
  bool is_string() const { return kind == Kind::string; }
  bool is_list() const { return kind == Kind::list; }
  bool is_dict() const { return kind == Kind::dict; }
  bool is_int() const { return kind == Kind::integer || kind == Kind::boolean; }
  bool is_number() const { return is_int() || kind == Kind::floating; }
  double number() const {
    return kind == Kind::floating ? f : static_cast<double>(kind == Kind::boolean ? b : i);
  }
  int64_t integer_value() const { return kind == Kind::boolean ? b : i; }
};

// A for loop's `loop` variable: one per loop, its attributes computed from where the loop is.
struct LoopState {
  int64_t index0 = 0, length = 0;
  std::shared_ptr<const List> items;  // what the loop iterates over
  std::shared_ptr<Value> cycle;       // loop.cycle, made once per loop
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  std::shared_ptr<LoopState> loop;  // kind == loop
  // A jinja2 Namespace (namespace()), or the loop object: attributes only, and assignable
  // (`set ns.x`) for a namespace.
  enum class Kind { dict, namespace_, loop } kind = Kind::dict;

  const Value* find(const Value& key) const;
  void set(const Value& key, Value v);
};

bool equal(const Value& a, const Value& b);

const Value* Dict::find(const Value& key) const {
  for (const auto& [k, v] : items)
    if (equal(k, key)) return &v;
  return nullptr;
}

void Dict::set(const Value& key, Value v) {
  for (auto& [k, old] : items)
    if (equal(k, key)) {
      old = std::move(v);
      return;
    }
  items.emplace_back(key, std::move(v));
}

Value new_dict(Dict::Kind kind = Dict::Kind::dict) {
  auto d = std::make_shared<Dict>();
  d->kind = kind;
  return Value::make_dict(std::move(d));
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::undefined:
      return "Undefined";
    case Value::Kind::none:
      return "NoneType";
    case Value::Kind::boolean:
      return "bool";
    case Value::Kind::integer:
      return "int";
    case Value::Kind::floating:
      return "float";
    case Value::Kind::string:
      return "str";
    case Value::Kind::list:
      return v.tuple ? "tuple" : "list";
    case Value::Kind::dict:
      return v.dict->kind == Dict::Kind::namespace_ ? "Namespace"
             : v.dict->kind == Dict::Kind::loop     ? "LoopContext"
                                                    : "dict";
    case Value::Kind::function:
      return "function";
  }
  return "object";
}

// A failure while rendering; the interpreter adds the template and line.
struct RenderError {
  std::string kind;  // "TemplateError", "UndefinedError", "TypeError", ...
  std::string message;
};

[[noreturn]] void fail(const std::string& kind, const std::string& message) {
  throw RenderError{kind, message};
}

[[noreturn]] void fail_undefined(const Value& v) {
  fail("UndefinedError", v.s.empty() ? "value is undefined" : v.s);
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::undefined:
    case Value::Kind::none:
      return false;
    case Value::Kind::boolean:
      return v.b;
    case Value::Kind::integer:
      return v.i != 0;
    case Value::Kind::floating:
      return v.f != 0;
    case Value::Kind::string:
      return !v.s.empty();
    case Value::Kind::list:
      return !v.list->empty();
    case Value::Kind::dict:
      return v.dict->kind != Dict::Kind::dict || !v.dict->items.empty();
    case Value::Kind::function:
      return true;
  }
  return false;
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::floating || b.kind == Value::Kind::floating)
      return a.number() == b.number();
    return a.integer_value() == b.integer_value();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::undefined:
    case Value::Kind::none:
      return true;
    case Value::Kind::string:
      return a.s == b.s;
    case Value::Kind::list:
      if (a.list->size() != b.list->size() || a.tuple != b.tuple) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::Kind::dict:
      if (a.dict == b.dict) return true;
      if (a.dict->kind != Dict::Kind::dict || b.dict->kind != Dict::Kind::dict) return false;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k);
        if (!o || !equal(v, *o)) return false;
      }
      return true;
    case Value::Kind::function:
      return a.fn == b.fn;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------
// UTF-8: Python strings are sequences of code points.

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t k = 0; k < s.size();) {
    const auto c = static_cast<unsigned char>(s[k]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    n = std::min(n, s.size() - k);
    out.push_back(s.substr(k, n));
    k += n;
  }
  return out;
}

size_t code_point_count(const std::string& s) {
  size_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Python's str.isspace() for the ASCII range, which is what str.strip() and split() remove.
bool py_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

std::string py_strip(const std::string& s, const std::optional<std::string>& chars, bool left,
                     bool right) {
  // With chars, any of its code points; without, whitespace.
  const auto strip_here = [&](const std::string& cp) {
    if (!chars) return cp.size() == 1 && py_space(cp[0]);
    return chars->find(cp) != std::string::npos;
  };
  const auto cps = code_points(s);
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_here(cps[b])) ++b;
  if (right)
    while (e > b && strip_here(cps[e - 1])) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) out += cps[k];
  return out;
}

std::string ascii_upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return s;
}

std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return s;
}

bool ascii_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// ---------------------------------------------------------------------------------------------
// How Python prints values.

// float.__repr__: the shortest digits that round-trip, fixed notation for exponents in [-4, 16).
std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buf[64];
  int precision = 1;
  for (; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*e", precision - 1, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  // buf is "-d.ddde[+-]xx": split into sign, digits and exponent.
  std::string e_form = buf;
  const bool negative = e_form[0] == '-';
  if (negative) e_form.erase(0, 1);
  const auto epos = e_form.find('e');
  const int exponent = std::atoi(e_form.c_str() + epos + 1);
  std::string digits = e_form.substr(0, epos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent >= 0) {
      const auto int_len = static_cast<size_t>(exponent) + 1;
      if (digits.size() <= int_len) {
        out += digits + std::string(int_len - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_len) + "." + digits.substr(int_len);
      }
    } else {
      out += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char exp[16];
  std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + exp;
}

// str.__repr__: single quotes unless the string has ' and no ", escapes for \\, the quote and
// control characters.
std::string string_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == q || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + q;
}

std::string repr(const Value& v);

// str(v): what {{ v }} and ~ write.
std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::undefined:
      return "";
    case Value::Kind::string:
      return v.s;
    default:
      return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::undefined:
      return "";
    case Value::Kind::none:
      return "None";
    case Value::Kind::boolean:
      return v.b ? "True" : "False";
    case Value::Kind::integer:
      return std::to_string(v.i);
    case Value::Kind::floating:
      return float_repr(v.f);
    case Value::Kind::string:
      return string_repr(v.s);
    case Value::Kind::list: {
      std::string out = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + repr((*v.list)[k]);
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case Value::Kind::dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : v.dict->items) {
        out += (first ? "" : ", ") + repr(k) + ": " + repr(x);
        first = false;
      }
      out += "}";
      if (v.dict->kind == Dict::Kind::namespace_) return "<Namespace " + out + ">";
      return out;
    }
    case Value::Kind::function:
      return "<function " + v.fn_name + ">";
  }
  return "";
}

// json.dumps(v, ensure_ascii=False, indent=indent, separators=..., sort_keys=sort_keys), as
// transformers' tojson filter calls it.
void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t k = 0; k < s.size(); ++k) {
    const char c = s[k];
    const auto u = static_cast<unsigned char>(c);
    if (ensure_ascii && u >= 0x80) {
      // \uXXXX, a surrogate pair above the BMP (json.dumps' ensure_ascii).
      const size_t n = (u >> 5) == 6 ? 2 : (u >> 4) == 14 ? 3 : 4;
      uint32_t cp = u & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
      for (size_t d = 1; d < n && k + d < s.size(); ++d)
        cp = (cp << 6) | (static_cast<unsigned char>(s[k + d]) & 0x3F);
      k += n - 1;
      char buf[16];
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (cp >> 10),
                      0xDC00 + (cp & 0x3FF));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      }
      out += buf;
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (u < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", u);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

struct JsonStyle {
  std::optional<std::string> indent;  // the unit of indentation, when indenting
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

void to_json(std::string& out, const Value& v, const JsonStyle& st, int depth) {
  const auto newline = [&](int d) {
    out += '\n';
    for (int k = 0; k < d; ++k) out += *st.indent;
  };
  switch (v.kind) {
    case Value::Kind::none:
      out += "null";
      return;
    case Value::Kind::boolean:
      out += v.b ? "true" : "false";
      return;
    case Value::Kind::integer:
      out += std::to_string(v.i);
      return;
    case Value::Kind::floating:
      if (std::isnan(v.f))
        out += "NaN";
      else if (std::isinf(v.f))
        out += v.f > 0 ? "Infinity" : "-Infinity";
      else
        out += float_repr(v.f);
      return;
    case Value::Kind::string:
      json_string(out, v.s, st.ensure_ascii);
      return;
    case Value::Kind::list: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += st.item_sep;
        if (st.indent) newline(depth + 1);
        to_json(out, (*v.list)[k], st, depth + 1);
      }
      if (st.indent) newline(depth);
      out += ']';
      return;
    }
    case Value::Kind::dict: {
      if (v.dict->kind != Dict::Kind::dict)
        fail("TypeError", "Object of type " + type_name(v) + " is not JSON serializable");
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      const auto key_text = [](const Value& k) -> std::string {
        if (k.is_string()) return k.s;
        if (k.kind == Value::Kind::boolean) return k.b ? "true" : "false";
        if (k.is_none()) return "null";
        if (k.kind == Value::Kind::integer) return std::to_string(k.i);
        if (k.kind == Value::Kind::floating) return float_repr(k.f);
        fail("TypeError", "keys must be str, int, float, bool or None, not " + type_name(k));
      };
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [&](auto* a, auto* b) { return key_text(a->first) < key_text(b->first); });
      out += '{';
      bool first = true;
      for (const auto* kv : items) {
        if (!first) out += st.item_sep;
        first = false;
        if (st.indent) newline(depth + 1);
        json_string(out, key_text(kv->first), st.ensure_ascii);
        out += st.key_sep;
        to_json(out, kv->second, st, depth + 1);
      }
      if (st.indent) newline(depth);
      out += '}';
      return;
    }
    default:
      fail("TypeError", "Object of type " + type_name(v) + " is not JSON serializable");
  }
}

template <class J>
Value from_json(const J& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return Value::integer(static_cast<int64_t>(j.template get<uint64_t>()));
    case nlohmann::json::value_t::number_float:
      return Value::floating(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value::str(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      for (const auto& x : j) items.push_back(from_json(x));
      return Value::make_list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Value d = new_dict();
      for (auto it = j.begin(); it != j.end(); ++it)
        d.dict->items.emplace_back(Value::str(it.key()), from_json(it.value()));
      return d;
    }
    default:
      return Value::none();
  }
}

// ---------------------------------------------------------------------------------------------
// Lexer: the template's text, tags and the tokens inside tags. jinja2's lexer.py with
// trim_blocks and lstrip_blocks: a block or comment tag alone on its line takes the line's
// indentation and its newline with it; `-` strips all whitespace on its side, `+` keeps it.

enum class Tok {
  text,
  var_begin,
  var_end,
  block_begin,
  block_end,
  name,
  string,
  integer,
  floating,
  op,
  end
};

struct Token {
  Tok kind;
  std::string text;  // text, name, string (unescaped), number text or operator
  int line;
};

struct SyntaxError {
  std::string message;
  int line;
};

[[noreturn]] void syntax(const std::string& message, int line) {
  throw SyntaxError{message, line};
}

// A decimal integer that fits int64 (Python's are unbounded: larger ones are outside the subset).
std::optional<int64_t> parse_int(const std::string& digits) {
  if (digits.empty() || digits.size() > 18) {
    if (digits.size() > 18 && digits.size() <= 19 && digits <= "9223372036854775807")
      return std::strtoll(digits.c_str(), nullptr, 10);
    return std::nullopt;
  }
  return std::strtoll(digits.c_str(), nullptr, 10);
}

// How deep templates may nest (brackets, blocks, macro calls): jinja2 would hit Python's
// recursion limit; here the stack is what runs out.
constexpr int kMaxDepth = 200;
// How many loop iterations and macro calls one rendering may take.
constexpr int64_t kMaxSteps = 1'000'000;
// The longest string or list one operation may make.
constexpr size_t kMaxSize = size_t{1} << 28;

// Python's unicode-escape decoding of a string literal's body (jinja2 decodes literals so).
std::string unescape(const std::string& body, int line) {
  std::string out;
  for (size_t k = 0; k < body.size(); ++k) {
    if (body[k] != '\\' || k + 1 == body.size()) {
      out += body[k];
      continue;
    }
    const char c = body[++k];
    const auto hex = [&](size_t n) {
      uint32_t cp = 0;
      for (size_t d = 1; d <= n; ++d) {
        const char h = k + d < body.size() ? body[k + d] : 'x';
        if (!std::isxdigit(static_cast<unsigned char>(h)))
          syntax("truncated \\" + std::string(1, c) + " escape in a string literal", line);
        cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                 ? h - '0'
                                                 : (std::tolower(h) - 'a' + 10));
      }
      k += n;
      return cp;
    };
    switch (c) {
      case '\n':
        break;  // line continuation
      case '\\':
        out += '\\';
        break;
      case '\'':
        out += '\'';
        break;
      case '"':
        out += '"';
        break;
      case 'a':
        out += '\a';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'v':
        out += '\v';
        break;
      case 'x':
        append_utf8(out, hex(2));
        break;
      case 'u':
        append_utf8(out, hex(4));
        break;
      case 'U':
        append_utf8(out, hex(8));
        break;
      default:
        if (c >= '0' && c <= '7') {
          uint32_t cp = static_cast<uint32_t>(c - '0');
          for (int d = 0; d < 2 && k + 1 < body.size() && body[k + 1] >= '0' && body[k + 1] <= '7';
               ++d)
            cp = cp * 8 + static_cast<uint32_t>(body[++k] - '0');
          append_utf8(out, cp);
        } else {
          out += '\\';  // Python keeps unknown escapes as written
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(normalize(std::move(source))) {}

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      // The next tag start.
      size_t at = pos_;
      for (;;) {
        at = src_.find('{', at);
        if (at == std::string::npos || at + 1 >= src_.size()) {
          at = std::string::npos;
          break;
        }
        const char c = src_[at + 1];
        if (c == '{' || c == '%' || c == '#') break;
        ++at;
      }
      std::string text = src_.substr(pos_, at == std::string::npos ? std::string::npos : at - pos_);
      if (at == std::string::npos) {
        emit_text(text);
        pos_ = src_.size();
        break;
      }
      const char kind = src_[at + 1];
      const char sign = at + 2 < src_.size() ? src_[at + 2] : '\0';
      if (sign == '-') {
        // Strip all whitespace between the text and the tag.
        while (!text.empty() && py_space(text.back())) text.pop_back();
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: only whitespace between the line's start and the tag.
        const auto nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos > 0 || line_starting) {
          bool blank = l_pos < text.size();
          for (size_t k = l_pos; k < text.size(); ++k) blank = blank && py_space(text[k]);
          if (blank) text.resize(l_pos);
        }
      }
      emit_text(text);
      line_ += count_newlines(pos_, at);
      pos_ = at + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (kind == '#') {
        const auto close = src_.find("#}", pos_);
        if (close == std::string::npos) syntax("missing end of comment tag", line_);
        const bool strip = close > pos_ && src_[close - 1] == '-';
        line_ += count_newlines(pos_, close);
        pos_ = close + 2;
        line_starting = finish_tag(strip, /*trim=*/true);
        continue;
      }
      if (kind == '%' && raw_block()) {
        line_starting = false;
        continue;
      }
      const int open_line = line_;
      tokens_.push_back({kind == '{' ? Tok::var_begin : Tok::block_begin, "", line_});
      const bool stripped = lex_inside(kind == '{' ? '}' : '%', open_line);
      line_starting = finish_tag(stripped, kind == '%');
    }
    tokens_.push_back({Tok::end, "", line_});
    return std::move(tokens_);
  }

 private:
  // jinja2 normalizes newlines to \n and drops one trailing newline (keep_trailing_newline=False).
  static std::string normalize(std::string s) {
    std::string out;
    out.reserve(s.size());
    for (size_t k = 0; k < s.size(); ++k) {
      if (s[k] == '\r') {
        out += '\n';
        if (k + 1 < s.size() && s[k + 1] == '\n') ++k;
      } else {
        out += s[k];
      }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }

  int count_newlines(size_t b, size_t e) const {
    return static_cast<int>(std::count(src_.begin() + static_cast<std::ptrdiff_t>(b),
                                       src_.begin() + static_cast<std::ptrdiff_t>(e), '\n'));
  }

  void emit_text(const std::string& text) {
    if (!text.empty()) tokens_.push_back({Tok::text, text, line_});
  }

  // After a tag's closing delimiter: `-` swallows the whitespace that follows; trim_blocks (block
  // and comment tags) one newline. Returns whether the next text starts a line.
  bool finish_tag(bool strip, bool trim) {
    if (strip) {
      char last = '\0';
      while (pos_ < src_.size() && py_space(src_[pos_])) {
        last = src_[pos_++];
        if (last == '\n') ++line_;
      }
      return last == '\n';
    }
    if (trim && pos_ < src_.size() && src_[pos_] == '\n' && !plus_end_) {
      ++pos_;
      ++line_;
      return true;
    }
    return false;
  }

  // {% raw %}...{% endraw %}: the body is text as written.
  bool raw_block() {
    size_t k = pos_;
    while (k < src_.size() && py_space(src_[k])) ++k;
    if (src_.compare(k, 3, "raw") != 0) return false;
    k += 3;
    while (k < src_.size() && py_space(src_[k])) ++k;
    bool strip_after_open = false;
    if (k < src_.size() && src_[k] == '-') {
      strip_after_open = true;
      ++k;
    }
    if (src_.compare(k, 2, "%}") != 0) return false;
    pos_ = k + 2;
    finish_tag(strip_after_open, true);
    // The closing tag: {%[-+]? endraw [-]?%}
    for (size_t at = pos_; (at = src_.find("{%", at)) != std::string::npos; at += 2) {
      size_t j = at + 2;
      const char sign = j < src_.size() ? src_[j] : '\0';
      if (sign == '-' || sign == '+') ++j;
      while (j < src_.size() && py_space(src_[j])) ++j;
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j += 6;
      while (j < src_.size() && py_space(src_[j])) ++j;
      bool strip = false;
      if (j < src_.size() && src_[j] == '-') {
        strip = true;
        ++j;
      }
      if (src_.compare(j, 2, "%}") != 0) continue;
      std::string body = src_.substr(pos_, at - pos_);
      if (sign == '-')
        while (!body.empty() && py_space(body.back())) body.pop_back();
      emit_text(body);
      line_ += count_newlines(pos_, j);
      pos_ = j + 2;
      finish_tag(strip, true);
      return true;
    }
    syntax("missing {% endraw %}", line_);
  }

  // The tokens inside {{ }} or {% %}, up to the closing delimiter (outside brackets, as jinja2's
  // balancing). Returns whether the delimiter had a `-`.
  bool lex_inside(char closer, int open_line) {
    int depth = 0;
    plus_end_ = false;
    for (;;) {
      while (pos_ < src_.size() && py_space(src_[pos_])) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= src_.size())
        syntax(closer == '}' ? "missing end of print tag '}}'" : "missing end of block tag '%}'",
               open_line);
      const char c = src_[pos_];
      if (depth == 0) {
        const std::string close = std::string(1, closer) + "}";
        for (const char sign : {'-', '+', '\0'}) {
          const std::string with = sign ? std::string(1, sign) + close : close;
          if (src_.compare(pos_, with.size(), with) == 0 && (sign != '+' || closer == '%')) {
            pos_ += with.size();
            tokens_.push_back({closer == '}' ? Tok::var_end : Tok::block_end, "", line_});
            plus_end_ = sign == '+';
            return sign == '-';
          }
        }
      }
      if (ascii_alpha(c) || c == '_') {
        size_t e = pos_;
        while (e < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
          ++e;
        tokens_.push_back({Tok::name, src_.substr(pos_, e - pos_), line_});
        pos_ = e;
        continue;
      }
      if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number();
        continue;
      }
      if (c == '\'' || c == '"') {
        size_t e = pos_ + 1;
        while (e < src_.size() && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
        if (e >= src_.size()) syntax("unterminated string literal", line_);
        const std::string body = src_.substr(pos_ + 1, e - pos_ - 1);
        tokens_.push_back({Tok::string, unescape(body, line_), line_});
        line_ += count_newlines(pos_, e);
        pos_ = e + 1;
        continue;
      }
      static const char* ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "*",
                                  "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                  "]",  "{",  "}",  ",",  ".",  ":",  "|"};
      bool matched = false;
      for (const char* op : ops) {
        const size_t n = std::strlen(op);
        if (src_.compare(pos_, n, op) == 0) {
          if (*op == '(' || *op == '[' || *op == '{') ++depth;
          if (*op == ')' || *op == ']' || *op == '}') {
            if (depth == 0) syntax(std::string("unexpected '") + op + "'", line_);
            --depth;
          }
          tokens_.push_back({Tok::op, op, line_});
          pos_ += n;
          matched = true;
          break;
        }
      }
      if (!matched) syntax(std::string("unexpected char '") + c + "'", line_);
    }
  }

  void lex_number() {
    size_t e = pos_;
    const auto digits = [&] {
      while (e < src_.size() &&
             (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
        ++e;
    };
    digits();
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      digits();
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t k = e + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && std::isdigit(static_cast<unsigned char>(src_[k]))) {
        is_float = true;
        e = k;
        digits();
      }
    }
    std::string text = src_.substr(pos_, e - pos_);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    tokens_.push_back({is_float ? Tok::floating : Tok::integer, text, line_});
    pos_ = e;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool plus_end_ = false;
  std::vector<Token> tokens_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// The syntax tree: expressions and statements in one node type.

struct Node {
  enum class Type {
    // expressions
    literal,
    name,
    list,
    tuple,
    dict,
    attr,
    item,
    slice,
    call,
    filter,
    test,
    neg,
    pos,
    not_,
    binary,
    compare,
    and_,
    or_,
    cond,
    // statements
    body,
    text,
    output,
    if_,
    for_,
    set,
    set_block,
    macro,
    break_,
    continue_,
    generation,
    filter_block,
  };
  Type type;
  int line = 0;
  Value value;                     // literal
  std::string name;                // name, attr, filter/test/macro name, binary operator
  std::vector<std::string> names;  // for/set targets, macro parameters, compare operators
  std::vector<std::unique_ptr<Node>> kids;
  std::vector<std::string> kw;  // call/filter/test: the names of the last kw.size() kids
  bool negated = false;         // test: `is not`
  bool has_slot[3] = {false, false, false};  // slice: which of start/stop/step were given
  // statements: else branch / for's else / macro defaults map to kids by convention (see parser)
  std::unique_ptr<Node> else_body;
  std::unique_ptr<Node> filter_cond;  // for ... if cond
  std::unique_ptr<Node> target;       // set ns.attr: the namespace expression
};

namespace {

using NodePtr = std::unique_ptr<Node>;

NodePtr make(Node::Type type, int line) {
  auto n = std::make_unique<Node>();
  n->type = type;
  n->line = line;
  return n;
}

// The filters and tests the interpreter has (Interp::apply_filter / apply_test): a template that
// names another is refused when it is parsed, as jinja2 refuses an unknown filter.
bool known_filter(const std::string& name) {
  static const char* names[] = {
      "trim",   "tojson",  "length",     "count",      "upper",  "lower",  "capitalize", "title",
      "string", "safe",    "list",       "items",      "first",  "last",   "reverse",    "unique",
      "sort",   "join",    "selectattr", "rejectattr", "select", "reject", "map",        "sum",
      "min",    "max",     "dictsort",   "default",    "d",      "int",    "float",      "abs",
      "round",  "replace", "indent",     "wordcount",  "attr",   "e",      "escape"};
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

bool known_test(const std::string& name) {
  static const char* names[] = {
      "defined",  "undefined", "none", "string", "number",      "integer",
      "float",    "boolean",   "true", "false",  "mapping",     "iterable",
      "sequence", "callable",  "odd",  "even",   "divisibleby", "in",
      "eq",       "equalto",   "==",   "ne",     "!=",          "lt",
      "lessthan", "<",         "le",   "<=",     "gt",          "greaterthan",
      ">",        "ge",        ">=",   "sameas", "lower",       "upper"};
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

class Parser {
 public:
  Parser(std::vector<Token> tokens, std::vector<std::string>& literals)
      : t_(std::move(tokens)), literals_(literals) {}

  NodePtr parse() {
    auto body = parse_body({});
    if (cur().kind != Tok::end) syntax("unexpected '" + cur().text + "'", cur().line);
    return body;
  }

  bool saw_generation = false;

 private:
  const Token& cur() const { return t_[k_]; }
  const Token& peek(size_t n = 1) const { return t_[std::min(k_ + n, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().kind == Tok::op && cur().text == op; }
  bool is_name(const char* n) const { return cur().kind == Tok::name && cur().text == n; }
  void expect_op(const char* op) {
    if (!is_op(op))
      syntax(std::string("expected '") + op + "', got " + describe(cur()), cur().line);
    ++k_;
  }
  std::string expect_name() {
    if (cur().kind != Tok::name) syntax("expected a name, got " + describe(cur()), cur().line);
    return t_[k_++].text;
  }
  void expect_block_end() {
    if (cur().kind != Tok::block_end)
      syntax("expected the end of the tag, got " + describe(cur()), cur().line);
    ++k_;
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case Tok::end:
        return "the end of the template";
      case Tok::block_end:
        return "'%}'";
      case Tok::var_end:
        return "'}}'";
      case Tok::string:
        return "a string";
      default:
        return "'" + t.text + "'";
    }
  }

  // Statements up to one of `ends` (a block tag starting with that name), which is not consumed.
  NodePtr parse_body(const std::vector<std::string>& ends) {
    auto body = make(Node::Type::body, cur().line);
    for (;;) {
      const Token& t = cur();
      if (t.kind == Tok::end) {
        if (!ends.empty()) {
          std::string expected;
          for (const auto& e : ends) expected += (expected.empty() ? "'" : " or '") + e + "'";
          syntax("unexpected end of template, expected " + expected, t.line);
        }
        return body;
      }
      if (t.kind == Tok::text) {
        auto n = make(Node::Type::text, t.line);
        n->value = Value::str(t.text);
        body->kids.push_back(std::move(n));
        ++k_;
      } else if (t.kind == Tok::var_begin) {
        ++k_;
        auto n = make(Node::Type::output, t.line);
        n->kids.push_back(parse_tuple_or_expr());
        if (cur().kind != Tok::var_end) syntax("expected '}}', got " + describe(cur()), cur().line);
        ++k_;
        body->kids.push_back(std::move(n));
      } else if (t.kind == Tok::block_begin) {
        const Token& kw = peek();
        if (kw.kind == Tok::name && std::find(ends.begin(), ends.end(), kw.text) != ends.end())
          return body;
        ++k_;
        body->kids.push_back(parse_statement());
      } else {
        syntax("unexpected " + describe(t), t.line);
      }
    }
  }

  // At `{% NAME`: consumes the end tag `{% NAME %}`.
  void end_tag(const char* name) {
    ++k_;  // block_begin
    if (!is_name(name)) syntax(std::string("expected '") + name + "'", cur().line);
    ++k_;
    expect_block_end();
  }

  NodePtr parse_statement() {
    const Nest nest(*this);
    const int line = cur().line;
    if (cur().kind != Tok::name) syntax("expected a statement name", line);
    const std::string word = t_[k_++].text;
    if (word == "if") return parse_if(line);
    if (word == "for") return parse_for(line);
    if (word == "set") return parse_set(line);
    if (word == "macro") return parse_macro(line);
    if (word == "break" || word == "continue") {
      expect_block_end();
      return make(word == "break" ? Node::Type::break_ : Node::Type::continue_, line);
    }
    if (word == "generation") {
      expect_block_end();
      saw_generation = true;
      auto n = make(Node::Type::generation, line);
      n->kids.push_back(parse_body({"endgeneration"}));
      end_tag("endgeneration");
      return n;
    }
    if (word == "filter") {
      auto n = make(Node::Type::filter_block, line);
      // The filter chain applies to a placeholder (kids[0] of the innermost filter node).
      auto chain = make(Node::Type::literal, line);
      chain = parse_filter_chain(std::move(chain), /*leading_pipe=*/false);
      expect_block_end();
      n->kids.push_back(std::move(chain));
      n->kids.push_back(parse_body({"endfilter"}));
      end_tag("endfilter");
      return n;
    }
    static const char* unsupported[] = {
        "include", "import", "from",   "extends", "block", "call",     "with",   "autoescape", "do",
        "trans",   "endif",  "endfor", "else",    "elif",  "endmacro", "endset", "endfilter"};
    for (const char* u : unsupported)
      if (word == u)
        syntax("'{% " + word + " %}' is outside the supported Jinja subset" +
                   (word.rfind("end", 0) == 0 || word == "else" || word == "elif"
                        ? " here (no block open for it)"
                        : ""),
               line);
    syntax("unknown tag '" + word + "'", line);
  }

  NodePtr parse_if(int line) {
    auto n = make(Node::Type::if_, line);
    n->kids.push_back(parse_tuple_or_expr());
    expect_block_end();
    n->kids.push_back(parse_body({"elif", "else", "endif"}));
    ++k_;  // block_begin
    const std::string word = t_[k_++].text;
    if (word == "elif") {
      n->else_body = make(Node::Type::body, cur().line);
      n->else_body->kids.push_back(parse_if(cur().line));
      return n;  // the nested if consumed the endif
    }
    if (word == "else") {
      expect_block_end();
      n->else_body = parse_body({"endif"});
      ++k_;
      ++k_;
    }
    expect_block_end();
    return n;
  }

  // Assignment targets: name, or names separated by commas (optionally in parentheses).
  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    const bool paren = is_op("(");
    if (paren) ++k_;
    names.push_back(expect_name());
    while (is_op(",")) {
      ++k_;
      if (cur().kind != Tok::name) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  NodePtr parse_for(int line) {
    auto n = make(Node::Type::for_, line);
    n->names = parse_targets();
    if (!is_name("in")) syntax("expected 'in' in a for loop", cur().line);
    ++k_;
    n->kids.push_back(parse_tuple_or_expr(/*allow_cond=*/false));
    if (is_name("if")) {
      ++k_;
      n->filter_cond = parse_expr();
    }
    if (is_name("recursive"))
      syntax("recursive loops are outside the supported Jinja subset", cur().line);
    expect_block_end();
    n->kids.push_back(parse_body({"else", "endfor"}));
    ++k_;
    const std::string word = t_[k_++].text;
    if (word == "else") {
      expect_block_end();
      n->else_body = parse_body({"endfor"});
      ++k_;
      ++k_;
    }
    expect_block_end();
    return n;
  }

  NodePtr parse_set(int line) {
    // set ns.attr = expr
    if (cur().kind == Tok::name && peek().kind == Tok::op && peek().text == ".") {
      auto n = make(Node::Type::set, line);
      auto ns = make(Node::Type::name, line);
      ns->name = expect_name();
      ++k_;  // .
      n->names.push_back(expect_name());
      n->target = std::move(ns);
      expect_op("=");
      n->kids.push_back(parse_tuple_or_expr());
      expect_block_end();
      return n;
    }
    auto names = parse_targets();
    if (cur().kind == Tok::block_end || is_op("|")) {
      if (names.size() != 1) syntax("a block set takes one name", line);
      auto n = make(Node::Type::set_block, line);
      n->names = std::move(names);
      NodePtr chain;
      if (is_op("|")) chain = parse_filter_chain(make(Node::Type::literal, line), true);
      expect_block_end();
      n->kids.push_back(parse_body({"endset"}));
      end_tag("endset");
      if (chain) n->filter_cond = std::move(chain);
      return n;
    }
    auto n = make(Node::Type::set, line);
    n->names = std::move(names);
    expect_op("=");
    n->kids.push_back(parse_tuple_or_expr());
    expect_block_end();
    return n;
  }

  NodePtr parse_macro(int line) {
    auto n = make(Node::Type::macro, line);
    n->name = expect_name();
    expect_op("(");
    // kids[0] = body; kids[1..] = defaults of the last parameters, in order (names holds all).
    std::vector<NodePtr> defaults;
    while (!is_op(")")) {
      n->names.push_back(expect_name());
      if (is_op("=")) {
        ++k_;
        defaults.push_back(parse_expr());
      } else if (!defaults.empty()) {
        syntax("non-default argument follows default argument", cur().line);
      }
      if (!is_op(")")) expect_op(",");
    }
    ++k_;
    expect_block_end();
    n->kids.push_back(parse_body({"endmacro"}));
    end_tag("endmacro");
    for (auto& d : defaults) n->kids.push_back(std::move(d));
    return n;
  }

  // ----- expressions (jinja2 parser.py's precedence, loosest first)

  NodePtr parse_tuple_or_expr(bool allow_cond = true) {
    const int line = cur().line;
    auto first = allow_cond ? parse_expr() : parse_or();
    if (!is_op(",")) return first;
    auto t = make(Node::Type::tuple, line);
    t->kids.push_back(std::move(first));
    while (is_op(",")) {
      ++k_;
      if (cur().kind == Tok::block_end || cur().kind == Tok::var_end || is_op(")")) break;
      t->kids.push_back(allow_cond ? parse_expr() : parse_or());
    }
    return t;
  }

  NodePtr parse_expr() {
    auto e = parse_or();
    while (is_name("if")) {
      const int line = cur().line;
      ++k_;
      auto n = make(Node::Type::cond, line);
      auto c = parse_or();
      NodePtr other;
      if (is_name("else")) {
        ++k_;
        other = parse_expr();
      }
      n->kids.push_back(std::move(c));
      n->kids.push_back(std::move(e));
      if (other) n->kids.push_back(std::move(other));
      e = std::move(n);
    }
    return e;
  }

  NodePtr parse_or() {
    auto e = parse_and();
    while (is_name("or")) {
      auto n = make(Node::Type::or_, cur().line);
      ++k_;
      n->kids.push_back(std::move(e));
      n->kids.push_back(parse_and());
      e = std::move(n);
    }
    return e;
  }

  NodePtr parse_and() {
    auto e = parse_not();
    while (is_name("and")) {
      auto n = make(Node::Type::and_, cur().line);
      ++k_;
      n->kids.push_back(std::move(e));
      n->kids.push_back(parse_not());
      e = std::move(n);
    }
    return e;
  }

  NodePtr parse_not() {
    const Nest nest(*this);
    if (is_name("not")) {
      auto n = make(Node::Type::not_, cur().line);
      ++k_;
      n->kids.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }

  NodePtr parse_compare() {
    const int line = cur().line;
    auto e = parse_math1();
    NodePtr n;
    for (;;) {
      std::string op;
      if (cur().kind == Tok::op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        ++k_;
      } else if (is_name("in")) {
        op = "in";
        ++k_;
      } else if (is_name("not") && peek().kind == Tok::name && peek().text == "in") {
        op = "notin";
        k_ += 2;
      } else {
        break;
      }
      if (!n) {
        n = make(Node::Type::compare, line);
        n->kids.push_back(std::move(e));
      }
      n->names.push_back(op);
      n->kids.push_back(parse_math1());
    }
    return n ? std::move(n) : std::move(e);
  }

  NodePtr binary(const std::string& op, NodePtr a, NodePtr b, int line) {
    auto n = make(Node::Type::binary, line);
    n->name = op;
    n->kids.push_back(std::move(a));
    n->kids.push_back(std::move(b));
    return n;
  }

  NodePtr parse_math1() {
    auto e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = cur().text;
      const int line = cur().line;
      ++k_;
      e = binary(op, std::move(e), parse_concat(), line);
    }
    return e;
  }

  NodePtr parse_concat() {
    auto e = parse_math2();
    while (is_op("~")) {
      const int line = cur().line;
      ++k_;
      e = binary("~", std::move(e), parse_math2(), line);
    }
    return e;
  }

  NodePtr parse_math2() {
    auto e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = cur().text;
      const int line = cur().line;
      ++k_;
      e = binary(op, std::move(e), parse_pow(), line);
    }
    return e;
  }

  NodePtr parse_pow() {
    auto e = parse_unary(true);
    while (is_op("**")) {
      const int line = cur().line;
      ++k_;
      e = binary("**", std::move(e), parse_unary(true), line);
    }
    return e;
  }

  // Counts nesting while parsing: a bracket, a unary operator or a block opens one level.
  struct Nest {
    explicit Nest(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxDepth) syntax("nested too deeply", p_.cur().line);
    }
    ~Nest() { --p_.depth_; }
    Parser& p_;
  };

  NodePtr parse_unary(bool with_filter) {
    const Nest nest(*this);
    const int line = cur().line;
    NodePtr e;
    if (is_op("-") || is_op("+")) {
      const bool neg = is_op("-");
      ++k_;
      e = make(neg ? Node::Type::neg : Node::Type::pos, line);
      e->kids.push_back(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  NodePtr parse_primary() {
    const Token& t = cur();
    const int line = t.line;
    if (t.kind == Tok::name) {
      ++k_;
      auto n = make(Node::Type::literal, line);
      if (t.text == "true" || t.text == "True") {
        n->value = Value::boolean(true);
      } else if (t.text == "false" || t.text == "False") {
        n->value = Value::boolean(false);
      } else if (t.text == "none" || t.text == "None") {
        n->value = Value::none();
      } else {
        n->type = Node::Type::name;
        n->name = t.text;
      }
      return n;
    }
    if (t.kind == Tok::string) {
      std::string s;
      while (cur().kind == Tok::string) s += t_[k_++].text;  // adjacent literals concatenate
      literals_.push_back(s);
      auto n = make(Node::Type::literal, line);
      n->value = Value::str(std::move(s));
      return n;
    }
    if (t.kind == Tok::integer || t.kind == Tok::floating) {
      ++k_;
      auto n = make(Node::Type::literal, line);
      if (t.kind == Tok::integer) {
        const auto v = parse_int(t.text);
        if (!v) syntax("integer literal " + t.text + " is too large", line);
        n->value = Value::integer(*v);
      } else {
        n->value = Value::floating(std::strtod(t.text.c_str(), nullptr));
      }
      return n;
    }
    if (is_op("(")) {
      ++k_;
      if (is_op(")")) {
        ++k_;
        return make(Node::Type::tuple, line);
      }
      auto e = parse_tuple_or_expr();
      // (a,) and (a, b) are tuples; (a) is a.
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++k_;
      auto n = make(Node::Type::list, line);
      while (!is_op("]")) {
        n->kids.push_back(parse_expr());
        if (!is_op("]")) expect_op(",");
      }
      ++k_;
      return n;
    }
    if (is_op("{")) {
      ++k_;
      auto n = make(Node::Type::dict, line);
      while (!is_op("}")) {
        n->kids.push_back(parse_expr());
        expect_op(":");
        n->kids.push_back(parse_expr());
        if (!is_op("}")) expect_op(",");
      }
      ++k_;
      return n;
    }
    syntax("unexpected " + describe(t), line);
  }

  void parse_call_args(Node& n) {
    expect_op("(");
    std::vector<NodePtr> pos, kw;
    while (!is_op(")")) {
      if (is_op("*") || is_op("**"))
        syntax("*args and **kwargs calls are outside the subset", cur().line);
      if (cur().kind == Tok::name && peek().kind == Tok::op && peek().text == "=") {
        n.kw.push_back(t_[k_].text);
        k_ += 2;
        kw.push_back(parse_expr());
      } else {
        if (!kw.empty()) syntax("positional argument after keyword argument", cur().line);
        pos.push_back(parse_expr());
      }
      if (!is_op(")")) expect_op(",");
    }
    ++k_;
    for (auto& p : pos) n.kids.push_back(std::move(p));
    for (auto& p : kw) n.kids.push_back(std::move(p));
  }

  NodePtr parse_postfix(NodePtr e) {
    for (;;) {
      const int line = cur().line;
      if (is_op(".")) {
        ++k_;
        auto n = make(Node::Type::attr, line);
        if (cur().kind == Tok::integer) {
          n->type = Node::Type::item;
          auto idx = make(Node::Type::literal, line);
          const auto v = parse_int(t_[k_].text);
          if (!v) syntax("index " + t_[k_].text + " is too large", line);
          ++k_;
          idx->value = Value::integer(*v);
          n->kids.push_back(std::move(e));
          n->kids.push_back(std::move(idx));
        } else {
          n->name = expect_name();
          n->kids.push_back(std::move(e));
        }
        e = std::move(n);
      } else if (is_op("[")) {
        ++k_;
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        auto n = make(Node::Type::call, line);
        n->kids.push_back(std::move(e));
        parse_call_args(*n);
        e = std::move(n);
      } else {
        return e;
      }
    }
  }

  NodePtr parse_subscript(NodePtr e, int line) {
    // [expr] or [start:stop:step]
    NodePtr slots[3];
    bool is_slice = false;
    int slot = 0;
    while (!is_op("]")) {
      if (is_op(":")) {
        is_slice = true;
        if (++slot > 2) syntax("too many ':' in a slice", cur().line);
        ++k_;
        continue;
      }
      if (slots[slot]) syntax("expected ']'", cur().line);
      slots[slot] = parse_expr();
    }
    ++k_;
    if (!is_slice) {
      if (!slots[0]) syntax("empty subscript", line);
      auto n = make(Node::Type::item, line);
      n->kids.push_back(std::move(e));
      n->kids.push_back(std::move(slots[0]));
      return n;
    }
    auto n = make(Node::Type::slice, line);
    n->kids.push_back(std::move(e));
    for (int s = 0; s < 3; ++s) {
      n->has_slot[s] = static_cast<bool>(slots[s]);
      n->kids.push_back(slots[s] ? std::move(slots[s]) : make(Node::Type::literal, line));
    }
    return n;
  }

  // `| filter(args)` and `is [not] test args`, repeated.
  NodePtr parse_filter_expr(NodePtr e) {
    for (;;) {
      if (is_op("|")) {
        e = parse_filter_chain(std::move(e), true);
      } else if (is_name("is")) {
        const int line = cur().line;
        ++k_;
        auto n = make(Node::Type::test, line);
        if (is_name("not")) {
          n->negated = true;
          ++k_;
        }
        n->name = expect_name();
        if (!known_test(n->name))
          syntax("the test '" + n->name + "' is outside the supported Jinja subset", line);
        n->kids.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*n);
        } else if (cur().kind == Tok::string || cur().kind == Tok::integer ||
                   cur().kind == Tok::floating || is_op("[") || is_op("{") ||
                   (cur().kind == Tok::name &&
                    !(cur().text == "and" || cur().text == "or" || cur().text == "else" ||
                      cur().text == "if" || cur().text == "is" || cur().text == "in" ||
                      cur().text == "not"))) {
          // One argument without parentheses: `is divisibleby 3`, `is sameas false`.
          n->kids.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(n);
      } else if (is_op("(") && e->type == Node::Type::filter) {
        auto n = make(Node::Type::call, cur().line);
        n->kids.push_back(std::move(e));
        parse_call_args(*n);
        e = std::move(n);
      } else {
        return e;
      }
    }
  }

  NodePtr parse_filter_chain(NodePtr e, bool leading_pipe) {
    bool first = true;
    while (first ? (!leading_pipe || is_op("|")) : is_op("|")) {
      if (!first || leading_pipe) ++k_;
      first = false;
      const int line = cur().line;
      auto n = make(Node::Type::filter, line);
      n->name = expect_name();
      if (!known_filter(n->name))
        syntax("the filter '" + n->name + "' is outside the supported Jinja subset", line);
      n->kids.push_back(std::move(e));
      if (is_op("(")) parse_call_args(*n);
      e = std::move(n);
    }
    return e;
  }

  std::vector<Token> t_;
  size_t k_ = 0;
  int depth_ = 0;
  std::vector<std::string>& literals_;
};

// ---------------------------------------------------------------------------------------------
// The interpreter.

struct BreakSignal {};
struct ContinueSignal {};

struct Macro {
  const Node* node;
};

struct Frame {
  std::unordered_map<std::string, Value> vars;
  bool barrier = false;  // a macro's frame: names resolve here, then in the template's globals
};

const Value* find_kw(const Args& a, const char* name) {
  for (const auto& [k, v] : a.kw)
    if (k == name) return &v;
  return nullptr;
}

// Argument `index` / `name` of a call, or the default.
Value arg(const Args& a, size_t index, const char* name, Value fallback = Value::undef()) {
  if (const Value* v = find_kw(a, name)) return *v;
  if (index < a.pos.size()) return a.pos[index];
  return fallback;
}

struct Interp {
  const Template::Options& options;
  std::vector<Frame> frames;
  std::vector<std::string*> out;  // output buffers; back() is written
  std::vector<std::pair<size_t, size_t>> generation;
  int line = 0;
  int macro_depth = 0;
  int64_t steps = 0;

  void step() {
    if (++steps > kMaxSteps)
      fail("TemplateError", "rendering takes more than " + std::to_string(kMaxSteps) +
                                " loop iterations and macro calls");
  }

  explicit Interp(const Template::Options& o) : options(o) {}

  std::string& sink() { return *out.back(); }
  void write(const std::string& s) {
    if (sink().size() + s.size() > kMaxSize) fail("MemoryError", "the rendering is too large");
    sink() += s;
  }

  // ----- names

  Value lookup(const std::string& name) const {
    for (size_t k = frames.size(); k-- > 0;) {
      const auto it = frames[k].vars.find(name);
      if (it != frames[k].vars.end()) return it->second;
      if (frames[k].barrier) {
        const auto g = frames[0].vars.find(name);
        if (g != frames[0].vars.end()) return g->second;
        break;
      }
    }
    return Value::undef("'" + name + "' is undefined");
  }

  void assign(const std::string& name, Value v) { frames.back().vars[name] = std::move(v); }

  // ----- expressions

  Value eval(const Node& n) {
    line = n.line;
    switch (n.type) {
      case Node::Type::literal:
        return n.value;
      case Node::Type::name:
        return lookup(n.name);
      case Node::Type::list:
      case Node::Type::tuple: {
        List items;
        for (const auto& k : n.kids) items.push_back(eval(*k));
        return Value::make_list(std::move(items), n.type == Node::Type::tuple);
      }
      case Node::Type::dict: {
        Value d = new_dict();
        for (size_t k = 0; k + 1 < n.kids.size(); k += 2) {
          Value key = eval(*n.kids[k]);
          d.dict->set(key, eval(*n.kids[k + 1]));
        }
        return d;
      }
      case Node::Type::attr:
        return get_attr(eval(*n.kids[0]), n.name);
      case Node::Type::item:
        return get_item(eval(*n.kids[0]), eval(*n.kids[1]));
      case Node::Type::slice:
        return slice(n);
      case Node::Type::call:
        return call(n);
      case Node::Type::filter: {
        Value target = eval(*n.kids[0]);
        Args a = eval_args(n, 1);
        line = n.line;
        return apply_filter(n.name, target, a);
      }
      case Node::Type::test: {
        Value target = eval(*n.kids[0]);
        Args a = eval_args(n, 1);
        line = n.line;
        const bool r = apply_test(n.name, target, a);
        return Value::boolean(n.negated ? !r : r);
      }
      case Node::Type::neg:
      case Node::Type::pos: {
        Value v = eval(*n.kids[0]);
        if (v.is_undefined()) fail_undefined(v);
        if (!v.is_number())
          fail("TypeError", std::string("bad operand type for unary ") +
                                (n.type == Node::Type::neg ? "-" : "+") + ": '" + type_name(v) +
                                "'");
        if (n.type == Node::Type::pos)
          return v.kind == Value::Kind::boolean ? Value::integer(v.b) : v;
        if (v.kind == Value::Kind::floating) return Value::floating(-v.f);
        if (v.integer_value() == INT64_MIN) fail("OverflowError", "integer negation overflows");
        return Value::integer(-v.integer_value());
      }
      case Node::Type::not_:
        return Value::boolean(!truthy(eval(*n.kids[0])));
      case Node::Type::and_: {
        Value a = eval(*n.kids[0]);
        return truthy(a) ? eval(*n.kids[1]) : a;
      }
      case Node::Type::or_: {
        Value a = eval(*n.kids[0]);
        return truthy(a) ? a : eval(*n.kids[1]);
      }
      case Node::Type::cond: {
        if (truthy(eval(*n.kids[0]))) return eval(*n.kids[1]);
        if (n.kids.size() > 2) return eval(*n.kids[2]);
        return Value::undef(
            "the inline if-expression evaluated to false and no else section "
            "was defined.");
      }
      case Node::Type::binary:
        return binary(n.name, eval(*n.kids[0]), eval(*n.kids[1]));
      case Node::Type::compare: {
        Value left = eval(*n.kids[0]);
        for (size_t k = 0; k < n.names.size(); ++k) {
          Value right = eval(*n.kids[k + 1]);
          line = n.line;
          if (!compare(n.names[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      default:
        fail("TemplateError", "not an expression");
    }
  }

  Args eval_args(const Node& n, size_t first) {
    Args a;
    const size_t n_kw = n.kw.size();
    const size_t n_pos = n.kids.size() - first - n_kw;
    for (size_t k = 0; k < n_pos; ++k) a.pos.push_back(eval(*n.kids[first + k]));
    for (size_t k = 0; k < n_kw; ++k) a.kw.emplace_back(n.kw[k], eval(*n.kids[first + n_pos + k]));
    return a;
  }

  Value call(const Node& n) {
    const Node& callee = *n.kids[0];
    Args a = eval_args(n, 1);
    // Methods: obj.name(args)
    if (callee.type == Node::Type::attr) {
      Value obj = eval(*callee.kids[0]);
      line = n.line;
      if (auto r = call_method(obj, callee.name, a)) return *r;
      Value f = get_attr(obj, callee.name);
      return invoke(f, a);
    }
    Value f = eval(callee);
    line = n.line;
    return invoke(f, a);
  }

  Value invoke(const Value& f, Args& a) {
    if (f.is_undefined()) fail_undefined(f);
    if (f.kind != Value::Kind::function)
      fail("TypeError", "'" + type_name(f) + "' object is not callable");
    return (*f.fn)(*this, a);
  }

  // ----- attribute and item access (jinja2's Environment.getattr / getitem)

  // An attribute of a for loop's `loop` (jinja2's LoopContext).
  static Value loop_attr(const LoopState& st, const std::string& name) {
    const int64_t k = st.index0, n = st.length;
    if (name == "index") return Value::integer(k + 1);
    if (name == "index0") return Value::integer(k);
    if (name == "revindex") return Value::integer(n - k);
    if (name == "revindex0") return Value::integer(n - k - 1);
    if (name == "first") return Value::boolean(k == 0);
    if (name == "last") return Value::boolean(k == n - 1);
    if (name == "length") return Value::integer(n);
    if (name == "depth") return Value::integer(1);
    if (name == "depth0") return Value::integer(0);
    if (name == "previtem")
      return k > 0 ? (*st.items)[static_cast<size_t>(k - 1)]
                   : Value::undef("there is no previous item");
    if (name == "nextitem")
      return k + 1 < n ? (*st.items)[static_cast<size_t>(k + 1)]
                       : Value::undef("there is no next item");
    if (name == "cycle") return *st.cycle;
    return Value::undef("'LoopContext object' has no attribute '" + name + "'");
  }

  Value get_attr(const Value& obj, const std::string& name) {
    if (obj.is_undefined()) fail_undefined(obj);
    if (obj.is_dict() && obj.dict->loop) return loop_attr(*obj.dict->loop, name);
    if (obj.is_dict()) {
      if (obj.dict->kind == Dict::Kind::dict && is_dict_method(name))
        return Value::function(name, [](Interp&, Args&) -> Value {
          fail("TemplateError", "dict methods are called, not passed around");
        });
      if (const Value* v = obj.dict->find(Value::str(name))) return *v;
      return Value::undef("'" + type_name(obj) + " object' has no attribute '" + name + "'");
    }
    if (obj.is_none()) return Value::undef("'None' has no attribute '" + name + "'");
    return Value::undef("'" + type_name(obj) + " object' has no attribute '" + name + "'");
  }

  static bool is_dict_method(const std::string& name) {
    static const char* m[] = {"items", "keys",   "values", "get",        "copy",
                              "pop",   "update", "clear",  "setdefault", "popitem"};
    for (const char* x : m)
      if (name == x) return true;
    return false;
  }

  Value get_item(const Value& obj, const Value& key) {
    if (obj.is_undefined()) fail_undefined(obj);
    if (obj.is_dict()) {
      if (const Value* v = obj.dict->find(key)) return *v;
      if (key.is_string()) return get_attr(obj, key.s);
      return Value::undef("'" + type_name(obj) + " object' has no attribute " + repr(key));
    }
    if ((obj.is_list() || obj.is_string()) && key.is_int()) {
      const bool is_str = obj.is_string();
      std::vector<std::string> cps;
      if (is_str) cps = code_points(obj.s);
      const auto size = static_cast<int64_t>(is_str ? cps.size() : obj.list->size());
      int64_t idx = key.integer_value();
      if (idx < 0) idx += size;
      if (idx < 0 || idx >= size)
        return Value::undef("'" + type_name(obj) + " object' has no attribute '" +
                            std::to_string(key.integer_value()) + "'");
      return is_str ? Value::str(cps[static_cast<size_t>(idx)])
                    : (*obj.list)[static_cast<size_t>(idx)];
    }
    if (key.is_string()) return get_attr(obj, key.s);
    return Value::undef("'" + type_name(obj) + " object' has no attribute " + repr(key));
  }

  // Python's slice semantics on lists and strings.
  Value slice(const Node& n) {
    Value obj = eval(*n.kids[0]);
    std::optional<int64_t> slot[3];
    for (int s = 0; s < 3; ++s) {
      if (!n.has_slot[s]) continue;
      Value v = eval(*n.kids[1 + static_cast<size_t>(s)]);
      if (v.is_none()) continue;
      if (!v.is_int()) fail("TypeError", "slice indices must be integers or None");
      slot[s] = v.integer_value();
    }
    line = n.line;
    if (obj.is_undefined()) fail_undefined(obj);
    const bool is_str = obj.is_string();
    if (!is_str && !obj.is_list())
      fail("TypeError", "'" + type_name(obj) + "' object is not subscriptable");
    std::vector<std::string> cps;
    if (is_str) cps = code_points(obj.s);
    const auto size = static_cast<int64_t>(is_str ? cps.size() : obj.list->size());
    const int64_t step = slot[2].value_or(1);
    if (step == 0) fail("ValueError", "slice step cannot be zero");
    const auto clamp = [&](std::optional<int64_t> v, int64_t dflt) -> int64_t {
      if (!v) return dflt;
      int64_t x = *v;
      if (x < 0) x += size;
      if (step > 0) return std::clamp<int64_t>(x, 0, size);
      return std::clamp<int64_t>(x, -1, size - 1);
    };
    const int64_t start = clamp(slot[0], step > 0 ? 0 : size - 1);
    const int64_t stop = clamp(slot[1], step > 0 ? size : -1);
    std::string s;
    List items;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (is_str)
        s += cps[static_cast<size_t>(k)];
      else
        items.push_back((*obj.list)[static_cast<size_t>(k)]);
    }
    return is_str ? Value::str(std::move(s)) : Value::make_list(std::move(items), obj.tuple);
  }

  // ----- operators

  Value binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
      std::string x = to_str(a), y = to_str(b);
      if (x.size() + y.size() > kMaxSize) fail("MemoryError", "string too large");
      return Value::str(x + y);
    }
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    const auto bad = [&]() -> Value {
      fail("TypeError", "unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" +
                            type_name(b) + "'");
    };
    if (op == "+") {
      if ((a.is_string() && a.s.size() + b.s.size() > kMaxSize) ||
          (a.is_list() && b.is_list() && a.list->size() + b.list->size() > kMaxSize))
        fail("MemoryError", type_name(a) + " too large");
      if (a.is_string() && b.is_string()) return Value::str(a.s + b.s);
      if (a.is_list() && b.is_list() && a.tuple == b.tuple) {
        List items = *a.list;
        items.insert(items.end(), b.list->begin(), b.list->end());
        return Value::make_list(std::move(items), a.tuple);
      }
      if (a.is_string() || b.is_string())
        fail("TypeError",
             a.is_string() ? "can only concatenate str (not \"" + type_name(b) + "\") to str"
                           : "unsupported operand type(s) for +: '" + type_name(a) + "' and 'str'");
    }
    if (op == "*") {
      const Value* seq = a.is_string() || a.is_list()   ? &a
                         : b.is_string() || b.is_list() ? &b
                                                        : nullptr;
      if (seq) {
        const Value& times = seq == &a ? b : a;
        if (!times.is_int()) bad();
        const int64_t n = std::max<int64_t>(0, times.integer_value());
        const size_t unit = seq->is_string() ? seq->s.size() : seq->list->size();
        if (unit > 0 && static_cast<uint64_t>(n) > kMaxSize / unit)
          fail("MemoryError",
               "repeating a " + type_name(*seq) + " " + std::to_string(n) + " times is too large");
        if (seq->is_string()) {
          std::string s;
          for (int64_t k = 0; k < n; ++k) s += seq->s;
          return Value::str(std::move(s));
        }
        List items;
        for (int64_t k = 0; k < n; ++k)
          items.insert(items.end(), seq->list->begin(), seq->list->end());
        return Value::make_list(std::move(items), seq->tuple);
      }
    }
    if (op == "%" && a.is_string())
      fail("TemplateError", "%-formatting of strings is outside the supported Jinja subset");
    if (!a.is_number() || !b.is_number()) bad();
    const bool ints = a.is_int() && b.is_int();
    const double x = a.number(), y = b.number();
    const int64_t p = a.integer_value(), q = b.integer_value();
    if (ints && (op == "+" || op == "-" || op == "*")) {
      int64_t r = 0;
      const bool overflow = op == "+"   ? __builtin_add_overflow(p, q, &r)
                            : op == "-" ? __builtin_sub_overflow(p, q, &r)
                                        : __builtin_mul_overflow(p, q, &r);
      if (overflow) fail("OverflowError", "integer result of " + op + " does not fit 64 bits");
      return Value::integer(r);
    }
    if (op == "+") return Value::floating(x + y);
    if (op == "-") return Value::floating(x - y);
    if (op == "*") return Value::floating(x * y);
    if (op == "/") {
      if (y == 0) fail("ZeroDivisionError", "division by zero");
      return Value::floating(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0)
        fail("ZeroDivisionError",
             op == "//" ? "integer division or modulo by zero" : "integer modulo by zero");
      if (ints) {
        if (p == INT64_MIN && q == -1) fail("OverflowError", "integer division overflows");
        int64_t d = p / q, m = p % q;
        if (m != 0 && ((m < 0) != (q < 0))) {
          --d;
          m += q;
        }
        return op == "//" ? Value::integer(d) : Value::integer(m);
      }
      const double d = std::floor(x / y);
      if (op == "//") return Value::floating(d);
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::floating(m);
    }
    if (op == "**") {
      if (ints && q >= 0) {
        int64_t acc = 1;
        for (int64_t k = 0; k < q; ++k)
          if (__builtin_mul_overflow(acc, p, &acc))
            fail("OverflowError", "integer result of ** does not fit 64 bits");
          else if (acc == 0 || acc == 1)
            break;  // 0 and 1 stay as they are (and -1 alternates: handled below)
        if (p == -1) acc = (q % 2) ? -1 : 1;
        return Value::integer(acc);
      }
      return Value::floating(std::pow(x, y));
    }
    return bad();
  }

  // Python's ordering for <, >, <=, >= (numbers, strings, lists).
  int order(const Value& a, const Value& b, const std::string& op) {
    if (a.is_number() && b.is_number())
      return a.number() < b.number() ? -1 : a.number() > b.number();
    if (a.is_string() && b.is_string()) return a.s < b.s ? -1 : a.s > b.s;
    if (a.is_list() && b.is_list()) {
      for (size_t k = 0; k < std::min(a.list->size(), b.list->size()); ++k) {
        if (equal((*a.list)[k], (*b.list)[k])) continue;
        return order((*a.list)[k], (*b.list)[k], op);
      }
      return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size();
    }
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    fail("TypeError", "'" + op + "' not supported between instances of '" + type_name(a) +
                          "' and '" + type_name(b) + "'");
  }

  bool contains(const Value& container, const Value& item) {
    if (container.is_string()) {
      if (!item.is_string())
        fail("TypeError", "'in <string>' requires string as left operand, not " + type_name(item));
      return container.s.find(item.s) != std::string::npos;
    }
    if (container.is_list()) {
      for (const auto& x : *container.list)
        if (equal(x, item)) return true;
      return false;
    }
    if (container.is_dict()) return container.dict->find(item) != nullptr;
    if (container.is_undefined()) return false;
    fail("TypeError", "argument of type '" + type_name(container) + "' is not iterable");
  }

  bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "in") return contains(b, a);
    if (op == "notin") return !contains(b, a);
    const int c = order(a, b, op);
    if (op == "<") return c < 0;
    if (op == ">") return c > 0;
    if (op == "<=") return c <= 0;
    return c >= 0;
  }

  // ----- iteration

  List iterate(const Value& v) {
    switch (v.kind) {
      case Value::Kind::undefined:
        return {};
      case Value::Kind::list:
        return *v.list;
      case Value::Kind::string: {
        List items;
        for (auto& cp : code_points(v.s)) items.push_back(Value::str(cp));
        return items;
      }
      case Value::Kind::dict: {
        if (v.dict->kind != Dict::Kind::dict)
          fail("TypeError", "'" + type_name(v) + "' object is not iterable");
        List items;
        for (const auto& kv : v.dict->items) items.push_back(kv.first);
        return items;
      }
      default:
        fail("TypeError", "'" + type_name(v) + "' object is not iterable");
    }
  }

  // ----- statements

  void exec_body(const Node& body) {
    for (const auto& k : body.kids) exec(*k);
  }

  void exec(const Node& n) {
    line = n.line;
    switch (n.type) {
      case Node::Type::body:
        exec_body(n);
        return;
      case Node::Type::text:
        write(n.value.s);
        return;
      case Node::Type::output:
        write(to_str(eval(*n.kids[0])));
        return;
      case Node::Type::if_:
        if (truthy(eval(*n.kids[0])))
          exec_body(*n.kids[1]);
        else if (n.else_body)
          exec_body(*n.else_body);
        return;
      case Node::Type::for_:
        exec_for(n);
        return;
      case Node::Type::set: {
        Value v = eval(*n.kids[0]);
        line = n.line;
        if (n.target) {
          Value ns = eval(*n.target);
          if (!ns.is_dict() || ns.dict->kind != Dict::Kind::namespace_)
            fail("TemplateRuntimeError", "cannot assign attribute on non-namespace object");
          ns.dict->set(Value::str(n.names[0]), std::move(v));
          return;
        }
        assign_targets(n.names, v);
        return;
      }
      case Node::Type::set_block: {
        std::string captured = capture(*n.kids[0]);
        Value v = Value::str(std::move(captured));
        if (n.filter_cond) v = apply_chain(*n.filter_cond, v);
        assign(n.names[0], std::move(v));
        return;
      }
      case Node::Type::macro: {
        const Node* node = &n;
        assign(n.name, Value::function(n.name, [node](Interp& in, Args& a) {
                 return in.call_macro(*node, a);
               }));
        return;
      }
      case Node::Type::break_:
        throw BreakSignal{};
      case Node::Type::continue_:
        throw ContinueSignal{};
      case Node::Type::generation: {
        const bool top = out.size() == 1;
        const size_t begin = sink().size();
        exec_body(*n.kids[0]);
        if (top && sink().size() > begin) generation.emplace_back(begin, sink().size());
        return;
      }
      case Node::Type::filter_block: {
        Value v = Value::str(capture(*n.kids[1]));
        write(to_str(apply_chain(*n.kids[0], v)));
        return;
      }
      default:
        fail("TemplateError", "not a statement");
    }
  }

  // Applies a parsed filter chain whose innermost target is a placeholder to `v`.
  Value apply_chain(const Node& chain, const Value& v) {
    if (chain.type != Node::Type::filter) return v;
    Value target = apply_chain(*chain.kids[0], v);
    Args a = eval_args(chain, 1);
    line = chain.line;
    return apply_filter(chain.name, target, a);
  }

  std::string capture(const Node& body) {
    std::string buf;
    out.push_back(&buf);
    try {
      exec_body(body);
    } catch (...) {
      out.pop_back();
      throw;
    }
    out.pop_back();
    return buf;
  }

  void assign_targets(const std::vector<std::string>& names, const Value& v) {
    if (names.size() == 1) {
      assign(names[0], v);
      return;
    }
    List items = iterate(v);
    if (items.size() != names.size())
      fail("ValueError",
           items.size() < names.size()
               ? "not enough values to unpack (expected " + std::to_string(names.size()) +
                     ", got " + std::to_string(items.size()) + ")"
               : "too many values to unpack (expected " + std::to_string(names.size()) + ")");
    for (size_t k = 0; k < names.size(); ++k) assign(names[k], items[k]);
  }

  void exec_for(const Node& n) {
    Value seq = eval(*n.kids[0]);
    line = n.line;
    if (seq.is_none()) fail("TypeError", "'NoneType' object is not iterable");
    List items = iterate(seq);
    // `for x in xs if cond`: the condition sees the loop target but not `loop`.
    if (n.filter_cond) {
      List kept;
      for (const auto& item : items) {
        frames.push_back(Frame{});
        assign_targets(n.names, item);
        const bool keep = truthy(eval(*n.filter_cond));
        frames.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (n.else_body) exec_body(*n.else_body);
      return;
    }
    const auto length = static_cast<int64_t>(items.size());
    Value loop = new_dict(Dict::Kind::loop);
    auto state = std::make_shared<LoopState>();
    state->length = length;
    state->items = std::make_shared<const List>(std::move(items));
    const List& elements = *state->items;
    state->cycle = std::make_shared<Value>(
        Value::function("cycle", [weak = std::weak_ptr<LoopState>(state)](Interp&, Args& a) {
          const auto st = weak.lock();
          if (!st) fail("TypeError", "the loop has ended");
          if (a.pos.empty()) fail("TypeError", "no items for cycling given");
          return a.pos[static_cast<size_t>(st->index0) % a.pos.size()];
        }));
    loop.dict->loop = state;
    for (int64_t k = 0; k < length; ++k) {
      step();
      frames.push_back(Frame{});
      state->index0 = k;
      assign("loop", loop);
      assign_targets(n.names, elements[static_cast<size_t>(k)]);
      bool stop = false;
      try {
        exec_body(*n.kids[1]);
      } catch (const BreakSignal&) {
        stop = true;
      } catch (const ContinueSignal&) {
      } catch (...) {
        frames.pop_back();
        throw;
      }
      frames.pop_back();
      if (stop) break;
    }
  }

  Value call_macro(const Node& m, Args& a) {
    step();
    if (macro_depth >= kMaxDepth)
      fail("RecursionError",
           "macro '" + m.name + "' calls nest deeper than " + std::to_string(kMaxDepth));
    struct Depth {
      int& d;
      explicit Depth(int& x) : d(++x) {}
      ~Depth() { --d; }
    } depth(macro_depth);
    const size_t n_params = m.names.size();
    const size_t n_defaults = m.kids.size() - 1;
    if (a.pos.size() > n_params)
      fail("TypeError", "macro '" + m.name + "' takes not more than " + std::to_string(n_params) +
                            " argument(s)");
    Frame f;
    f.barrier = true;
    frames.push_back(std::move(f));
    try {
      for (size_t p = 0; p < n_params; ++p) {
        Value v;
        if (p < a.pos.size()) {
          v = a.pos[p];
        } else if (const Value* kv = find_kw(a, m.names[p].c_str())) {
          v = *kv;
        } else if (p >= n_params - n_defaults) {
          v = eval(*m.kids[1 + p - (n_params - n_defaults)]);
        } else {
          v = Value::undef("parameter '" + m.names[p] + "' was not provided");
        }
        assign(m.names[p], v);
      }
      for (const auto& [k, v] : a.kw)
        if (std::find(m.names.begin(), m.names.end(), k) == m.names.end())
          fail("TypeError", "macro '" + m.name + "' takes no keyword argument '" + k + "'");
      std::string text = capture(*m.kids[0]);
      frames.pop_back();
      return Value::str(std::move(text));
    } catch (...) {
      frames.pop_back();
      throw;
    }
  }

  // ----- built-ins (defined below the class)

  std::optional<Value> call_method(const Value& obj, const std::string& name, Args& a);
  Value apply_filter(const std::string& name, const Value& v, Args& a);
  bool apply_test(const std::string& name, const Value& v, Args& a);
};

// ---------------------------------------------------------------------------------------------
// Methods of str, dict and list that templates call (the sandbox refuses the mutating ones).

std::vector<std::string> py_split(const std::string& s, const std::optional<std::string>& sep,
                                  int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep) {
    if (sep->empty()) fail("ValueError", "empty separator");
    if (!from_right) {
      size_t b = 0;
      for (int64_t n = 0; maxsplit < 0 || n < maxsplit; ++n) {
        const auto at = s.find(*sep, b);
        if (at == std::string::npos) break;
        parts.push_back(s.substr(b, at - b));
        b = at + sep->size();
      }
      parts.push_back(s.substr(b));
      return parts;
    }
    size_t e = s.size();
    std::vector<std::string> rev;
    for (int64_t n = 0; maxsplit < 0 || n < maxsplit; ++n) {
      if (e < sep->size()) break;
      const auto at = s.rfind(*sep, e - sep->size());
      if (at == std::string::npos) break;
      rev.push_back(s.substr(at + sep->size(), e - at - sep->size()));
      e = at;
    }
    rev.push_back(s.substr(0, e));
    return {rev.rbegin(), rev.rend()};
  }
  // Whitespace runs; no empty strings.
  if (!from_right) {
    size_t k = 0;
    int64_t n = 0;
    while (k < s.size()) {
      while (k < s.size() && py_space(s[k])) ++k;
      if (k == s.size()) break;
      if (maxsplit >= 0 && n == maxsplit) {
        std::string rest = s.substr(k);
        while (!rest.empty() && py_space(rest.back())) rest.pop_back();
        parts.push_back(rest);
        break;
      }
      size_t e = k;
      while (e < s.size() && !py_space(s[e])) ++e;
      parts.push_back(s.substr(k, e - k));
      ++n;
      k = e;
    }
    return parts;
  }
  std::vector<std::string> rev;
  size_t e = s.size();
  int64_t n = 0;
  while (e > 0) {
    while (e > 0 && py_space(s[e - 1])) --e;
    if (e == 0) break;
    if (maxsplit >= 0 && n == maxsplit) {
      size_t b = 0;
      while (b < e && py_space(s[b])) ++b;
      rev.push_back(s.substr(b, e - b));
      break;
    }
    size_t b = e;
    while (b > 0 && !py_space(s[b - 1])) --b;
    rev.push_back(s.substr(b, e - b));
    ++n;
    e = b;
  }
  return {rev.rbegin(), rev.rend()};
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` between code points (and at both ends).
    const auto cps = code_points(s);
    int64_t n = 0;
    for (const auto& cp : cps) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      out += cp;
    }
    if (count < 0 || n < count) out += to;
    return out;
  }
  size_t b = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    const auto at = s.find(from, b);
    if (at == std::string::npos) break;
    out += s.substr(b, at - b) + to;
    b = at + from.size();
  }
  return out + s.substr(b);
}

std::string py_capitalize(const std::string& s) {
  std::string lower = ascii_lower(s);
  if (!lower.empty() && lower[0] >= 'a' && lower[0] <= 'z')
    lower[0] = static_cast<char>(lower[0] - 32);
  return lower;
}

// str.title(): a letter after a non-letter is upper-cased, other letters lower-cased.
std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_letter = false;
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    const bool letter = ascii_alpha(c) || u >= 0x80;
    if (ascii_alpha(c))
      c = prev_letter ? ascii_lower(std::string(1, c))[0] : ascii_upper(std::string(1, c))[0];
    prev_letter = letter;
  }
  return out;
}

std::string need_str(const Value& v, const char* what) {
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_string()) fail("TypeError", std::string(what) + " must be str, not " + type_name(v));
  return v.s;
}

// str.format with {} / {0} / {name} fields (no format specs).
std::string py_format(const std::string& fmt, const Args& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    const char c = fmt[k];
    if (c == '{' && k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out += '{';
      ++k;
      continue;
    }
    if (c == '}' && k + 1 < fmt.size() && fmt[k + 1] == '}') {
      out += '}';
      ++k;
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    const auto close = fmt.find('}', k);
    if (close == std::string::npos) fail("ValueError", "Single '{' encountered in format string");
    const std::string field = fmt.substr(k + 1, close - k - 1);
    if (field.find_first_of(":!") != std::string::npos)
      fail("TemplateError", "format specs in str.format are outside the supported Jinja subset");
    Value v;
    if (field.empty()) {
      if (auto_index >= a.pos.size()) fail("IndexError", "Replacement index out of range");
      v = a.pos[auto_index++];
    } else if (std::all_of(field.begin(), field.end(),
                           [](char d) { return std::isdigit(static_cast<unsigned char>(d)); })) {
      const size_t idx = field.size() > 9 ? a.pos.size() : std::stoul(field);
      if (idx >= a.pos.size()) fail("IndexError", "Replacement index out of range");
      v = a.pos[idx];
    } else {
      const Value* kv = find_kw(a, field.c_str());
      if (!kv) fail("KeyError", "'" + field + "'");
      v = *kv;
    }
    out += to_str(v);
    k = close;
  }
  return out;
}

std::optional<Value> Interp::call_method(const Value& obj, const std::string& name, Args& a) {
  if (obj.is_string()) {
    const std::string& s = obj.s;
    const auto opt_chars = [&](size_t i) -> std::optional<std::string> {
      Value c = arg(a, i, "chars", Value::none());
      if (c.is_none()) return std::nullopt;
      return need_str(c, "strip arg");
    };
    if (name == "strip") return Value::str(py_strip(s, opt_chars(0), true, true));
    if (name == "lstrip") return Value::str(py_strip(s, opt_chars(0), true, false));
    if (name == "rstrip") return Value::str(py_strip(s, opt_chars(0), false, true));
    if (name == "upper") return Value::str(ascii_upper(s));
    if (name == "lower") return Value::str(ascii_lower(s));
    if (name == "title") return Value::str(py_title(s));
    if (name == "capitalize") return Value::str(py_capitalize(s));
    if (name == "startswith" || name == "endswith") {
      Value p = arg(a, 0, "prefix");
      std::vector<std::string> options;
      if (p.is_list())
        for (const auto& x : *p.list) options.push_back(need_str(x, "tuple for startswith"));
      else
        options.push_back(
            need_str(p, name == "startswith" ? "startswith first arg" : "endswith first arg"));
      for (const auto& o : options) {
        const bool hit =
            name == "startswith"
                ? s.compare(0, o.size(), o) == 0
                : s.size() >= o.size() && s.compare(s.size() - o.size(), o.size(), o) == 0;
        if (hit) return Value::boolean(true);
      }
      return Value::boolean(false);
    }
    if (name == "split" || name == "rsplit") {
      Value sep = arg(a, 0, "sep", Value::none());
      Value maxsplit = arg(a, 1, "maxsplit", Value::integer(-1));
      std::optional<std::string> sep_s;
      if (!sep.is_none()) sep_s = need_str(sep, "sep");
      List parts;
      for (auto& p : py_split(s, sep_s, maxsplit.integer_value(), name == "rsplit"))
        parts.push_back(Value::str(std::move(p)));
      return Value::make_list(std::move(parts));
    }
    if (name == "splitlines") {
      List parts;
      size_t b = 0;
      for (size_t k = 0; k < s.size(); ++k)
        if (s[k] == '\n' || s[k] == '\r') {
          parts.push_back(Value::str(s.substr(b, k - b)));
          if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
          b = k + 1;
        }
      if (b < s.size()) parts.push_back(Value::str(s.substr(b)));
      return Value::make_list(std::move(parts));
    }
    if (name == "replace") {
      return Value::str(py_replace(s, need_str(arg(a, 0, "old"), "replace arg"),
                                   need_str(arg(a, 1, "new"), "replace arg"),
                                   arg(a, 2, "count", Value::integer(-1)).integer_value()));
    }
    if (name == "find" || name == "rfind" || name == "count" || name == "index") {
      const std::string sub = need_str(arg(a, 0, "sub"), "must be str");
      if (name == "count") {
        if (sub.empty()) return Value::integer(static_cast<int64_t>(code_point_count(s)) + 1);
        int64_t n = 0;
        for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size()))
          ++n;
        return Value::integer(n);
      }
      const auto at = name == "rfind" ? s.rfind(sub) : s.find(sub);
      if (at == std::string::npos) {
        if (name == "index") fail("ValueError", "substring not found");
        return Value::integer(-1);
      }
      return Value::integer(static_cast<int64_t>(code_point_count(s.substr(0, at))));
    }
    if (name == "join") {
      std::string out;
      bool first = true;
      for (const auto& x : iterate(arg(a, 0, "iterable"))) {
        if (!first) out += s;
        first = false;
        out += need_str(x, "sequence item");
      }
      return Value::str(std::move(out));
    }
    if (name == "format") return Value::str(py_format(s, a));
    if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isupper" ||
        name == "islower" || name == "isalnum") {
      if (s.empty()) return Value::boolean(false);
      bool all = true, cased = false;
      for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (name == "isdigit") all = all && std::isdigit(u);
        if (name == "isalpha") all = all && ascii_alpha(c);
        if (name == "isalnum") all = all && (ascii_alpha(c) || std::isdigit(u));
        if (name == "isspace") all = all && py_space(c);
        if (name == "isupper") {
          all = all && !(c >= 'a' && c <= 'z');
          cased = cased || (c >= 'A' && c <= 'Z');
        }
        if (name == "islower") {
          all = all && !(c >= 'A' && c <= 'Z');
          cased = cased || (c >= 'a' && c <= 'z');
        }
      }
      if (name == "isupper" || name == "islower") all = all && cased;
      return Value::boolean(all);
    }
    return std::nullopt;
  }
  if (obj.is_dict() && obj.dict->kind == Dict::Kind::dict) {
    if (name == "items") {
      List items;
      for (const auto& [k, v] : obj.dict->items) items.push_back(Value::make_list({k, v}, true));
      return Value::make_list(std::move(items));
    }
    if (name == "keys" || name == "values") {
      List items;
      for (const auto& [k, v] : obj.dict->items) items.push_back(name == "keys" ? k : v);
      return Value::make_list(std::move(items));
    }
    if (name == "get") {
      const Value* v = obj.dict->find(arg(a, 0, "key"));
      return v ? *v : arg(a, 1, "default", Value::none());
    }
    if (name == "copy") {
      Value d = new_dict();
      d.dict->items = obj.dict->items;
      return d;
    }
    if (is_dict_method(name))
      fail("SecurityError", "access to attribute '" + name + "' of 'dict' object is unsafe.");
    return std::nullopt;
  }
  if (obj.is_list()) {
    // jinja2's sandbox refuses these (sandbox.py _mutable_spec); pop and clear it lets through.
    static const char* mutating[] = {"append", "extend", "insert", "remove", "reverse", "sort"};
    for (const char* m : mutating)
      if (name == m)
        fail("SecurityError",
             "access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe.");
    if (name == "index" || name == "count") {
      const Value x = arg(a, 0, "value");
      int64_t n = 0;
      for (size_t k = 0; k < obj.list->size(); ++k)
        if (equal((*obj.list)[k], x)) {
          if (name == "index") return Value::integer(static_cast<int64_t>(k));
          ++n;
        }
      if (name == "index") fail("ValueError", repr(x) + " is not in list");
      return Value::integer(n);
    }
    if (name == "copy") return Value::make_list(*obj.list, obj.tuple);
    if (name == "clear" && !obj.tuple) {
      obj.list->clear();
      return Value::none();
    }
    if (name == "pop" && !obj.tuple) {
      if (obj.list->empty()) fail("IndexError", "pop from empty list");
      auto size = static_cast<int64_t>(obj.list->size());
      int64_t at = arg(a, 0, "index", Value::integer(-1)).integer_value();
      if (at < 0) at += size;
      if (at < 0 || at >= size) fail("IndexError", "pop index out of range");
      Value v = (*obj.list)[static_cast<size_t>(at)];
      obj.list->erase(obj.list->begin() + at);
      return v;
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Filters (jinja2 filters.py, and transformers' tojson).

// The sort key jinja2 uses when case_sensitive is false: lower-cased strings.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::str(ascii_lower(v.s));
  return v;
}

// An attribute path "a.b" or "0" of an item, as jinja2's make_attrgetter.
Value attr_path(Interp& in, const Value& item, const std::string& path) {
  Value v = item;
  size_t b = 0;
  for (;;) {
    const auto dot = path.find('.', b);
    const std::string part = path.substr(b, dot == std::string::npos ? std::string::npos : dot - b);
    const bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) {
      return std::isdigit(static_cast<unsigned char>(c));
    });
    const auto index = numeric ? parse_int(part) : std::nullopt;
    v = index ? in.get_item(v, Value::integer(*index)) : in.get_item(v, Value::str(part));
    if (dot == std::string::npos) return v;
    b = dot + 1;
  }
}

Value Interp::apply_filter(const std::string& name, const Value& v, Args& a) {
  const auto as_string = [&]() { return to_str(v); };
  if (name == "trim") {
    Value chars = arg(a, 0, "chars", Value::none());
    return Value::str(py_strip(
        as_string(), chars.is_none() ? std::nullopt : std::optional<std::string>(to_str(chars)),
        true, true));
  }
  if (name == "tojson") {
    JsonStyle st;
    const Value indent = arg(a, 0, "indent", Value::none());
    if (indent.is_int()) {
      st.indent =
          std::string(static_cast<size_t>(std::max<int64_t>(0, indent.integer_value())), ' ');
    } else if (indent.is_string()) {
      st.indent = indent.s;
    }
    if (st.indent) st.item_sep = ",";
    if (const Value* sep = find_kw(a, "separators");
        sep && sep->is_list() && sep->list->size() == 2) {
      st.item_sep = to_str((*sep->list)[0]);
      st.key_sep = to_str((*sep->list)[1]);
    }
    if (const Value* sk = find_kw(a, "sort_keys")) st.sort_keys = truthy(*sk);
    if (const Value* ea = find_kw(a, "ensure_ascii")) st.ensure_ascii = truthy(*ea);
    if (v.is_undefined()) fail("TypeError", "Object of type Undefined is not JSON serializable");
    std::string out;
    to_json(out, v, st, 0);
    return Value::str(std::move(out));
  }
  if (name == "length" || name == "count") {
    if (v.is_string()) return Value::integer(static_cast<int64_t>(code_point_count(v.s)));
    if (v.is_list()) return Value::integer(static_cast<int64_t>(v.list->size()));
    if (v.is_dict()) return Value::integer(static_cast<int64_t>(v.dict->items.size()));
    if (v.is_undefined()) return Value::integer(0);
    fail("TypeError", "object of type '" + type_name(v) + "' has no len()");
  }
  if (name == "upper") return Value::str(ascii_upper(as_string()));
  if (name == "lower") return Value::str(ascii_lower(as_string()));
  if (name == "capitalize") return Value::str(py_capitalize(as_string()));
  if (name == "title") {
    // jinja2's do_title: each piece after a run of -, whitespace or an opening bracket.
    const std::string s = as_string();
    std::string out;
    bool start = true;
    for (const char c : s) {
      const bool sep = c == '-' || py_space(c) || c == '(' || c == '{' || c == '[' || c == '<';
      if (sep) {
        out += c;
        start = true;
      } else {
        out += start ? ascii_upper(std::string(1, c)) : ascii_lower(std::string(1, c));
        start = false;
      }
    }
    return Value::str(out);
  }
  if (name == "string") return Value::str(as_string());
  if (name == "safe" || name == "list" || name == "items" || name == "first" || name == "last" ||
      name == "reverse" || name == "unique" || name == "sort" || name == "join" ||
      name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject" ||
      name == "map" || name == "sum" || name == "min" || name == "max" || name == "dictsort" ||
      name == "batch") {
    if (name == "safe") return v.is_undefined() ? Value::str("") : v;
    if (name == "items") {
      if (v.is_undefined()) return Value::make_list({});
      if (!v.is_dict()) fail("TypeError", "Can only get item pairs from a mapping.");
      return *call_method(v, "items", a);
    }
    if (name == "dictsort") {
      if (!v.is_dict()) fail("TypeError", "dictsort expects a mapping");
      const bool cs = truthy(arg(a, 0, "case_sensitive", Value::boolean(false)));
      const std::string by = to_str(arg(a, 1, "by", Value::str("key")));
      const bool rev = truthy(arg(a, 2, "reverse", Value::boolean(false)));
      List items = iterate(*call_method(v, "items", a));
      const size_t pos = by == "value" ? 1 : 0;
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        const int c = order(sort_key((*x.list)[pos], cs), sort_key((*y.list)[pos], cs), "<");
        return rev ? c > 0 : c < 0;
      });
      return Value::make_list(std::move(items));
    }
    if (v.is_undefined() && (name == "first" || name == "last"))
      return Value::undef("No first item, sequence was empty.");
    List items = iterate(v);
    if (name == "list") return Value::make_list(std::move(items));
    if (name == "first" || name == "last") {
      if (items.empty()) return Value::undef("No first item, sequence was empty.");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "reverse") {
      if (v.is_string()) {
        auto cps = code_points(v.s);
        std::string out;
        for (size_t k = cps.size(); k-- > 0;) out += cps[k];
        return Value::str(out);
      }
      return Value::make_list({items.rbegin(), items.rend()});
    }
    if (name == "join") {
      const std::string sep = to_str(arg(a, 0, "d", Value::str("")));
      Value attribute = arg(a, 1, "attribute", Value::none());
      std::string out;
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += sep;
        out +=
            to_str(attribute.is_none() ? items[k] : attr_path(*this, items[k], to_str(attribute)));
      }
      return Value::str(out);
    }
    if (name == "unique" || name == "sort" || name == "min" || name == "max") {
      const bool cs =
          truthy(arg(a, name == "sort" ? 1 : 0, "case_sensitive", Value::boolean(false)));
      Value attribute = arg(a, name == "sort" ? 2 : 1, "attribute", Value::none());
      const auto key = [&](const Value& x) {
        return sort_key(attribute.is_none() ? x : attr_path(*this, x, to_str(attribute)), cs);
      };
      if (name == "unique") {
        List out, seen;
        for (const auto& x : items) {
          const Value k = key(x);
          if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, k); })) {
            seen.push_back(k);
            out.push_back(x);
          }
        }
        return Value::make_list(std::move(out));
      }
      if (name == "sort") {
        const bool rev = truthy(arg(a, 0, "reverse", Value::boolean(false)));
        std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
          const int c = order(key(x), key(y), "<");
          return rev ? c > 0 : c < 0;
        });
        return Value::make_list(std::move(items));
      }
      if (items.empty()) return Value::undef("No aggregated item, sequence was empty.");
      size_t best = 0;
      for (size_t k = 1; k < items.size(); ++k) {
        const int c = order(key(items[k]), key(items[best]), "<");
        if (name == "min" ? c < 0 : c > 0) best = k;
      }
      return items[best];
    }
    if (name == "sum") {
      Value attribute = arg(a, 0, "attribute", Value::none());
      Value total = arg(a, 1, "start", Value::integer(0));
      for (const auto& x : items)
        total =
            binary("+", total, attribute.is_none() ? x : attr_path(*this, x, to_str(attribute)));
      return total;
    }
    if (name == "map") {
      List out;
      if (const Value* attribute = find_kw(a, "attribute")) {
        const Value* dflt = find_kw(a, "default");
        for (const auto& x : items) {
          Value y = attr_path(*this, x, to_str(*attribute));
          out.push_back(y.is_undefined() && dflt ? *dflt : y);
        }
        return Value::make_list(std::move(out));
      }
      if (a.pos.empty()) fail("FilterArgumentError", "map requires a filter argument");
      const std::string filter = to_str(a.pos[0]);
      Args rest;
      rest.pos.assign(a.pos.begin() + 1, a.pos.end());
      rest.kw = a.kw;
      for (const auto& x : items) out.push_back(apply_filter(filter, x, rest));
      return Value::make_list(std::move(out));
    }
    if (name == "batch") fail("TemplateError", "the batch filter is outside the supported subset");
    // select / reject / selectattr / rejectattr
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_true = name == "select" || name == "selectattr";
    size_t k0 = 0;
    std::string attribute;
    if (by_attr) {
      if (a.pos.empty()) fail("TypeError", name + " needs an attribute");
      attribute = to_str(a.pos[0]);
      k0 = 1;
    }
    std::optional<std::string> test;
    Args test_args;
    if (a.pos.size() > k0) {
      test = to_str(a.pos[k0]);
      test_args.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(k0) + 1, a.pos.end());
    }
    List out;
    for (const auto& x : items) {
      Value y = by_attr ? attr_path(*this, x, attribute) : x;
      const bool hit = test ? apply_test(*test, y, test_args) : truthy(y);
      if (hit == keep_true) out.push_back(x);
    }
    return Value::make_list(std::move(out));
  }
  if (name == "default" || name == "d") {
    Value dflt = arg(a, 0, "default_value", Value::str(""));
    const bool boolean = truthy(arg(a, 1, "boolean", Value::boolean(false)));
    if (v.is_undefined() || (boolean && !truthy(v))) return dflt;
    return v;
  }
  if (name == "int") {
    Value dflt = arg(a, 0, "default", Value::integer(0));
    if (v.is_int()) return Value::integer(v.integer_value());
    if (v.kind == Value::Kind::floating) return Value::integer(static_cast<int64_t>(v.f));
    if (v.is_string()) {
      const std::string s = py_strip(v.s, std::nullopt, true, true);
      char* end = nullptr;
      const long long x = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && end && *end == '\0') return Value::integer(x);
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == '\0') return Value::integer(static_cast<int64_t>(d));
    }
    return dflt;
  }
  if (name == "float") {
    Value dflt = arg(a, 0, "default", Value::floating(0.0));
    if (v.is_number()) return Value::floating(v.number());
    if (v.is_string()) {
      const std::string s = py_strip(v.s, std::nullopt, true, true);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == '\0') return Value::floating(d);
    }
    return dflt;
  }
  if (name == "abs") {
    if (!v.is_number()) fail("TypeError", "bad operand type for abs(): '" + type_name(v) + "'");
    return v.kind == Value::Kind::floating
               ? Value::floating(std::fabs(v.f))
               : Value::integer(v.integer_value() == INT64_MIN ? INT64_MIN
                                                               : std::llabs(v.integer_value()));
  }
  if (name == "round") {
    const int64_t precision = arg(a, 0, "precision", Value::integer(0)).integer_value();
    const std::string method = to_str(arg(a, 1, "method", Value::str("common")));
    if (!v.is_number()) fail("TypeError", "round needs a number");
    if (v.is_int() && method == "common" && precision >= 0)
      return Value::integer(v.integer_value());
    const double scale = std::pow(10.0, static_cast<double>(precision));
    const double x = v.number() * scale;
    double r;
    if (method == "ceil") {
      r = std::ceil(x);
    } else if (method == "floor") {
      r = std::floor(x);
    } else {
      r = std::nearbyint(x);  // Python's round(): half to even (default rounding mode)
    }
    return Value::floating(r / scale);
  }
  if (name == "replace") {
    return Value::str(py_replace(
        as_string(), to_str(arg(a, 0, "old")), to_str(arg(a, 1, "new")),
        arg(a, 2, "count", Value::none()).is_none() ? -1 : arg(a, 2, "count").integer_value()));
  }
  if (name == "indent") {
    Value width = arg(a, 0, "width", Value::integer(4));
    const bool first = truthy(arg(a, 1, "first", Value::boolean(false)));
    const bool blank = truthy(arg(a, 2, "blank", Value::boolean(false)));
    const std::string ind =
        width.is_string()
            ? width.s
            : std::string(static_cast<size_t>(std::max<int64_t>(0, width.integer_value())), ' ');
    const std::string s = as_string() + "\n";
    List lines_v = *call_method(Value::str(s), "splitlines", a).value().list;
    std::vector<std::string> lines;
    for (const auto& l : lines_v) lines.push_back(l.s);
    std::string rv;
    if (blank) {
      for (size_t k = 0; k < lines.size(); ++k) rv += (k ? "\n" + ind : "") + lines[k];
    } else {
      rv = lines.empty() ? "" : lines[0];
      for (size_t k = 1; k < lines.size(); ++k)
        rv += "\n" + (lines[k].empty() ? lines[k] : ind + lines[k]);
    }
    if (first) rv = ind + rv;
    return Value::str(rv);
  }
  if (name == "wordcount") {
    int64_t n = 0;
    bool in_word = false;
    for (const char c : as_string()) {
      const bool w = std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
                     static_cast<unsigned char>(c) >= 0x80;
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value::integer(n);
  }
  if (name == "attr") return get_attr(v, to_str(arg(a, 0, "name")));
  if (name == "e" || name == "escape") return Value::str(html_escape(as_string()));
  fail("TemplateError", "the filter '" + name + "' is outside the supported Jinja subset");
}

// ---------------------------------------------------------------------------------------------
// Tests (jinja2 tests.py).

bool Interp::apply_test(const std::string& name, const Value& v, Args& a) {
  const auto other = [&]() { return arg(a, 0, "other"); };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind == Value::Kind::integer;
  if (name == "float") return v.kind == Value::Kind::floating;
  if (name == "boolean") return v.kind == Value::Kind::boolean;
  if (name == "true") return v.kind == Value::Kind::boolean && v.b;
  if (name == "false") return v.kind == Value::Kind::boolean && !v.b;
  if (name == "mapping") return v.is_dict() && v.dict->kind == Dict::Kind::dict;
  if (name == "iterable")
    return v.is_list() || v.is_string() || v.is_undefined() ||
           (v.is_dict() && v.dict->kind == Dict::Kind::dict);
  if (name == "sequence")
    return v.is_list() || v.is_string() || v.is_undefined() ||
           (v.is_dict() && v.dict->kind == Dict::Kind::dict);
  if (name == "callable") return v.kind == Value::Kind::function;
  if (name == "odd" || name == "even") {
    if (!v.is_int()) fail("TypeError", "not all arguments converted during string formatting");
    const bool odd = (v.integer_value() % 2) != 0;
    return name == "odd" ? odd : !odd;
  }
  if (name == "divisibleby") {
    const Value d = arg(a, 0, "num");
    if (!v.is_int() || !d.is_int()) fail("TypeError", "divisibleby needs integers");
    if (d.integer_value() == 0) fail("ZeroDivisionError", "integer division or modulo by zero");
    return v.integer_value() % d.integer_value() == 0;
  }
  if (name == "in") return contains(arg(a, 0, "seq"), v);
  if (name == "eq" || name == "equalto" || name == "==") return equal(v, other());
  if (name == "ne" || name == "!=") return !equal(v, other());
  if (name == "lt" || name == "lessthan" || name == "<") return order(v, other(), "<") < 0;
  if (name == "le" || name == "<=") return order(v, other(), "<=") <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return order(v, other(), ">") > 0;
  if (name == "ge" || name == ">=") return order(v, other(), ">=") >= 0;
  if (name == "sameas") {
    const Value o = other();
    if (v.kind != o.kind) return false;
    if (v.is_list()) return v.list == o.list;
    if (v.is_dict()) return v.dict == o.dict;
    return equal(v, o);
  }
  if (name == "lower") return v.is_string() && ascii_lower(v.s) == v.s;
  if (name == "upper") return v.is_string() && ascii_upper(v.s) == v.s;
  fail("TemplateError", "the test '" + name + "' is outside the supported Jinja subset");
}

// The globals transformers and jinja2 give a chat template.
void add_globals(Frame& g) {
  g.vars["raise_exception"] = Value::function("raise_exception", [](Interp&, Args& a) -> Value {
    fail("TemplateError", a.pos.empty() ? "" : to_str(a.pos[0]));
  });
  g.vars["strftime_now"] = Value::function("strftime_now", [](Interp& in, Args& a) -> Value {
    const std::time_t t = in.options.now ? in.options.now : std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[256];
    const std::string fmt = a.pos.empty() ? "" : to_str(a.pos[0]);
    const size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
    return Value::str(std::string(buf, n));
  });
  g.vars["namespace"] = Value::function("namespace", [](Interp&, Args& a) -> Value {
    Value ns = new_dict(Dict::Kind::namespace_);
    for (const auto& p : a.pos)
      if (p.is_dict())
        for (const auto& kv : p.dict->items) ns.dict->set(kv.first, kv.second);
    for (const auto& [k, v] : a.kw) ns.dict->set(Value::str(k), v);
    return ns;
  });
  g.vars["dict"] = Value::function("dict", [](Interp&, Args& a) -> Value {
    Value d = new_dict();
    for (const auto& [k, v] : a.kw) d.dict->set(Value::str(k), v);
    return d;
  });
  g.vars["range"] = Value::function("range", [](Interp&, Args& a) -> Value {
    for (const auto& p : a.pos)
      if (!p.is_int()) fail("TypeError", "range() needs integers");
    int64_t start = 0, stop = 0, step = 1;
    if (a.pos.size() == 1) {
      stop = a.pos[0].integer_value();
    } else if (a.pos.size() >= 2) {
      start = a.pos[0].integer_value();
      stop = a.pos[1].integer_value();
      if (a.pos.size() > 2) step = a.pos[2].integer_value();
    }
    if (step == 0) fail("ValueError", "range() arg 3 must not be zero");
    List items;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      items.push_back(Value::integer(k));
      if (items.size() > 100000) fail("OverflowError", "range too big, maximum length is 100000");
    }
    return Value::make_list(std::move(items));
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Template::Template(std::string source, std::string name) : name_(std::move(name)) {
  try {
    Parser parser(Lexer(std::move(source)).run(), literals_);
    root_ = parser.parse();
    has_generation_ = parser.saw_generation;
  } catch (const SyntaxError& e) {
    throw Error(name_ + ", line " + std::to_string(e.line) + ": " + e.message);
  }
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

Template::Output Template::render(const nlohmann::ordered_json& context,
                                  const Options& options) const {
  Interp in(options);
  in.frames.emplace_back();
  add_globals(in.frames[0]);
  if (!context.is_object()) throw Error(name_ + ": the context must be a JSON object");
  for (auto it = context.begin(); it != context.end(); ++it)
    in.frames[0].vars[it.key()] = from_json(it.value());
  Output out;
  in.out.push_back(&out.text);
  try {
    in.exec_body(*root_);
  } catch (const RenderError& e) {
    throw Error(name_ + ", line " + std::to_string(in.line) + ": " + e.kind + ": " + e.message);
  } catch (const BreakSignal&) {
    throw Error(name_ + ", line " + std::to_string(in.line) + ": 'break' outside a loop");
  } catch (const ContinueSignal&) {
    throw Error(name_ + ", line " + std::to_string(in.line) + ": 'continue' outside a loop");
  }
  out.generation = std::move(in.generation);
  return out;
}

}  // namespace mllm::jinja
