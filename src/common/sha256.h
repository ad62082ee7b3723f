// SHA-256 (FIPS 180-4): content hashes for test references, cache keys and file checks.
//
// `Sha256` is an incremental hasher: feed bytes with update(), read the digest with
// digest() / hex_digest() (both leave the hasher usable; more update() calls continue the
// same message). A hasher is a plain value: not thread-safe, but copyable and cheap.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace bw {

class Sha256 {
 public:
  static constexpr size_t kDigestBytes = 32;

  Sha256() { reset(); }

  // Starts a new message.
  void reset();
  void update(std::span<const uint8_t> bytes);
  void update(const void* data, size_t size);
  void update(std::string_view text) { update(text.data(), text.size()); }

  // The digest of everything fed so far (does not change the hasher's state).
  std::array<uint8_t, kDigestBytes> digest() const;
  // The digest as 64 lowercase hex characters.
  std::string hex_digest() const;

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_{};
  std::array<uint8_t, 64> buffer_{};
  size_t buffer_size_ = 0;
  uint64_t total_bytes_ = 0;
};

// One-shot helpers: lowercase hex SHA-256 of a byte range.
std::string sha256_hex(const void* data, size_t size);
inline std::string sha256_hex(std::span<const uint8_t> bytes) { return sha256_hex(bytes.data(), bytes.size()); }

}  // namespace bw
