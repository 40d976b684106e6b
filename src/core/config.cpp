// YAML <-> typed Config. Each section is described once, in a `describe(Binder&, Section&)`
// function, and that one description drives reading (with validation), writing the resolved config,
// and the list of known key paths used for did-you-mean suggestions.
#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/projectors.h"
#include "core/strings.h"

namespace mllm {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string Config::where(const std::string& key) const {
  auto it = origin.find(key);
  if (it != origin.end()) return it->second + ": " + key;
  return (source.empty() ? std::string("config") : source) + ": " + key;
}

std::filesystem::path Config::output_dir() const {
  return run.output_dir.empty() ? std::filesystem::path("runs") / run.name
                                : std::filesystem::path(run.output_dir);
}

namespace {

// Returns an error text for a bad value, or "" when the value is fine.
template <class T>
using Check = std::function<std::string(const T&)>;

std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  const size_t limit = std::max<size_t>(2, word.size() / 3);
  return best_d <= limit ? best : "";
}

struct Context {
  std::string file;
  std::map<std::string, std::string> overrides;  // key path -> original "--set" argument
  std::vector<std::string> known_paths;          // all key paths, for suggestions
  std::map<std::string, std::string>* origin = nullptr;
  struct FileCheck {
    std::string path;
    const std::string* value;
    bool dir;
  };
  std::vector<FileCheck> file_checks;
};

class Binder {
 public:
  enum class Mode { Read, Write, Paths };

  Binder(Mode mode, Context& ctx, std::string prefix, YAML::Node node, YAML::Emitter* out)
      : mode_(mode), ctx_(ctx), prefix_(std::move(prefix)), node_(node), out_(out) {}

  template <class T>
  void value(const std::string& key, T& v, Check<T> check = {}) {
    const std::string path = full(key);
    if (mode_ == Mode::Paths) return ctx_.known_paths.push_back(path);
    if (mode_ == Mode::Write) return emit(key, v);
    used_.insert(key);
    const YAML::Node n = lookup(key);
    if (!n) return;  // absent: keep the default
    record(path, n);
    parse(path, n, v);
    if (check) {
      const std::string problem = check(v);
      if (!problem.empty()) fail(path, problem);
    }
  }

  void choice(const std::string& key, std::string& v, const std::vector<std::string>& options) {
    value<std::string>(
        key, v, [&](const std::string& s) -> std::string { return choice_problem(s, options); });
  }

  // A path that, when given, must exist. `dir` chooses between a directory and a regular file.
  // Checked after every key and type, so a typo is reported before a file that is missing only
  // because of the environment.
  void existing_path(const std::string& key, std::string& v, bool dir) {
    value<std::string>(key, v);
    if (mode_ == Mode::Read) ctx_.file_checks.push_back({full(key), &v, dir});
  }

  void check_files() const {
    for (const auto& c : ctx_.file_checks) {
      const std::string& p = *c.value;
      if (p.empty()) continue;
      std::error_code ec;
      if (!std::filesystem::exists(p, ec)) fail(c.path, "not found: " + p);
      if (c.dir && !std::filesystem::is_directory(p, ec)) fail(c.path, "not a directory: " + p);
      if (!c.dir && std::filesystem::is_directory(p, ec))
        fail(c.path, "is a directory, expected a file: " + p);
    }
  }

  template <class S>
  void section(const std::string& key, S& s) {
    const std::string path = full(key);
    if (mode_ == Mode::Paths) {
      Binder sub(mode_, ctx_, path, YAML::Node(), nullptr);
      describe(sub, s);
      return;
    }
    if (mode_ == Mode::Write) {
      *out_ << YAML::Key << key << YAML::Value << YAML::BeginMap;
      Binder sub(mode_, ctx_, path, YAML::Node(), out_);
      describe(sub, s);
      *out_ << YAML::EndMap;
      return;
    }
    used_.insert(key);
    const YAML::Node n = lookup(key);
    if (!n || n.IsNull()) return;
    record(path, n);
    if (!n.IsMap()) fail(path, "expected a mapping of keys, got " + kind(n));
    Binder sub(mode_, ctx_, path, n, nullptr);
    describe(sub, s);
    sub.reject_unknown();
  }

  // A list of sections (eval.tasks): each element a mapping described by describe(Binder&, S&).
  // Key paths are "key[i].field"; for suggestions the known paths are "key[].field".
  template <class S>
  void section_list(const std::string& key, std::vector<S>& v) {
    const std::string path = full(key);
    if (mode_ == Mode::Paths) {
      S element;
      Binder sub(mode_, ctx_, path + "[]", YAML::Node(), nullptr);
      describe(sub, element);
      return;
    }
    if (mode_ == Mode::Write) {
      *out_ << YAML::Key << key << YAML::Value << YAML::BeginSeq;
      for (size_t i = 0; i < v.size(); ++i) {
        *out_ << YAML::BeginMap;
        Binder sub(mode_, ctx_, path + "[" + std::to_string(i) + "]", YAML::Node(), out_);
        describe(sub, v[i]);
        *out_ << YAML::EndMap;
      }
      *out_ << YAML::EndSeq;
      return;
    }
    used_.insert(key);
    const YAML::Node n = lookup(key);
    if (!n || n.IsNull()) return;
    record(path, n);
    if (!n.IsSequence()) fail(path, "expected a list of mappings, got " + kind(n));
    // Sized once: existing_path keeps pointers to the elements' strings.
    v.assign(n.size(), S{});
    for (size_t i = 0; i < n.size(); ++i) {
      const std::string item = path + "[" + std::to_string(i) + "]";
      record(item, n[i]);
      if (!n[i].IsMap()) fail(item, "expected a mapping of keys, got " + kind(n[i]));
      Binder sub(mode_, ctx_, item, n[i], nullptr);
      describe(sub, v[i]);
      sub.reject_unknown();
    }
  }

  // A section that may also be a list of them (data.train: one source or a mixture). Read: a
  // mapping fills `one`; a list fills `list` and `one` with its first element. Written back in the
  // form it was read.
  template <class S>
  void section_or_list(const std::string& key, S& one, std::vector<S>& list) {
    if (mode_ == Mode::Paths) {
      section(key, one);
      section_list(key, list);
      return;
    }
    if (mode_ == Mode::Write) {
      if (list.empty())
        section(key, one);
      else
        section_list(key, list);
      return;
    }
    const YAML::Node n = lookup(key);
    if (n && n.IsSequence()) {
      section_list(key, list);
      if (list.empty()) fail(full(key), "an empty list: give at least one source");
      one = list.front();
    } else {
      section(key, one);
    }
  }

  // After a section is read: every key present in the YAML must have been consumed.
  void reject_unknown() {
    if (mode_ != Mode::Read || !node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const std::string key = key_of(kv.first);
      if (used_.count(key)) continue;
      const std::string path = full(key);
      record(path, kv.first);
      std::string msg = "unknown key";
      // Suggest the closest key of this section, else the same key in another section.
      const std::string head = prefix_.empty() ? "" : without_indices(prefix_) + ".";
      std::vector<std::string> siblings;
      for (const auto& p : ctx_.known_paths)
        if (p.rfind(head, 0) == 0)
          siblings.push_back(p.substr(head.size(), p.find('.', head.size()) - head.size()));
      std::string guess = closest(key, siblings);
      if (!guess.empty()) guess = head + guess;
      if (guess.empty()) {  // train.seed -> run.seed
        for (const auto& p : ctx_.known_paths) {
          const auto dot = p.rfind('.');
          if (p.substr(dot == std::string::npos ? 0 : dot + 1) == key) {
            guess = p;  // the first: a top-level section's key before a nested one's
            break;
          }
        }
      }
      if (!guess.empty()) msg += " (did you mean " + guess + "?)";
      fail(path, msg);
    }
  }

  [[noreturn]] void fail(const std::string& path, const std::string& msg) const {
    throw ConfigError(location(path) + ": " + path + ": " + msg);
  }

 private:
  std::string full(const std::string& key) const {
    return prefix_.empty() ? key : prefix_ + "." + key;
  }

  YAML::Node lookup(const std::string& key) const {
    if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    for (const auto& kv : node_)
      if (key_of(kv.first) == key) return kv.second;
    return YAML::Node(YAML::NodeType::Undefined);
  }

  // A mapping's key as text. YAML lets a key be a list or a mapping; a recipe's keys are names.
  std::string key_of(const YAML::Node& k) const {
    if (k.IsSequence() || k.IsMap()) {
      std::string where = location(prefix_);  // "--set ..." when an override made the section
      if (where.rfind("--set ", 0) != 0 && !k.Mark().is_null())
        where = ctx_.file + ":" + std::to_string(k.Mark().line + 1);
      throw ConfigError(where + ": " + (prefix_.empty() ? "" : prefix_ + ": ") +
                        "a key must be a name, got " + kind(k));
    }
    return k.as<std::string>();
  }

  std::string location(const std::string& path) const {
    auto it = ctx_.origin->find(path);
    return it != ctx_.origin->end() ? it->second : ctx_.file;
  }

  // Remembers where a key came from, so later errors (cross-field checks, model loading) can cite
  // it.
  void record(const std::string& path, const YAML::Node& n) {
    std::string where = ctx_.file;
    const YAML::Mark m = n.Mark();
    if (!m.is_null()) where += ":" + std::to_string(m.line + 1);
    for (std::string p = path;;) {  // an override of this key or of a parent section wins
      auto it = ctx_.overrides.find(p);
      if (it != ctx_.overrides.end()) {
        where = "--set " + it->second;
        break;
      }
      const auto dot = p.rfind('.');
      if (dot == std::string::npos) break;
      p = p.substr(0, dot);
    }
    (*ctx_.origin)[path] = where;
  }

  // "eval.tasks[2]" -> "eval.tasks[]", the form of the known key paths.
  static std::string without_indices(const std::string& path) {
    std::string out;
    for (size_t i = 0; i < path.size(); ++i) {
      out.push_back(path[i]);
      if (path[i] != '[') continue;
      while (i + 1 < path.size() && path[i + 1] != ']') ++i;
    }
    return out;
  }

  static std::string kind(const YAML::Node& n) {
    if (n.IsMap()) return "a mapping";
    if (n.IsSequence()) return "a list";
    if (n.IsNull()) return "null";
    return "'" + n.Scalar() + "'";
  }

  void parse(const std::string& path, const YAML::Node& n, int64_t& v) const {
    if (!n.IsScalar()) fail(path, "expected an integer, got " + kind(n));
    const std::string s = n.Scalar();
    if (s == "auto" && (path == "run.threads")) {
      v = 0;
      return;
    }
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE)
      fail(path, "expected an integer, got '" + s + "'");
    v = x;
  }
  void parse(const std::string& path, const YAML::Node& n, double& v) const {
    if (!n.IsScalar()) fail(path, "expected a number, got " + kind(n));
    const std::string s = n.Scalar();
    errno = 0;
    char* end = nullptr;
    const double x = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(x))
      fail(path, "expected a number, got '" + s + "'");
    v = x;
  }
  void parse(const std::string& path, const YAML::Node& n, bool& v) const {
    const std::string s = n.IsScalar() ? n.Scalar() : "";
    if (s == "true" || s == "True" || s == "yes")
      v = true;
    else if (s == "false" || s == "False" || s == "no")
      v = false;
    else
      fail(path, "expected true or false, got " + kind(n));
  }
  // null -> none; a string, "" included, -> that string.
  void parse(const std::string& path, const YAML::Node& n, std::optional<std::string>& v) const {
    if (n.IsNull()) {
      v.reset();
      return;
    }
    std::string s;
    parse(path, n, s);
    v = std::move(s);
  }
  void parse(const std::string& path, const YAML::Node& n, std::string& v) const {
    if (n.IsNull()) {
      v.clear();
      return;
    }
    if (!n.IsScalar()) fail(path, "expected a string, got " + kind(n));
    v = n.Scalar();
  }
  template <class T>
  void parse(const std::string& path, const YAML::Node& n, std::vector<T>& v) const {
    if (n.IsNull()) {
      v.clear();
      return;
    }
    if (!n.IsSequence()) fail(path, "expected a list, got " + kind(n));
    v.clear();
    for (size_t i = 0; i < n.size(); ++i) {
      T x{};
      parse(path + "[" + std::to_string(i) + "]", n[i], x);
      v.push_back(x);
    }
  }

  template <class T>
  void emit(const std::string& key, const T& v) {
    *out_ << YAML::Key << key << YAML::Value;
    emit_value(v);
  }
  void emit_value(const std::string& s) {
    if (s.empty())
      *out_ << YAML::Null;
    else
      *out_ << YAML::DoubleQuoted << s;
  }
  void emit_value(const std::optional<std::string>& s) {
    if (s)
      *out_ << YAML::DoubleQuoted << *s;
    else
      *out_ << YAML::Null;
  }
  void emit_value(int64_t x) { *out_ << x; }
  void emit_value(bool b) { *out_ << (b ? "true" : "false"); }
  void emit_value(double x) {
    std::ostringstream ss;
    ss.precision(17);
    ss << x;
    std::string s = ss.str();
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    *out_ << s;
  }
  template <class T>
  void emit_value(const std::vector<T>& v) {
    *out_ << YAML::Flow << YAML::BeginSeq;
    for (const auto& x : v) emit_value(x);
    *out_ << YAML::EndSeq;
  }

  Mode mode_;
  Context& ctx_;
  std::string prefix_;
  YAML::Node node_;
  YAML::Emitter* out_;
  std::set<std::string> used_;
};

// ---- Checks -------------------------------------------------------------------------------------

Check<int64_t> at_least(int64_t lo) {
  return [lo](const int64_t& v) {
    return v >= lo ? "" : "must be >= " + std::to_string(lo) + " (got " + std::to_string(v) + ")";
  };
}
Check<int64_t> between(int64_t lo, int64_t hi) {
  return [lo, hi](const int64_t& v) {
    return v >= lo && v <= hi ? ""
                              : "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                    "] (got " + std::to_string(v) + ")";
  };
}
Check<double> in_range(double lo, double hi, bool lo_open = false) {
  return [=](const double& v) -> std::string {
    if ((lo_open ? v > lo : v >= lo) && v <= hi) return "";
    std::ostringstream ss;
    ss << "must be in " << (lo_open ? "(" : "[") << lo << ", " << hi << "] (got " << v << ")";
    return ss.str();
  };
}
Check<std::vector<double>> of_size(size_t n) {
  return [n](const std::vector<double>& v) {
    return v.size() == n ? "" : "expected a list of " + std::to_string(n) + " numbers";
  };
}

// ---- Section descriptions -----------------------------------------------------------------------

void describe(Binder& b, DistributedConfig& c) {
  b.choice("backend", c.backend, {"auto", "gloo", "nccl"});
  b.value("timeout", c.timeout, in_range(0, 1e7, true));
  b.value("bucket_mb", c.bucket_mb, in_range(0, 1e5, true));
}

void describe(Binder& b, RunConfig& c) {
  b.value("name", c.name, Check<std::string>([](const std::string& s) -> std::string {
            return s.empty() || s.find('/') != std::string::npos
                       ? "must be a non-empty name without '/'"
                       : "";
          }));
  b.value("output_dir", c.output_dir);
  b.value("seed", c.seed, at_least(0));
  b.value("device", c.device, Check<std::string>([](const std::string& s) -> std::string {
            if (s == "auto" || s == "cpu" || s == "cuda" || s.rfind("cuda:", 0) == 0) return "";
            return "must be auto, cpu, cuda or cuda:N (got '" + s + "')";
          }));
  b.value("threads", c.threads, at_least(0));
  b.choice("log_level", c.log_level, {"trace", "debug", "info", "warn", "error"});
  b.value("tensorboard", c.tensorboard);
  b.section("distributed", c.distributed);
}

void describe(Binder& b, AnyResConfig& c) {
  b.value("grid_pinpoints", c.grid_pinpoints);
  b.value("max_tiles", c.max_tiles, between(0, 64));
}

void describe(Binder& b, VisionConfig& c) {
  b.choice("type", c.type, {"clip_vit"});
  b.existing_path("pretrained", c.pretrained, true);
  b.value("image_size", c.image_size, at_least(1));
  b.value("patch_size", c.patch_size, at_least(1));
  b.value("hidden", c.hidden, at_least(1));
  b.value("layers", c.layers, at_least(1));
  b.value("heads", c.heads, at_least(1));
  b.value("intermediate", c.intermediate, at_least(1));
  b.value("layer_norm_eps", c.layer_norm_eps, in_range(0, 1, true));
  b.value("feature_layer", c.feature_layer);
  b.choice("select", c.select, {"patch", "cls_patch"});
  b.value("position_init_std", c.position_init_std, in_range(0, 10));
  b.section("anyres", c.anyres);
}

void describe(Binder& b, ClipTextConfig& c) {
  b.value("hidden", c.hidden, at_least(1));
  b.value("layers", c.layers, at_least(1));
  b.value("heads", c.heads, at_least(1));
  b.value("intermediate", c.intermediate, at_least(1));
  b.value("max_position", c.max_position, at_least(2));
  b.value("layer_norm_eps", c.layer_norm_eps, in_range(0, 1, true));
  b.value("projection_dim", c.projection_dim, at_least(1));
}

void describe(Binder& b, LlmConfig& c) {
  b.choice("type", c.type, {"llama", "qwen2", "mixtral"});
  b.existing_path("pretrained", c.pretrained, true);
  b.value("hidden", c.hidden, at_least(1));
  b.value("layers", c.layers, at_least(1));
  b.value("heads", c.heads, at_least(1));
  b.value("kv_heads", c.kv_heads, at_least(1));
  b.value("head_dim", c.head_dim, at_least(0));
  b.value("intermediate", c.intermediate, at_least(1));
  b.value("vocab", c.vocab, at_least(1));
  b.value("max_position", c.max_position, at_least(1));
  b.value("rope_theta", c.rope_theta, in_range(0, 1e12, true));
  b.choice("rope_scaling", c.rope_scaling, {"none", "linear"});
  b.value("rope_scaling_factor", c.rope_scaling_factor, in_range(0, 1e6, true));
  b.value("rms_norm_eps", c.rms_norm_eps, in_range(0, 1, true));
  b.value("tie_word_embeddings", c.tie_word_embeddings);
  b.value("experts", c.experts, at_least(0));
  b.value("experts_per_token", c.experts_per_token, at_least(1));
  b.value("router_aux_loss_coef", c.router_aux_loss_coef, in_range(0, 1e6));
}

void describe(Binder& b, ConnectorConfig& c) {
  b.value("type", c.type);  // a connector registry name (models/connectors), checked by the recipe
  b.value("num_queries", c.num_queries, at_least(0));
  b.value("layers", c.layers, at_least(1));
  b.value("heads", c.heads, at_least(1));
  b.value("hidden", c.hidden, at_least(0));
  b.value("pool_factor", c.pool_factor, at_least(1));
  b.value("xattn_every", c.xattn_every, at_least(1));
  b.value("value_positions", c.value_positions);
  b.value("window", c.window, in_range(0, 1e3));
  b.value("expert_every", c.expert_every, at_least(1));
  b.choice("projector", c.projector, projector_names());
  b.value("prompt_length", c.prompt_length, at_least(1));
  b.value("prompt_layers", c.prompt_layers, at_least(0));
}

void describe(Binder& b, ModelConfig& c) {
  b.section("vision", c.vision);
  b.section("llm", c.llm);
  b.section("connector", c.connector);
  b.section("text", c.text);
  b.existing_path("tokenizer", c.tokenizer, false);
}

void describe(Binder& b, DataSourceConfig& c) {
  b.choice("format", c.format,
           {"llava_json", "llava_jsonl", "preference_json", "preference_jsonl", "sharegpt",
            "sharegpt_jsonl", "messages", "messages_jsonl"});
  b.existing_path("path", c.path, false);
  b.existing_path("image_root", c.image_root, true);
  b.value("max_samples", c.max_samples, at_least(0));
  b.value("weight", c.weight, in_range(0, 1e9));
  b.value("epochs", c.epochs, in_range(0, 1e6));
  b.value("template", c.template_name);  // a chat template name (data/chat_template.h)
}

void describe(Binder& b, ImageConfig& c) {
  b.value("size", c.size, at_least(0));
  b.choice("aspect", c.aspect, {"pad", "crop", "resize"});
  b.value("max_pixels", c.max_pixels, at_least(0));
  b.value("mean", c.mean, of_size(3));
  b.value("std", c.std, Check<std::vector<double>>([](const std::vector<double>& v) -> std::string {
            if (v.size() != 3) return "expected a list of 3 numbers";
            for (double x : v)
              if (!(x > 0)) return "every value must be > 0";
            return "";
          }));
}

void describe(Binder& b, VideoConfig& c) {
  b.value("frames", c.frames, between(1, 1024));
  b.choice("sampling", c.sampling, {"uniform"});
  b.value("pool", c.pool, between(1, 64));
}

void describe(Binder& b, DataConfig& c) {
  b.section_or_list("train", c.train, c.mixture);
  b.section("eval", c.eval);
  b.value("template", c.template_name);  // a chat template name (data/chat_template.h)
  b.existing_path("chat_template", c.chat_template, false);
  b.value("system", c.system);
  b.value("max_length", c.max_length, at_least(8));
  b.section("image", c.image);
  b.section("video", c.video);
  b.choice("on_bad_record", c.on_bad_record, {"error", "skip"});
  b.value("workers", c.workers, at_least(0));
  b.value("prefetch", c.prefetch, at_least(1));
  b.value("group_by_length", c.group_by_length);
  b.value("packing", c.packing);
  b.value("allow_outside_image_root", c.allow_outside_image_root);
}

void describe(Binder& b, LoraConfig& c) {
  b.value("rank", c.rank, at_least(0));
  b.value("alpha", c.alpha, in_range(0, 1e6, true));
  b.value("dropout", c.dropout, in_range(0, 1));
  b.value("targets", c.targets);
}

void describe(Binder& b, DpoConfig& c) {
  b.choice("loss_type", c.loss_type, {"sigmoid", "hinge", "ipo"});
  b.value("beta", c.beta, in_range(0, 1e6, true));
  b.value("label_smoothing", c.label_smoothing, in_range(0, 0.5));
  b.value("rpo_alpha", c.rpo_alpha, in_range(0, 1e6));
}

void describe(Binder& b, OrpoConfig& c) {
  b.value("beta", c.beta, in_range(0, 1e6, true));
}

void describe(Binder& b, SimpoConfig& c) {
  b.value("beta", c.beta, in_range(0, 1e6, true));
  b.value("gamma", c.gamma, in_range(-1e6, 1e6));
  b.value("cpo_alpha", c.cpo_alpha, in_range(0, 1e6));
  b.value("label_smoothing", c.label_smoothing, in_range(0, 0.5));
}

void describe(Binder& b, TrainConfig& c) {
  b.value("stage", c.stage);  // a stage registry name (train/stage.h)
  b.value("trainable", c.trainable);
  b.existing_path("init_from", c.init_from, true);
  b.section("lora", c.lora);
  b.section("dpo", c.dpo);
  b.section("orpo", c.orpo);
  b.section("simpo", c.simpo);
  b.value("gradient_checkpointing", c.gradient_checkpointing);
  b.choice("sharding", c.sharding, {"none", "optimizer", "gradients", "parameters"});
  b.value("lm_head_chunk_mb", c.lm_head_chunk_mb, at_least(0));
  b.value("epochs", c.epochs, at_least(1));
  b.value("max_steps", c.max_steps, at_least(0));
  b.value("batch_size", c.batch_size, at_least(1));
  b.value("grad_accum", c.grad_accum, at_least(1));
  b.value("lr", c.lr, in_range(0, 10, true));
  b.value("weight_decay", c.weight_decay, in_range(0, 10));
  b.value("weight_decay_embeddings", c.weight_decay_embeddings);
  b.value("betas", c.betas,
          Check<std::vector<double>>([](const std::vector<double>& v) -> std::string {
            if (v.size() != 2) return "expected a list of 2 numbers";
            for (double x : v)
              if (!(x >= 0 && x < 1)) return "each beta must be in [0, 1)";
            return "";
          }));
  b.value("adam_eps", c.adam_eps, in_range(0, 1, true));
  b.value("warmup_ratio", c.warmup_ratio, in_range(0, 1));
  b.choice("schedule", c.schedule, {"cosine", "linear", "constant"});
  b.value("min_lr_ratio", c.min_lr_ratio, in_range(0, 1));
  b.value("clip_grad_norm", c.clip_grad_norm, in_range(0, 1e9));
  b.value("max_bad_steps", c.max_bad_steps, at_least(0));
  b.choice("precision", c.precision, {"fp32", "bf16"});
  b.value("save_every", c.save_every, at_least(0));
  b.value("keep_last", c.keep_last, at_least(0));
  b.value("log_every", c.log_every, at_least(1));
  b.value("eval_every", c.eval_every, at_least(0));
  b.value("eval_batches", c.eval_batches, at_least(0));
}

void describe(Binder& b, GenerationConfig& c) {
  b.value("max_new_tokens", c.max_new_tokens, at_least(1));
  b.value("temperature", c.temperature, in_range(0, 100));
  b.value("top_k", c.top_k, at_least(0));
  b.value("top_p", c.top_p, in_range(0, 1, true));
  b.value("seed", c.seed, at_least(0));
  b.value("stop", c.stop);
}

void describe(Binder& b, EvalTaskConfig& c) {
  b.value("name", c.name, Check<std::string>([](const std::string& s) -> std::string {
            return s.empty() || s.find_first_of("/\\ ") != std::string::npos
                       ? "must be a non-empty name without '/' or spaces"
                       : "";
          }));
  b.choice("format", c.format, {"llava_json", "llava_jsonl", "qa_json", "qa_jsonl"});
  b.existing_path("path", c.path, false);
  b.existing_path("image_root", c.image_root, true);
  b.value("max_samples", c.max_samples, at_least(0));
  b.value("types", c.types);
  b.value("template", c.template_name);  // empty = the model's own; else a chat template name
  b.value("metrics", c.metrics,          // eval/metrics.h names, checked by the recipe
          Check<std::vector<std::string>>([](const std::vector<std::string>& v) -> std::string {
            return v.empty() ? "needs at least one metric" : "";
          }));
  b.section("generation", c.generation);
  b.value("base_resolution", c.base_resolution);
}

void describe(Binder& b, EvalConfig& c) {
  b.section_list("tasks", c.tasks);
  b.value("batch_size", c.batch_size, at_least(1));
  b.value("chance", c.chance);
}

void describe(Binder& b, Config& c) {
  b.section("run", c.run);
  b.section("model", c.model);
  b.section("data", c.data);
  b.section("train", c.train);
  b.section("eval", c.eval);
}

void describe(Binder& b, EvalFile& c) {
  b.section("run", c.run);
  b.section("eval", c.eval);
}

void check_eval(const EvalConfig& e, const Binder& b) {
  for (size_t i = 0; i < e.tasks.size(); ++i) {
    const std::string at = "eval.tasks[" + std::to_string(i) + "]";
    const auto& t = e.tasks[i];
    if (t.name.empty()) b.fail(at + ".name", "is required");
    if (t.path.empty()) b.fail(at + ".path", "is required");
    for (size_t j = 0; j < i; ++j)
      if (e.tasks[j].name == t.name)
        b.fail(at + ".name",
               "'" + t.name + "' is already the name of eval.tasks[" + std::to_string(j) + "]");
    if (!t.types.empty() && t.format.rfind("qa_json", 0) != 0)
      b.fail(at + ".types", "filters qa_json records by their \"type\"; format is " + t.format);
  }
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream ss(s);
  while (std::getline(ss, cur, sep)) out.push_back(cur);
  return out;
}

// Sets root[a][b]... = value for the key path parts; "tasks[2]" steps into element 2 of a list,
// which must exist. Returns "" or why the path cannot be set.
std::string set_path(YAML::Node node, const std::vector<std::string>& parts, size_t i,
                     const YAML::Node& value) {
  std::string part = parts[i];
  long index = -1;
  if (const auto open = part.find('['); open != std::string::npos) {
    char* end = nullptr;
    index = std::strtol(part.c_str() + open + 1, &end, 10);
    if (part.back() != ']' || end != part.c_str() + part.size() - 1 || index < 0 || open == 0)
      return "'" + part + "' is not name[index]";
    part = part.substr(0, open);
  }
  if (index < 0) {
    if (i + 1 == parts.size()) {
      node[part] = value;
      return "";
    }
    const YAML::Node& cnode = node;
    // A key under a list (data.train.path where data.train is a mixture) would replace the whole
    // list by a mapping holding that one key: name the element, or set the list itself.
    if (cnode[part] && cnode[part].IsSequence()) {
      std::string list;
      for (size_t k = 0; k <= i; ++k) list += (k ? "." : "") + parts[k];
      return "'" + list + "' is a list: set one element ('" + list + "[0]." + parts[i + 1] +
             "') or the whole list ('" + list + "=[...]')";
    }
    if (!cnode[part] || !cnode[part].IsMap()) node[part] = YAML::Node(YAML::NodeType::Map);
    return set_path(node[part], parts, i + 1, value);
  }
  const YAML::Node& cnode = node;
  if (!cnode[part] || !cnode[part].IsSequence() || static_cast<size_t>(index) >= cnode[part].size())
    return "there is no element " + std::to_string(index) + " in list '" + part + "'";
  YAML::Node element = node[part][static_cast<size_t>(index)];
  if (i + 1 == parts.size()) {
    element = value;
    return "";
  }
  if (!element.IsMap())
    return "element " + std::to_string(index) + " of '" + part + "' is not a mapping";
  return set_path(element, parts, i + 1, value);
}

// Relations between fields that no single-field check can see.
void cross_check(const Config& c, const Binder& b) {
  if (const auto p = check_architecture(c.model.vision))
    b.fail("model.vision." + p.field, p.message);
  if (const auto p = check_architecture(c.model.llm)) b.fail("model.llm." + p.field, p.message);
  if (const auto p = check_architecture(c.model.connector))
    b.fail("model.connector." + p.field, p.message);
  if (const auto p = check_architecture(c.model.text)) b.fail("model.text." + p.field, p.message);
  if (c.data.train.path.empty()) b.fail("data.train.path", "is required");
  // weight / epochs / template belong to the sources of a mixture.
  if (c.data.mixture.empty()) {
    for (const auto& [src, key] :
         {std::pair{&c.data.train, "data.train"}, std::pair{&c.data.eval, "data.eval"}}) {
      if (src->weight != 0)
        b.fail(std::string(key) + ".weight", "only in a mixture (data.train as a list)");
      if (src->epochs != 0)
        b.fail(std::string(key) + ".epochs", "only in a mixture (data.train as a list)");
      if (!src->template_name.empty())
        b.fail(std::string(key) + ".template",
               "only in a mixture (data.train as a list); use data.template");
    }
  }
  for (size_t i = 0; i < c.data.mixture.size(); ++i) {
    const auto& m = c.data.mixture[i];
    const std::string at = "data.train[" + std::to_string(i) + "]";
    if (m.path.empty()) b.fail(at + ".path", "is required");
    if ((m.weight > 0) == (m.epochs > 0))
      b.fail(at + (m.weight > 0 ? ".epochs" : ".weight"),
             "each source of a mixture takes either a weight (its share of an epoch) or epochs "
             "(passes over it per epoch)");
    const bool pref = m.format.rfind("preference", 0) == 0;
    if (pref != (c.data.mixture[0].format.rfind("preference", 0) == 0))
      b.fail(at + ".format", "a mixture's sources are all conversations or all preference pairs");
  }
  if (c.model.tokenizer.empty()) b.fail("model.tokenizer", "is required");
  check_eval(c.eval, b);
}

void cross_check(const EvalFile& c, const Binder& b) {
  if (c.eval.tasks.empty()) b.fail("eval.tasks", "needs at least one task");
  check_eval(c.eval, b);
}

}  // namespace

namespace {

// A key given twice in one mapping: YAML forbids it, yaml-cpp keeps both and lookups see the
// first, so `lr: 5e-1` appended at the bottom would be silently ignored. Refused, naming both
// lines.
void reject_duplicate_keys(const YAML::Node& node, const std::string& file, const std::string& path,
                           int64_t& budget) {
  // Aliases share nodes, so a small file can describe an exponentially large tree: bounded.
  if (--budget < 0)
    throw ConfigError(file + ": more than a million YAML nodes (aliases nested in aliases?)");
  if (node.IsMap()) {
    std::map<std::string, int> first_line;
    for (const auto& kv : node) {
      if (!kv.first.IsScalar()) continue;  // complex keys are reported as unknown later
      const std::string key = kv.first.Scalar();
      const std::string full = path.empty() ? key : path + "." + key;
      const int line = kv.first.Mark().line + 1;
      const auto [it, fresh] = first_line.emplace(key, line);
      if (!fresh)
        throw ConfigError(file + ":" + std::to_string(line) + ": " + full +
                          ": given twice (first at line " + std::to_string(it->second) +
                          "); keep one");
      reject_duplicate_keys(kv.second, file, full, budget);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i)
      reject_duplicate_keys(node[i], file, path + "[" + std::to_string(i) + "]", budget);
  }
}

// Reads a recipe into T (Config or EvalFile): YAML, --set overrides, every key and type, the
// cross-field checks, then the files it names.
template <class T>
T load_recipe(const std::filesystem::path& yaml_path, const std::vector<std::string>& overrides,
              bool check_files = true) {
  T config;
  config.source = yaml_path.string();
  Context ctx;
  ctx.file = yaml_path.string();
  ctx.origin = &config.origin;
  {
    T defaults;
    Binder paths(Binder::Mode::Paths, ctx, "", YAML::Node(), nullptr);
    describe(paths, defaults);
  }

  std::error_code ec;
  if (!std::filesystem::is_regular_file(yaml_path, ec))
    throw ConfigError(yaml_path.string() + ": config file not found");
  YAML::Node root;
  try {
    root = YAML::LoadFile(yaml_path.string());
  } catch (const YAML::Exception& e) {
    throw ConfigError(yaml_path.string() + ":" + std::to_string(e.mark.line + 1) +
                      ": invalid YAML: " + e.msg);
  }
  int64_t budget = 1000000;
  reject_duplicate_keys(root, yaml_path.string(), "", budget);
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap())
    throw ConfigError(yaml_path.string() + ": expected a mapping at the top level");

  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      throw ConfigError("--set " + o + ": expected key.path=value");
    const std::string key = o.substr(0, eq);
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw ConfigError("--set " + o + ": cannot parse the value: " + e.msg);
    }
    const auto parts = split(key, '.');
    for (const auto& p : parts)
      if (p.empty())
        throw ConfigError("--set " + o + ": empty component in key path '" + key + "'");
    if (const auto problem = set_path(root, parts, 0, value); !problem.empty())
      throw ConfigError("--set " + o + ": " + problem);
    ctx.overrides[key] = o;
  }

  Binder reader(Binder::Mode::Read, ctx, "", root, nullptr);
  describe(reader, config);
  reader.reject_unknown();
  cross_check(config, reader);
  if (check_files) reader.check_files();
  return config;
}

}  // namespace

namespace {

// Upper bounds far above any published model (Llama-3-405B: hidden 16384, intermediate 53248,
// 126 layers, 128 heads; vocabularies up to 256k; contexts up to 10M positions) and far below
// what would overflow the size arithmetic.
constexpr int64_t kMaxWidth = int64_t{1} << 17;
constexpr int64_t kMaxIntermediate = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxPositions = int64_t{1} << 26;
constexpr int64_t kMaxExperts = 1024;
constexpr int64_t kMaxImageSize = 16384;

ArchitectureProblem out_of(const char* field, int64_t v, int64_t lo, int64_t hi) {
  if (v >= lo && v <= hi) return {};
  return {field, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (got " +
                     std::to_string(v) + ")"};
}

ArchitectureProblem out_of(const char* field, double v, double lo_open, double hi) {
  if (v > lo_open && v <= hi) return {};
  std::ostringstream ss;
  ss << "must be in (" << lo_open << ", " << hi << "] (got " << v << ")";
  return {field, ss.str()};
}

}  // namespace

ArchitectureProblem check_architecture(const LlmConfig& l) {
  for (const auto& p :
       {out_of("hidden", l.hidden, 1, kMaxWidth), out_of("layers", l.layers, 1, kMaxLayers),
        out_of("heads", l.heads, 1, kMaxHeads), out_of("kv_heads", l.kv_heads, 1, kMaxHeads),
        out_of("head_dim", l.head_dim, 0, 4096),
        out_of("intermediate", l.intermediate, 1, kMaxIntermediate),
        out_of("vocab", l.vocab, 1, kMaxVocab),
        out_of("max_position", l.max_position, 1, kMaxPositions),
        out_of("rope_theta", l.rope_theta, 0.0, 1e12),
        out_of("rope_scaling_factor", l.rope_scaling_factor, 0.0, 1e6),
        out_of("rms_norm_eps", l.rms_norm_eps, 0.0, 1.0),
        out_of("experts", l.experts, 0, kMaxExperts)})
    if (p) return p;
  if (l.head_dim > 0 ? l.head_dim % 2 != 0
                     : (l.hidden % l.heads != 0 || (l.hidden / l.heads) % 2 != 0))
    return {l.head_dim > 0 ? "head_dim" : "heads",
            "the attention head dimension (head_dim, or hidden " + std::to_string(l.hidden) +
                " / heads " + std::to_string(l.heads) +
                ") must be an even integer (rotary embedding)"};
  if (l.heads % l.kv_heads != 0)
    return {"kv_heads", "heads (" + std::to_string(l.heads) + ") must be a multiple of kv_heads (" +
                            std::to_string(l.kv_heads) + ")"};
  if (l.type == "mixtral" && l.experts == 0) return {"experts", "type mixtral needs experts > 0"};
  if (l.experts > 0 && (l.experts_per_token < 1 || l.experts_per_token > l.experts))
    return {"experts_per_token", "must be in [1, experts = " + std::to_string(l.experts) +
                                     "] (got " + std::to_string(l.experts_per_token) + ")"};
  if (!(l.router_aux_loss_coef >= 0 && l.router_aux_loss_coef <= 1e6))
    return {"router_aux_loss_coef", "must be in [0, 1e6]"};
  return {};
}

ArchitectureProblem check_architecture(const ConnectorConfig& c) {
  // A resampler's 16384 queries are a 128x128 grid; published designs use 32-576.
  constexpr int64_t kMaxQueries = 16384;
  for (const auto& p :
       {out_of("num_queries", c.num_queries, 0, kMaxQueries),
        out_of("layers", c.layers, 1, kMaxLayers), out_of("heads", c.heads, 1, kMaxHeads),
        out_of("hidden", c.hidden, 0, kMaxWidth),
        out_of("pool_factor", c.pool_factor, 1, kMaxImageSize),
        out_of("xattn_every", c.xattn_every, 1, kMaxLayers),
        out_of("expert_every", c.expert_every, 1, kMaxLayers),
        out_of("prompt_length", c.prompt_length, 1, kMaxQueries),
        out_of("prompt_layers", c.prompt_layers, 0, kMaxLayers)})
    if (p) return p;
  if (!(c.window >= 0 && c.window <= 1e3)) return {"window", "must be in [0, 1000]"};
  return {};
}

ArchitectureProblem check_architecture(const ClipTextConfig& t) {
  for (const auto& p :
       {out_of("hidden", t.hidden, 1, kMaxWidth), out_of("layers", t.layers, 1, kMaxLayers),
        out_of("heads", t.heads, 1, kMaxHeads),
        out_of("intermediate", t.intermediate, 1, kMaxIntermediate),
        out_of("max_position", t.max_position, 2, kMaxPositions),
        out_of("projection_dim", t.projection_dim, 1, kMaxWidth),
        out_of("layer_norm_eps", t.layer_norm_eps, 0.0, 1.0)})
    if (p) return p;
  return {};  // hidden by heads: the clip stage says so, naming both keys
}

ArchitectureProblem check_architecture(const VisionConfig& v) {
  for (const auto& p :
       {out_of("image_size", v.image_size, 1, kMaxImageSize),
        out_of("patch_size", v.patch_size, 1, v.image_size),
        out_of("hidden", v.hidden, 1, kMaxWidth), out_of("layers", v.layers, 1, kMaxLayers),
        out_of("heads", v.heads, 1, kMaxHeads),
        out_of("intermediate", v.intermediate, 1, kMaxIntermediate),
        out_of("layer_norm_eps", v.layer_norm_eps, 0.0, 1.0)})
    if (p) return p;
  if (v.hidden % v.heads != 0)
    return {"heads", "hidden (" + std::to_string(v.hidden) +
                         ") must be divisible by the number of heads (" + std::to_string(v.heads) +
                         ")"};
  if (v.image_size % v.patch_size != 0)
    return {"patch_size", "image_size (" + std::to_string(v.image_size) +
                              ") must be divisible by the patch size (" +
                              std::to_string(v.patch_size) + ")"};
  if (v.feature_layer > v.layers || v.feature_layer < -(v.layers + 1))
    return {"feature_layer", "must index one of the " + std::to_string(v.layers + 1) +
                                 " hidden states (got " + std::to_string(v.feature_layer) + ")"};
  if (!v.anyres.grid_pinpoints.empty() && v.anyres.max_tiles > 0)
    return {"anyres.max_tiles", "give either anyres.grid_pinpoints or anyres.max_tiles"};
  for (size_t i = 0; i < v.anyres.grid_pinpoints.size(); ++i) {
    const auto& p = v.anyres.grid_pinpoints[i];
    const bool fits = p.size() == 2 && p[0] > 0 && p[1] > 0 && p[0] % v.image_size == 0 &&
                      p[1] % v.image_size == 0 && p[0] / v.image_size * (p[1] / v.image_size) <= 64;
    if (!fits)
      return {"anyres.grid_pinpoints[" + std::to_string(i) + "]",
              "must be [height, width], multiples of image_size (" + std::to_string(v.image_size) +
                  ") making at most 64 tiles"};
  }
  return {};
}

Config parse_config(const std::filesystem::path& yaml_path,
                    const std::vector<std::string>& overrides, bool check_files) {
  return load_recipe<Config>(yaml_path, overrides, check_files);
}

EvalFile parse_eval_config(const std::filesystem::path& yaml_path,
                           const std::vector<std::string>& overrides) {
  return load_recipe<EvalFile>(yaml_path, overrides);
}

std::vector<std::string> config_key_paths() {
  Context ctx;
  Config defaults;
  Binder paths(Binder::Mode::Paths, ctx, "", YAML::Node(), nullptr);
  describe(paths, defaults);
  return ctx.known_paths;
}

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  return closest(word, candidates);
}

std::string choice_problem(const std::string& value, const std::vector<std::string>& options) {
  if (std::find(options.begin(), options.end(), value) != options.end()) return "";
  std::string msg = "must be one of " + join(options, ", ") + " (got '" + value + "')";
  const std::string guess = closest(value, options);
  if (!guess.empty()) msg += "; did you mean '" + guess + "'?";
  return msg;
}

std::string config_to_yaml(const Config& config) {
  Context ctx;
  std::map<std::string, std::string> unused;
  ctx.origin = &unused;
  YAML::Emitter out;
  out << YAML::BeginMap;
  Binder writer(Binder::Mode::Write, ctx, "", YAML::Node(), &out);
  describe(writer, const_cast<Config&>(config));
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace mllm
