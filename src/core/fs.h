// Filesystem helpers that never leave half a file behind: write to a temporary sibling, fsync,
// rename. Checkpoints and run outputs go through here so that a crash or preemption at any instant
// leaves either the old file or the new one.
#pragma once

#include <filesystem>
#include <string>

namespace mllm {

namespace fs = std::filesystem;

// Reads a whole file; throws Error("<path>: cannot read ...") if it is missing or unreadable.
std::string read_file(const fs::path& path);
// The first `limit` bytes of a file (all of a shorter one); throws as read_file.
std::string read_file_prefix(const fs::path& path, size_t limit);

// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename, fsync
// of the directory).
void write_file_atomic(const fs::path& path, const std::string& bytes);

// fsync a file or directory by path (best effort on filesystems that refuse directory fsync).
void fsync_path(const fs::path& path);

// Renames `from` to `to` (same filesystem) and fsyncs the parent directory.
void rename_durable(const fs::path& from, const fs::path& to);

}  // namespace mllm
