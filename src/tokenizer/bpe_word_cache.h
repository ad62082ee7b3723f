// WordCache: token ids of recently encoded words (or SentencePiece segments), per thread
// and per model, so repeated words cost one lookup and threads never contend. Internal to
// the tokenizer module (BpeModel, SpmModel).
//
// Each thread keeps, for the last few models it used, a direct-mapped index of 8192 slots
// over a 512 KB arena of entries (word bytes, then ids). When the arena is full the table
// starts over (a new generation invalidates every slot); words repeat, so it refills with
// the frequent ones. Models are told apart by a process-unique id taken at construction
// and never reused. Lookups compare the whole word, so results are exact.
//
// Thread-safe: find() and insert() touch only the calling thread's tables.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace bw {

class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 256;
  static constexpr size_t kMaxIds = 64;

  WordCache() : id_(next_id().fetch_add(1, std::memory_order_relaxed)) {}
  WordCache(const WordCache&) = delete;
  WordCache& operator=(const WordCache&) = delete;

  static bool cacheable(std::string_view word) { return word.size() <= kMaxWordBytes; }

  static uint64_t hash(std::string_view word) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ word.size();
    size_t i = 0;
    for (; i + 8 <= word.size(); i += 8) {
      uint64_t v;
      std::memcpy(&v, word.data() + i, 8);
      h = mix(h ^ v);
    }
    uint64_t tail = 0;
    std::memcpy(&tail, word.data() + i, word.size() - i);
    return mix(h ^ tail ^ (static_cast<uint64_t>(word.size()) << 56));
  }

  // Appends the cached ids of `word` (hash from hash()) to `out`; false when not cached.
  bool find(std::string_view word, uint64_t hash, std::vector<int32_t>* out) const {
    const Table& t = table();
    const Slot& slot = t.slots[hash >> (64 - kSlotBits)];
    if (slot.generation != t.generation || slot.tag != hash || slot.word_len != word.size()) return false;
    const char* entry = t.arena.data() + slot.offset;
    if (std::memcmp(entry, word.data(), word.size()) != 0) return false;
    const size_t at = out->size();
    out->resize(at + slot.num_ids);
    std::memcpy(out->data() + at, entry + align4(word.size()), slot.num_ids * sizeof(int32_t));
    return true;
  }

  // Remembers the ids of `word` (ignored when the word or its ids are too long).
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n) const {
    if (word.size() > kMaxWordBytes || n > kMaxIds) return;
    Table& t = table();
    const size_t bytes = align4(word.size()) + n * sizeof(int32_t);
    if (t.used + bytes > t.arena.size()) {  // full: start a new generation
      ++t.generation;
      t.used = 0;
    }
    char* entry = t.arena.data() + t.used;
    std::memcpy(entry, word.data(), word.size());
    std::memcpy(entry + align4(word.size()), ids, n * sizeof(int32_t));
    t.slots[hash >> (64 - kSlotBits)] = {hash, static_cast<uint32_t>(t.used), t.generation,
                                         static_cast<uint16_t>(word.size()), static_cast<uint16_t>(n)};
    t.used += bytes;
  }

 private:
  static constexpr int kSlotBits = 13;
  static constexpr size_t kArenaBytes = 512 * 1024;
  static constexpr size_t kTablesPerThread = 4;

  struct Slot {
    uint64_t tag = 0;
    uint32_t offset = 0;
    uint32_t generation = 0;  // valid while equal to the table's
    uint16_t word_len = 0;
    uint16_t num_ids = 0;
  };
  struct Table {
    uint64_t owner = 0;
    uint32_t generation = 1;
    size_t used = 0;
    std::vector<Slot> slots;
    std::vector<char> arena;
  };

  static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
  }
  static size_t align4(size_t n) { return (n + 3) & ~size_t{3}; }
  static std::atomic<uint64_t>& next_id() {
    static std::atomic<uint64_t> id{1};
    return id;
  }

  Table& table() const {
    thread_local std::array<Table, kTablesPerThread> tables;
    thread_local size_t next_victim = 0;
    for (Table& t : tables) {
      if (t.owner == id_) return t;
    }
    Table& t = tables[next_victim++ % kTablesPerThread];
    t.owner = id_;
    t.generation = 1;
    t.used = 0;
    t.slots.assign(size_t{1} << kSlotBits, Slot{});
    t.arena.resize(kArenaBytes);
    return t;
  }

  const uint64_t id_;
};

}  // namespace bw
