#include "train/sweep.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "core/config.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/progress.h"
#include "core/strings.h"
#include "train/recipe.h"
#include "train/sweep_report.h"

extern char** environ;

namespace mllm {

namespace fs = std::filesystem;

namespace {

// Splits at commas that are not inside [], {} or quotes; "" when brackets or quotes do not close.
std::optional<std::vector<std::string>> split_values(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  int depth = 0;
  char quote = 0;
  for (char c : s) {
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == ']' || c == '}') {
      if (--depth < 0) return std::nullopt;
    } else if (c == ',' && depth == 0) {
      out.push_back(trim(cur));
      cur.clear();
      continue;
    }
    cur += c;
  }
  if (quote || depth != 0) return std::nullopt;
  out.push_back(trim(cur));
  return out;
}

std::string where(const fs::path& file, const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  return file.string() + (m.is_null() ? "" : ":" + std::to_string(m.line + 1));
}

// A YAML value as the text an override takes: scalars verbatim, lists and maps in flow style.
std::string yaml_text(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  if (n.IsNull()) return "null";
  YAML::Emitter e;
  e << YAML::Flow << n;
  return e.c_str();
}

// Flattens nested maps into key paths: {train: {lr: 1}} and {train.lr: 1} both give train.lr.
void flatten(const YAML::Node& n, const std::string& prefix,
             std::vector<std::pair<std::string, YAML::Node>>& out) {
  for (const auto& kv : n) {
    const std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    if (kv.second.IsMap())
      flatten(kv.second, key, out);
    else
      out.emplace_back(key, kv.second);
  }
}

// A YAML single-quoted scalar: read back as exactly `s`, whatever characters it holds.
std::string yaml_quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// ---- Running the children
// ------------------------------------------------------------------------

struct Child {
  size_t index;  // the run
  size_t stage;  // its stage (0 in a single-base sweep)
  fs::path log;
  std::streamoff log_offset;  // where this attempt's output starts in the log
  bool resumed;
};

// Starts `argv` with stdin from /dev/null and stdout and stderr appended to `log`. Returns the pid,
// or -1 with errno set.
pid_t spawn_logged(const std::vector<std::string>& argv, const fs::path& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

std::vector<std::string> log_lines(const fs::path& log, std::streamoff from) {
  std::ifstream in(log, std::ios::binary);
  in.seekg(from);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!trim(line).empty()) lines.push_back(line);
  return lines;
}

// The message of the last error the child logged ("[12:00:00] error <message>"), else its last
// line.
std::string last_error(const std::vector<std::string>& lines) {
  for (auto it = lines.rbegin(); it != lines.rend(); ++it)
    for (const char* tag : {"] error ", "] critical "}) {
      const auto at = it->find(tag);
      if (at != std::string::npos) return it->substr(at + std::strlen(tag));
    }
  return lines.empty() ? "" : lines.back();
}

std::string quote_arg(const std::string& a) {
  if (!a.empty() && a.find_first_of(" \t\"'\\$`*?[]{}()<>|&;") == std::string::npos) return a;
  std::string out = "'";
  for (char c : a) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

GridAxis parse_grid_arg(const std::string& arg) {
  const auto eq = arg.find('=');
  if (eq == std::string::npos || trim(arg.substr(0, eq)).empty())
    throw ConfigError("--grid " + arg + ": expected key.path=value1,value2,...");
  GridAxis axis;
  axis.key = trim(arg.substr(0, eq));
  if (trim(arg.substr(eq + 1)).empty())
    throw ConfigError("--grid " + arg + ": no values after '=' (expected " + axis.key +
                      "=value1,value2,...)");
  const auto values = split_values(arg.substr(eq + 1));
  if (!values) throw ConfigError("--grid " + arg + ": unbalanced brackets or quotes");
  for (size_t i = 0; i < values->size(); ++i)
    if ((*values)[i].empty())
      throw ConfigError("--grid " + arg + ": value " + std::to_string(i + 1) + " is empty");
  axis.values = *values;
  return axis;
}

SweepSpec load_sweep_file(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) throw ConfigError(file.string() + ": sweep file not found");
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::Exception& e) {
    throw ConfigError(file.string() + ":" + std::to_string(e.mark.line + 1) +
                      ": invalid YAML: " + e.msg);
  }
  if (!root.IsMap())
    throw ConfigError(file.string() +
                      ": expected a mapping with base (or stages), grid (and set, out, "
                      "parallel)");
  SweepSpec spec;
  spec.source = file.string();
  const std::vector<std::string> known = {"base", "stages", "grid", "set", "out", "parallel"};
  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    const std::string guess = closest_match(key, known);
    throw ConfigError(where(file, kv.first) + ": " + key + ": unknown key" +
                      (guess.empty() ? " (expected base, stages, grid, set, out, parallel)"
                                     : " (did you mean " + guess + "?)"));
  }
  auto relative = [&file](const std::string& p) {
    return fs::path(p).is_absolute() ? fs::path(p) : file.parent_path() / p;
  };
  const YAML::Node base = root["base"];
  const YAML::Node stages = root["stages"];
  if (base && stages)
    throw ConfigError(where(file, stages) +
                      ": stages: give either base (one recipe) or stages (recipes trained one "
                      "after the other), not both");
  if (stages) {
    const std::string expected =
        ": stages: expected a list of recipe paths (relative to this file), trained in order";
    if (!stages.IsSequence() || stages.size() == 0)
      throw ConfigError(where(file, stages) + expected);
    for (const auto& st : stages) {
      if (!st.IsScalar() || st.Scalar().empty()) throw ConfigError(where(file, st) + expected);
      spec.stages.push_back(relative(st.Scalar()));
    }
    stage_labels(spec.stages, where(file, stages));
  } else {
    if (!base || !base.IsScalar() || base.Scalar().empty())
      throw ConfigError(file.string() +
                        ": base: required (the base recipe, relative to this file), or stages: a "
                        "list of recipes trained one after the other");
    spec.base = relative(base.Scalar());
  }
  const YAML::Node grid = root["grid"];
  if (!grid || !grid.IsMap() || grid.size() == 0)
    throw ConfigError(file.string() +
                      ": grid: required, a mapping of key paths to lists of values");
  std::vector<std::pair<std::string, YAML::Node>> axes;
  flatten(grid, "", axes);
  for (const auto& [key, values] : axes) {
    GridAxis axis{key, {}};
    if (values.IsSequence())
      for (const auto& v : values) axis.values.push_back(yaml_text(v));
    else if (values.IsScalar())
      axis.values.push_back(values.Scalar());
    if (axis.values.empty())
      throw ConfigError(where(file, values) + ": grid." + key + ": expected a list of values");
    spec.grid.push_back(axis);
  }
  if (const YAML::Node set = root["set"]) {
    if (!set.IsMap())
      throw ConfigError(where(file, set) + ": set: expected a mapping of key paths to values");
    std::vector<std::pair<std::string, YAML::Node>> values;
    flatten(set, "", values);
    for (const auto& [key, v] : values) spec.set.push_back(key + "=" + yaml_text(v));
  }
  if (const YAML::Node out = root["out"]) {
    if (!out.IsScalar() || out.Scalar().empty())
      throw ConfigError(where(file, out) + ": out: expected a directory path");
    spec.out = out.Scalar();
  }
  if (const YAML::Node parallel = root["parallel"]) {
    try {
      spec.parallel = parallel.as<int64_t>();
    } catch (const YAML::Exception&) {
      throw ConfigError(where(file, parallel) + ": parallel: expected an integer >= 1");
    }
    if (spec.parallel < 1)
      throw ConfigError(where(file, parallel) + ": parallel: expected an integer >= 1");
  }
  return spec;
}

void check_grid(const std::vector<GridAxis>& grid, const std::string& source) {
  if (grid.empty())
    throw ConfigError(source + ": nothing to sweep: give --grid key.path=value1,value2,...");
  const auto keys = config_key_paths();
  std::set<std::string> seen;
  for (const auto& axis : grid) {
    const std::string at = source + ": " + axis.key + ": ";
    if (std::find(keys.begin(), keys.end(), axis.key) == keys.end()) {
      const std::string guess = closest_match(axis.key, keys);
      throw ConfigError(at + "unknown key" +
                        (guess.empty() ? "" : " (did you mean " + guess + "?)"));
    }
    if (axis.key == "run.output_dir")
      throw ConfigError(at + "is set by the sweep (one directory per run under --out)");
    if (!seen.insert(axis.key).second) throw ConfigError(at + "appears twice in the grid");
    if (axis.values.empty()) throw ConfigError(at + "has no values");
    std::set<std::string> values;
    for (const auto& v : axis.values)
      if (!values.insert(v).second) throw ConfigError(at + "value '" + v + "' is given twice");
  }
}

std::vector<SweepRun> expand_grid(const std::vector<GridAxis>& grid) {
  std::vector<SweepRun> runs;
  if (grid.empty()) return runs;
  for (const auto& axis : grid)
    if (axis.values.empty()) return runs;
  std::vector<size_t> at(grid.size(), 0);
  while (true) {
    SweepRun run;
    for (size_t k = 0; k < grid.size(); ++k)
      run.overrides.emplace_back(grid[k].key, grid[k].values[at[k]]);
    run.name = run_name(run.overrides);
    runs.push_back(std::move(run));
    // Odometer: the last axis turns fastest.
    size_t k = grid.size();
    while (k > 0 && ++at[k - 1] == grid[k - 1].values.size()) at[--k] = 0;
    if (k == 0) break;
  }
  return runs;
}

std::vector<std::string> stage_labels(const std::vector<fs::path>& stages,
                                      const std::string& source) {
  if (stages.empty()) throw ConfigError(source + ": stages: no recipes");
  std::vector<std::string> labels;
  std::map<std::string, size_t> seen;
  for (size_t k = 0; k < stages.size(); ++k) {
    labels.push_back(sanitize_file_name(stages[k].stem().string()));
    const auto [it, fresh] = seen.emplace(labels.back(), k);
    if (!fresh)
      throw ConfigError(source + ": stages: " + stages[it->second].string() + " and " +
                        stages[k].string() + " both get the directory name '" + labels.back() +
                        "' (a stage's directory is its recipe's file name); rename one");
  }
  return labels;
}

std::string run_name(const std::vector<std::pair<std::string, std::string>>& overrides) {
  std::string name;
  for (const auto& [key, value] : overrides) name += (name.empty() ? "" : ",") + key + "=" + value;
  return sanitize_file_name(name);
}

std::string sanitize_file_name(const std::string& name) {
  std::string out;
  for (unsigned char c : name)
    out += std::isalnum(c) || std::strchr("._,=+-", c) ? static_cast<char>(c) : '_';
  if (out.empty() || out[0] == '.' || out[0] == '-') out = "_" + out;
  constexpr size_t kMax = 120;
  if (out.size() > kMax) {
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(fnv1a(name)));
    out = out.substr(0, kMax - 17) + "-" + hash;
  }
  return out;
}

namespace {

// The runs' names are distinct directory names.
void check_run_names(const std::vector<SweepRun>& runs, const std::string& source) {
  std::map<std::string, size_t> names;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto [it, fresh] = names.emplace(runs[i].name, i);
    if (!fresh)
      throw ConfigError(source + ": runs " + std::to_string(it->second + 1) + " and " +
                        std::to_string(i + 1) + " get the same directory name '" + runs[i].name +
                        "'; make the values differ in letters, digits or ._,=+-");
  }
}

// A stage's recipe with the common overrides should be valid by itself, or at least with one run's
// overrides (the grid may supply a file the recipe lacks): otherwise the mistake is the sweep's (a
// typo in --set), reported once, not as every run's. `last` goes after the run's overrides, as
// the sweep adds its own to a child's.
Config load_base(const fs::path& recipe, const std::vector<std::string>& set,
                 const std::vector<SweepRun>& runs, const std::vector<std::string>& last) {
  std::vector<std::string> common = set;
  common.insert(common.end(), last.begin(), last.end());
  try {
    return load_config(recipe, common);
  } catch (const ConfigError&) {
    for (const auto& run : runs) {
      std::vector<std::string> overrides = set;
      for (const auto& [key, value] : run.overrides) overrides.push_back(key + "=" + value);
      overrides.insert(overrides.end(), last.begin(), last.end());
      try {
        return load_config(recipe, overrides);
      } catch (const ConfigError&) {
      }
    }
    throw;
  }
}

// What a child's exit says of its run (or stage): a status and a note.
struct Outcome {
  std::string status, note;
};

// `name` names the run (and stage) in the log.
Outcome settle_exit(const std::string& name, const Child& child, int status, const fs::path& dir) {
  const auto lines = log_lines(child.log, child.log_offset);
  std::error_code ec;
  Outcome o;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && fs::is_directory(dir / "final", ec)) {
    o.status = "done";
    o.note = child.resumed ? "resumed from a checkpoint" : "";
    return o;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
    o.status = "invalid";
    o.note = last_error(lines);
    return o;
  }
  o.status = "failed";
  if (WIFSIGNALED(status))
    o.note = "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
             strsignal(WTERMSIG(status)) + ")";
  else if (WEXITSTATUS(status) == 0)
    o.note = "exited 0 without writing final/";
  else
    o.note = last_error(lines);
  if (o.note.empty()) o.note = "exited with code " + std::to_string(WEXITSTATUS(status));
  std::string tail;
  for (size_t k = lines.size() > 15 ? lines.size() - 15 : 0; k < lines.size(); ++k)
    tail += "\n  " + lines[k];
  spdlog::error("{} failed; the end of {}:{}", name, child.log.string(), tail);
  return o;
}

// One sweep: its runs, their reports, and the children running now. A single-base sweep is a
// sweep of one stage whose directory is the run's own.
class Sweep {
 public:
  Sweep(const SweepSpec& spec, const fs::path& binary) : spec_(spec), binary_(binary) {
    check_grid(spec.grid, spec.source);
    if (spec.parallel < 1)
      throw ConfigError("--parallel: must be >= 1 (got " + std::to_string(spec.parallel) + ")");
    multi_ = !spec.stages.empty();
    if (multi_ && !spec.base.empty())
      throw ConfigError(spec.source +
                        ": give either a base recipe or stages (recipes trained one after the "
                        "other), not both");
    if (multi_) {
      recipes_ = spec.stages;
      labels_ = stage_labels(spec.stages, spec.source);
    } else {
      recipes_ = {spec.base};
      labels_ = {""};
    }
    runs_ = expand_grid(spec.grid);
    check_run_names(runs_, spec.source);
    // Every stage before any run starts. A later stage's train.init_from is the previous stage's
    // final/, which does not exist yet: left out here.
    std::optional<Config> first;
    for (size_t k = 0; k < recipes_.size(); ++k) {
      try {
        Config c = load_base(
            recipes_[k], spec.set, runs_,
            k > 0 ? std::vector<std::string>{"train.init_from=null"} : std::vector<std::string>{});
        if (!first) first = std::move(c);
      } catch (const ConfigError& e) {
        if (!multi_) throw;
        throw ConfigError("stage " + labels_[k] + ": " + e.what());
      }
    }
    const Config& base = *first;
    out_ = spec.out.empty() ? fs::path(base.output_dir().string() + "-sweep") : spec.out;
    out_ = out_.lexically_normal();
    if (out_.filename().empty()) out_ = out_.parent_path();
    for (const auto& axis : spec.grid) keys_.push_back(axis.key);
    reports_.resize(runs_.size());
    for (size_t i = 0; i < runs_.size(); ++i) {
      reports_[i].name = runs_[i].name;
      for (const auto& o : runs_[i].overrides) reports_[i].values.push_back(o.second);
      if (multi_)
        for (const auto& label : labels_) {
          reports_[i].stages.emplace_back();
          reports_[i].stages.back().label = label;
        }
    }
    grid_sets_threads_ = std::find(keys_.begin(), keys_.end(), "run.threads") != keys_.end();
    const int64_t total = base.run.threads > 0
                              ? base.run.threads
                              : std::max<int64_t>(1, std::thread::hardware_concurrency());
    threads_ = std::max<int64_t>(1, total / spec.parallel);
  }

  int run() {
    fs::create_directories(out_);
    std::string what = spec_.base.string();
    if (multi_) {
      what = std::to_string(recipes_.size()) + " stages (";
      for (size_t k = 0; k < recipes_.size(); ++k) what += (k ? ", " : "") + recipes_[k].string();
      what += ")";
    }
    spdlog::info("sweep: {} runs of {} -> {} ({} at a time, run.threads={})", runs_.size(), what,
                 out_.string(), spec_.parallel,
                 grid_sets_threads_ ? std::string("from the grid") : std::to_string(threads_));
    const auto started = std::chrono::steady_clock::now();
    steps_.assign(runs_.size() * recipes_.size(), {0, 0});
    progress_ = std::make_unique<Progress>("sweep", 0, "training steps of all runs");
    size_t next = 0;
    while (next < runs_.size() || !running_.empty()) {
      while (next < runs_.size() && static_cast<int64_t>(running_.size()) < spec_.parallel)
        start(next++);
      if (!running_.empty() && !reap(/*wait=*/false)) {
        show_progress();
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
    }
    progress_->finish();
    std::map<std::string, int> counts;
    for (const auto& r : reports_) ++counts[r.status];
    std::cout << summary_markdown(keys_, reports_) << std::flush;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    spdlog::info(
        "sweep: {} runs in {}: {} done, {} skipped (finished earlier), {} invalid, {} failed; "
        "summary: {}",
        runs_.size(), format_duration(seconds), counts["done"], counts["skipped-finished"],
        counts["invalid"], counts["failed"], (out_ / "summary.md").string());
    return counts["invalid"] + counts["failed"] > 0 ? 1 : 0;
  }

 private:
  // Where stage k of run i trains: the run's directory itself in a single-base sweep.
  fs::path stage_dir(size_t i, size_t k) const {
    return multi_ ? out_ / runs_[i].name / labels_[k] : out_ / runs_[i].name;
  }

  static bool finished(const fs::path& dir) {
    std::error_code ec;
    return fs::is_directory(dir / "final", ec);
  }

  // The overrides of stage k of run i, in the order the child applies them: the common ones, the
  // run's grid values, then the sweep's own. `checking` (validation before the previous stage has
  // finished): without train.init_from where the previous stage has no final/ yet.
  std::vector<std::string> overrides(size_t i, size_t k, bool checking) const {
    std::vector<std::string> o = spec_.set;
    for (const auto& [key, value] : runs_[i].overrides) o.push_back(key + "=" + value);
    if (k > 0) {
      const fs::path from = stage_dir(i, k - 1) / "final";
      o.push_back(checking && !finished(stage_dir(i, k - 1))
                      ? std::string("train.init_from=null")
                      : "train.init_from=" + yaml_quoted(from.string()));
    }
    o.push_back("run.output_dir=" + yaml_quoted(stage_dir(i, k).string()));
    if (!grid_sets_threads_) o.push_back("run.threads=" + std::to_string(threads_));
    return o;
  }

  // "stage1_pretrain: " in a multi-stage sweep: what a stage's note starts with.
  std::string prefix(size_t k) const { return multi_ ? labels_[k] + ": " : ""; }

  static void add_note(RunReport& report, const std::string& note) {
    if (!note.empty()) report.note += (report.note.empty() ? "" : "; ") + note;
  }

  // Reads stage k's outputs into the run's report (the stage's, then combined).
  void read_stage(size_t i, size_t k) {
    RunReport& report = reports_[i];
    if (!multi_) return read_run_outputs(stage_dir(i, k), report);
    read_run_outputs(stage_dir(i, k), report.stages[k]);
    combine_stages(report);
  }

  // A stage that ended counts whole in the progress line; one finished earlier by its step count.
  void count_whole(size_t i, size_t k, int64_t steps) {
    auto& s = steps_[i * recipes_.size() + k];
    const int64_t n = std::max(steps, s.second);
    s = {n, n};
  }

  // Starts run i, or settles it without a child (finished earlier, invalid, cannot start).
  void start(size_t i) {
    RunReport& report = reports_[i];
    size_t first = 0;
    while (first < recipes_.size() && finished(stage_dir(i, first))) ++first;
    if (first == recipes_.size()) {
      report.status = "skipped-finished";
      for (size_t k = 0; k < recipes_.size(); ++k) {
        if (multi_) report.stages[k].status = "skipped-finished";
        read_stage(i, k);
        const RunFigures& f = multi_ ? static_cast<const RunFigures&>(report.stages[k]) : report;
        if (f.steps) count_whole(i, k, *f.steps);
      }
      return finish(i);
    }
    // Every stage still to train, before the first one starts.
    for (size_t k = first; k < recipes_.size(); ++k) {
      if (finished(stage_dir(i, k))) continue;
      try {
        load_config(recipes_[k], overrides(i, k, /*checking=*/true));
      } catch (const ConfigError& e) {
        report.status = "invalid";
        report.note = prefix(k) + e.what();
        if (multi_) report.stages[k].status = "invalid";
        return finish(i);
      }
    }
    advance(i, 0);
  }

  // Starts the first stage of run i from stage k on that has not finished; settles the run when
  // none is left.
  void advance(size_t i, size_t k) {
    RunReport& report = reports_[i];
    for (; k < recipes_.size(); ++k) {
      if (!finished(stage_dir(i, k))) return start_stage(i, k);
      // Only a multi-stage run gets here: a finished single-base run was skipped in start().
      report.stages[k].status = "skipped-finished";
      read_stage(i, k);
      if (report.stages[k].steps) count_whole(i, k, *report.stages[k].steps);
      add_note(report, prefix(k) + "finished earlier");
    }
    report.status = "done";
    finish(i);
  }

  void start_stage(size_t i, size_t k) {
    const fs::path dir = stage_dir(i, k);
    RunReport& report = reports_[i];
    std::error_code ec;
    const bool resumed =
        fs::is_directory(dir / "checkpoints", ec) && !fs::is_empty(dir / "checkpoints", ec);
    fs::create_directories(dir);
    // Without a checkpoint the run starts afresh: an earlier attempt's metrics would mix in.
    if (!resumed) fs::remove(dir / "metrics.jsonl", ec);

    std::vector<std::string> argv = {binary_.string(), "train", "--config", recipes_[k].string()};
    for (const auto& o : overrides(i, k, /*checking=*/false)) argv.insert(argv.end(), {"--set", o});
    argv.insert(argv.end(), {"--resume", "auto"});
    const fs::path log = dir / "train.log";
    std::string command;
    for (const auto& a : argv) command += (command.empty() ? "" : " ") + quote_arg(a);
    {
      std::ofstream header(log, std::ios::app);
      header << "---- mllm sweep " << (resumed ? "resumes" : "starts") << ": " << command << "\n";
    }
    const auto offset = static_cast<std::streamoff>(fs::file_size(log, ec));
    const pid_t pid = spawn_logged(argv, log);
    if (pid < 0) {
      report.status = "failed";
      add_note(report,
               prefix(k) + "cannot start " + binary_.string() + ": " + std::strerror(errno));
      if (multi_) report.stages[k].status = "failed";
      return finish(i);
    }
    report.status = "running";
    if (multi_) report.stages[k].status = "running";
    running_[pid] = Child{i, k, log, offset, resumed};
  }

  // The last "step N/M" a run's log shows since `offset` (the trainer's step lines).
  static std::pair<int64_t, int64_t> last_step(const fs::path& log, std::streamoff offset) {
    std::ifstream in(log, std::ios::binary);
    in.seekg(0, std::ios::end);
    const std::streamoff end = in.tellg();
    const std::streamoff from = std::max(offset, end - 4096);
    if (end <= from) return {0, 0};
    std::string tail(static_cast<size_t>(end - from), '\0');
    in.seekg(from);
    in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
    for (size_t at = tail.rfind("step "); at != std::string::npos;
         at = at == 0 ? std::string::npos : tail.rfind("step ", at - 1)) {
      long long n = 0, m = 0;
      if (std::sscanf(tail.c_str() + at, "step %lld/%lld", &n, &m) == 2 && m > 0) return {n, m};
    }
    return {0, 0};
  }

  // One progress line over all runs and stages: the steps the running ones have logged, ended
  // stages counted whole, stages not yet started counted as the average length of the same stage
  // in the runs seen (of every stage seen where none of that stage has been).
  void show_progress() {
    const size_t n = recipes_.size();
    for (const auto& [pid, child] : running_) {
      const auto s = last_step(child.log, child.log_offset);
      if (s.second > 0) steps_[child.index * n + child.stage] = s;
    }
    int64_t known = 0, known_total = 0, done = 0;
    std::vector<int64_t> stage_known(n, 0), stage_total(n, 0);
    for (size_t slot = 0; slot < steps_.size(); ++slot) {
      const auto [s, m] = steps_[slot];
      if (m <= 0) continue;
      ++known, known_total += m, done += s;
      ++stage_known[slot % n], stage_total[slot % n] += m;
    }
    if (known == 0) return;
    int64_t total = known_total;
    for (size_t k = 0; k < n; ++k) {
      const int64_t unknown = static_cast<int64_t>(runs_.size()) - stage_known[k];
      total +=
          unknown * (stage_known[k] > 0 ? stage_total[k] / stage_known[k] : known_total / known);
    }
    progress_->set_total(total);
    progress_->update(done);
  }

  // Settles one child that has ended; with `wait`, waits for one. Returns whether one ended.
  bool reap(bool wait) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, wait ? 0 : WNOHANG);
    if (pid == 0) return false;
    if (pid < 0) {
      if (errno == EINTR) return false;
      throw Error(std::string("sweep: waitpid failed: ") + std::strerror(errno));
    }
    const auto it = running_.find(pid);
    if (it == running_.end()) return true;
    const Child child = it->second;
    running_.erase(it);
    const size_t i = child.index, k = child.stage;
    RunReport& report = reports_[i];
    const fs::path dir = stage_dir(i, k);
    read_stage(i, k);
    const Outcome o =
        settle_exit(multi_ ? report.name + " " + labels_[k] : report.name, child, status, dir);
    // A stage that ended counts whole (a failed one too: no more of it will run).
    count_whole(i, k, last_step(child.log, child.log_offset).second);
    if (!multi_) {
      report.status = o.status;
      report.note = o.note;
      finish(i);
      return true;
    }
    report.stages[k].status = o.status;
    add_note(report, o.note.empty() ? "" : prefix(k) + o.note);
    if (o.status != "done") {
      // The stages after a failed or invalid one are not attempted: they would start from
      // nothing.
      report.status = o.status;
      finish(i);
      return true;
    }
    if (k + 1 < recipes_.size()) {
      spdlog::info("{}: stage {} done", report.name, labels_[k]);
      write_sweep_summary(out_, keys_, reports_);
    }
    advance(i, k + 1);
    return true;
  }

  // Logs a settled run and rewrites the summary.
  void finish(size_t i) {
    ++finished_;
    const RunReport& r = reports_[i];
    std::string detail;
    if (r.final_loss) detail += fmt::format(" | loss {:.4f}", *r.final_loss);
    if (r.eval_loss) detail += fmt::format(" | eval {:.4f}", *r.eval_loss);
    for (const auto& [name, value] : r.scores) detail += fmt::format(" | {} {:.4f}", name, value);
    if (r.wall_seconds) detail += fmt::format(" | {:.3f}s", *r.wall_seconds);
    if (!r.note.empty()) detail += " | " + r.note;
    const std::string line =
        fmt::format("[{}/{}] {}: {}{}", finished_, runs_.size(), r.name, r.status, detail);
    if (r.status == "failed" || r.status == "invalid")
      spdlog::warn("{}", line);
    else
      spdlog::info("{}", line);
    write_sweep_summary(out_, keys_, reports_);
  }

  const SweepSpec& spec_;
  const fs::path binary_;
  bool multi_ = false;
  std::vector<fs::path> recipes_;    // the stages' recipes: the base alone in a single-base sweep
  std::vector<std::string> labels_;  // the stages' directory names ("" for the base)
  std::vector<SweepRun> runs_;
  fs::path out_;
  std::vector<std::string> keys_;
  std::vector<RunReport> reports_;
  bool grid_sets_threads_ = false;
  int64_t threads_ = 1;
  std::map<pid_t, Child> running_;
  size_t finished_ = 0;
  // Per run and stage (run * stages + stage): (step, of steps) last seen.
  std::vector<std::pair<int64_t, int64_t>> steps_;
  std::unique_ptr<Progress> progress_;
};

}  // namespace

int run_sweep(const SweepSpec& spec, const fs::path& mllm_binary) {
  return Sweep(spec, mllm_binary).run();
}

}  // namespace mllm
