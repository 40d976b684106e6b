// Logging: spdlog to the console and, once a run directory exists, to <output_dir>/train.log.
#pragma once

#include <filesystem>
#include <string>

namespace mllm {

// Console-only logger at `level` (trace|debug|info|warn|error).
void setup_console_logging(const std::string& level = "info");

// Keeps the lines logged from now on in memory until add_log_file, which writes them first: a run
// logs while it checks its inputs, and its train.log only changes once they are sound.
void buffer_log_lines();

// Adds <file> as a second sink of the default logger (appending), unless stderr already is that
// file; lines held by buffer_log_lines go to it first.
void add_log_file(const std::filesystem::path& file);

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

}  // namespace mllm
