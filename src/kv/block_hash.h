// Block hashes for the prefix cache: a full KV block is named by a hash chained over every
// token before it, so two blocks share a hash only when the whole prefix up to and
// including the block is the same (same tokens, same extra key).
//
//   hash_0 = H(tokens of block 0 || extra key)
//   hash_i = H(hash_{i-1} || tokens of block i || extra key)
//
// H is SHA-256 truncated to 128 bits over an unambiguous byte encoding (a domain tag, a
// root/chained flag, the parent hash, a length-prefixed token list, a length-prefixed
// extra key). A collision would make a request attend to another prompt's KV, so the hash
// must be cryptographic; 128 bits keeps the chance negligible (~2^-64 after 2^32 blocks).
// The extra key separates prefixes whose KV differs for the same tokens: a LoRA adapter,
// multimodal inputs, a per-tenant cache salt. It is the same for every block of a request.
//
// Values only: thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bw {

struct BlockHash {
  static constexpr size_t kBytes = 16;

  std::array<uint8_t, kBytes> bytes{};

  friend bool operator==(const BlockHash&, const BlockHash&) = default;

  // 32 lowercase hex characters (for logs and test messages).
  std::string to_hex() const;
};

// The hash of one block of token ids. `parent` is the previous block's hash, nullptr for
// the first block of a sequence.
BlockHash hash_block(const BlockHash* parent, std::span<const int32_t> block_token_ids, std::string_view extra_key);

// Incremental hashing of a growing sequence: `hashes` holds the hashes of the first
// hashes->size() full blocks of `token_ids` (from an earlier call); appends the hashes of
// the full blocks after them. A trailing partial block is never hashed. Returns how many
// hashes were appended.
int extend_block_hashes(std::span<const int32_t> token_ids, int block_size, std::string_view extra_key,
                        std::vector<BlockHash>* hashes);

}  // namespace bw

// The bytes are already uniformly distributed: the first 8 are a good table hash.
template <>
struct std::hash<bw::BlockHash> {
  size_t operator()(const bw::BlockHash& h) const noexcept {
    uint64_t v;
    std::memcpy(&v, h.bytes.data(), sizeof(v));
    return static_cast<size_t>(v);
  }
};
