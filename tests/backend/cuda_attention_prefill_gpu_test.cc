// The tensor-core prefill attention kernels (cuda_attention_prefill.cu and, on Hopper,
// cuda_attention_prefill_sm90.cu) through CudaBackend::paged_attention, against the CPU
// reference on fresh random inputs: ragged batches mixing prefill chunks of 1..1000
// queries with and without prior context and decode rows, block sizes 1 / 16 / 64 (and 8
// to 256 with NaN in every cache slot outside the keys) with shuffled (non-contiguous)
// block ids (and consecutive ones, whole or in broken runs), sequences ending on a block
// boundary, GQA 12/2, 28/4, 8/8, 32/8, head_dim 64 and 128, and the Hopper kernel with
// each query tile's keys cut into pieces (split-KV). Each run asserts that the dispatch
// really took the prefill kernel (its launch counter) or, for decode-only / f32 /
// f16-cache batches, that it did not; every kernel variant is also run directly. Outputs
// are poisoned with NaN first; bf16 tolerance. Skips when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_kernels.h"
#include "cuda_test_util.h"
#include "support/test_support.h"

namespace bw {
namespace {

using test::Stored;

using test::SeqSpec;
using Batch = test::AttentionBatch;
using test::expect_close;

struct AttnCase {
  int hq, hkv, d;
};

class CudaPrefillAttentionTest : public test::CudaOpTest {
 protected:
  void SetUp() override { start({0, DType::kBF16}); }

  AttentionMetadata device_meta(const Batch& b, int max_query_hint) {
    return CudaOpTest::device_meta(b, max_query_hint, b.max_kv_len());
  }

  // Random cache and qkv; the GPU's paged_attention against the CPU's on the same rounded
  // values. expect_prefill: whether the dispatch must take the prefill kernel.
  // variant > 0: the launcher directly with that variant (on the legacy stream, after
  // the backend's uploads are done), instead of the backend's dispatch.
  // nan_past_keys: every cache slot outside the sequences' keys holds NaN (a kernel that
  // reads one into a sum poisons the output). kv_splits > 1 (with a variant): the launcher
  // cuts each query tile's keys into that many pieces, merged from a workspace.
  void check(const AttnCase& c, DType act, DType cache_dt, Batch& b, int max_query_hint, bool expect_prefill,
             uint32_t seed, int variant = 0, bool nan_past_keys = false, int kv_splits = 1) {
    AttentionParams p{c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.d;
    const int64_t slot_elems = static_cast<int64_t>(c.hkv) * c.d;
    const int64_t cache_elems = static_cast<int64_t>(b.num_blocks) * b.block_size * slot_elems;
    std::vector<float> kf = test::random_floats(static_cast<size_t>(cache_elems), seed, -2, 2);
    std::vector<float> vf = test::random_floats(static_cast<size_t>(cache_elems), seed + 1);
    if (nan_past_keys) {
      std::vector<bool> used(static_cast<size_t>(b.num_blocks) * b.block_size, false);
      for (size_t s = 0; s < b.seqs.size(); ++s)
        for (int pos = 0; pos < b.seqs[s].kv_len; ++pos)
          used[static_cast<size_t>(b.block_tables[s * b.table_width + pos / b.block_size]) * b.block_size +
               pos % b.block_size] = true;
      for (size_t slot = 0; slot < used.size(); ++slot) {
        if (used[slot]) continue;
        std::fill_n(kf.begin() + static_cast<int64_t>(slot) * slot_elems, slot_elems, NAN);
        std::fill_n(vf.begin() + static_cast<int64_t>(slot) * slot_elems, slot_elems, NAN);
      }
    }
    Stored kc(kf, cache_dt);
    Stored vc(vf, cache_dt);
    const std::vector<float> qkv =
        Stored(test::random_floats(static_cast<size_t>(b.num_tokens * width), seed + 2, -2, 2), act).values;
    const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
    KvCacheLayer gc{upload(kc, cs), upload(vc, cs)};
    TensorView out = poisoned(act, {b.num_tokens, static_cast<int64_t>(c.hq) * c.d});
    const int64_t launches = cuda::prefill_attention_launches();
    const TensorView qkv_view = upload(Stored(qkv, act), {b.num_tokens, width});
    const AttentionMetadata meta = device_meta(b, max_query_hint);
    if (variant > 0) {
      ASSERT_TRUE(gpu_->synchronize().ok());
      const cuda::AttentionArgs a = launcher_args(out, qkv_view, p, meta, gc, b);
      ASSERT_TRUE(cuda::prefill_attention_supported(a));
      float* ws = nullptr;
      if (kv_splits > 1) {
        const auto bytes = static_cast<size_t>(cuda::attention_workspace_floats(a, kv_splits)) * sizeof(float);
        ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&ws), bytes), cudaSuccess);
        ASSERT_EQ(cudaMemset(ws, 0xff, bytes), cudaSuccess);  // NaN: every partial must be written
      }
      const cudaError_t launched =
          cuda::launch_paged_attention_prefill(a, max_query_hint, variant, nullptr, kv_splits, ws);
      const cudaError_t synced = cudaDeviceSynchronize();
      if (ws != nullptr) cudaFree(ws);
      ASSERT_EQ(launched, cudaSuccess);
      ASSERT_EQ(synced, cudaSuccess);
    } else {
      const Status st = gpu_->paged_attention(out, qkv_view, p, meta, gc);
      ASSERT_TRUE(st.ok()) << st.to_string();
    }
    const std::string what = "hq" + std::to_string(c.hq) + " hkv" + std::to_string(c.hkv) + " d" + std::to_string(c.d) +
                             " act " + test::dtype_str(act) + " cache " + test::dtype_str(cache_dt) + " bs" +
                             std::to_string(b.block_size) + " tokens " + std::to_string(b.num_tokens) + " hint " +
                             std::to_string(max_query_hint) + " variant " + std::to_string(variant) + " splits " +
                             std::to_string(kv_splits);
    EXPECT_EQ(cuda::prefill_attention_launches() - launches, expect_prefill ? 1 : 0) << what;
    std::vector<float> ref(static_cast<size_t>(b.num_tokens * c.hq * c.d)), qc = qkv;
    Stored kc2 = kc, vc2 = vc;
    KvCacheLayer cc{kc2.view(cs), vc2.view(cs)};
    ASSERT_TRUE(cpu_.paged_attention(test::f32_view(ref, {b.num_tokens, static_cast<int64_t>(c.hq) * c.d}),
                                     test::f32_view(qc, {b.num_tokens, width}), p, b.host_meta(), cc)
                    .ok());
    const bool f32 = act == DType::kF32;
    expect_close(download(out), ref, f32 ? 2e-5 : 1e-2, f32 ? 1e-4 : 0x1p-7, what);
    EXPECT_TRUE(gpu_->synchronize().ok()) << what;
  }

  static cuda::AttentionArgs launcher_args(const TensorView& out, const TensorView& qkv, const AttentionParams& p,
                                           const AttentionMetadata& meta, const KvCacheLayer& cache, const Batch& b) {
    cuda::AttentionArgs a;
    a.out = out.data;
    a.qkv = qkv.data;
    a.act_type = cuda::ElemType::kBF16;
    a.num_tokens = b.num_tokens;
    a.num_heads = p.num_heads;
    a.num_kv_heads = p.num_kv_heads;
    a.head_dim = p.head_dim;
    a.scale = p.scale;
    a.k_cache = cache.k.data;
    a.v_cache = cache.v.data;
    a.cache_type = cuda::ElemType::kBF16;
    a.num_blocks = b.num_blocks;
    a.block_size = b.block_size;
    a.query_start = meta.query_start.as<const int32_t>();
    a.kv_lens = meta.kv_lens.as<const int32_t>();
    a.block_tables = meta.block_tables.as<const int32_t>();
    a.num_seqs = meta.num_seqs;
    a.table_width = b.table_width;
    a.max_kv_len = meta.max_kv_len;
    return a;
  }
};

// Chunks of 1..200 queries, with and without prior context, ending on and off block
// boundaries (32/128, 64/64 and 16/32 end on one for every block size used).
std::vector<SeqSpec> ragged_specs() {
  return {{1, 37},   {15, 15},   {16, 32}, {17, 17},  {63, 64}, {64, 64},
          {65, 195}, {200, 200}, {1, 1},   {32, 128}, {3, 90},  {200, 333}};
}

TEST_F(CudaPrefillAttentionTest, RaggedBatchesMatchTheCpu) {
  uint32_t seed = 11;
  for (AttnCase c :
       {AttnCase{12, 2, 128}, AttnCase{28, 4, 128}, AttnCase{8, 8, 64}, AttnCase{32, 8, 64}, AttnCase{8, 8, 128}}) {
    for (int bs : {1, 16, 64}) {
      Batch b(ragged_specs(), bs, seed++);
      check(c, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++);
    }
  }
}

// The mma.sync variants, and the wgmma kernel where the device runs it (Hopper).
std::vector<int> variants() {
  std::vector<int> v = {cuda::kPrefillVariant64Rows, cuda::kPrefillVariant128Rows};
  if (cuda::prefill_attention_wgmma_available()) v.push_back(cuda::kPrefillVariantWgmma);
  return v;
}

// Every variant, whatever the dispatch would pick.
TEST_F(CudaPrefillAttentionTest, EveryVariantMatchesTheCpu) {
  uint32_t seed = 100;
  for (AttnCase c :
       {AttnCase{12, 2, 128}, AttnCase{28, 4, 128}, AttnCase{8, 8, 64}, AttnCase{32, 8, 64}, AttnCase{12, 2, 64}}) {
    for (int bs : {1, 16, 64}) {
      Batch b(ragged_specs(), bs, seed++);
      for (int variant : variants())
        check(c, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed, variant);
      ++seed;
    }
  }
}

TEST_F(CudaPrefillAttentionTest, SingleChunksOfEveryEdgeLength) {
  uint32_t seed = 300;
  for (int q_len : {16, 17, 63, 64, 65, 128, 129}) {
    for (int ctx : {0, 1, 64, 100}) {
      Batch b({{q_len, q_len + ctx}}, 16, seed++);
      check(AttnCase{12, 2, 128}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++);
    }
  }
}

TEST_F(CudaPrefillAttentionTest, LongChunksMatchTheCpu) {
  uint32_t seed = 700;
  Batch b({{1000, 1000}, {200, 1200}, {1, 500}}, 16, seed++);
  check(AttnCase{12, 2, 128}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++);
  Batch b64({{1000, 1536}, {15, 15}}, 64, seed++);
  check(AttnCase{8, 8, 64}, DType::kBF16, DType::kBF16, b64, b64.max_query_len, true, seed++);
  Batch chunk({{700, 1500}, {300, 300}}, 16, seed++);
  for (int variant : variants())
    check(AttnCase{12, 2, 128}, DType::kBF16, DType::kBF16, chunk, chunk.max_query_len, true, seed, variant);
}

// On Hopper, K/V tiles wholly inside the keys arrive as tensor-map boxes (one per block,
// or per 128-row piece of a larger block; block sizes that are not a power of two >= 8
// take the gather), the rest through the gather that zero-fills rows past the keys: every
// cache slot outside the keys holds NaN here, which no output may see.
TEST_F(CudaPrefillAttentionTest, EveryBlockSizeWithNaNsPastTheKeys) {
  uint32_t seed = 1100;
  for (int bs : {8, 24, 32, 128, 256}) {
    Batch b({{300, 700}, {129, 129}, {5, 260}, {256, 256}}, bs, seed++);
    check(AttnCase{12, 2, 128}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++, 0, true);
    check(AttnCase{8, 8, 64}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++, 0, true);
  }
}

// Consecutive blocks make one tensor-map box of a whole 128-key tile (on Hopper); runs
// broken every eleventh block mix whole-tile boxes with per-block ones in one sequence.
// NaN outside the keys: a box that starts on the wrong row shows.
TEST_F(CudaPrefillAttentionTest, ConsecutiveBlocksMatchTheCpu) {
  uint32_t seed = 1300;
  for (test::BlockIds order : {test::BlockIds::kConsecutive, test::BlockIds::kMostlyConsecutive}) {
    for (int bs : {16, 32, 64}) {
      Batch b({{700, 1300}, {260, 260}, {3, 400}}, bs, seed++, order);
      check(AttnCase{28, 4, 128}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++, 0, true);
      check(AttnCase{8, 8, 64}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++, 0, true);
    }
  }
}

// The wgmma kernel with each query tile's keys cut into pieces (Hopper): ragged batches
// whose short tiles leave pieces empty, chunks after long contexts, NaN in every cache
// slot outside the keys and in the workspace before the launch; the combine kernel
// merges the pieces' f32 partials.
TEST_F(CudaPrefillAttentionTest, KeyPiecesMatchTheCpu) {
  if (!cuda::prefill_attention_wgmma_available()) GTEST_SKIP() << "needs the wgmma kernel (Hopper, sm_90a code)";
  uint32_t seed = 1500;
  for (int splits : {2, 3, 5}) {
    Batch b(ragged_specs(), 16, seed++);
    check(AttnCase{12, 2, 128}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, seed++,
          cuda::kPrefillVariantWgmma, false, splits);
    Batch chunk({{300, 2300}, {129, 129}, {16, 1000}}, 16, seed++);
    check(AttnCase{28, 4, 128}, DType::kBF16, DType::kBF16, chunk, chunk.max_query_len, true, seed++,
          cuda::kPrefillVariantWgmma, true, splits);
    check(AttnCase{8, 8, 64}, DType::kBF16, DType::kBF16, chunk, chunk.max_query_len, true, seed++,
          cuda::kPrefillVariantWgmma, true, splits);
  }
}

// Through the backend: a chunk after a long context makes a grid of a few CTAs, which the
// plan splits.
TEST_F(CudaPrefillAttentionTest, TheBackendSplitsAChunkAfterALongContext) {
  if (!cuda::prefill_attention_wgmma_available()) GTEST_SKIP() << "needs the wgmma kernel (Hopper, sm_90a code)";
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  ASSERT_GT(cuda::prefill_kv_splits(4, 1, 256, 3000, sms), 1);
  Batch b({{256, 3000}}, 16, 1600);
  check(AttnCase{4, 2, 128}, DType::kBF16, DType::kBF16, b, b.max_query_len, true, 1601, 0, true);
}

TEST_F(CudaPrefillAttentionTest, UnknownVariantIsRejected) {
  cuda::AttentionArgs a;
  a.num_tokens = 16;
  a.num_seqs = 1;
  EXPECT_EQ(cuda::launch_paged_attention_prefill(a, 16, 0, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::launch_paged_attention_prefill(a, 16, 4, nullptr), cudaErrorInvalidValue);
  // Key pieces: the wgmma kernel only, with a workspace.
  EXPECT_EQ(cuda::launch_paged_attention_prefill(a, 16, cuda::kPrefillVariant64Rows, nullptr, 2, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::launch_paged_attention_prefill(a, 16, cuda::kPrefillVariantWgmma, nullptr, 2, nullptr),
            cudaErrorInvalidValue);
}

TEST_F(CudaPrefillAttentionTest, UnderstatedQueryHintStillCoversEveryRow) {
  Batch b({{300, 400}, {20, 20}}, 16, 5);
  check(AttnCase{28, 4, 128}, DType::kBF16, DType::kBF16, b, 16, true, 6);
}

TEST_F(CudaPrefillAttentionTest, OtherBatchesKeepTheGeneralKernel) {
  uint32_t seed = 900;
  Batch decode({{1, 37}, {1, 300}, {1, 1}}, 16, seed++);
  check(AttnCase{12, 2, 128}, DType::kBF16, DType::kBF16, decode, decode.max_query_len, false, seed++);
  Batch prefill({{40, 60}, {1, 5}}, 16, seed++);
  check(AttnCase{12, 2, 128}, DType::kF32, DType::kBF16, prefill, prefill.max_query_len, false, seed++);
  check(AttnCase{12, 2, 128}, DType::kBF16, DType::kF16, prefill, prefill.max_query_len, false, seed++);
  check(AttnCase{4, 1, 40}, DType::kBF16, DType::kBF16, prefill, prefill.max_query_len, false, seed++);
  check(AttnCase{12, 2, 128}, DType::kBF16, DType::kBF16, prefill, 0, false, seed++);  // no hint
}

TEST_F(CudaPrefillAttentionTest, BadBlockIdsAndSequencesAreReported) {
  const AttnCase c{8, 8, 64};
  AttentionParams p{c.hq, c.hkv, c.d, 0.125f};
  const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.d;
  for (int32_t bad_id : {1000, -1}) {
    Batch b({{40, 50}, {20, 20}}, 4, 3);
    b.block_tables[5] = bad_id;
    const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
    Stored kc(test::random_floats(static_cast<size_t>(cs.numel()), 1), DType::kBF16);
    KvCacheLayer gc{upload(kc, cs), upload(kc, cs)};
    TensorView out = poisoned(DType::kBF16, {b.num_tokens, c.hq * c.d});
    Stored qkv(test::random_floats(static_cast<size_t>(b.num_tokens * width), 2), DType::kBF16);
    const int64_t launches = cuda::prefill_attention_launches();
    ASSERT_TRUE(gpu_->paged_attention(out, upload(qkv, {b.num_tokens, width}), p, device_meta(b, 40), gc).ok());
    EXPECT_EQ(cuda::prefill_attention_launches(), launches + 1);
    const Status st = gpu_->synchronize();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
    EXPECT_NE(st.to_string().find("block_tables"), std::string::npos) << st.to_string();
    EXPECT_TRUE(gpu_->synchronize().ok());
  }
  // kv_lens below the query count.
  Batch b({{40, 50}}, 16, 4);
  b.kv_lens[0] = 30;
  const Shape cs{b.num_blocks, b.block_size, c.hkv, c.d};
  Stored kc(test::random_floats(static_cast<size_t>(cs.numel()), 1), DType::kBF16);
  KvCacheLayer gc{upload(kc, cs), upload(kc, cs)};
  TensorView out = poisoned(DType::kBF16, {b.num_tokens, c.hq * c.d});
  Stored qkv(test::random_floats(static_cast<size_t>(b.num_tokens * width), 2), DType::kBF16);
  ASSERT_TRUE(gpu_->paged_attention(out, upload(qkv, {b.num_tokens, width}), p, device_meta(b, 40), gc).ok());
  const Status st = gpu_->synchronize();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_NE(st.to_string().find("kv_lens"), std::string::npos) << st.to_string();
  EXPECT_TRUE(gpu_->synchronize().ok());
}

}  // namespace
}  // namespace bw
