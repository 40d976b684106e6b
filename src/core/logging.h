// Logging: spdlog to the console and, once a run directory exists, to <output_dir>/train.log.
#pragma once

#include <filesystem>
#include <string>

namespace mllm {

// Console-only logger at `level` (trace|debug|info|warn|error).
void setup_console_logging(const std::string& level = "info");

// Adds <file> as a second sink of the default logger (appending), unless stderr already is that
// file.
void add_log_file(const std::filesystem::path& file);

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

}  // namespace mllm
