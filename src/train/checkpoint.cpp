#include "train/checkpoint.h"

#include <cstdio>
#include <mutex>

#include <spdlog/spdlog.h>
#include <xxhash.h>

#include <fstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "models/hf/config_json.h"
#include "models/hf/weights.h"

namespace mllm {

namespace {
constexpr const char* kMagic = "mllm-train-checkpoint";
constexpr int kVersion = 1;

constexpr const char* kManifestMagic = "mllm-train-checkpoint-manifest";

// Size and XXH3-64 of a file, read in 8 MiB pieces (a 7B run's optimizer.pt is tens of GB: the
// hash runs at memory speed, the read at disk speed).
std::pair<uint64_t, std::string> size_and_hash(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot read");
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  std::vector<char> buf(8 << 20);
  uint64_t size = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<size_t>(in.gcount());
    XXH3_64bits_update(st, buf.data(), n);
    size += n;
  }
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return {size, hex};
}

int64_t step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0) return -1;
  char* end = nullptr;
  const long long v = std::strtoll(name.c_str() + 5, &end, 10);
  return *end == '\0' ? v : -1;
}
}  // namespace

nlohmann::json TrainerState::to_json() const {
  return {{"format", kMagic}, {"version", kVersion},    {"step", step},
          {"epoch", epoch},   {"position", position},   {"total_steps", total_steps},
          {"lr", lr},         {"scheduler", scheduler}, {"extra", extra}};
}

TrainerState TrainerState::from_json(const nlohmann::json& j, const std::filesystem::path& file) {
  if (!j.is_object() || j.value("format", "") != kMagic)
    throw Error(file.string() + ": not an mllm-train trainer state");
  if (j.value("version", 0) != kVersion)
    throw Error(file.string() + ": trainer state version " + std::to_string(j.value("version", 0)) +
                " is not supported (expected " + std::to_string(kVersion) + ")");
  TrainerState s;
  try {
    s.step = j.at("step").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.position = j.at("position").get<int64_t>();
    s.total_steps = j.at("total_steps").get<int64_t>();
    s.lr = j.at("lr").get<double>();
    s.scheduler = j.value("scheduler", nlohmann::json::object());
    s.extra = j.value("extra", nlohmann::json::object());
  } catch (const nlohmann::json::exception& e) {
    throw Error(file.string() + ": malformed trainer state (" + e.what() + ")");
  }
  return s;
}

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

std::filesystem::path begin_checkpoint(const std::filesystem::path& root, int64_t step) {
  // The same name on every rank (a sharded checkpoint's ranks write into it together); a stale
  // one from a run that died while writing is replaced.
  const auto tmp = root / (".tmp-" + checkpoint_name(step));
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp);
  return tmp;
}

void write_manifest_part(const std::filesystem::path& tmp, int64_t rank,
                         const std::vector<std::string>& files) {
  nlohmann::json part = nlohmann::json::object();
  for (const auto& f : files) {
    fsync_path(tmp / f);
    const auto [size, hash] = size_and_hash(tmp / f);
    part[f] = {{"bytes", size}, {"xxh3_64", hash}};
  }
  write_file_atomic(tmp / ("manifest-part-" + std::to_string(rank) + ".json"), part.dump() + "\n");
}

std::filesystem::path commit_checkpoint(const std::filesystem::path& root,
                                        const std::filesystem::path& tmp, const TrainerState& state,
                                        int64_t keep_last) {
  namespace fs = std::filesystem;
  const std::string name = checkpoint_name(state.step);
  const fs::path final_dir = root / name;
  torch::save(rng_states(), (tmp / "rng_state.pt").string());
  fsync_path(tmp / "rng_state.pt");
  write_file_atomic(tmp / "trainer_state.json", state.to_json().dump(2) + "\n");
  // Last: what every file must be, so a later resume can tell a damaged checkpoint from a good one.
  // Files another rank wrote come with their sizes and checksums (manifest-part-R.json).
  nlohmann::json files = nlohmann::json::object();
  std::vector<fs::path> parts, others;
  for (const auto& e : fs::directory_iterator(tmp)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("manifest-part-", 0) == 0)
      parts.push_back(e.path());
    else if (f != "manifest.json" && e.is_regular_file())
      others.push_back(e.path());
  }
  for (const auto& p : parts) {
    const auto part = nlohmann::json::parse(read_file(p));
    for (const auto& [f, entry] : part.items()) files[f] = entry;
  }
  for (const auto& p : others) {
    const std::string f = p.filename().string();
    if (files.contains(f)) continue;
    const auto [size, hash] = size_and_hash(p);
    files[f] = {{"bytes", size}, {"xxh3_64", hash}};
  }
  for (const auto& p : parts) fs::remove(p);
  write_file_atomic(tmp / "manifest.json",
                    nlohmann::json{{"format", kManifestMagic}, {"files", files}}.dump(2) + "\n");
  fsync_path(tmp);
  if (fs::exists(final_dir) && !checkpoint_problem(final_dir).empty()) {
    // A damaged checkpoint of this step that a resume passed over: kept for inspection, under a
    // name that neither resume nor keep_last looks at.
    fs::path aside = root / ("damaged-" + name);
    for (int i = 1; fs::exists(aside); ++i)
      aside = root / ("damaged-" + name + "-" + std::to_string(i));
    fs::rename(final_dir, aside);
    spdlog::warn("the damaged checkpoint {} was moved to {}", final_dir.string(), aside.string());
  }
  if (fs::exists(final_dir)) {  // same step saved again (e.g. final step == a save_every step)
    fs::path old = root / (".old-" + name);
    fs::remove_all(old);
    fs::rename(final_dir, old);
    rename_durable(tmp, final_dir);
    fs::remove_all(old);
  } else {
    rename_durable(tmp, final_dir);
  }
  write_file_atomic(root / "latest", name + "\n");

  if (keep_last > 0) {
    std::vector<std::pair<int64_t, fs::path>> all;
    for (const auto& e : fs::directory_iterator(root))
      if (e.is_directory() && step_of(e.path().filename().string()) >= 0)
        all.emplace_back(step_of(e.path().filename().string()), e.path());
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i)
      if (all[i].second != final_dir) fs::remove_all(all[i].second);
  }
  return final_dir;
}

std::filesystem::path save_checkpoint(const std::filesystem::path& root, torch::nn::Module& model,
                                      torch::optim::Optimizer& optimizer, const TrainerState& state,
                                      int64_t keep_last) {
  const auto tmp = begin_checkpoint(root, state.step);
  save_safetensors(tmp / "model.safetensors", named_parameters(model, true),
                   {{"format", "pt"}, {"mllm_step", std::to_string(state.step)}});
  torch::save(optimizer, (tmp / "optimizer.pt").string());
  fsync_path(tmp / "optimizer.pt");
  return commit_checkpoint(root, tmp, state, keep_last);
}

bool is_sharded_checkpoint(const std::filesystem::path& dir) {
  return std::filesystem::exists(dir / "sharding.json");
}

std::string checkpoint_problem(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  // A sharded checkpoint's weights and optimizer state are in its shards (the manifest names them).
  const std::vector<const char*> required =
      is_sharded_checkpoint(dir)
          ? std::vector<const char*>{"trainer_state.json", "sharding.json"}
          : std::vector<const char*>{"trainer_state.json", "model.safetensors", "optimizer.pt"};
  for (const char* f : required)
    if (!fs::is_regular_file(dir / f)) return std::string(f) + " is missing";
  const fs::path manifest = dir / "manifest.json";
  if (!fs::exists(manifest)) return "";  // written before manifests: complete is all we know
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_file(manifest));
    if (!m.is_object() || m.value("format", "") != kManifestMagic || !m["files"].is_object())
      return "manifest.json is not a checkpoint manifest";
    for (const auto& [name, want] : m["files"].items()) {
      if (name.find('/') != std::string::npos || name.find("..") != std::string::npos)
        return "manifest.json names " + name + ", not a file of the checkpoint";
      const fs::path f = dir / name;
      if (!fs::is_regular_file(f)) return name + " is missing";
      const auto bytes = want.at("bytes").get<uint64_t>();
      std::error_code ec;
      const uint64_t actual = fs::file_size(f, ec);
      if (ec || actual != bytes)
        return name + " has " + std::to_string(actual) + " bytes, the manifest says " +
               std::to_string(bytes) + " (truncated or overwritten)";
      if (size_and_hash(f).second != want.at("xxh3_64").get<std::string>())
        return name + " does not match its checksum (corrupt)";
    }
  } catch (const nlohmann::json::exception& e) {
    return "manifest.json is malformed (" + json_error_message(e) + ")";
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& root) {
  namespace fs = std::filesystem;
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return {};
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const int64_t s = step_of(e.path().filename().string());
    if (s >= 0 && e.is_directory()) found.emplace_back(s, e.path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a > b; });
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::optional<std::filesystem::path> find_latest_checkpoint(
    const std::filesystem::path& root, std::vector<SkippedCheckpoint>* skipped) {
  for (const auto& dir : list_checkpoints(root)) {
    const std::string problem = checkpoint_problem(dir);
    if (problem.empty()) return dir;
    if (skipped) skipped->push_back({dir, problem});
  }
  return std::nullopt;
}

TrainerState read_checkpoint_state(const std::filesystem::path& dir) {
  if (const std::string problem = checkpoint_problem(dir); !problem.empty())
    throw Error(dir.string() + ": damaged checkpoint: " + problem);
  const auto state_file = dir / "trainer_state.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(state_file));
  } catch (const nlohmann::json::exception& e) {
    throw Error(state_file.string() + ": malformed JSON (" + e.what() + ")");
  }
  TrainerState state = TrainerState::from_json(j, state_file);
  const auto rng_file = dir / "rng_state.pt";
  if (std::filesystem::exists(rng_file)) {
    std::vector<torch::Tensor> rng;
    try {
      torch::load(rng, rng_file.string());
    } catch (const c10::Error& e) {
      throw Error(rng_file.string() + ": cannot restore the RNG states (" +
                  e.what_without_backtrace() + ")");
    }
    set_rng_states(rng);
  } else {
    spdlog::warn(
        "{}: no rng_state.pt; random draws (dropout) will differ from an uninterrupted run",
        dir.string());
  }
  return state;
}

TrainerState load_checkpoint(const std::filesystem::path& dir, torch::nn::Module& model,
                             torch::optim::Optimizer& optimizer) {
  if (is_sharded_checkpoint(dir))
    throw ConfigError(dir.string() +
                      " was written by a sharded run (sharding.json): resume it with "
                      "train.sharding set to optimizer, gradients or parameters (on any number "
                      "of ranks)");
  TrainerState state = read_checkpoint_state(dir);
  SafetensorsCheckpoint weights(dir / "model.safetensors");
  load_parameters(model, weights, "", /*only_trainable=*/true);
  try {
    torch::load(optimizer, (dir / "optimizer.pt").string());
  } catch (const c10::Error& e) {
    throw Error((dir / "optimizer.pt").string() + ": cannot restore the optimizer state (" +
                e.what_without_backtrace() + ")");
  }
  return state;
}

std::vector<torch::Tensor> rng_states() {
  std::vector<torch::Tensor> out;
  auto& ctx = at::globalContext();
  {
    auto gen = ctx.defaultGenerator(c10::Device(c10::kCPU));
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.push_back(gen.get_state());
  }
  if (torch::cuda::is_available())
    for (int64_t d = 0; d < static_cast<int64_t>(torch::cuda::device_count()); ++d) {
      auto gen = ctx.defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      out.push_back(gen.get_state());
    }
  return out;
}

void set_rng_states(const std::vector<torch::Tensor>& states) {
  auto& ctx = at::globalContext();
  if (states.empty()) return;
  {
    auto gen = ctx.defaultGenerator(c10::Device(c10::kCPU));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(states[0]);
  }
  const int64_t cuda = torch::cuda::is_available() ? torch::cuda::device_count() : 0;
  if (static_cast<int64_t>(states.size()) - 1 != cuda && states.size() > 1)
    spdlog::warn("the checkpoint holds RNG states of {} CUDA devices, this machine has {}",
                 states.size() - 1, cuda);
  for (int64_t d = 0; d < cuda && d + 1 < static_cast<int64_t>(states.size()); ++d) {
    auto gen = ctx.defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d)));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(states[static_cast<size_t>(d) + 1]);
  }
}

std::pair<std::filesystem::path, std::map<std::string, int64_t>> load_init_weights(
    torch::nn::Module& model, const std::filesystem::path& from) {
  namespace fs = std::filesystem;
  const fs::path file = model_folder(from) / "model.safetensors";
  if (!fs::is_regular_file(file))
    throw Error(from.string() +
                ": holds no model.safetensors (expected a run's final/ folder, one of its "
                "checkpoints/step-N, or the run directory)");
  SafetensorsCheckpoint weights(file);
  std::map<std::string, torch::Tensor> params;
  for (const auto& item : model.named_parameters(true)) params.emplace(item.key(), item.value());
  std::map<std::string, int64_t> loaded;
  torch::NoGradGuard no_grad;
  for (const auto& name : weights.names()) {
    const auto it = params.find(name);
    if (it == params.end())
      throw Error(file.string() + ": holds " + name +
                  ", which this model does not have: the model sections of the two recipes "
                  "differ (connector type or sizes, LoRA)");
    auto t = weights.get(name);
    if (t.sizes() != it->second.sizes())
      throw Error(file.string() + ": " + name + " has shape " + c10::str(t.sizes()) +
                  " but this model's is " + c10::str(it->second.sizes()) +
                  ": the model sections of the two recipes differ");
    it->second.copy_(t.to(it->second.dtype()));
    ++loaded[name.substr(0, name.find('.'))];
  }
  if (loaded.empty()) throw Error(file.string() + ": holds no tensors");
  return {file, loaded};
}

}  // namespace mllm
