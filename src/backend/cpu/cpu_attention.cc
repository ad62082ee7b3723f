// paged_attention: causal attention over a paged KV cache for a mixed batch of prefill
// chunks and decode tokens, with grouped-query attention (kv head = q head / (Hq / Hkv)).
//
// One task per (query token, query head). A task walks its causal window through the
// sequence's block table in tiles of kTile positions with the online-softmax (flash)
// recurrence in f32: scores of a tile, new running max, rescale of the running sum and
// output accumulator by exp(old max - new max), then accumulate exp(score - max) * v.
// Metadata (query_start, kv_lens, block ids) is validated in full before any work starts.
//
// Batch invariance: there is one code path for decode tokens and prefill chunks alike. A
// query row at position p attends to positions [0, p] in tiles [0, 32), [32, 64), ...
// (fixed, starting at 0), and every score, max, rescale and sum runs in an order that
// depends only on p, head_dim and the values of q, K and V, never on the number of query
// tokens of its sequence in the call (a 1-token decode step, a chunk, a whole prompt),
// on the other sequences in the batch, on which cache blocks hold its K/V, or on the
// number of threads (each (token, head) is computed inside one task). So a token's output
// is bit-identical whether it was computed in a decode step or recomputed in a prefill.
// tests/backend/cpu_batch_invariance_test.cc checks this bit for bit.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace bw::cpu {

namespace {

constexpr std::string_view kOp = "paged_attention";
constexpr int64_t kTile = 32;

// q . k in a fixed order: four 8-lane accumulators (so the FMA latency chains overlap)
// over blocks of 32, the rest of the 8-blocks into the first, then the K % 8 tail.
template <DType kC>
float dot_q_k(const float* q, const void* k, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#if BW_CPU_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8<kC>(k, i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8<kC>(k, i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 16), load8<kC>(k, i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 24), load8<kC>(k, i + 24), a3);
  }
  for (; i + 8 <= n; i += 8)
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8<kC>(k, i), a0);
  s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
  for (; i < n; ++i)
    s = std::fma(q[i], load1<kC>(k, i), s);
  return s;
}

// acc[i] = acc[i] * scale (skipped when scale == 1).
void scale_acc(float* acc, float scale, int64_t n) {
  if (scale == 1.0f) return;
  for (int64_t i = 0; i < n; ++i)
    acc[i] *= scale;
}

// acc[i] += w[j] * v_rows[j][i] for j = 0 .. n-1 in order. The accumulator is held in
// registers 64 dims at a time across all n rows, instead of going through memory per row.
template <DType kC>
void accumulate_v(float* acc, const float* w, const uint8_t* const* v_rows, int64_t n, int64_t dim) {
  int64_t i = 0;
#if BW_CPU_AVX2
  for (; i + 64 <= dim; i += 64) {
    __m256 a[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r)
      a[r] = _mm256_loadu_ps(acc + i + 8 * r);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 wj = _mm256_set1_ps(w[j]);
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r)
        a[r] = _mm256_fmadd_ps(wj, load8<kC>(v_rows[j], i + 8 * r), a[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r)
      _mm256_storeu_ps(acc + i + 8 * r, a[r]);
  }
  for (; i + 8 <= dim; i += 8) {
    __m256 a = _mm256_loadu_ps(acc + i);
    for (int64_t j = 0; j < n; ++j)
      a = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), load8<kC>(v_rows[j], i), a);
    _mm256_storeu_ps(acc + i, a);
  }
#endif
  for (; i < dim; ++i) {
    float a = acc[i];
    for (int64_t j = 0; j < n; ++j)
      a = std::fma(w[j], load1<kC>(v_rows[j], i), a);
    acc[i] = a;
  }
}

struct AttentionJob {
  AttentionDims d;
  float scale = 1.0f;
  int64_t table_width = 0;     // max_blocks_per_seq
  const float* qkv = nullptr;  // [T, qkv_width]
  const uint8_t* k_cache = nullptr;
  const uint8_t* v_cache = nullptr;
  const int32_t* query_start = nullptr;   // [S + 1]
  const int32_t* kv_lens = nullptr;       // [S]
  const int32_t* block_tables = nullptr;  // [S, table_width]
  const int32_t* seq_of_token = nullptr;  // [T]
  float* out = nullptr;                   // [T, Hq * D]
};

template <DType kC>
void attend(const AttentionJob& job, int64_t t, int64_t h, float* acc, float* scores) {
  const AttentionDims& d = job.d;
  const int64_t s = job.seq_of_token[t];
  const int64_t q_len = job.query_start[s + 1] - job.query_start[s];
  const int64_t j = t - job.query_start[s];
  const int64_t num_keys = job.kv_lens[s] - q_len + j + 1;  // causal window [0, num_keys)
  const int64_t kv_head = h / (d.num_heads / d.num_kv_heads);
  const int64_t dim = d.head_dim;
  const int64_t row_bytes = dim * storage_bytes(kC);
  const float* q = job.qkv + t * d.qkv_width + h * dim;
  const int32_t* table = job.block_tables + s * job.table_width;

  std::fill(acc, acc + dim, 0.0f);
  float running_max = -std::numeric_limits<float>::infinity();
  float running_sum = 0.0f;
  const uint8_t* k_rows[kTile];
  const uint8_t* v_rows[kTile];
  float weights[kTile];
  for (int64_t p0 = 0; p0 < num_keys; p0 += kTile) {
    const int64_t n = std::min(kTile, num_keys - p0);
    // Cache rows of positions p0 .. p0 + n - 1, walking the block table.
    int64_t block = p0 / d.block_size, offset = p0 % d.block_size;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t slot = static_cast<int64_t>(table[block]) * d.block_size + offset;
      const int64_t byte = (slot * d.num_kv_heads + kv_head) * row_bytes;
      k_rows[i] = job.k_cache + byte;
      v_rows[i] = job.v_cache + byte;
      if (++offset == d.block_size) {
        offset = 0;
        ++block;
      }
    }
    float tile_max = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      scores[i] = dot_q_k<kC>(q, k_rows[i], dim) * job.scale;
      tile_max = std::max(tile_max, scores[i]);
    }
    const float new_max = std::max(running_max, tile_max);
    if (new_max != running_max) {
      const float correction = std::exp(running_max - new_max);  // 0 on the first tile
      running_sum *= correction;
      scale_acc(acc, correction, dim);
      running_max = new_max;
    }
    for (int64_t i = 0; i < n; ++i) {
      weights[i] = std::exp(scores[i] - running_max);
      running_sum += weights[i];
    }
    accumulate_v<kC>(acc, weights, v_rows, n, dim);
  }
  float* o = job.out + (t * d.num_heads + h) * dim;
  const float inv_sum = 1.0f / running_sum;
  for (int64_t i = 0; i < dim; ++i)
    o[i] = acc[i] * inv_sum;
}

// Validates the batch layout and fills seq_of_token.
Status check_metadata(const AttentionMetadata& meta, const AttentionDims& d, std::vector<int32_t>* seq_of_token,
                      int64_t* table_width) {
  const int64_t num_seqs = meta.num_seqs;
  if (num_seqs < 0) return InvalidArgument("paged_attention: meta.num_seqs {} is negative", num_seqs);
  RETURN_IF_ERROR(expect_i32_vector(kOp, "meta.query_start", meta.query_start, num_seqs + 1));
  RETURN_IF_ERROR(expect_i32_vector(kOp, "meta.kv_lens", meta.kv_lens, num_seqs));
  RETURN_IF_ERROR(expect_dtype(kOp, "meta.block_tables", meta.block_tables, DType::kI32));
  RETURN_IF_ERROR(expect_rank(kOp, "meta.block_tables", meta.block_tables, 2));
  if (meta.block_tables.dim(0) != num_seqs) {
    return InvalidArgument("paged_attention: meta.block_tables {} must have num_seqs = {} rows",
                           meta.block_tables.shape.to_string(), num_seqs);
  }
  RETURN_IF_ERROR(expect_data(kOp, "meta.block_tables", meta.block_tables));
  *table_width = meta.block_tables.dim(1);
  const int32_t* qs = meta.query_start.as<const int32_t>();
  const int32_t* kv_lens = meta.kv_lens.as<const int32_t>();
  const int32_t* tables = meta.block_tables.as<const int32_t>();
  if (qs[0] != 0) return InvalidArgument("paged_attention: meta.query_start[0] = {} must be 0", qs[0]);
  if (qs[num_seqs] != d.num_tokens) {
    return InvalidArgument("paged_attention: meta.query_start[{}] = {} must equal the {} tokens of qkv", num_seqs,
                           qs[num_seqs], d.num_tokens);
  }
  seq_of_token->assign(static_cast<size_t>(d.num_tokens), 0);
  for (int64_t s = 0; s < num_seqs; ++s) {
    if (qs[s + 1] < qs[s] || qs[s + 1] > d.num_tokens) {
      return InvalidArgument("paged_attention: meta.query_start[{}..{}] = {}, {} must be non-decreasing and <= {}", s,
                             s + 1, qs[s], qs[s + 1], d.num_tokens);
    }
    const int64_t q_len = qs[s + 1] - qs[s];
    const int64_t kv_len = kv_lens[s];
    if (kv_len < q_len) {
      return InvalidArgument("paged_attention: sequence {} has kv_lens {} < its {} query tokens", s, kv_len, q_len);
    }
    const int64_t num_seq_blocks = (kv_len + d.block_size - 1) / d.block_size;
    if (num_seq_blocks > *table_width) {
      return InvalidArgument(
          "paged_attention: sequence {} needs {} blocks of {} for kv_lens {}, but block_tables {} "
          "has {} columns",
          s, num_seq_blocks, d.block_size, kv_len, meta.block_tables.shape.to_string(), *table_width);
    }
    for (int64_t b = 0; b < num_seq_blocks; ++b) {
      const int32_t block = tables[s * *table_width + b];
      if (block < 0 || block >= d.num_blocks) {
        return InvalidArgument("paged_attention: block_tables[{}, {}] = {} is outside the cache's [0, {}) blocks", s, b,
                               block, d.num_blocks);
      }
    }
    for (int64_t t = qs[s]; t < qs[s + 1]; ++t)
      (*seq_of_token)[t] = static_cast<int32_t>(s);
  }
  return OkStatus();
}

}  // namespace

Status paged_attention(ThreadPool& pool, TensorView out, const TensorView& qkv, const AttentionParams& attn,
                       const AttentionMetadata& meta, const KvCacheLayer& cache) {
  AttentionJob job;
  RETURN_IF_ERROR(check_attention_inputs(kOp, qkv, attn, cache, &job.d));
  const AttentionDims& d = job.d;
  RETURN_IF_ERROR(expect_dtype(kOp, "out", out, DType::kF32));
  RETURN_IF_ERROR(expect_rank(kOp, "out", out, 2));
  if (out.dim(0) != d.num_tokens || out.dim(1) != d.num_heads * d.head_dim) {
    return InvalidArgument("paged_attention: out {} must be [{}, num_heads {} * head_dim {}] for qkv {}",
                           out.shape.to_string(), d.num_tokens, d.num_heads, d.head_dim, qkv.shape.to_string());
  }
  RETURN_IF_ERROR(expect_data(kOp, "out", out));
  if (overlaps(out, qkv) || overlaps(out, cache.k) || overlaps(out, cache.v)) {
    return InvalidArgument("paged_attention: out {} must not overlap qkv or the cache", describe(out));
  }
  std::vector<int32_t> seq_of_token;
  RETURN_IF_ERROR(check_metadata(meta, d, &seq_of_token, &job.table_width));

  job.scale = attn.scale;
  job.qkv = qkv.as<const float>();
  job.k_cache = static_cast<const uint8_t*>(cache.k.data);
  job.v_cache = static_cast<const uint8_t*>(cache.v.data);
  job.query_start = meta.query_start.as<const int32_t>();
  job.kv_lens = meta.kv_lens.as<const int32_t>();
  job.block_tables = meta.block_tables.as<const int32_t>();
  job.seq_of_token = seq_of_token.data();
  job.out = out.as<float>();
  with_storage_dtype(d.cache_dtype, [&](auto tag) {
    constexpr DType kC = decltype(tag)::value;
    pool.parallel_for(d.num_tokens * d.num_heads, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(static_cast<size_t>(d.head_dim));
      float scores[kTile];
      for (int64_t task = begin; task < end; ++task) {
        attend<kC>(job, task / d.num_heads, task % d.num_heads, acc.data(), scores);
      }
    });
  });
  return OkStatus();
}

}  // namespace bw::cpu
