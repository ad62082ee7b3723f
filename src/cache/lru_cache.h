// LruCache: the response cache's L1, in process. Keys are cache keys (cache_key.h),
// values shared immutable CachedResponses. Entries are charged approximate_bytes() plus
// the key; inserting past `max_bytes` evicts the least recently used entries (counted as
// evictions). Every entry expires `ttl` after it was stored (or at the expiry given to
// put), and an expired entry reads as a miss and is dropped. A value larger than the
// whole budget is not stored; max_bytes 0 disables the cache.
//
// Thread-safe: one mutex around the map and list; get() and put() are O(1).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "cache/cached_response.h"

namespace bw::cache {

class LruCache {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  struct Stats {
    uint64_t bytes = 0;        // charged bytes held now
    uint64_t entries = 0;      // entries held now
    uint64_t evictions = 0;    // entries dropped for room (cumulative)
    uint64_t expirations = 0;  // entries dropped after their TTL (cumulative)
  };

  // `clock` defaults to steady_clock::now (tests pass a fake one).
  LruCache(uint64_t max_bytes, std::chrono::milliseconds ttl, Clock clock = {});

  // The live value, marked most recently used; nullptr when absent or expired.
  std::shared_ptr<const CachedResponse> get(const std::string& key);
  // Stores (or replaces) the value; it expires after `ttl` (the cache's TTL when absent,
  // e.g. the remaining TTL of an L2 entry). False when it was not stored (too large or
  // the cache is disabled).
  bool put(const std::string& key, std::shared_ptr<const CachedResponse> value,
           std::optional<std::chrono::milliseconds> ttl = std::nullopt);
  void erase(const std::string& key);

  Stats stats() const;
  uint64_t max_bytes() const { return max_bytes_; }

 private:
  struct Entry {
    std::string key;
    std::shared_ptr<const CachedResponse> value;
    uint64_t charge = 0;
    std::chrono::steady_clock::time_point expires;
  };
  using List = std::list<Entry>;

  std::chrono::steady_clock::time_point now() const;
  void remove(List::iterator it);  // mutex held

  const uint64_t max_bytes_;
  const std::chrono::milliseconds ttl_;
  const Clock clock_;
  mutable std::mutex mutex_;
  List lru_;                                               // front: most recently used; guarded by mutex_
  std::unordered_map<std::string, List::iterator> index_;  // guarded by mutex_
  uint64_t bytes_ = 0;                                     // guarded by mutex_
  uint64_t evictions_ = 0;                                 // guarded by mutex_
  uint64_t expirations_ = 0;                               // guarded by mutex_
};

}  // namespace bw::cache
