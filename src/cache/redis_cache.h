// RedisCache: the response cache's L2, shared by every replica: one Redis string per
// entry, `<prefix><key>` -> serialize(CachedResponse) (format-versioned JSON), written
// with SET ... PX ttl so Redis expires it.
//
// The cache must never fail a request: every Redis problem (down, slow past the command
// timeout, an error reply, a value of another format) reads as a miss, is counted, and
// logs a warning at most once per `warning_interval` (with the number suppressed). The
// connection's reconnect backoff makes a down Redis cost lookups nothing but a counter.
//
// Lookups (get) run on the caller's thread, each on a connection of its own from a small
// pool (`read_connections`, opened as needed), so concurrent lookups - the server's worker
// threads - do not queue behind one slow round trip; stores (put_async) go to a bounded
// queue served by one writer thread on another connection, so the engine thread that
// finishes a request never waits for Redis. When the queue is full, new writes are
// dropped and counted.
//
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cache/cached_response.h"
#include "common/logging.h"
#include "common/redis_connection.h"

namespace bw::cache {

struct RedisCacheOptions {
  RedisOptions redis;                 // host, port, timeouts, reconnect backoff
  std::string key_prefix = "bw:rc:";  // keys are <prefix><cache key>
  std::chrono::milliseconds ttl{3'600'000};
  size_t max_pending_writes = 1024;
  int read_connections = 4;  // lookups in flight at once (>= 1); more wait for a connection
  std::chrono::milliseconds warning_interval{30'000};
};

class RedisCache {
 public:
  struct Hit {
    std::shared_ptr<const CachedResponse> value;
    std::optional<std::chrono::milliseconds> remaining_ttl;  // from PTTL, when Redis gave one
  };
  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;          // absent (or expired) keys
    uint64_t errors = 0;          // failed commands (unreachable, timeout, error reply) and unreadable values
    uint64_t writes = 0;          // values stored
    uint64_t dropped_writes = 0;  // writes dropped because the queue was full
  };

  RedisCache(RedisCacheOptions options, Logger logger);
  ~RedisCache();  // finishes the write in progress; drops (and counts) the queued ones
  RedisCache(const RedisCache&) = delete;
  RedisCache& operator=(const RedisCache&) = delete;

  // The value under `key`, or nullopt: absent, or any failure (counted, warned).
  std::optional<Hit> get(const std::string& key);
  // Queues a SET PX ttl; never blocks on Redis.
  void put_async(const std::string& key, std::shared_ptr<const CachedResponse> value);
  // Stores now (the writer thread's step; tests). Unavailable etc. are counted as errors too.
  Status put(const std::string& key, const CachedResponse& value);
  // Waits until every queued write has been attempted (tests, shutdown).
  void flush();

  Stats stats() const;
  const RedisCacheOptions& options() const { return options_; }

 private:
  void writer_loop();
  void record_error(const Status& status);

  const RedisCacheOptions options_;
  const Logger logger_;
  // The lookup connections: all of them (created without connecting) and the idle ones.
  std::vector<std::unique_ptr<RedisConnection>> read_connections_;
  std::mutex read_mutex_;
  std::condition_variable read_cv_;           // a connection became idle
  std::vector<RedisConnection*> idle_reads_;  // guarded by read_mutex_
  std::unique_ptr<RedisConnection> write_connection_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;  // writes queued, stop, or the queue drained
  std::deque<std::pair<std::string, std::shared_ptr<const CachedResponse>>> queue_;  // guarded by mutex_
  bool writing_ = false;  // the writer holds an item outside the queue; guarded by mutex_
  bool stop_ = false;     // guarded by mutex_
  Stats stats_;           // guarded by mutex_
  std::chrono::steady_clock::time_point next_warning_{};  // guarded by mutex_
  uint64_t suppressed_warnings_ = 0;                      // guarded by mutex_
  std::thread writer_;
};

}  // namespace bw::cache
