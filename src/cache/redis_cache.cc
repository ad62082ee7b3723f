#include "cache/redis_cache.h"

#include <algorithm>
#include <vector>

namespace bw::cache {

RedisCache::RedisCache(RedisCacheOptions options, Logger logger)
    : options_(std::move(options)),
      logger_(logger != nullptr ? std::move(logger) : make_null_logger()),
      write_connection_(RedisConnection::create(options_.redis)) {
  for (int i = 0; i < std::max(options_.read_connections, 1); ++i) {
    read_connections_.push_back(RedisConnection::create(options_.redis));
    idle_reads_.push_back(read_connections_.back().get());
  }
  writer_ = std::thread([this] { writer_loop(); });
}

RedisCache::~RedisCache() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  writer_.join();
}

void RedisCache::record_error(const Status& status) {
  std::lock_guard lock(mutex_);
  ++stats_.errors;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_warning_) {
    ++suppressed_warnings_;
    return;
  }
  next_warning_ = now + options_.warning_interval;
  if (suppressed_warnings_ > 0) {
    logger_->warn(
        "response cache: redis {}:{} failed ({} more failures since the last warning): {}; serving from "
        "the in-process cache only",
        options_.redis.host, options_.redis.port, suppressed_warnings_, status.message());
  } else {
    logger_->warn("response cache: redis {}:{} failed: {}; serving from the in-process cache only", options_.redis.host,
                  options_.redis.port, status.message());
  }
  suppressed_warnings_ = 0;
}

std::optional<RedisCache::Hit> RedisCache::get(const std::string& key) {
  const std::string redis_key = options_.key_prefix + key;
  RedisConnection* connection = nullptr;
  {
    std::unique_lock lock(read_mutex_);
    read_cv_.wait(lock, [this] { return !idle_reads_.empty(); });
    connection = idle_reads_.back();
    idle_reads_.pop_back();
  }
  Result<std::vector<RedisReply>> replies = connection->pipeline({{"GET", redis_key}, {"PTTL", redis_key}});
  {
    std::lock_guard lock(read_mutex_);
    idle_reads_.push_back(connection);
  }
  read_cv_.notify_one();
  if (!replies.ok()) {
    record_error(replies.status());
    return std::nullopt;
  }
  const RedisReply& value = (*replies)[0];
  const RedisReply& pttl = (*replies)[1];
  if (value.is_error()) {
    record_error(Unavailable("GET: {}", value.str));
    return std::nullopt;
  }
  if (value.is_nil() || value.type != RedisReply::Type::kString) {
    std::lock_guard lock(mutex_);
    ++stats_.misses;
    return std::nullopt;
  }
  Result<CachedResponse> parsed = deserialize(value.str);
  if (!parsed.ok()) {
    record_error(parsed.status().with_context(redis_key));
    return std::nullopt;
  }
  Hit hit;
  hit.value = std::make_shared<const CachedResponse>(std::move(*parsed));
  if (pttl.type == RedisReply::Type::kInteger && pttl.integer > 0) {
    hit.remaining_ttl = std::chrono::milliseconds(pttl.integer);
  }
  std::lock_guard lock(mutex_);
  ++stats_.hits;
  return hit;
}

Status RedisCache::put(const std::string& key, const CachedResponse& value) {
  const int64_t ttl_ms = std::max<int64_t>(1, options_.ttl.count());
  Result<RedisReply> reply =
      write_connection_->command({"SET", options_.key_prefix + key, serialize(value), "PX", std::to_string(ttl_ms)});
  Status status = reply.ok() ? (reply->is_error() ? Unavailable("SET: {}", reply->str) : OkStatus()) : reply.status();
  if (!status.ok()) {
    record_error(status);
    return status;
  }
  std::lock_guard lock(mutex_);
  ++stats_.writes;
  return OkStatus();
}

void RedisCache::put_async(const std::string& key, std::shared_ptr<const CachedResponse> value) {
  if (value == nullptr) return;
  {
    std::lock_guard lock(mutex_);
    if (stop_) return;
    if (queue_.size() >= options_.max_pending_writes) {
      ++stats_.dropped_writes;
      return;
    }
    queue_.emplace_back(key, std::move(value));
  }
  cv_.notify_all();
}

void RedisCache::writer_loop() {
  std::unique_lock lock(mutex_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (stop_) {  // a slow Redis must not hold up shutdown: what is left is dropped
      stats_.dropped_writes += queue_.size();
      queue_.clear();
      cv_.notify_all();
      return;
    }
    auto item = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    lock.unlock();
    (void)put(item.first, *item.second);  // failures are counted and warned in put()
    lock.lock();
    writing_ = false;
    cv_.notify_all();
  }
}

void RedisCache::flush() {
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [this] { return queue_.empty() && !writing_; });
}

RedisCache::Stats RedisCache::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace bw::cache
