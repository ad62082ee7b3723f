// rope_write_kv and paged_attention against dense references computed from contiguous
// K/V in double: ragged batches mixing decode tokens with long caches, prefill chunks on
// a cached prefix, a chunk of exactly block_size, lengths crossing block boundaries,
// shuffled non-contiguous block ids, block sizes 1, 4 and 16, GQA, rotary_dim < head_dim,
// every cache dtype; untouched cache slots must keep their NaN poison.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/rope.h"
#include "cpu_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::Stored;

struct SeqSpec {
  int q_len;
  int kv_len;
};

// The decode / prefill mix every test uses: (q_len, kv_len) per sequence.
std::vector<SeqSpec> mixed_specs(int block_size) {
  return {{1, 37},                       // decode with a long cache
          {7, 20},                       // prefill chunk on a cached prefix, crossing a block boundary
          {block_size, 2 * block_size},  // a chunk of exactly block_size after a prefix
          {19, 19},                      // a whole prompt
          {1, 1},                        // a one-token prompt
          {3, 3 + 2 * block_size - 1}};
}

// A batch layout as the model runner builds it, with shuffled block ids.
struct Batch {
  int block_size = 0;
  int num_blocks = 0;
  int table_width = 0;
  int num_tokens = 0;
  std::vector<SeqSpec> seqs;
  std::vector<int32_t> query_start, kv_lens, block_tables, positions, slot_mapping;
  std::vector<int32_t> seq_of_token;

  int64_t slot(int s, int pos) const {
    return static_cast<int64_t>(block_tables[s * table_width + pos / block_size]) * block_size + pos % block_size;
  }
  AttentionMetadata meta() {
    AttentionMetadata m;
    m.positions = test::i32_view(positions, {num_tokens});
    m.slot_mapping = test::i32_view(slot_mapping, {num_tokens});
    m.query_start = test::i32_view(query_start, {static_cast<int64_t>(seqs.size()) + 1});
    m.kv_lens = test::i32_view(kv_lens, {static_cast<int64_t>(seqs.size())});
    m.block_tables = test::i32_view(block_tables, {static_cast<int64_t>(seqs.size()), table_width});
    m.num_seqs = static_cast<int>(seqs.size());
    for (const auto& s : seqs) {
      m.max_query_len = std::max(m.max_query_len, s.q_len);
      m.max_kv_len = std::max(m.max_kv_len, s.kv_len);
    }
    return m;
  }
};

Batch make_batch(const std::vector<SeqSpec>& specs, int block_size, uint32_t seed, int position_offset = 0) {
  Batch b;
  b.block_size = block_size;
  b.seqs = specs;
  int total_blocks = 0;
  for (const auto& s : specs) {
    const int n = (s.kv_len + block_size - 1) / block_size;
    total_blocks += n;
    b.table_width = std::max(b.table_width, n + 1);  // + 1 padding column of -1
  }
  b.num_blocks = total_blocks + 5;  // spare blocks nobody uses
  std::vector<int32_t> ids(static_cast<size_t>(b.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  b.block_tables.assign(specs.size() * static_cast<size_t>(b.table_width), -1);
  size_t next = 0;
  b.query_start.push_back(0);
  for (size_t s = 0; s < specs.size(); ++s) {
    const int n = (specs[s].kv_len + block_size - 1) / block_size;
    for (int i = 0; i < n; ++i)
      b.block_tables[s * b.table_width + i] = ids[next++];
    b.query_start.push_back(b.query_start.back() + specs[s].q_len);
    b.kv_lens.push_back(specs[s].kv_len);
    for (int j = 0; j < specs[s].q_len; ++j) {
      const int pos = specs[s].kv_len - specs[s].q_len + j;
      b.positions.push_back(pos + position_offset);
      b.slot_mapping.push_back(static_cast<int32_t>(b.slot(static_cast<int>(s), pos)));
      b.seq_of_token.push_back(static_cast<int32_t>(s));
    }
  }
  b.num_tokens = b.query_start.back();
  return b;
}

struct Heads {
  int num_heads, num_kv_heads, head_dim;
  int width() const { return (num_heads + 2 * num_kv_heads) * head_dim; }
  AttentionParams params() const {
    return {num_heads, num_kv_heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim))};
  }
};

const Heads kHeadConfigs[] = {{4, 2, 16}, {6, 2, 20}, {2, 2, 8}, {8, 1, 64}};

// A poisoned cache layer: every element NaN in the cache dtype.
struct Cache {
  Stored k, v;
  Shape shape;
  Cache(const Batch& b, const Heads& h, DType dtype)
      : k(test::poisoned(static_cast<size_t>(b.num_blocks) * b.block_size * h.num_kv_heads * h.head_dim), dtype),
        v(k),
        shape{b.num_blocks, b.block_size, h.num_kv_heads, h.head_dim} {}
  KvCacheLayer layer() { return {k.view(shape), v.view(shape)}; }
};

// Rotates head vectors as HF does, in double, from the float32 angle HF computes.
void reference_rope(double* x, int head_dim, const std::vector<float>& inv_freq, int64_t pos) {
  const int half = static_cast<int>(inv_freq.size());
  for (int i = 0; i < half; ++i) {
    const double angle = rope_angle(pos, inv_freq[i]);
    const double c = std::cos(angle), s = std::sin(angle);
    const double x1 = x[i], x2 = x[i + half];
    x[i] = x1 * c - x2 * s;
    x[i + half] = x2 * c + x1 * s;
  }
  (void)head_dim;
}

// Dense causal attention in double. q [T, Hq, D]; k, v per sequence [kv_len, Hkv, D].
std::vector<double> reference_attention(const Batch& b, const Heads& h, const std::vector<double>& q,
                                        const std::vector<std::vector<double>>& k,
                                        const std::vector<std::vector<double>>& v) {
  const int d = h.head_dim, group = h.num_heads / h.num_kv_heads;
  const double scale = h.params().scale;
  std::vector<double> out(static_cast<size_t>(b.num_tokens) * h.num_heads * d, 0.0);
  for (int t = 0; t < b.num_tokens; ++t) {
    const int s = b.seq_of_token[t];
    const int j = t - b.query_start[s];
    const int window = b.seqs[s].kv_len - b.seqs[s].q_len + j + 1;
    for (int hq = 0; hq < h.num_heads; ++hq) {
      const int hk = hq / group;
      std::vector<double> scores(static_cast<size_t>(window));
      double max_score = -INFINITY;
      for (int p = 0; p < window; ++p) {
        double dot = 0.0;
        for (int i = 0; i < d; ++i)
          dot += q[(static_cast<size_t>(t) * h.num_heads + hq) * d + i] *
                 k[s][(static_cast<size_t>(p) * h.num_kv_heads + hk) * d + i];
        scores[p] = dot * scale;
        max_score = std::max(max_score, scores[p]);
      }
      double sum = 0.0;
      for (double& sc : scores)
        sum += (sc = std::exp(sc - max_score));
      for (int p = 0; p < window; ++p) {
        for (int i = 0; i < d; ++i) {
          out[(static_cast<size_t>(t) * h.num_heads + hq) * d + i] +=
              scores[p] / sum * v[s][(static_cast<size_t>(p) * h.num_kv_heads + hk) * d + i];
        }
      }
    }
  }
  return out;
}

// Per sequence: random K and V for every cached position, rounded to the cache dtype.
void random_kv(const Batch& b, const Heads& h, DType dtype, uint32_t seed, std::vector<std::vector<double>>* k,
               std::vector<std::vector<double>>* v) {
  const int row = h.num_kv_heads * h.head_dim;
  k->clear();
  v->clear();
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    Stored ks(test::random_floats(static_cast<size_t>(b.seqs[s].kv_len) * row, seed + 2 * s), dtype);
    Stored vs(test::random_floats(static_cast<size_t>(b.seqs[s].kv_len) * row, seed + 2 * s + 1), dtype);
    k->emplace_back(ks.values.begin(), ks.values.end());
    v->emplace_back(vs.values.begin(), vs.values.end());
  }
}

// Writes position p of sequence s (row of Hkv * D values) into the paged cache.
void put_kv(Cache& cache, const Batch& b, const Heads& h, int s, int p, const double* k_row, const double* v_row) {
  const int64_t row = static_cast<int64_t>(h.num_kv_heads) * h.head_dim;
  const int64_t base = b.slot(s, p) * row;
  for (int64_t i = 0; i < row; ++i) {
    cache.k.set(static_cast<size_t>(base + i), static_cast<float>(k_row[i]));
    cache.v.set(static_cast<size_t>(base + i), static_cast<float>(v_row[i]));
  }
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": unwritten or NaN at " << i;
    ASSERT_NEAR(got[i], want[i], tol) << what << " at " << i;
  }
}

TEST(CpuAttentionTest, PagedAttentionMatchesDenseCausalAttention) {
  CpuBackend backend(3);
  uint32_t seed = 10;
  for (int block_size : {1, 4, 16}) {
    for (const Heads& h : kHeadConfigs) {
      for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
        SCOPED_TRACE(testing::Message() << "block_size=" << block_size << " Hq=" << h.num_heads
                                        << " Hkv=" << h.num_kv_heads << " D=" << h.head_dim
                                        << " cache=" << test::dtype_str(dtype));
        Batch b = make_batch(mixed_specs(block_size), block_size, seed++);
        Cache cache(b, h, dtype);
        std::vector<std::vector<double>> k, v;
        random_kv(b, h, dtype, seed++, &k, &v);
        const int row = h.num_kv_heads * h.head_dim;
        for (size_t s = 0; s < b.seqs.size(); ++s) {
          for (int p = 0; p < b.seqs[s].kv_len; ++p) {
            put_kv(cache, b, h, static_cast<int>(s), p, &k[s][static_cast<size_t>(p) * row],
                   &v[s][static_cast<size_t>(p) * row]);
          }
        }
        std::vector<float> qkv = test::random_floats(static_cast<size_t>(b.num_tokens) * h.width(), seed++);
        std::vector<double> q;
        for (int t = 0; t < b.num_tokens; ++t) {
          for (int i = 0; i < h.num_heads * h.head_dim; ++i)
            q.push_back(qkv[static_cast<size_t>(t) * h.width() + i]);
        }
        std::vector<float> out = test::poisoned(static_cast<size_t>(b.num_tokens) * h.num_heads * h.head_dim);
        const Status st = backend.paged_attention(test::f32_view(out, {b.num_tokens, h.num_heads * h.head_dim}),
                                                  test::f32_view(qkv, {b.num_tokens, h.width()}), h.params(), b.meta(),
                                                  cache.layer());
        ASSERT_TRUE(st.ok()) << st.to_string();
        expect_close(out, reference_attention(b, h, q, k, v), 2e-5, "attention output");
      }
    }
  }
}

// Runs rope_write_kv on a fresh random qkv and checks qkv and every cache slot.
void check_rope_write_kv(CpuBackend& backend, int block_size, const Heads& h, int rotary_dim, const RopeParams& rope,
                         DType dtype, int position_offset, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "block_size=" << block_size << " D=" << h.head_dim << " rotary=" << rotary_dim
                                  << " cache=" << test::dtype_str(dtype) << " offset=" << position_offset);
  Batch b = make_batch(mixed_specs(block_size), block_size, seed, position_offset);
  b.slot_mapping[3] = -1;  // a token whose write is skipped
  Cache cache(b, h, dtype);
  const std::vector<uint8_t> poison = cache.k.bytes;
  std::vector<float> qkv = test::random_floats(static_cast<size_t>(b.num_tokens) * h.width(), seed + 1);
  const std::vector<float> original = qkv;
  RopeParams p = rope;
  p.rotary_dim = rotary_dim;
  const Status st =
      backend.rope_write_kv(test::f32_view(qkv, {b.num_tokens, h.width()}), h.params(), p, b.meta(), cache.layer());
  ASSERT_TRUE(st.ok()) << st.to_string();

  const std::vector<float> inv_freq = rope_inv_freq(p);
  const int d = h.head_dim, row = h.num_kv_heads * d, q_width = h.num_heads * d;
  std::vector<bool> written(static_cast<size_t>(b.num_blocks) * block_size, false);
  for (int t = 0; t < b.num_tokens; ++t) {
    const float* in = &original[static_cast<size_t>(t) * h.width()];
    const float* got = &qkv[static_cast<size_t>(t) * h.width()];
    std::vector<double> want(in, in + h.width());
    for (int head = 0; head < h.num_heads + h.num_kv_heads; ++head) {
      reference_rope(&want[static_cast<size_t>(head) * d], d, inv_freq, b.positions[t]);
    }
    for (int i = 0; i < h.width(); ++i) {
      const int dim = i % d;
      if (i >= q_width + row || dim >= rotary_dim) {
        ASSERT_EQ(got[i], in[i]) << "t=" << t << " i=" << i << ": v and dims past rotary_dim are untouched";
      } else {
        ASSERT_NEAR(got[i], want[i], 4e-6) << "t=" << t << " i=" << i;
      }
    }
    if (b.slot_mapping[t] < 0) continue;
    written[b.slot_mapping[t]] = true;
    for (int i = 0; i < row; ++i) {
      const size_t at = static_cast<size_t>(b.slot_mapping[t]) * row + i;
      const double k_want = want[q_width + i];
      ASSERT_NEAR(cache.k.read(at), k_want, 4e-6 + test::dtype_epsilon(dtype) * std::fabs(k_want))
          << "cache k, t=" << t << " i=" << i;
      Stored v_want(std::vector<float>{in[q_width + row + i]}, dtype);
      ASSERT_EQ(cache.v.read(at), v_want.values[0]) << "cache v holds the raw v, t=" << t << " i=" << i;
    }
  }
  const size_t slot_bytes = static_cast<size_t>(row) * test::element_bytes(dtype);
  for (size_t slot = 0; slot < written.size(); ++slot) {
    if (written[slot]) continue;
    ASSERT_EQ(std::memcmp(cache.k.bytes.data() + slot * slot_bytes, poison.data() + slot * slot_bytes, slot_bytes), 0)
        << "k slot " << slot << " was not written by any token and must keep its poison";
    ASSERT_EQ(std::memcmp(cache.v.bytes.data() + slot * slot_bytes, poison.data() + slot * slot_bytes, slot_bytes), 0)
        << "v slot " << slot;
  }
}

TEST(CpuRopeKvTest, RotatesQAndKAndWritesCacheSlots) {
  CpuBackend backend(2);
  RopeParams plain;
  plain.theta = 10000.0f;
  RopeParams llama3;
  llama3.theta = 500000.0f;
  llama3.scaling.type = RopeScaling::Type::kLlama3;
  llama3.scaling.factor = 8.0f;
  uint32_t seed = 500;
  for (int block_size : {1, 16}) {
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      check_rope_write_kv(backend, block_size, {4, 2, 16}, 16, plain, dtype, 0, seed++);
      check_rope_write_kv(backend, block_size, {6, 2, 20}, 12, plain, dtype, 0, seed++);  // rotary_dim < head_dim
      check_rope_write_kv(backend, block_size, {8, 1, 64}, 64, llama3, dtype, 70000, seed++);
    }
  }
}

TEST(CpuAttentionTest, RopeWriteKvThenPagedAttentionMatchDenseReference) {
  CpuBackend backend(2);
  RopeParams rope;
  rope.theta = 10000.0f;
  uint32_t seed = 900;
  for (int block_size : {1, 16}) {
    for (const Heads& h : kHeadConfigs) {
      for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
        SCOPED_TRACE(testing::Message() << "block_size=" << block_size << " D=" << h.head_dim
                                        << " cache=" << test::dtype_str(dtype));
        rope.rotary_dim = h.head_dim == 20 ? 12 : h.head_dim;
        Batch b = make_batch(mixed_specs(block_size), block_size, seed++);
        Cache cache(b, h, dtype);
        const std::vector<float> inv_freq = rope_inv_freq(rope);
        const int d = h.head_dim, row = h.num_kv_heads * d, q_width = h.num_heads * d;
        // Dense rotated K and raw V for every position; the cached prefix goes straight
        // into the cache (an earlier step wrote it), this step's tokens through the op.
        std::vector<std::vector<double>> k, v;
        random_kv(b, h, DType::kF32, seed++, &k, &v);
        std::vector<float> qkv(static_cast<size_t>(b.num_tokens) * h.width());
        std::vector<double> q(static_cast<size_t>(b.num_tokens) * q_width);
        for (size_t s = 0; s < b.seqs.size(); ++s) {
          const int prefix = b.seqs[s].kv_len - b.seqs[s].q_len;
          for (int p = 0; p < b.seqs[s].kv_len; ++p) {
            double* kr = &k[s][static_cast<size_t>(p) * row];
            double* vr = &v[s][static_cast<size_t>(p) * row];
            if (p >= prefix) {  // a new token: its raw k and v enter through qkv
              const int t = b.query_start[s] + p - prefix;
              for (int i = 0; i < row; ++i) {
                qkv[static_cast<size_t>(t) * h.width() + q_width + i] = static_cast<float>(kr[i]);
                qkv[static_cast<size_t>(t) * h.width() + q_width + row + i] = static_cast<float>(vr[i]);
              }
            }
            for (int head = 0; head < h.num_kv_heads; ++head)
              reference_rope(kr + head * d, d, inv_freq, p);
            Stored kr_stored(std::vector<float>(kr, kr + row), dtype),
                vr_stored(std::vector<float>(vr, vr + row), dtype);
            for (int i = 0; i < row; ++i) {
              kr[i] = kr_stored.values[i];
              vr[i] = vr_stored.values[i];
            }
            if (p < prefix) put_kv(cache, b, h, static_cast<int>(s), p, kr, vr);
          }
        }
        const std::vector<float> q_raw = test::random_floats(q.size(), seed++);
        for (int t = 0; t < b.num_tokens; ++t) {
          for (int i = 0; i < q_width; ++i) {
            qkv[static_cast<size_t>(t) * h.width() + i] = q_raw[static_cast<size_t>(t) * q_width + i];
            q[static_cast<size_t>(t) * q_width + i] = q_raw[static_cast<size_t>(t) * q_width + i];
          }
          for (int head = 0; head < h.num_heads; ++head) {
            reference_rope(&q[static_cast<size_t>(t) * q_width + head * d], d, inv_freq, b.positions[t]);
          }
        }
        AttentionMetadata meta = b.meta();
        const TensorView qkv_view = test::f32_view(qkv, {b.num_tokens, h.width()});
        ASSERT_TRUE(backend.rope_write_kv(qkv_view, h.params(), rope, meta, cache.layer()).ok());
        std::vector<float> out = test::poisoned(static_cast<size_t>(b.num_tokens) * q_width);
        const Status st = backend.paged_attention(test::f32_view(out, {b.num_tokens, q_width}), qkv_view, h.params(),
                                                  meta, cache.layer());
        ASSERT_TRUE(st.ok()) << st.to_string();
        expect_close(out, reference_attention(b, h, q, k, v), 2e-5 + 2 * test::dtype_epsilon(dtype), "attention");
      }
    }
  }
}

TEST(CpuDeterminismTest, AttentionIsBitIdenticalAcrossThreadCounts) {
  CpuBackend one(1), four(4);
  const Heads h{8, 2, 64};
  RopeParams rope;
  rope.rotary_dim = 64;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Batch b = make_batch({{1, 300}, {40, 90}, {1, 17}, {64, 64}}, 16, 4242);
    Cache cache(b, h, dtype);
    std::vector<std::vector<double>> k, v;
    random_kv(b, h, dtype, 99, &k, &v);
    const int row = h.num_kv_heads * h.head_dim;
    for (size_t s = 0; s < b.seqs.size(); ++s) {
      for (int p = 0; p < b.seqs[s].kv_len; ++p) {
        put_kv(cache, b, h, static_cast<int>(s), p, &k[s][static_cast<size_t>(p) * row],
               &v[s][static_cast<size_t>(p) * row]);
      }
    }
    std::vector<float> qkv = test::random_floats(static_cast<size_t>(b.num_tokens) * h.width(), 7);
    const size_t n = static_cast<size_t>(b.num_tokens) * h.num_heads * h.head_dim;
    std::vector<float> a = test::poisoned(n), c = test::poisoned(n);
    const TensorView qkv_view = test::f32_view(qkv, {b.num_tokens, h.width()});
    ASSERT_TRUE(one.paged_attention(test::f32_view(a, {b.num_tokens, h.num_heads * h.head_dim}), qkv_view, h.params(),
                                    b.meta(), cache.layer())
                    .ok());
    ASSERT_TRUE(four.paged_attention(test::f32_view(c, {b.num_tokens, h.num_heads * h.head_dim}), qkv_view, h.params(),
                                     b.meta(), cache.layer())
                    .ok());
    EXPECT_EQ(std::memcmp(a.data(), c.data(), n * sizeof(float)), 0) << test::dtype_str(dtype);
  }
}

// A small valid batch for the error tests; each test breaks one thing.
struct ErrorSetup {
  Heads h{4, 2, 8};
  Batch b = make_batch({{1, 9}, {3, 3}}, 4, 1);
  Cache cache{b, h, DType::kF32};
  std::vector<float> qkv = test::random_floats(static_cast<size_t>(b.num_tokens) * h.width(), 2);
  std::vector<float> out = test::poisoned(static_cast<size_t>(b.num_tokens) * h.num_heads * h.head_dim);
  RopeParams rope;

  ErrorSetup() { rope.rotary_dim = h.head_dim; }
  TensorView qkv_view() { return test::f32_view(qkv, {b.num_tokens, h.width()}); }
  TensorView out_view() { return test::f32_view(out, {b.num_tokens, h.num_heads * h.head_dim}); }
  Status attention() { return attention(b.meta(), h.params()); }
  Status attention(const AttentionMetadata& meta, const AttentionParams& params) {
    CpuBackend backend(2);
    return backend.paged_attention(out_view(), qkv_view(), params, meta, cache.layer());
  }
  // rope_write_kv must fail and leave qkv and the cache as they were.
  void expect_rope_rejected(const AttentionMetadata& meta, const RopeParams& r, const char* what) {
    const std::vector<float> qkv_before = qkv;
    const std::vector<uint8_t> k_before = cache.k.bytes;
    CpuBackend backend(2);
    const Status st = backend.rope_write_kv(qkv_view(), h.params(), r, meta, cache.layer());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << what << ": " << st.to_string();
    EXPECT_EQ(std::memcmp(qkv.data(), qkv_before.data(), qkv.size() * sizeof(float)), 0) << what;
    EXPECT_EQ(cache.k.bytes, k_before) << what;
  }
};

TEST(CpuAttentionTest, ValidSetupRuns) {
  ErrorSetup e;
  EXPECT_TRUE(e.attention().ok());
}

TEST(CpuAttentionTest, RejectsBadBlockTablesAndLengths) {
  {
    ErrorSetup e;
    e.b.block_tables[1] = e.b.num_blocks;  // block id past num_blocks
    const Status st = e.attention();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("block_tables[0, 1]"), std::string::npos) << st.message();
  }
  {
    ErrorSetup e;
    e.b.block_tables[0] = -1;
    EXPECT_EQ(e.attention().code(), StatusCode::kInvalidArgument);
  }
  {
    ErrorSetup e;
    e.b.kv_lens[1] = 2;  // fewer cached tokens than query tokens
    EXPECT_EQ(e.attention().code(), StatusCode::kInvalidArgument);
  }
  {
    ErrorSetup e;
    e.b.kv_lens[0] = e.b.table_width * e.b.block_size + 1;  // needs more blocks than the table has
    EXPECT_EQ(e.attention().code(), StatusCode::kInvalidArgument);
  }
  {
    ErrorSetup e;
    e.b.query_start[2] = 3;  // does not cover the 4 tokens
    EXPECT_EQ(e.attention().code(), StatusCode::kInvalidArgument);
  }
  {
    ErrorSetup e;
    e.b.query_start[1] = 5;  // decreasing
    EXPECT_EQ(e.attention().code(), StatusCode::kInvalidArgument);
  }
  {
    ErrorSetup e;
    AttentionMetadata meta = e.b.meta();
    meta.num_seqs = 3;
    EXPECT_EQ(e.attention(meta, e.h.params()).code(), StatusCode::kInvalidArgument);
  }
  {
    ErrorSetup e;
    AttentionMetadata meta = e.b.meta();
    meta.kv_lens.dtype = DType::kI64;
    EXPECT_EQ(e.attention(meta, e.h.params()).code(), StatusCode::kInvalidArgument);
  }
}

TEST(CpuAttentionTest, RejectsMismatchedShapes) {
  ErrorSetup e;
  CpuBackend backend(1);
  AttentionParams p = e.h.params();
  p.num_kv_heads = 3;  // 4 % 3 != 0
  EXPECT_EQ(e.attention(e.b.meta(), p).code(), StatusCode::kInvalidArgument);
  p = e.h.params();
  p.head_dim = 16;  // qkv width no longer matches
  EXPECT_EQ(e.attention(e.b.meta(), p).code(), StatusCode::kInvalidArgument);
  const TensorView wrong_out = test::f32_view(e.out, {e.b.num_tokens, e.h.head_dim});
  EXPECT_EQ(backend.paged_attention(wrong_out, e.qkv_view(), e.h.params(), e.b.meta(), e.cache.layer()).code(),
            StatusCode::kInvalidArgument);
  KvCacheLayer layer = e.cache.layer();
  layer.v.dtype = DType::kF16;  // k and v disagree
  EXPECT_EQ(backend.paged_attention(e.out_view(), e.qkv_view(), e.h.params(), e.b.meta(), layer).code(),
            StatusCode::kInvalidArgument);
  layer = e.cache.layer();
  layer.k.shape = Shape{e.b.num_blocks, e.b.block_size, 1, 16};
  layer.v.shape = layer.k.shape;
  EXPECT_EQ(backend.paged_attention(e.out_view(), e.qkv_view(), e.h.params(), e.b.meta(), layer).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.rope_write_kv(e.qkv_view(), e.h.params(), e.rope, e.b.meta(), layer).code(),
            StatusCode::kInvalidArgument);
}

TEST(CpuRopeKvTest, RejectsBadSlotsPositionsAndRotaryDims) {
  {
    ErrorSetup e;
    e.b.slot_mapping[2] = e.b.num_blocks * e.b.block_size;  // one past the last slot
    e.expect_rope_rejected(e.b.meta(), e.rope, "slot past the cache");
  }
  {
    ErrorSetup e;
    e.b.slot_mapping[0] = -2;
    e.expect_rope_rejected(e.b.meta(), e.rope, "slot below -1");
  }
  {
    ErrorSetup e;
    e.b.positions[3] = -1;
    e.expect_rope_rejected(e.b.meta(), e.rope, "negative position");
  }
  for (int rotary_dim : {0, 3, 10, -2}) {
    ErrorSetup e;
    RopeParams r = e.rope;
    r.rotary_dim = rotary_dim;
    e.expect_rope_rejected(e.b.meta(), r, "rotary_dim");
  }
  {
    ErrorSetup e;
    AttentionMetadata meta = e.b.meta();
    meta.positions = test::i32_view(e.b.positions, {e.b.num_tokens - 1});
    e.expect_rope_rejected(meta, e.rope, "positions of the wrong length");
  }
}

}  // namespace
}  // namespace bw
