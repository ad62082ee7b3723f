// L2 and the two-level cache against a real redis-server (tests/support/redis_server.h).
#include "cache/redis_cache.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "common/redis_connection.h"

#include "cache/response_cache.h"
#include "support/redis_server.h"

namespace bw::cache {
namespace {

using namespace std::chrono_literals;

CachedResponse sample_response() {
  CachedResponse r;
  CachedChoice a;
  a.text = "Once upon a time";
  a.reasoning_content = "think \xE2\x9C\x93";
  a.token_ids = {5, 6, 7};
  a.logprobs = {{5, -0.25f, {{5, -0.25f}, {9, -1.5f}}}, {6, -0.1f, {}}, {7, -3.0f, {}}};
  a.finish_reason = "stop";
  a.stop_reason = ".";
  CachedChoice b;
  b.text = "x";
  b.token_ids = {8};
  b.finish_reason = "length";
  r.choices = {a, b};
  r.usage = Usage{4, 4, 2};
  return r;
}

void expect_same(const CachedResponse& a, const CachedResponse& b) {
  ASSERT_EQ(a.choices.size(), b.choices.size());
  for (size_t i = 0; i < a.choices.size(); ++i) {
    const CachedChoice& x = a.choices[i];
    const CachedChoice& y = b.choices[i];
    EXPECT_EQ(x.text, y.text);
    EXPECT_EQ(x.reasoning_content, y.reasoning_content);
    EXPECT_EQ(x.token_ids, y.token_ids);
    EXPECT_EQ(x.finish_reason, y.finish_reason);
    EXPECT_EQ(x.stop_reason, y.stop_reason);
    ASSERT_EQ(x.logprobs.size(), y.logprobs.size());
    for (size_t t = 0; t < x.logprobs.size(); ++t) {
      EXPECT_EQ(x.logprobs[t].token_id, y.logprobs[t].token_id);
      EXPECT_EQ(x.logprobs[t].logprob, y.logprobs[t].logprob);  // exact: floats round-trip
      ASSERT_EQ(x.logprobs[t].top.size(), y.logprobs[t].top.size());
      for (size_t k = 0; k < x.logprobs[t].top.size(); ++k) {
        EXPECT_EQ(x.logprobs[t].top[k].token_id, y.logprobs[t].top[k].token_id);
        EXPECT_EQ(x.logprobs[t].top[k].logprob, y.logprobs[t].top[k].logprob);
      }
    }
  }
  EXPECT_EQ(a.usage.prompt_tokens, b.usage.prompt_tokens);
  EXPECT_EQ(a.usage.completion_tokens, b.usage.completion_tokens);
  EXPECT_EQ(a.usage.cached_tokens, b.usage.cached_tokens);
}

TEST(CachedResponseTest, SerializeRoundTripsAndChecksTheVersion) {
  const CachedResponse r = sample_response();
  Result<CachedResponse> back = deserialize(serialize(r));
  ASSERT_TRUE(back.ok()) << back.status().message();
  expect_same(r, *back);
  EXPECT_FALSE(deserialize("not json").ok());
  EXPECT_FALSE(deserialize(R"({"v":999,"choices":[],"usage":[0,0,0]})").ok());
  EXPECT_FALSE(deserialize(R"({"v":1,"choices":[{"text":5}],"usage":[0,0,0]})").ok());
  EXPECT_FALSE(deserialize(R"({"v":1})").ok());
}

RedisCacheOptions options_for(const test::RedisServer& redis, std::chrono::milliseconds timeout = 100ms) {
  RedisCacheOptions options;
  options.redis.port = redis.port();
  options.redis.connect_timeout = timeout;
  options.redis.command_timeout = timeout;
  options.redis.reconnect_backoff = 200ms;
  options.key_prefix = "test:rc:";
  return options;
}

TEST(RedisCacheTest, PutThenGetIsAHit) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  RedisCache cache(options_for(redis), nullptr);
  EXPECT_FALSE(cache.get("k").has_value());
  cache.put_async("k", std::make_shared<const CachedResponse>(sample_response()));
  cache.flush();
  std::optional<RedisCache::Hit> hit = cache.get("k");
  ASSERT_TRUE(hit.has_value());
  expect_same(sample_response(), *hit->value);
  ASSERT_TRUE(hit->remaining_ttl.has_value());
  EXPECT_GT(hit->remaining_ttl->count(), 3'500'000);  // one hour, less a little
  RedisCache::Stats s = cache.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.writes, 1u);
  EXPECT_EQ(s.errors, 0u);
}

TEST(RedisCacheTest, EntriesExpireInRedis) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  RedisCacheOptions options = options_for(redis);
  options.ttl = 150ms;
  RedisCache cache(options, nullptr);
  ASSERT_TRUE(cache.put("k", sample_response()).ok());
  EXPECT_TRUE(cache.get("k").has_value());
  std::this_thread::sleep_for(250ms);
  EXPECT_FALSE(cache.get("k").has_value());
  EXPECT_EQ(cache.stats().errors, 0u);
}

TEST(RedisCacheTest, ValueOfAnotherFormatIsAMiss) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  auto raw = RedisConnection::connect(options_for(redis).redis);
  ASSERT_TRUE(raw.ok());
  ASSERT_TRUE((*raw)->command({"SET", "test:rc:old", R"({"v":0,"choices":[]})"}).ok());
  RedisCache cache(options_for(redis), nullptr);
  EXPECT_FALSE(cache.get("old").has_value());
  EXPECT_EQ(cache.stats().errors, 1u);
}

TEST(RedisCacheTest, KilledRedisIsAMissNeverAnError) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  RedisCache cache(options_for(redis), nullptr);
  ASSERT_TRUE(cache.put("k", sample_response()).ok());
  ASSERT_TRUE(cache.get("k").has_value());
  redis.stop(/*kill=*/true);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    EXPECT_FALSE(cache.get("k").has_value());
  }
  cache.put_async("k2", std::make_shared<const CachedResponse>(sample_response()));
  cache.flush();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, 5s);  // generous: the backoff answers at once; only a hang would fail
  EXPECT_GE(cache.stats().errors, 21u);
  // Redis comes back (same port): after the backoff, L2 works again.
  ASSERT_TRUE(redis.start());
  std::this_thread::sleep_for(250ms);
  ASSERT_TRUE(cache.put("k3", sample_response()).ok());
  EXPECT_TRUE(cache.get("k3").has_value());
}

TEST(RedisCacheTest, SlowRedisTimesOutAsAMiss) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  RedisCache cache(options_for(redis, 50ms), nullptr);
  ASSERT_TRUE(cache.put("k", sample_response()).ok());
  // Another client pauses every client's commands for a second (DEBUG SLEEP is disabled
  // by default since Redis 7; CLIENT PAUSE makes Redis just as slow to answer).
  RedisOptions o;
  o.port = redis.port();
  auto pauser = RedisConnection::connect(o);
  ASSERT_TRUE(pauser.ok());
  auto paused = (*pauser)->command({"CLIENT", "PAUSE", "1000", "ALL"});
  ASSERT_TRUE(paused.ok() && !paused->is_error()) << (paused.ok() ? paused->str : paused.status().message());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(cache.get("k").has_value());
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, 900ms) << "the lookup waited for Redis instead of timing out";
  EXPECT_EQ(cache.stats().errors, 1u);
}

// A TCP proxy on loopback that holds every request chunk for `delay` before passing it on
// to the real server: a Redis a network round trip away. One pair of threads per
// connection; stops when either side closes.
class DelayingProxy {
 public:
  DelayingProxy(int target_port, std::chrono::milliseconds delay) : target_port_(target_port), delay_(delay) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(listener_, 16) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "proxy: cannot listen";
      return;
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~DelayingProxy() {
    stopping_ = true;
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    acceptor_.join();
    {
      std::lock_guard lock(mutex_);
      for (int fd : fds_)
        ::shutdown(fd, SHUT_RDWR);
    }
    for (std::thread& t : pumps_)
      t.join();
    for (int fd : fds_)
      ::close(fd);
  }
  DelayingProxy(const DelayingProxy&) = delete;
  DelayingProxy& operator=(const DelayingProxy&) = delete;
  int port() const { return port_; }

 private:
  void accept_loop() {
    while (!stopping_) {
      const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) return;
      const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(target_port_));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        ::close(client);
        ::close(server);
        continue;
      }
      std::lock_guard lock(mutex_);
      fds_.push_back(client);
      fds_.push_back(server);
      pumps_.emplace_back([this, client, server] { pump(client, server, delay_); });
      pumps_.emplace_back([client, server] { pump(server, client, std::chrono::milliseconds(0)); });
    }
  }
  static void pump(int from, int to, std::chrono::milliseconds delay) {
    char buf[65536];
    for (;;) {
      const ssize_t n = ::recv(from, buf, sizeof(buf), 0);
      if (n <= 0) break;
      std::this_thread::sleep_for(delay);
      if (::send(to, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
    }
    ::shutdown(to, SHUT_WR);
  }

  const int target_port_;
  const std::chrono::milliseconds delay_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mutex_;
  std::vector<int> fds_;            // guarded by mutex_ until the acceptor stops
  std::vector<std::thread> pumps_;  // guarded by mutex_ until the acceptor stops
};

TEST(RedisCacheTest, ConcurrentLookupsDoNotQueueBehindOneRoundTrip) {
  // Redis 100 ms away: four lookups at once take about one round trip, each on its own
  // connection, not four in turn.
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  constexpr auto kDelay = 100ms;
  DelayingProxy proxy(redis.port(), kDelay);
  ASSERT_NE(proxy.port(), 0);
  RedisCacheOptions options = options_for(redis, 2s);
  options.redis.port = proxy.port();
  options.read_connections = 4;
  RedisCache cache(options, nullptr);
  ASSERT_TRUE(cache.put("k", sample_response()).ok());
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> lookups;
  lookups.reserve(4);
  std::atomic<int> hits{0};
  for (int i = 0; i < 4; ++i) {
    lookups.emplace_back([&] {
      if (cache.get("k").has_value()) ++hits;
    });
  }
  for (std::thread& t : lookups)
    t.join();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(hits.load(), 4);
  EXPECT_LT(elapsed, 3 * kDelay) << "the lookups queued behind each other";
  EXPECT_EQ(cache.stats().errors, 0u);
}

TEST(ResponseCacheTest, LookupFillsL1FromL2) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  ResponseCacheConfig config;
  config.redis_url = redis.url();
  config.redis_timeout = 100ms;
  // Replica A stores; replica B (an empty L1 on the same Redis) finds it in L2, then L1.
  auto a = ResponseCache::create(config, nullptr);
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto b = ResponseCache::create(config, nullptr);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->lookup("key").level, CacheLevel::kNone);
  (*a)->store("key", sample_response());
  EXPECT_EQ((*a)->lookup("key").level, CacheLevel::kL1);
  (*a)->l2()->flush();
  CacheLookup from_l2 = (*b)->lookup("key");
  ASSERT_EQ(from_l2.level, CacheLevel::kL2);
  expect_same(sample_response(), *from_l2.value);
  CacheLookup from_l1 = (*b)->lookup("key");
  EXPECT_EQ(from_l1.level, CacheLevel::kL1);
  ResponseCacheStats s = (*b)->stats();
  EXPECT_EQ(s.l1_hits, 1u);
  EXPECT_EQ(s.l2_hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.l1.entries, 1u);
  EXPECT_TRUE(s.has_l2);
  // Redis gone: L1 still answers, new keys miss, nothing fails.
  redis.stop();
  EXPECT_EQ((*b)->lookup("key").level, CacheLevel::kL1);
  EXPECT_EQ((*b)->lookup("other").level, CacheLevel::kNone);
  EXPECT_GE((*b)->stats().l2.errors, 1u);
}

TEST(ResponseCacheTest, ModesAndConfig) {
  SamplingParams greedy;
  SamplingParams sampled;
  sampled.temperature = 1.0f;
  SamplingParams seeded = sampled;
  seeded.seed = 42;
  EXPECT_TRUE(is_cacheable(CacheMode::kDeterministic, greedy));
  EXPECT_FALSE(is_cacheable(CacheMode::kDeterministic, sampled));
  EXPECT_TRUE(is_cacheable(CacheMode::kDeterministic, seeded));
  EXPECT_TRUE(is_cacheable(CacheMode::kAll, sampled));
  EXPECT_FALSE(is_cacheable(CacheMode::kOff, greedy));
  EXPECT_EQ(*parse_cache_mode("all"), CacheMode::kAll);
  EXPECT_FALSE(parse_cache_mode("sometimes").ok());
  ResponseCacheConfig bad;
  bad.redis_url = "http://x";
  EXPECT_FALSE(ResponseCache::create(bad, nullptr).ok());
  // Without Redis: L1 only.
  auto l1_only = ResponseCache::create(ResponseCacheConfig{}, nullptr);
  ASSERT_TRUE(l1_only.ok());
  (*l1_only)->store("k", sample_response());
  EXPECT_EQ((*l1_only)->lookup("k").level, CacheLevel::kL1);
  EXPECT_FALSE((*l1_only)->stats().has_l2);
}

}  // namespace
}  // namespace bw::cache
