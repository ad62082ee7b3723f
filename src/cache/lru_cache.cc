#include "cache/lru_cache.h"

#include <utility>

namespace bw::cache {

namespace {

// Map node, list node and shared_ptr control block, roughly.
constexpr uint64_t kEntryOverheadBytes = 160;

}  // namespace

LruCache::LruCache(uint64_t max_bytes, std::chrono::milliseconds ttl, Clock clock)
    : max_bytes_(max_bytes), ttl_(ttl), clock_(std::move(clock)) {}

std::chrono::steady_clock::time_point LruCache::now() const {
  return clock_ ? clock_() : std::chrono::steady_clock::now();
}

void LruCache::remove(List::iterator it) {
  bytes_ -= it->charge;
  index_.erase(it->key);
  lru_.erase(it);
}

std::shared_ptr<const CachedResponse> LruCache::get(const std::string& key) {
  const auto t = now();
  std::lock_guard lock(mutex_);
  const auto found = index_.find(key);
  if (found == index_.end()) return nullptr;
  const List::iterator it = found->second;
  if (t >= it->expires) {
    ++expirations_;
    remove(it);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it);
  return it->value;
}

bool LruCache::put(const std::string& key, std::shared_ptr<const CachedResponse> value,
                   std::optional<std::chrono::milliseconds> ttl) {
  if (value == nullptr) return false;
  const uint64_t charge = approximate_bytes(*value) + key.size() * 2 + kEntryOverheadBytes;
  const std::chrono::milliseconds life = ttl.value_or(ttl_);
  if (charge > max_bytes_ || life.count() <= 0) return false;
  const auto t = now();
  const auto expires = t + life;
  std::lock_guard lock(mutex_);
  if (const auto found = index_.find(key); found != index_.end()) remove(found->second);
  while (bytes_ + charge > max_bytes_ && !lru_.empty()) {
    // Expired entries at the cold end go first without counting as evictions.
    const auto victim = std::prev(lru_.end());
    if (t >= victim->expires) {
      ++expirations_;
    } else {
      ++evictions_;
    }
    remove(victim);
  }
  lru_.push_front(Entry{key, std::move(value), charge, expires});
  index_.emplace(key, lru_.begin());
  bytes_ += charge;
  return true;
}

void LruCache::erase(const std::string& key) {
  std::lock_guard lock(mutex_);
  if (const auto found = index_.find(key); found != index_.end()) remove(found->second);
}

LruCache::Stats LruCache::stats() const {
  std::lock_guard lock(mutex_);
  return Stats{bytes_, static_cast<uint64_t>(index_.size()), evictions_, expirations_};
}

}  // namespace bw::cache
