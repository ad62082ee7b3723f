// Randomised stress test of KvCacheManager: many requests with shared prefixes admitted,
// stepped (chunked prefill, decode), forked, preempted and finished at random, with every
// invariant checked after every operation. A shadow KV store records, for every slot the
// "runner" writes, a fingerprint of the whole token prefix up to that position (and the
// extra key), so a prefix hit or a shared block that would feed a request the wrong KV
// is caught, not just a bookkeeping slip.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kv/kv_cache_manager.h"

namespace bw {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

constexpr uint64_t kUnwritten = 0;

struct SimRequest {
  RequestId id = 0;
  std::vector<int32_t> tokens;
  std::vector<uint64_t> fingerprints;  // [p]: the KV a correct slot p holds
  std::string extra_key;
  int num_computed = 0;
  int num_scheduled = 0;  // slots allocated for the next step, not computed yet
  size_t max_tokens = 0;

  RequestTokens view() const { return {id, tokens, num_computed, extra_key}; }

  void push_token(int32_t token) {
    const uint64_t prev = fingerprints.empty() ? mix(std::hash<std::string>{}(extra_key)) : fingerprints.back();
    tokens.push_back(token);
    fingerprints.push_back(mix(prev ^ mix(static_cast<uint64_t>(token) + 1)) | 1);  // never kUnwritten
  }
};

struct StressParams {
  int block_size;
  int num_blocks;
};

void PrintTo(const StressParams& p, std::ostream* os) {
  *os << "block_size " << p.block_size << ", num_blocks " << p.num_blocks;
}

class KvCacheStressTest : public ::testing::TestWithParam<StressParams> {
 protected:
  void run(uint32_t seed, int num_ops);

  // Every check that holds between operations.
  void check_all(const char* op);

  int block_size() const { return GetParam().block_size; }
  int num_blocks() const { return GetParam().num_blocks; }

  std::mt19937 rng_;
  KvCacheManager* m_ = nullptr;
  std::vector<std::vector<uint64_t>> shadow_;  // [block][slot]
  std::vector<SimRequest> running_;
  std::deque<SimRequest> waiting_;
  RequestId next_id_ = 1;

  int64_t num_hits_ = 0;
  int64_t num_failed_allocations_ = 0;
  int64_t num_preemptions_ = 0;
  int64_t num_fork_copies_ = 0;
  int64_t num_finished_ = 0;
  int64_t num_evictions_ = 0;

  int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng_); }

  // The runner writes the KV of positions [num_computed, num_computed + num_scheduled).
  void compute(SimRequest& r) {
    const auto table = m_->block_table(r.id);
    for (int p = r.num_computed; p < r.num_computed + r.num_scheduled; ++p) {
      const int32_t block = table[p / block_size()];
      // A block being written is private to this request and not cached (shared blocks
      // are full and immutable; partial ones are never shared).
      ASSERT_EQ(m_->pool().ref_count(block), 1) << "request " << r.id << " writes shared block " << block;
      ASSERT_FALSE(m_->pool().block_hash(block).has_value()) << "request " << r.id << " writes cached block " << block;
      shadow_[block][p % block_size()] = r.fingerprints[p];
    }
    r.num_computed += r.num_scheduled;
    r.num_scheduled = 0;
    m_->commit_computed(r.view());
  }

  void preempt(size_t index) {
    SimRequest r = std::move(running_[index]);
    running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(index));
    m_->free(r.id);
    r.num_computed = 0;
    r.num_scheduled = 0;
    waiting_.push_front(std::move(r));
    ++num_preemptions_;
  }
};

void KvCacheStressTest::check_all(const char* op) {
  SCOPED_TRACE(op);
  const Status s = m_->check_invariants();
  ASSERT_TRUE(s.ok()) << s.to_string();
  // Ref counts recomputed from the simulation's own view of who holds what.
  std::vector<int> refs(num_blocks(), 0);
  for (const SimRequest& r : running_) {
    const auto table = m_->block_table(r.id);
    ASSERT_TRUE(m_->has_request(r.id));
    ASSERT_GE(static_cast<int64_t>(table.size()) * block_size(), r.num_computed + r.num_scheduled);
    ASSERT_EQ(m_->num_committed_tokens(r.id), r.num_computed);
    for (int32_t b : table)
      ++refs[b];
    // Nobody overwrote this request's computed KV.
    for (int p = 0; p < r.num_computed; ++p)
      ASSERT_EQ(shadow_[table[p / block_size()]][p % block_size()], r.fingerprints[p])
          << "request " << r.id << " position " << p;
  }
  for (const SimRequest& r : waiting_)
    ASSERT_FALSE(m_->has_request(r.id));
  int num_free = 0;
  for (int32_t b = 0; b < num_blocks(); ++b) {
    ASSERT_EQ(m_->pool().ref_count(b), refs[b]) << "block " << b;
    num_free += refs[b] == 0;
  }
  ASSERT_EQ(m_->num_free_blocks(), num_free);
  const KvCacheStats stats = m_->stats();
  ASSERT_EQ(stats.num_free_blocks + stats.num_used_blocks, num_blocks());
  ASSERT_LE(stats.num_cached_blocks, num_blocks());
}

void KvCacheStressTest::run(uint32_t seed, int num_ops) {
  rng_.seed(seed);
  KvCacheManager manager(KvCacheConfig{num_blocks(), block_size(), true});
  m_ = &manager;
  shadow_.assign(num_blocks(), std::vector<uint64_t>(block_size(), kUnwritten));

  // A few long "system prompts"; requests take a random prefix of one, then a suffix from a
  // tiny vocabulary so that equal blocks also arise by chance.
  std::vector<std::vector<int32_t>> bases(4);
  for (auto& base : bases)
    for (int i = 0; i < 40; ++i)
      base.push_back(rand_int(0, 999));
  const std::vector<std::string> extra_keys = {"", "", "", "lora:a", "mm:3f2a"};

  for (int op_index = 0; op_index < num_ops; ++op_index) {
    const int op = rand_int(0, 99);
    const char* op_name = "";
    if (op < 15) {
      op_name = "arrive";
      if (running_.size() + waiting_.size() >= 16) continue;
      SimRequest r;
      r.id = next_id_++;
      r.extra_key = extra_keys[rand_int(0, static_cast<int>(extra_keys.size()) - 1)];
      const auto& base = bases[rand_int(0, 3)];
      const int shared = rand_int(0, static_cast<int>(base.size()));
      for (int i = 0; i < shared; ++i)
        r.push_token(base[i]);
      for (int i = rand_int(1, 12); i > 0; --i)
        r.push_token(rand_int(0, 2));
      r.max_tokens = r.tokens.size() + rand_int(1, 10);
      waiting_.push_back(std::move(r));
    } else if (op < 35) {
      op_name = "admit";
      if (waiting_.empty()) continue;
      SimRequest& r = waiting_.front();
      ASSERT_EQ(r.num_computed, 0);
      const ComputedPrefix prefix = m_->find_cached_prefix(r.view());
      ASSERT_EQ(prefix.num_tokens, static_cast<int>(prefix.block_ids.size()) * block_size());
      ASSERT_LT(prefix.num_tokens, static_cast<int>(r.tokens.size()));
      // The hit blocks hold exactly this request's KV.
      for (int p = 0; p < prefix.num_tokens; ++p)
        ASSERT_EQ(shadow_[prefix.block_ids[p / block_size()]][p % block_size()], r.fingerprints[p])
            << "wrong prefix hit for request " << r.id << " at position " << p;
      const int chunk = rand_int(1, static_cast<int>(r.tokens.size()) - prefix.num_tokens);
      const int free_before = m_->num_free_blocks();
      const auto new_ids = m_->allocate_slots(r.view(), chunk, &prefix);
      if (!new_ids) {
        ++num_failed_allocations_;
        ASSERT_FALSE(m_->has_request(r.id));
        ASSERT_EQ(m_->num_free_blocks(), free_before);
      } else {
        num_hits_ += prefix.num_tokens > 0;
        const auto table = m_->block_table(r.id);
        ASSERT_EQ(table.size(), prefix.block_ids.size() + new_ids->size());
        ASSERT_TRUE(std::equal(prefix.block_ids.begin(), prefix.block_ids.end(), table.begin()));
        ASSERT_TRUE(std::equal(new_ids->begin(), new_ids->end(), table.begin() + prefix.block_ids.size()));
        r.num_computed = prefix.num_tokens;
        r.num_scheduled = chunk;
        running_.push_back(std::move(r));
        waiting_.pop_front();
      }
    } else if (op < 80) {
      op_name = "step";
      if (running_.empty()) continue;
      const size_t i = rand_int(0, static_cast<int>(running_.size()) - 1);
      SimRequest& r = running_[i];
      compute(r);
      if (HasFatalFailure()) return;
      if (r.num_computed == static_cast<int>(r.tokens.size())) {
        r.push_token(rand_int(0, 2));  // sampled
        if (r.tokens.size() >= r.max_tokens) {
          m_->free(r.id);
          running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
          ++num_finished_;
          check_all(op_name);
          if (HasFatalFailure()) return;
          continue;
        }
      }
      const int chunk = rand_int(1, static_cast<int>(r.tokens.size()) - r.num_computed);
      const std::vector<int32_t> table_before(m_->block_table(r.id).begin(), m_->block_table(r.id).end());
      if (const auto new_ids = m_->allocate_slots(r.view(), chunk)) {
        r.num_scheduled = chunk;
      } else {
        ++num_failed_allocations_;
        ASSERT_TRUE(std::equal(table_before.begin(), table_before.end(), m_->block_table(r.id).begin(),
                               m_->block_table(r.id).end()));
        preempt(i);
      }
    } else if (op < 88) {
      op_name = "fork";
      if (running_.empty() || running_.size() + waiting_.size() >= 16) continue;
      const SimRequest& parent = running_[rand_int(0, static_cast<int>(running_.size()) - 1)];
      SimRequest child;
      child.id = next_id_++;
      child.extra_key = parent.extra_key;
      for (int p = 0; p < parent.num_computed; ++p)
        child.push_token(parent.tokens[p]);
      child.push_token(rand_int(0, 2));  // the child samples its own next token
      child.num_computed = parent.num_computed;
      child.max_tokens = child.tokens.size() + rand_int(1, 6);
      const auto copies = m_->fork(parent.id, child.id);
      if (!copies) {
        ++num_failed_allocations_;
        ASSERT_FALSE(m_->has_request(child.id));
        continue;
      }
      ASSERT_LE(copies->size(), 1u);
      for (const BlockCopy& c : *copies) {  // the runner copies the partial tail
        shadow_[c.dst_block_id] = shadow_[c.src_block_id];
        ++num_fork_copies_;
      }
      if (m_->allocate_slots(child.view(), 1)) {
        child.num_scheduled = 1;
        running_.push_back(std::move(child));
      } else {
        ++num_failed_allocations_;
        m_->free(child.id);
      }
    } else if (op < 93) {
      op_name = "preempt";
      if (running_.empty()) continue;
      preempt(rand_int(0, static_cast<int>(running_.size()) - 1));
    } else if (op < 97) {
      op_name = "abort running";
      if (running_.empty()) continue;
      const size_t i = rand_int(0, static_cast<int>(running_.size()) - 1);
      m_->free(running_[i].id);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      op_name = "abort waiting";
      if (waiting_.empty()) continue;
      const size_t i = rand_int(0, static_cast<int>(waiting_.size()) - 1);
      m_->free(waiting_[i].id);  // a no-op: a waiting request holds no blocks
      waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    check_all(op_name);
    if (HasFatalFailure()) return;
  }

  // Everyone finishes: nothing leaks.
  for (const SimRequest& r : running_)
    m_->free(r.id);
  running_.clear();
  waiting_.clear();
  check_all("drain");
  EXPECT_EQ(m_->num_free_blocks(), num_blocks());
  num_evictions_ = m_->stats().num_evictions;
  for (int32_t b = 0; b < num_blocks(); ++b)
    EXPECT_EQ(m_->pool().ref_count(b), 0);
  m_ = nullptr;
}

TEST_P(KvCacheStressTest, RandomOperationsKeepEveryInvariant) {
  int64_t hits = 0, failures = 0, preemptions = 0, copies = 0, finished = 0, evictions = 0;
  for (uint32_t seed = 1; seed <= 8; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    num_hits_ = num_failed_allocations_ = num_preemptions_ = num_fork_copies_ = num_finished_ = 0;
    running_.clear();
    waiting_.clear();
    run(seed, 4000);
    if (HasFatalFailure()) return;
    hits += num_hits_;
    failures += num_failed_allocations_;
    preemptions += num_preemptions_;
    copies += num_fork_copies_;
    finished += num_finished_;
    evictions += num_evictions_;
  }
  // Every path was exercised.
  EXPECT_GT(hits, 100);
  EXPECT_GT(failures, 10);
  EXPECT_GT(preemptions, 10);
  EXPECT_GT(finished, 100);
  EXPECT_GT(evictions, 100);
  if (block_size() > 1) {
    EXPECT_GT(copies, 10);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, KvCacheStressTest,
                         ::testing::Values(StressParams{4, 40}, StressParams{1, 120}, StressParams{16, 12}),
                         [](const auto& info) {
                           return "block" + std::to_string(info.param.block_size) + "_pool" +
                                  std::to_string(info.param.num_blocks);
                         });

}  // namespace
}  // namespace bw
