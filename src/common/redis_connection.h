// RedisConnection: one hiredis connection with timeouts and lazy reconnection, shared by
// the response cache (L2) and the Redis Streams job store.
//
// Every command runs under `command_timeout`; an I/O error or timeout breaks the
// connection and returns Unavailable. The next command reconnects, but not before
// `reconnect_backoff` has passed since the last failed attempt, so a Redis that is down
// costs callers nothing but an immediate Unavailable (the cache then stays L1-only).
// A Redis error reply ("-ERR ...", "-BUSYGROUP ...") is not a Status error: it comes back
// as a reply of type kError, for the caller to interpret.
//
// Thread-safe: commands are serialised by an internal mutex (one in flight at a time);
// use one connection per thread where throughput matters.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

struct redisContext;

namespace bw {

struct RedisOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  int db = 0;
  std::string username;  // Redis 6 ACL user; empty: the default user
  std::string password;
  std::chrono::milliseconds connect_timeout{200};
  std::chrono::milliseconds command_timeout{200};
  std::chrono::milliseconds reconnect_backoff{1000};
};

// Parses redis://[[user]:password@]host[:port][/db]. InvalidArgument naming what is wrong.
Result<RedisOptions> parse_redis_url(std::string_view url);

struct RedisReply {
  enum class Type { kNil, kString, kStatus, kInteger, kArray, kError };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus, kError
  int64_t integer = 0;
  std::vector<RedisReply> elements;  // kArray

  bool is_nil() const { return type == Type::kNil; }
  bool is_error() const { return type == Type::kError; }
};

class RedisConnection {
 public:
  // Connects at once; Unavailable when Redis cannot be reached (the object is still
  // usable through `create`, which does not require the first connection to succeed).
  static Result<std::unique_ptr<RedisConnection>> connect(RedisOptions options);
  // Does not connect until the first command.
  static std::unique_ptr<RedisConnection> create(RedisOptions options);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // One command, arguments binary-safe.
  Result<RedisReply> command(const std::vector<std::string>& args);
  // Several commands sent together, one reply each (in order).
  Result<std::vector<RedisReply>> pipeline(const std::vector<std::vector<std::string>>& commands);

  const RedisOptions& options() const { return options_; }

 private:
  explicit RedisConnection(RedisOptions options);
  Status ensure_connected();  // mutex held
  void drop();                // mutex held

  RedisOptions options_;
  std::mutex mutex_;
  redisContext* context_ = nullptr;
  std::chrono::steady_clock::time_point next_attempt_{};
};

}  // namespace bw
