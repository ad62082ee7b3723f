#include "cache/response_cache.h"

#include <utility>

namespace bw::cache {

Result<CacheMode> parse_cache_mode(std::string_view text) {
  if (text == "off") return CacheMode::kOff;
  if (text == "deterministic") return CacheMode::kDeterministic;
  if (text == "all") return CacheMode::kAll;
  return InvalidArgument("cache mode '{}' is not one of off, deterministic, all", text);
}

std::string_view cache_mode_name(CacheMode mode) {
  switch (mode) {
    case CacheMode::kOff:
      return "off";
    case CacheMode::kDeterministic:
      return "deterministic";
    case CacheMode::kAll:
      return "all";
  }
  return "off";
}

bool is_cacheable(CacheMode mode, const SamplingParams& sampling) {
  switch (mode) {
    case CacheMode::kOff:
      return false;
    case CacheMode::kDeterministic:
      return sampling.is_greedy() || sampling.seed.has_value();
    case CacheMode::kAll:
      return true;
  }
  return false;
}

std::string_view cache_level_name(CacheLevel level) {
  switch (level) {
    case CacheLevel::kNone:
      return "none";
    case CacheLevel::kL1:
      return "l1";
    case CacheLevel::kL2:
      return "l2";
  }
  return "none";
}

Result<std::unique_ptr<ResponseCache>> ResponseCache::create(const ResponseCacheConfig& config, Logger logger) {
  if (config.ttl.count() <= 0) return InvalidArgument("the cache TTL must be > 0");
  std::unique_ptr<RedisCache> l2;
  if (!config.redis_url.empty()) {
    ASSIGN_OR_RETURN(RedisOptions redis, parse_redis_url(config.redis_url));
    if (config.redis_timeout.count() <= 0) return InvalidArgument("the redis timeout must be > 0 ms");
    redis.connect_timeout = config.redis_timeout;
    redis.command_timeout = config.redis_timeout;
    redis.reconnect_backoff = config.redis_reconnect_backoff;
    RedisCacheOptions options;
    options.redis = std::move(redis);
    options.ttl = config.ttl;
    l2 = std::make_unique<RedisCache>(std::move(options), std::move(logger));
  }
  return std::unique_ptr<ResponseCache>(new ResponseCache(config, std::move(l2)));
}

ResponseCache::ResponseCache(ResponseCacheConfig config, std::unique_ptr<RedisCache> l2)
    : config_(std::move(config)), l1_(config_.l1_max_bytes, config_.ttl), l2_(std::move(l2)) {}

CacheLookup ResponseCache::lookup(const std::string& key) {
  const auto start = std::chrono::steady_clock::now();
  CacheLookup result;
  if (auto value = l1_.get(key)) {
    result.value = std::move(value);
    result.level = CacheLevel::kL1;
    ++l1_hits_;
  } else if (l2_ != nullptr) {
    if (std::optional<RedisCache::Hit> hit = l2_->get(key)) {
      l1_.put(key, hit->value, hit->remaining_ttl);
      result.value = std::move(hit->value);
      result.level = CacheLevel::kL2;
      ++l2_hits_;
    }
  }
  if (result.value == nullptr) ++misses_;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

void ResponseCache::store(const std::string& key, CachedResponse response) {
  auto value = std::make_shared<const CachedResponse>(std::move(response));
  l1_.put(key, value);
  if (l2_ != nullptr) l2_->put_async(key, std::move(value));
  ++stores_;
}

ResponseCacheStats ResponseCache::stats() const {
  ResponseCacheStats s;
  s.l1_hits = l1_hits_.load();
  s.l2_hits = l2_hits_.load();
  s.misses = misses_.load();
  s.stores = stores_.load();
  s.l1 = l1_.stats();
  s.has_l2 = l2_ != nullptr;
  if (l2_ != nullptr) s.l2 = l2_->stats();
  return s;
}

}  // namespace bw::cache
