#include "common/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

namespace bw {

namespace {

Status write_all(int fd, const std::string& path, std::span<const uint8_t> bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const size_t chunk = std::min<size_t>(bytes.size() - done, size_t{1} << 30);
    const ssize_t n = ::write(fd, bytes.data() + done, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Unavailable("{}: write failed: {}", path, std::strerror(errno));
    }
    if (n == 0) return Unavailable("{}: write made no progress", path);
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

}  // namespace

Status write_file_atomically(const std::string& path, std::span<const std::span<const uint8_t>> pieces) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = fmt::format("{}.tmp.{}.{}", path, ::getpid(), counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Unavailable("{}: cannot create: {}", tmp, std::strerror(errno));
  Status status;
  for (std::span<const uint8_t> piece : pieces) {
    status = write_all(fd, tmp, piece);
    if (!status.ok()) break;
  }
  if (status.ok() && ::fsync(fd) != 0) status = Unavailable("{}: fsync failed: {}", tmp, std::strerror(errno));
  if (::close(fd) != 0 && status.ok()) status = Unavailable("{}: close failed: {}", tmp, std::strerror(errno));
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = Unavailable("{}: cannot rename to {}: {}", tmp, path, std::strerror(errno));
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
}

void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);  // best effort: some file systems cannot sync directories
  ::close(fd);
}

}  // namespace bw
