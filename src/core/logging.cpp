#include "core/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

namespace mllm {

void setup_console_logging(const std::string& level) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("mllm", console);
  logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(logger);
}

namespace {
constexpr const char* kFilePattern = "[%Y-%m-%d %H:%M:%S.%e] %l %v";
std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> held;  // buffer_log_lines' sink

void drop_held(spdlog::logger& logger) {
  auto& sinks = logger.sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), held), sinks.end());
  held.reset();
}
}  // namespace

void buffer_log_lines() {
  auto logger = spdlog::default_logger();
  if (held) drop_held(*logger);
  held = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096);
  held->set_pattern(kFilePattern);
  logger->sinks().push_back(held);
}

void add_log_file(const std::filesystem::path& file) {
  auto logger = spdlog::default_logger();
  std::vector<std::string> earlier;
  if (held) {
    earlier = held->last_formatted();
    drop_held(*logger);
  }
  // A parent (`mllm sweep`) that already sends this process's stderr to `file` would get every
  // line twice.
  struct stat err = {};
  struct stat log = {};
  if (::fstat(STDERR_FILENO, &err) == 0 && ::stat(file.c_str(), &log) == 0 &&
      err.st_dev == log.st_dev && err.st_ino == log.st_ino)
    return;
  {
    std::FILE* f = std::fopen(file.c_str(), "ab");
    if (f) {
      for (const auto& line : earlier) std::fwrite(line.data(), 1, line.size(), f);
      std::fclose(f);
    }
  }
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file.string(), false);
  sink->set_pattern(kFilePattern);
  logger->sinks().push_back(sink);
  logger->flush_on(spdlog::level::info);
}

std::string format_duration(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s / 60) % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%llds", s);
  return buf;
}

}  // namespace mllm
