#include "cache/lru_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace bw::cache {
namespace {

using namespace std::chrono_literals;

std::shared_ptr<const CachedResponse> response(const std::string& text) {
  CachedResponse r;
  CachedChoice c;
  c.text = text;
  c.token_ids = {1, 2, 3};
  c.finish_reason = "length";
  r.choices.push_back(c);
  r.usage.prompt_tokens = 3;
  r.usage.completion_tokens = 3;
  return std::make_shared<const CachedResponse>(std::move(r));
}

// A clock the test moves by hand.
struct FakeClock {
  std::chrono::steady_clock::time_point now{std::chrono::seconds(1000)};
  LruCache::Clock fn() {
    return [this] { return now; };
  }
};

TEST(LruCacheTest, GetReturnsWhatWasPut) {
  LruCache cache(1 << 20, 1h);
  EXPECT_EQ(cache.get("a"), nullptr);
  ASSERT_TRUE(cache.put("a", response("alpha")));
  auto hit = cache.get("a");
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->choices[0].text, "alpha");
  EXPECT_EQ(cache.stats().entries, 1u);
  EXPECT_GT(cache.stats().bytes, 5u);
  // Replacing keeps one entry.
  ASSERT_TRUE(cache.put("a", response("beta")));
  EXPECT_EQ(cache.get("a")->choices[0].text, "beta");
  EXPECT_EQ(cache.stats().entries, 1u);
  cache.erase("a");
  EXPECT_EQ(cache.get("a"), nullptr);
  EXPECT_EQ(cache.stats().bytes, 0u);
}

TEST(LruCacheTest, ByteBudgetEvictsLeastRecentlyUsed) {
  const std::string text(1000, 'x');
  LruCache probe(1 << 20, 1h);
  ASSERT_TRUE(probe.put("k0", response(text)));
  const uint64_t charge = probe.stats().bytes;
  // Room for exactly three entries.
  LruCache cache(charge * 3 + charge / 2, 1h);
  ASSERT_TRUE(cache.put("k0", response(text)));
  ASSERT_TRUE(cache.put("k1", response(text)));
  ASSERT_TRUE(cache.put("k2", response(text)));
  ASSERT_NE(cache.get("k0"), nullptr);  // k0 is now the most recent; k1 the least
  ASSERT_TRUE(cache.put("k3", response(text)));
  EXPECT_EQ(cache.get("k1"), nullptr);
  EXPECT_NE(cache.get("k0"), nullptr);
  EXPECT_NE(cache.get("k2"), nullptr);
  EXPECT_NE(cache.get("k3"), nullptr);
  LruCache::Stats s = cache.stats();
  EXPECT_EQ(s.entries, 3u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_LE(s.bytes, cache.max_bytes());
}

TEST(LruCacheTest, TooLargeOrDisabledIsNotStored) {
  LruCache small(100, 1h);
  EXPECT_FALSE(small.put("big", response(std::string(1000, 'x'))));
  EXPECT_EQ(small.stats().entries, 0u);
  LruCache off(0, 1h);
  EXPECT_FALSE(off.put("a", response("a")));
  EXPECT_EQ(off.get("a"), nullptr);
}

TEST(LruCacheTest, EntriesExpireAfterTheirTtl) {
  FakeClock clock;
  LruCache cache(1 << 20, 10s, clock.fn());
  ASSERT_TRUE(cache.put("a", response("a")));
  ASSERT_TRUE(cache.put("b", response("b"), 2s));  // e.g. the remaining TTL of an L2 entry
  clock.now += 1s;
  EXPECT_NE(cache.get("a"), nullptr);
  EXPECT_NE(cache.get("b"), nullptr);
  clock.now += 1s;
  EXPECT_EQ(cache.get("b"), nullptr);
  EXPECT_NE(cache.get("a"), nullptr);
  clock.now += 8s;
  EXPECT_EQ(cache.get("a"), nullptr);
  LruCache::Stats s = cache.stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_EQ(s.expirations, 2u);
  EXPECT_EQ(s.evictions, 0u);
}

TEST(LruCacheTest, ConcurrentUseKeepsAccountsExact) {
  LruCache cache(64 << 10, 1h);
  std::vector<std::thread> threads;
  threads.reserve(4);
  std::atomic<int> hits{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::string key = "k" + std::to_string((i * 7 + t) % 300);
        if (cache.get(key) != nullptr) {
          ++hits;
        } else {
          cache.put(key, response(std::string(100, 'a' + t)));
          // Read it back at once: the cyclic keys alone thrash the LRU when the threads
          // happen to run one after another (a loaded machine), leaving no hit at all.
          if (cache.get(key) != nullptr) ++hits;
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  LruCache::Stats s = cache.stats();
  EXPECT_LE(s.bytes, cache.max_bytes());
  EXPECT_GT(s.evictions, 0u);
  EXPECT_GT(hits.load(), 0);
  // Emptying the cache returns every charged byte.
  for (int k = 0; k < 300; ++k)
    cache.erase("k" + std::to_string(k));
  EXPECT_EQ(cache.stats().bytes, 0u);
  EXPECT_EQ(cache.stats().entries, 0u);
}

}  // namespace
}  // namespace bw::cache
