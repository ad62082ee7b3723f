// The decode attention kernel (cuda_attention_decode.cu) against the CPU reference, on the
// cases its split-KV path has to get right: one long sequence split over many blocks,
// max_kv_len hints that are exact, a loose upper bound (as decode graphs pass), too small
// or zero; batches of mixed lengths with kv_len 1 and odd block sizes; and the arrival
// counters the last split block merges through, which must be left at zero after every
// call: the same call twice, a captured graph replayed twice and replayed after its
// kv_lens changed, and calls after one that reported a bad block id. Skips without a
// CUDA device. The bf16-activation, bf16-cache cases of shapes with at most 8 query heads
// per KV head at head_dim 64 or 128 (12/2, 28/4, 16/2 and the multi-head 4/4) run the
// tensor-core kernel; the others (f32, an f16 cache, 32/2, head_dim 16) the CUDA-core one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::SeqSpec;
using test::Stored;
using Batch = test::AttentionBatch;

struct HeadShape {
  int hq, hkv, d;
};

// The (activation, cache) dtype pairs the decode kernel is built for.
struct Types {
  DType act, cache;
};
constexpr Types kTypes[] = {{DType::kF32, DType::kF32}, {DType::kBF16, DType::kBF16}, {DType::kBF16, DType::kF16}};

class CudaDecodeAttentionTest : public test::CudaOpTest {
 protected:
  void SetUp() override { start({}); }

  // Random qkv and cache for batch b, uploaded; the CPU reads the same rounded values.
  struct Problem {
    AttentionParams params;
    DType act = DType::kF32;
    Shape cache_shape;
    Stored k, v;
    std::vector<float> qkv;  // [T, (Hq + 2 Hkv) * D], rounded to act
    KvCacheLayer gpu_cache;
    TensorView gpu_qkv;
  };
  Problem make(const HeadShape& c, Types t, const Batch& b, uint32_t seed) {
    Problem pr;
    pr.params = AttentionParams{c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
    pr.act = t.act;
    pr.cache_shape = Shape{b.num_blocks, b.block_size, c.hkv, c.d};
    const auto cache_elems = static_cast<size_t>(pr.cache_shape.numel());
    pr.k = Stored(test::random_floats(cache_elems, seed, -2, 2), t.cache);
    pr.v = Stored(test::random_floats(cache_elems, seed + 1), t.cache);
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.d;
    pr.qkv = Stored(test::random_floats(static_cast<size_t>(b.num_tokens * width), seed + 2, -2, 2), t.act).values;
    pr.gpu_cache = KvCacheLayer{upload(pr.k, pr.cache_shape), upload(pr.v, pr.cache_shape)};
    pr.gpu_qkv = upload(Stored(pr.qkv, t.act), {b.num_tokens, width});
    return pr;
  }
  Shape out_shape(const Problem& pr, const Batch& b) const {
    return {b.num_tokens, static_cast<int64_t>(pr.params.num_heads) * pr.params.head_dim};
  }
  std::vector<float> cpu_out(Problem& pr, Batch& b) {
    std::vector<float> ref(static_cast<size_t>(out_shape(pr, b).numel()));
    std::vector<float> q = pr.qkv;
    Stored k = pr.k, v = pr.v;
    KvCacheLayer cc{k.view(pr.cache_shape), v.view(pr.cache_shape)};
    const Status st = cpu_.paged_attention(test::f32_view(ref, out_shape(pr, b)), test::f32_view(q, pr.gpu_qkv.shape),
                                           pr.params, b.host_meta(), cc);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return ref;
  }
  // paged_attention into a NaN-poisoned output; the device must report no error.
  std::vector<float> gpu_out(Problem& pr, const Batch& b, const AttentionMetadata& m) {
    TensorView out = poisoned(pr.act, out_shape(pr, b));
    const Status st = gpu_->paged_attention(out, pr.gpu_qkv, pr.params, m, pr.gpu_cache);
    EXPECT_TRUE(st.ok()) << st.to_string();
    const Status sync = gpu_->synchronize();
    EXPECT_TRUE(sync.ok()) << sync.to_string();
    return download(out);
  }
  void expect_matches(const std::vector<float>& got, const std::vector<float>& want, DType act,
                      const std::string& what) {
    test::expect_close(got, want, act == DType::kF32 ? 2e-5 : 1e-2, act == DType::kF32 ? 1e-4 : 0x1p-7, what);
  }
  static std::string label(const HeadShape& c, Types t, const Batch& b, int hint) {
    return "hq" + std::to_string(c.hq) + " hkv" + std::to_string(c.hkv) + " d" + std::to_string(c.d) + " act " +
           test::dtype_str(t.act) + " cache " + test::dtype_str(t.cache) + " bs" + std::to_string(b.block_size) +
           " hint " + std::to_string(hint);
  }
};

// One long sequence: many splits, with every kind of hint (the kernel takes a split's key
// range from the hint when it bounds the sequence, else from kv_len).
TEST_F(CudaDecodeAttentionTest, OneLongSequenceSplitsAndMatchesTheCpu) {
  uint32_t seed = 1;
  for (HeadShape c : {HeadShape{12, 2, 128}, HeadShape{28, 4, 128}, HeadShape{32, 2, 64}, HeadShape{16, 2, 64},
                      HeadShape{4, 4, 128}, HeadShape{4, 1, 16}}) {
    Batch b({{1, 9001}}, 16, seed++);
    for (Types t : kTypes) {
      Problem pr = make(c, t, b, seed++);
      const std::vector<float> ref = cpu_out(pr, b);
      for (int hint : {9001, 16384, 1000, 1, 0})
        expect_matches(gpu_out(pr, b, device_meta(b, 1, hint)), ref, t.act, label(c, t, b, hint));
    }
  }
}

// Mixed lengths (kv_len 1 included, lengths on and off block boundaries) and block sizes.
TEST_F(CudaDecodeAttentionTest, MixedBatchesMatchTheCpu) {
  uint32_t seed = 100;
  for (HeadShape c : {HeadShape{12, 2, 128}, HeadShape{28, 4, 128}, HeadShape{32, 2, 64}, HeadShape{16, 2, 64},
                      HeadShape{4, 4, 128}, HeadShape{4, 1, 16}}) {
    for (int bs : {16, 3, 1}) {
      const int long_len = bs == 1 ? 700 : 4000;
      Batch b({{1, 1}, {1, long_len}, {1, 17}, {1, 1}, {1, 300}, {1, 2 * bs}, {1, long_len / 2 + 1}}, bs, seed++);
      for (Types t : kTypes) {
        Problem pr = make(c, t, b, seed++);
        const std::vector<float> ref = cpu_out(pr, b);
        for (int hint : {b.max_kv_len(), 2 * b.max_kv_len(), 64})
          expect_matches(gpu_out(pr, b, device_meta(b, 1, hint)), ref, t.act, label(c, t, b, hint));
      }
    }
  }
}

// Batches past the batch-1 layout (blocks of 4 query heads instead of 2, one pass per
// sequence on an H200), mixed lengths.
TEST_F(CudaDecodeAttentionTest, LargeBatchesMatchTheCpu) {
  uint32_t seed = 300;
  std::vector<SeqSpec> specs;
  specs.reserve(70);
  for (int i = 0; i < 70; ++i)
    specs.push_back({1, 1 + (i * 37) % 600});
  for (HeadShape c : {HeadShape{12, 2, 128}, HeadShape{28, 4, 128}, HeadShape{32, 2, 64}, HeadShape{16, 2, 64},
                      HeadShape{4, 4, 128}}) {
    Batch b(specs, 16, seed++);
    for (Types t : kTypes) {
      Problem pr = make(c, t, b, seed++);
      const std::vector<float> ref = cpu_out(pr, b);
      for (int hint : {b.max_kv_len(), 4096})
        expect_matches(gpu_out(pr, b, device_meta(b, 1, hint)), ref, t.act, label(c, t, b, hint));
    }
  }
}

// The last split block of each (sequence, head group) resets its counter: calling twice,
// replaying a captured graph twice, and replaying it after kv_lens changed (so a different
// number of splits arrive) all give the reference output.
TEST_F(CudaDecodeAttentionTest, RepeatedCallsAndGraphReplaysMatch) {
  const HeadShape c{12, 2, 128};
  const Types t{DType::kBF16, DType::kBF16};
  Batch b({{1, 3000}, {1, 1}, {1, 700}}, 16, 7);
  Problem pr = make(c, t, b, 8);
  const AttentionMetadata m = device_meta(b, 1, 4096);
  const std::vector<float> ref = cpu_out(pr, b);
  const std::vector<float> first = gpu_out(pr, b, m);
  expect_matches(first, ref, t.act, "first call");
  EXPECT_EQ(gpu_out(pr, b, m), first) << "second call";

  TensorView out = poisoned(t.act, out_shape(pr, b));
  auto graph = gpu_->capture([&] { return gpu_->paged_attention(out, pr.gpu_qkv, pr.params, m, pr.gpu_cache); });
  ASSERT_TRUE(graph.ok()) << graph.status().to_string();
  const Stored poison(test::poisoned(static_cast<size_t>(out.numel())), t.act);
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_TRUE(gpu_->copy_to_device(out.data, poison.bytes.data(), poison.bytes.size()).ok());
    ASSERT_TRUE((*graph)->replay().ok());
    ASSERT_TRUE(gpu_->synchronize().ok());
    EXPECT_EQ(download(out), first) << "replay " << replay;
  }
  // Shorter and longer sequences within the same blocks and bound.
  for (const std::vector<int32_t>& lens : {std::vector<int32_t>{1500, 1, 700}, std::vector<int32_t>{3000, 33, 1}}) {
    for (size_t s = 0; s < lens.size(); ++s) {
      b.kv_lens[s] = lens[s];
      b.seqs[s].kv_len = lens[s];
    }
    ASSERT_TRUE(gpu_->copy_to_device(m.kv_lens.data, b.kv_lens.data(), b.kv_lens.size() * sizeof(int32_t)).ok());
    ASSERT_TRUE(gpu_->copy_to_device(out.data, poison.bytes.data(), poison.bytes.size()).ok());
    ASSERT_TRUE((*graph)->replay().ok());
    ASSERT_TRUE(gpu_->synchronize().ok());
    expect_matches(download(out), cpu_out(pr, b), t.act, "replay with kv_lens " + std::to_string(lens[0]));
  }
}

// A bad block id in a split sequence is reported; the counters are still left at zero, so
// the next calls are right.
TEST_F(CudaDecodeAttentionTest, CallsAfterABadBlockIdAreRight) {
  const HeadShape c{12, 2, 128};
  const Types t{DType::kBF16, DType::kBF16};
  Batch b({{1, 2000}, {1, 5}}, 16, 11);
  Problem pr = make(c, t, b, 12);
  const std::vector<float> ref = cpu_out(pr, b);
  Batch bad = b;
  bad.block_tables[40] = 1 << 20;  // a block in the middle of sequence 0
  TensorView out = poisoned(t.act, out_shape(pr, b));
  ASSERT_TRUE(gpu_->paged_attention(out, pr.gpu_qkv, pr.params, device_meta(bad, 1, 4096), pr.gpu_cache).ok());
  EXPECT_EQ(gpu_->synchronize().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(gpu_->synchronize().ok());
  const AttentionMetadata m = device_meta(b, 1, 4096);
  for (int call = 0; call < 2; ++call)
    expect_matches(gpu_out(pr, b, m), ref, t.act, "call " + std::to_string(call) + " after the error");
}

}  // namespace
}  // namespace bw
