// Batch invariance of the CPU backend, bit for bit (no tolerance): the engine
// mixes decode tokens and prefill chunks of many sequences in one forward pass and
// recomputes preempted sequences as prefill, and a sequence's tokens must come out the
// same whatever else is in the batch, however its prompt was chunked, and whichever
// thread count runs it.
//  - matmul: row r of a call with M rows (any rows around it) equals the call on that row
//    alone (M = 1), across the GEMV and blocked paths, K blocks, task tiles, K % 8 tails.
//  - A whole decoder layer (embedding, rms_norm, matmul with bias, rope_write_kv,
//    paged_attention with GQA, add_rms_norm, silu_mul, add): every token's rows are the
//    same when its sequence runs as one prefill, in chunks of 5, token by token, inside
//    mixed batches of other sequences with rotating order and varying chunks, and when
//    it is preempted and recomputed as a prefill into other cache blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "cpu_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::poisoned;
using test::Stored;

// Index of the first float that differs bitwise, or -1.
int64_t first_bit_difference(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) return i;
  }
  return -1;
}

// --- matmul ----------------------------------------------------------------------------

TEST(CpuBatchInvarianceTest, MatmulRowDoesNotDependOnTheRowsAroundIt) {
  CpuBackend one(1), four(4);
  constexpr int64_t kPoolRows = 160;  // rows of x that calls take windows of
  uint32_t seed = 31;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t k : {7, 8, 64, 200, 1037}) {
      for (int64_t n : {13, 70, 131}) {
        const bool with_bias = (k + n) % 2 == 1;
        SCOPED_TRACE(testing::Message() << "w=" << test::dtype_str(dt) << " K=" << k << " N=" << n
                                        << " bias=" << with_bias);
        const std::vector<float> x = test::random_floats(static_cast<size_t>(kPoolRows * k), seed++);
        Stored w(test::random_floats(static_cast<size_t>(n * k), seed++), dt);
        Stored bias(test::random_floats(static_cast<size_t>(n), seed++), dt);
        const TensorView bias_view = with_bias ? bias.view({n}) : TensorView();
        // Each row alone: the reference.
        std::vector<float> alone = poisoned(static_cast<size_t>(kPoolRows * n));
        for (int64_t r = 0; r < kPoolRows; ++r) {
          ASSERT_TRUE(one.matmul(TensorView(alone.data() + r * n, DType::kF32, Shape{1, n}),
                                 TensorView(const_cast<float*>(x.data()) + r * k, DType::kF32, Shape{1, k}),
                                 w.view({n, k}), bias_view)
                          .ok());
        }
        for (CpuBackend* backend : {&one, &four}) {
          for (int64_t m : {1, 2, 3, 4, 5, 15, 16, 17, 33, 100}) {
            // Two windows: rows [0, m) and rows ending at the last row of the pool.
            for (int64_t first : {int64_t{0}, kPoolRows - m}) {
              std::vector<float> out = poisoned(static_cast<size_t>(m * n));
              ASSERT_TRUE(backend
                              ->matmul(test::f32_view(out, {m, n}),
                                       TensorView(const_cast<float*>(x.data()) + first * k, DType::kF32, Shape{m, k}),
                                       w.view({n, k}), bias_view)
                              .ok());
              for (int64_t r = 0; r < m; ++r) {
                const int64_t i = first_bit_difference(out.data() + r * n, alone.data() + (first + r) * n, n);
                ASSERT_EQ(i, -1) << "threads=" << backend->num_threads() << " M=" << m << " row " << first + r
                                 << " column " << i << ": " << out[r * n + i] << " in the batch vs "
                                 << alone[(first + r) * n + i] << " alone";
              }
            }
          }
        }
      }
    }
  }
}

// --- A decoder layer over a paged cache ------------------------------------------------

constexpr int kHidden = 100;  // K % 8 == 4: every matmul but the attention output has a tail
constexpr int kNumHeads = 4;
constexpr int kNumKvHeads = 2;  // GQA: 2 query heads per KV head
constexpr int kHeadDim = 72;    // 64 + 8: every vector loop of attention and a remainder
constexpr int kFfn = 60;
constexpr int kVocab = 50;
constexpr int kQWidth = kNumHeads * kHeadDim;
constexpr int kQkvWidth = (kNumHeads + 2 * kNumKvHeads) * kHeadDim;
constexpr int kKvWidth = kNumKvHeads * kHeadDim;
constexpr float kEps = 1e-5f;

// Weights of the layer, stored as one dtype.
struct LayerWeights {
  Stored table, norm1, w_qkv, b_qkv, w_o, norm2, w_gate_up, w_down;
  explicit LayerWeights(DType dt, uint32_t seed)
      : table(test::random_floats(kVocab * kHidden, seed), dt),
        norm1(test::random_floats(kHidden, seed + 1, 0.5f, 1.5f), dt),
        w_qkv(test::random_floats(static_cast<size_t>(kQkvWidth) * kHidden, seed + 2, -0.2f, 0.2f), dt),
        b_qkv(test::random_floats(kQkvWidth, seed + 3, -0.5f, 0.5f), dt),
        w_o(test::random_floats(static_cast<size_t>(kHidden) * kQWidth, seed + 4, -0.1f, 0.1f), dt),
        norm2(test::random_floats(kHidden, seed + 5, 0.5f, 1.5f), dt),
        w_gate_up(test::random_floats(2 * kFfn * kHidden, seed + 6, -0.2f, 0.2f), dt),
        w_down(test::random_floats(kHidden * kFfn, seed + 7, -0.2f, 0.2f), dt) {}
};

// One token's rows after the layer: the rotated qkv, the attention output and the layer
// output (residual + MLP).
struct TokenRows {
  std::vector<float> qkv, attn, out;
};

// A sequence: its token ids and, per computed position, the rows of the reference run.
struct Sequence {
  std::vector<int32_t> ids;
  std::vector<int32_t> blocks;  // this run's block table
};

// One chunk of a step: tokens [start, start + count) of sequence `seq`.
struct Chunk {
  int seq, start, count;
};

// Runs steps of the layer on a backend with a paged cache and records every computed
// token's rows (recomputed tokens are compared on the spot against the first result).
class LayerRunner {
 public:
  LayerRunner(CpuBackend& backend, LayerWeights& w, DType cache_dtype, int block_size,
              const std::vector<std::vector<int32_t>>& ids, uint32_t block_seed)
      : backend_(backend),
        w_(w),
        block_size_(block_size),
        cache_k_(poisoned(static_cast<size_t>(kNumBlocks) * block_size * kKvWidth), cache_dtype),
        cache_v_(cache_k_),
        free_blocks_(kNumBlocks),
        rows_(ids.size()) {
    std::iota(free_blocks_.begin(), free_blocks_.end(), 0);
    std::shuffle(free_blocks_.begin(), free_blocks_.end(), std::mt19937(block_seed));
    for (const auto& s : ids) {
      seqs_.push_back({s, {}});
      rows_[seqs_.size() - 1].resize(s.size());
    }
    rope_.theta = 10000.0f;
    rope_.rotary_dim = kHeadDim;
  }

  // Drops a sequence's cache (preemption): its next chunk must start at 0 and gets
  // fresh blocks.
  void preempt(int seq) { seqs_[static_cast<size_t>(seq)].blocks.clear(); }

  const std::vector<std::vector<TokenRows>>& rows() const { return rows_; }

  // Runs one forward step over `chunks`, in that order.
  void step(const std::vector<Chunk>& chunks) {
    const int num_seqs = static_cast<int>(chunks.size());
    std::vector<int32_t> ids, positions, slots, query_start = {0}, kv_lens;
    int table_width = 1;
    for (const Chunk& c : chunks) {
      Sequence& s = seqs_[static_cast<size_t>(c.seq)];
      const int kv_len = c.start + c.count;
      while (static_cast<int>(s.blocks.size()) * block_size_ < kv_len) {
        ASSERT_FALSE(free_blocks_.empty());
        s.blocks.push_back(free_blocks_.back());
        free_blocks_.pop_back();
      }
      table_width = std::max(table_width, static_cast<int>(s.blocks.size()));
      for (int p = c.start; p < kv_len; ++p) {
        ids.push_back(s.ids[static_cast<size_t>(p)]);
        positions.push_back(p);
        slots.push_back(s.blocks[static_cast<size_t>(p / block_size_)] * block_size_ + p % block_size_);
      }
      query_start.push_back(query_start.back() + c.count);
      kv_lens.push_back(kv_len);
    }
    std::vector<int32_t> tables(static_cast<size_t>(num_seqs) * table_width, -1);
    for (int i = 0; i < num_seqs; ++i) {
      const auto& blocks = seqs_[static_cast<size_t>(chunks[static_cast<size_t>(i)].seq)].blocks;
      std::copy(blocks.begin(), blocks.end(), tables.begin() + static_cast<ptrdiff_t>(i) * table_width);
    }
    const int64_t t = query_start.back();
    AttentionMetadata meta;
    meta.positions = test::i32_view(positions, {t});
    meta.slot_mapping = test::i32_view(slots, {t});
    meta.query_start = test::i32_view(query_start, {num_seqs + 1});
    meta.kv_lens = test::i32_view(kv_lens, {num_seqs});
    meta.block_tables = test::i32_view(tables, {num_seqs, table_width});
    meta.num_seqs = num_seqs;
    const Shape cache_shape{kNumBlocks, block_size_, kNumKvHeads, kHeadDim};
    const KvCacheLayer cache{cache_k_.view(cache_shape), cache_v_.view(cache_shape)};
    const AttentionParams attn{kNumHeads, kNumKvHeads, kHeadDim, 1.0f / std::sqrt(static_cast<float>(kHeadDim))};

    auto buf = [&](int64_t width) { return poisoned(static_cast<size_t>(t * width)); };
    std::vector<float> x = buf(kHidden), h = buf(kHidden), qkv = buf(kQkvWidth), att = buf(kQWidth), o = buf(kHidden),
                       h2 = buf(kHidden), gu = buf(2 * kFfn), act = buf(kFfn), down = buf(kHidden), y = buf(kHidden);
    auto v = [&](std::vector<float>& b, int64_t width) { return test::f32_view(b, {t, width}); };
    LayerWeights& w = w_;
    ASSERT_TRUE(backend_.embedding(v(x, kHidden), w.table.view({kVocab, kHidden}), test::i32_view(ids, {t})).ok());
    ASSERT_TRUE(backend_.rms_norm(v(h, kHidden), v(x, kHidden), w.norm1.view({kHidden}), kEps).ok());
    ASSERT_TRUE(
        backend_.matmul(v(qkv, kQkvWidth), v(h, kHidden), w.w_qkv.view({kQkvWidth, kHidden}), w.b_qkv.view({kQkvWidth}))
            .ok());
    ASSERT_TRUE(backend_.rope_write_kv(v(qkv, kQkvWidth), attn, rope_, meta, cache).ok());
    ASSERT_TRUE(backend_.paged_attention(v(att, kQWidth), v(qkv, kQkvWidth), attn, meta, cache).ok());
    ASSERT_TRUE(backend_.matmul(v(o, kHidden), v(att, kQWidth), w.w_o.view({kHidden, kQWidth}), TensorView()).ok());
    // x becomes the residual stream.
    ASSERT_TRUE(
        backend_.add_rms_norm(v(h2, kHidden), v(x, kHidden), v(o, kHidden), w.norm2.view({kHidden}), kEps).ok());
    ASSERT_TRUE(
        backend_.matmul(v(gu, 2 * kFfn), v(h2, kHidden), w.w_gate_up.view({2 * kFfn, kHidden}), TensorView()).ok());
    ASSERT_TRUE(backend_.silu_mul(v(act, kFfn), v(gu, 2 * kFfn)).ok());
    ASSERT_TRUE(backend_.matmul(v(down, kHidden), v(act, kFfn), w.w_down.view({kHidden, kFfn}), TensorView()).ok());
    ASSERT_TRUE(backend_.add(v(y, kHidden), v(x, kHidden), v(down, kHidden)).ok());

    int64_t token = 0;
    for (const Chunk& c : chunks) {
      for (int p = c.start; p < c.start + c.count; ++p, ++token) {
        TokenRows got;
        got.qkv.assign(qkv.begin() + token * kQkvWidth, qkv.begin() + (token + 1) * kQkvWidth);
        got.attn.assign(att.begin() + token * kQWidth, att.begin() + (token + 1) * kQWidth);
        got.out.assign(y.begin() + token * kHidden, y.begin() + (token + 1) * kHidden);
        TokenRows& slot = rows_[static_cast<size_t>(c.seq)][static_cast<size_t>(p)];
        if (slot.out.empty()) {
          slot = std::move(got);
        } else {  // a recomputed token
          expect_same_rows(got, slot, c.seq, p, "recomputed");
        }
      }
    }
  }

  static void expect_same_rows(const TokenRows& got, const TokenRows& want, int seq, int pos, const char* what) {
    const struct {
      const char* name;
      const std::vector<float>& a;
      const std::vector<float>& b;
    } parts[] = {
        {"qkv (rotated)", got.qkv, want.qkv}, {"attention", got.attn, want.attn}, {"layer out", got.out, want.out}};
    for (const auto& part : parts) {
      ASSERT_EQ(part.a.size(), part.b.size()) << what << " seq " << seq << " pos " << pos << ": not computed";
      const int64_t i = first_bit_difference(part.a.data(), part.b.data(), static_cast<int64_t>(part.a.size()));
      ASSERT_EQ(i, -1) << what << ": seq " << seq << " pos " << pos << " " << part.name << "[" << i
                       << "] = " << part.a[static_cast<size_t>(i)] << ", reference " << part.b[static_cast<size_t>(i)];
    }
  }

 private:
  static constexpr int kNumBlocks = 64;

  CpuBackend& backend_;
  LayerWeights& w_;
  int block_size_;
  Stored cache_k_, cache_v_;
  std::vector<int32_t> free_blocks_;
  std::vector<Sequence> seqs_;
  std::vector<std::vector<TokenRows>> rows_;
  RopeParams rope_;
};

// A schedule: the steps of one way of running all sequences to their full length.
struct Schedule {
  std::string name;
  std::vector<std::vector<Chunk>> steps;
  std::vector<std::pair<int, int>> preempt_before;  // (step, seq): drop seq's cache before step
};

// Each sequence alone, in chunks of `chunk` tokens.
Schedule alone_in_chunks(const std::vector<int>& lengths, int chunk, const std::string& name) {
  Schedule s{name, {}, {}};
  for (int seq = 0; seq < static_cast<int>(lengths.size()); ++seq) {
    for (int start = 0; start < lengths[static_cast<size_t>(seq)]; start += chunk)
      s.steps.push_back({{seq, start, std::min(chunk, lengths[static_cast<size_t>(seq)] - start)}});
  }
  return s;
}

// Continuous batching: every step, each unfinished sequence takes its next chunk size
// from its own pattern (1 = a decode step), in an order that rotates every step.
Schedule mixed(const std::vector<int>& lengths, const std::vector<std::vector<int>>& patterns) {
  Schedule s{"mixed batches", {}, {}};
  const int num_seqs = static_cast<int>(lengths.size());
  std::vector<int> done(static_cast<size_t>(num_seqs), 0), turn(static_cast<size_t>(num_seqs), 0);
  for (int step = 0;; ++step) {
    std::vector<Chunk> chunks;
    for (int i = 0; i < num_seqs; ++i) {
      const int seq = (i + step) % num_seqs;
      const auto& pattern = patterns[static_cast<size_t>(seq)];
      const int left = lengths[static_cast<size_t>(seq)] - done[static_cast<size_t>(seq)];
      if (left == 0) continue;
      const int n = std::min(left, pattern[static_cast<size_t>(turn[static_cast<size_t>(seq)]++) % pattern.size()]);
      chunks.push_back({seq, done[static_cast<size_t>(seq)], n});
      done[static_cast<size_t>(seq)] += n;
    }
    if (chunks.empty()) break;
    s.steps.push_back(std::move(chunks));
  }
  return s;
}

// Sequence 0 decodes token by token to `at`, is preempted, and is recomputed as one
// prefill of [0, at + 3) batched with the others' decode steps; then it decodes to the end.
Schedule preempt_and_recompute(const std::vector<int>& lengths, int at) {
  Schedule s{"preempt and recompute", {}, {}};
  s.steps.push_back({{1, 0, lengths[1]}, {2, 0, lengths[2] - 10}});
  for (int p = 0; p < at; ++p)
    s.steps.push_back({{0, p, 1}});
  s.preempt_before.emplace_back(static_cast<int>(s.steps.size()), 0);
  std::vector<Chunk> recompute = {{2, lengths[2] - 10, 1}, {0, 0, at + 3}};
  s.steps.push_back(recompute);
  int next2 = lengths[2] - 9;
  for (int p = at + 3; p < lengths[0]; ++p) {
    std::vector<Chunk> step = {{0, p, 1}};
    if (next2 < lengths[2]) step.insert(step.begin(), {2, next2++, 1});
    s.steps.push_back(step);
  }
  for (; next2 < lengths[2]; ++next2)
    s.steps.push_back({{2, next2, 1}});
  return s;
}

TEST(CpuBatchInvarianceTest, DecoderLayerRowsDoNotDependOnChunkingBatchOrThreads) {
  // L = 37 with blocks of 16 (the attention acceptance case), a short and a long sequence.
  const std::vector<int> lengths = {37, 21, 50};
  std::vector<std::vector<int32_t>> ids;
  std::mt19937 rng(5);
  for (int len : lengths) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& id : s)
      id = static_cast<int32_t>(rng() % kVocab);
    ids.push_back(s);
  }
  const std::vector<Schedule> schedules = {
      alone_in_chunks(lengths, 5, "chunks of 5"),
      alone_in_chunks(lengths, 1, "token by token"),
      alone_in_chunks(lengths, 17, "chunks of 17"),
      mixed(lengths, {{5, 1, 1, 13, 1}, {1, 7, 1, 1}, {20, 1, 3, 1, 1, 9}}),
      preempt_and_recompute(lengths, 30),
  };
  CpuBackend one(1), four(4);
  uint32_t seed = 700;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    LayerWeights weights(dt, seed);
    seed += 10;
    for (int block_size : {16, 7}) {
      SCOPED_TRACE(testing::Message() << "weights and cache " << test::dtype_str(dt) << ", block_size " << block_size);
      // The reference: each sequence as one whole-prompt prefill, alone, on one thread.
      LayerRunner reference(one, weights, dt, block_size, ids, seed++);
      for (int seq = 0; seq < static_cast<int>(lengths.size()); ++seq)
        reference.step({{seq, 0, lengths[static_cast<size_t>(seq)]}});
      ASSERT_FALSE(testing::Test::HasFatalFailure());
      for (CpuBackend* backend : {&one, &four}) {
        for (const Schedule& schedule : schedules) {
          SCOPED_TRACE(testing::Message() << schedule.name << ", threads " << backend->num_threads());
          LayerRunner run(*backend, weights, dt, block_size, ids, seed++);
          for (size_t i = 0; i < schedule.steps.size(); ++i) {
            for (const auto& [step, seq] : schedule.preempt_before) {
              if (step == static_cast<int>(i)) run.preempt(seq);
            }
            run.step(schedule.steps[i]);
            ASSERT_FALSE(testing::Test::HasFatalFailure());
          }
          for (size_t seq = 0; seq < lengths.size(); ++seq) {
            for (int p = 0; p < lengths[seq]; ++p) {
              LayerRunner::expect_same_rows(run.rows()[seq][static_cast<size_t>(p)],
                                            reference.rows()[seq][static_cast<size_t>(p)], static_cast<int>(seq), p,
                                            "vs whole prefill");
              ASSERT_FALSE(testing::Test::HasFatalFailure());
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace bw
