#include "train/checkpoint.h"

#include <unistd.h>

#include <cstdio>

#include "core/error.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "models/hf/weights.h"

namespace mllm {

namespace {
constexpr const char* kMagic = "mllm-train-checkpoint";
constexpr int kVersion = 1;

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
  return {{"format", kMagic},     {"version", kVersion},        {"step", step}, {"epoch", epoch},
          {"position", position}, {"total_steps", total_steps}, {"lr", lr},     {"extra", extra}};
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
  return state;
}

}  // namespace mllm
