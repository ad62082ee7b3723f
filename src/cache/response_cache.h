// ResponseCache: the two-level response cache of `breakwater serve`. Lookup tries L1 (the
// in-process LruCache), then L2 (RedisCache, when a Redis URL is configured; a hit there
// fills L1 with the entry's remaining TTL), else it is a miss and the engine runs. Store
// puts a finished response into L1 at once and queues it for L2.
//
// Which requests are cached is the caller's decision, helped by is_cacheable(): mode
// `deterministic` (the default) caches greedy requests (temperature 0) and requests with
// an explicit seed, whose output is a function of the request; `all` caches sampled ones
// too (a hit then replays one earlier sample); `off` caches nothing.
//
// Nothing here can fail a request: Redis trouble reads as an L2 miss (see redis_cache.h).
// lookup() runs on the caller's thread (one of the server's worker threads, never an HTTP
// I/O thread) and costs at most the Redis command timeout when Redis is slow; store()
// never waits for Redis.
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "cache/cache_key.h"
#include "cache/cached_response.h"
#include "cache/lru_cache.h"
#include "cache/redis_cache.h"
#include "common/logging.h"
#include "common/status.h"

namespace bw::cache {

enum class CacheMode { kOff, kDeterministic, kAll };

// "off", "deterministic", "all"; InvalidArgument otherwise.
Result<CacheMode> parse_cache_mode(std::string_view text);
std::string_view cache_mode_name(CacheMode mode);
// Whether a request with these sampling parameters may be cached under `mode`.
bool is_cacheable(CacheMode mode, const SamplingParams& sampling);

enum class CacheLevel { kNone, kL1, kL2 };
std::string_view cache_level_name(CacheLevel level);  // "none", "l1", "l2"

struct ResponseCacheConfig {
  CacheMode mode = CacheMode::kDeterministic;
  uint64_t l1_max_bytes = uint64_t{256} << 20;  // 0: no L1
  std::chrono::milliseconds ttl{3'600'000};     // both levels
  std::string redis_url;                        // "" : no L2
  std::chrono::milliseconds redis_timeout{50};  // connect and command timeout
  std::chrono::milliseconds redis_reconnect_backoff{1000};
};

struct CacheLookup {
  std::shared_ptr<const CachedResponse> value;  // nullptr on a miss
  CacheLevel level = CacheLevel::kNone;         // where it was found
  double seconds = 0.0;                         // time the lookup took
};

struct ResponseCacheStats {
  uint64_t l1_hits = 0;
  uint64_t l2_hits = 0;
  uint64_t misses = 0;
  uint64_t stores = 0;
  LruCache::Stats l1;
  bool has_l2 = false;
  RedisCache::Stats l2;
};

class ResponseCache {
 public:
  // InvalidArgument for a bad Redis URL. Does not connect: a Redis that is down at start
  // is only an L2 that misses (and warns) until it comes up.
  static Result<std::unique_ptr<ResponseCache>> create(const ResponseCacheConfig& config, Logger logger);

  CacheLookup lookup(const std::string& key);
  void store(const std::string& key, CachedResponse response);

  ResponseCacheStats stats() const;
  CacheMode mode() const { return config_.mode; }
  const ResponseCacheConfig& config() const { return config_; }
  RedisCache* l2() { return l2_.get(); }  // nullptr without Redis

 private:
  ResponseCache(ResponseCacheConfig config, std::unique_ptr<RedisCache> l2);

  const ResponseCacheConfig config_;
  LruCache l1_;
  std::unique_ptr<RedisCache> l2_;
  std::atomic<uint64_t> l1_hits_{0};
  std::atomic<uint64_t> l2_hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> stores_{0};
};

}  // namespace bw::cache
