#include "train/checkpoint.h"

#include <unistd.h>

#include <cstdio>
#include <mutex>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "models/hf/weights.h"

namespace mllm {

namespace {
constexpr const char* kMagic = "mllm-train-checkpoint";
constexpr int kVersion = 1;

// rng_state.pt is not required: checkpoints of earlier versions lack it (then a warning).
bool complete(const std::filesystem::path& dir) {
  return std::filesystem::is_regular_file(dir / "trainer_state.json") &&
         std::filesystem::is_regular_file(dir / "model.safetensors") &&
         std::filesystem::is_regular_file(dir / "optimizer.pt");
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

std::filesystem::path save_checkpoint(const std::filesystem::path& root, torch::nn::Module& model,
                                      torch::optim::Optimizer& optimizer, const TrainerState& state,
                                      int64_t keep_last) {
  namespace fs = std::filesystem;
  const std::string name = checkpoint_name(state.step);
  const fs::path final_dir = root / name;
  const fs::path tmp = root / (".tmp-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_safetensors(tmp / "model.safetensors", named_parameters(model, true),
                   {{"format", "pt"}, {"mllm_step", std::to_string(state.step)}});
  torch::save(optimizer, (tmp / "optimizer.pt").string());
  fsync_path(tmp / "optimizer.pt");
  torch::save(rng_states(), (tmp / "rng_state.pt").string());
  fsync_path(tmp / "rng_state.pt");
  write_file_atomic(tmp / "trainer_state.json", state.to_json().dump(2) + "\n");
  fsync_path(tmp);
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

std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& root) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(root)) return std::nullopt;
  if (fs::exists(root / "latest")) {
    std::string name = read_file(root / "latest");
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    if (!name.empty() && complete(root / name)) return root / name;
  }
  std::optional<fs::path> best;
  int64_t best_step = -1;
  for (const auto& e : fs::directory_iterator(root)) {
    const int64_t s = step_of(e.path().filename().string());
    if (s > best_step && complete(e.path())) best_step = s, best = e.path();
  }
  return best;
}

TrainerState load_checkpoint(const std::filesystem::path& dir, torch::nn::Module& model,
                             torch::optim::Optimizer& optimizer) {
  if (!complete(dir))
    throw Error(dir.string() +
                ": incomplete checkpoint (needs model.safetensors, optimizer.pt, "
                "trainer_state.json)");
  const auto state_file = dir / "trainer_state.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(state_file));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(state_file.string() + ": malformed JSON (" + e.what() + ")");
  }
  TrainerState state = TrainerState::from_json(j, state_file);
  SafetensorsCheckpoint weights(dir / "model.safetensors");
  load_parameters(model, weights, "", /*only_trainable=*/true);
  try {
    torch::load(optimizer, (dir / "optimizer.pt").string());
  } catch (const c10::Error& e) {
    throw Error((dir / "optimizer.pt").string() + ": cannot restore the optimizer state (" +
                e.what_without_backtrace() + ")");
  }
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
  fs::path folder = from;
  if (!fs::exists(folder / "model.safetensors") && fs::is_directory(folder / "final"))
    folder = folder / "final";
  const fs::path file = folder / "model.safetensors";
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
