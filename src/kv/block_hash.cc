#include "kv/block_hash.h"

#include <cassert>

#include "common/sha256.h"

namespace bw {

namespace {

// Versioned so a change of encoding can never alias hashes of the old one.
constexpr std::string_view kDomainTag = "breakwater.kv.block.v1";

void put_u64_le(Sha256& h, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i)
    b[i] = static_cast<uint8_t>(v >> (8 * i));
  h.update(b, sizeof(b));
}

}  // namespace

std::string BlockHash::to_hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(2 * kBytes, '0');
  for (size_t i = 0; i < kBytes; ++i) {
    s[2 * i] = kDigits[bytes[i] >> 4];
    s[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return s;
}

BlockHash hash_block(const BlockHash* parent, std::span<const int32_t> block_token_ids, std::string_view extra_key) {
  Sha256 h;
  h.update(kDomainTag);
  const uint8_t has_parent = parent != nullptr ? 1 : 0;
  h.update(&has_parent, 1);
  if (parent != nullptr) h.update(parent->bytes.data(), parent->bytes.size());
  put_u64_le(h, block_token_ids.size());
  // Little-endian token ids, whatever the host.
  uint8_t buf[256];
  size_t used = 0;
  for (int32_t token : block_token_ids) {
    const auto u = static_cast<uint32_t>(token);
    for (int i = 0; i < 4; ++i)
      buf[used++] = static_cast<uint8_t>(u >> (8 * i));
    if (used == sizeof(buf)) {
      h.update(buf, used);
      used = 0;
    }
  }
  h.update(buf, used);
  put_u64_le(h, extra_key.size());
  h.update(extra_key);

  const auto digest = h.digest();
  BlockHash out;
  std::memcpy(out.bytes.data(), digest.data(), BlockHash::kBytes);
  return out;
}

int extend_block_hashes(std::span<const int32_t> token_ids, int block_size, std::string_view extra_key,
                        std::vector<BlockHash>* hashes) {
  assert(block_size > 0);
  const size_t num_full_blocks = token_ids.size() / static_cast<size_t>(block_size);
  const size_t first = hashes->size();
  for (size_t i = first; i < num_full_blocks; ++i) {
    const BlockHash* parent = i == 0 ? nullptr : &(*hashes)[i - 1];
    hashes->push_back(hash_block(parent, token_ids.subspan(i * block_size, block_size), extra_key));
  }
  return num_full_blocks > first ? static_cast<int>(num_full_blocks - first) : 0;
}

}  // namespace bw
