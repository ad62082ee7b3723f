// Writing files so that a crash never leaves a half-written file under the final name:
// the bytes go to a temporary file beside the target, are fsynced, and the temporary is
// renamed over the target. Thread-safe (temporary names are unique per process and call).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/status.h"

namespace bw {

// Writes the concatenation of `pieces` to `path` atomically.
Status write_file_atomically(const std::string& path, std::span<const std::span<const uint8_t>> pieces);

// Best-effort fsync of a directory (makes renames in it durable).
void sync_directory(const std::string& dir);

}  // namespace bw
