// Helpers the CUDA backend tests share: a fixture that owns a CudaBackend (skipping the
// test when there is no device), device copies of test::Stored values kept alive for the
// test, NaN-poisoned outputs, downloads as f32, a tolerance check, and the paged-attention
// batch layouts (shuffled block ids) that the attention tests run through the CUDA and
// CPU backends. Header-only: tests/<dir>/*_test.cc files are globbed by name.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "cpu_test_util.h"
#include "support/test_support.h"

namespace bw::test {

// |got - want| <= atol + rtol * |want| everywhere, NaN never passes.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = atol + rtol * std::abs(want[i]);
    if (!(std::abs(static_cast<double>(got[i]) - want[i]) <= tol)) {
      if (++bad <= 5) ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << ", want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

struct SeqSpec {
  int q_len;
  int kv_len;
};

// How AttentionBatch numbers the cache blocks: shuffled (neighbours rarely consecutive, as
// after much churn), consecutive (as a fresh pool hands them out), or consecutive with every
// eleventh id swapped with the next (runs broken here and there).
enum class BlockIds { kShuffled, kConsecutive, kMostlyConsecutive };

// A batch layout as the model runner builds it, with shuffled block ids (or see BlockIds).
struct AttentionBatch {
  int block_size = 0;
  int num_blocks = 0;
  int table_width = 0;
  int num_tokens = 0;
  int max_query_len = 0;
  std::vector<SeqSpec> seqs;
  std::vector<int32_t> query_start, kv_lens, block_tables, positions, slot_mapping;

  AttentionBatch(std::vector<SeqSpec> specs, int bs, uint32_t seed, BlockIds order = BlockIds::kShuffled)
      : block_size(bs), seqs(std::move(specs)) {
    for (const SeqSpec& s : seqs) {
      table_width = std::max(table_width, (s.kv_len + bs - 1) / bs);
      max_query_len = std::max(max_query_len, s.q_len);
    }
    num_blocks = static_cast<int>(seqs.size()) * table_width + 3;
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(seed);
    if (order == BlockIds::kShuffled) std::shuffle(ids.begin(), ids.end(), rng);
    if (order == BlockIds::kMostlyConsecutive) {
      for (size_t i = 10; i + 1 < ids.size(); i += 11)
        std::swap(ids[i], ids[i + 1]);
    }
    query_start.push_back(0);
    size_t next = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int b = 0; b < table_width; ++b)
        block_tables.push_back(b < (seqs[s].kv_len + bs - 1) / bs ? ids[next++] : 0);
      for (int j = 0; j < seqs[s].q_len; ++j) {
        const int pos = seqs[s].kv_len - seqs[s].q_len + j;
        positions.push_back(pos);
        slot_mapping.push_back(block_tables[s * table_width + pos / bs] * bs + pos % bs);
      }
      query_start.push_back(query_start.back() + seqs[s].q_len);
      kv_lens.push_back(seqs[s].kv_len);
    }
    num_tokens = query_start.back();
  }
  int max_kv_len() const {
    int m = 0;
    for (const SeqSpec& s : seqs)
      m = std::max(m, s.kv_len);
    return m;
  }
  // Views of the host vectors (for the CPU backend).
  AttentionMetadata host_meta() {
    AttentionMetadata m;
    m.positions = i32_view(positions, {num_tokens});
    m.slot_mapping = i32_view(slot_mapping, {num_tokens});
    m.query_start = i32_view(query_start, {static_cast<int64_t>(seqs.size()) + 1});
    m.kv_lens = i32_view(kv_lens, {static_cast<int64_t>(seqs.size())});
    m.block_tables = i32_view(block_tables, {static_cast<int64_t>(seqs.size()), table_width});
    m.num_seqs = static_cast<int>(seqs.size());
    m.max_query_len = max_query_len;
    m.max_kv_len = max_kv_len();
    return m;
  }
};

// A fixture with a CUDA backend (start() skips the test without a device) and the CPU
// reference.
class CudaOpTest : public ::testing::Test {
 protected:
  // Call from SetUp; GTEST_SKIP()s when there is no CUDA device.
  void start(const CudaBackendOptions& options) {
    auto b = CudaBackend::create(options);
    if (!b.ok()) GTEST_SKIP() << "no CUDA device: " << b.status().to_string();
    gpu_ = std::move(*b);
  }

  // A device copy of `size` bytes, viewed as `dtype` `shape` starting `offset_bytes` in.
  TensorView upload_raw(const void* bytes, size_t size, DType dtype, Shape shape, size_t offset_bytes = 0) {
    auto buf = gpu_->allocate(size + offset_bytes);
    EXPECT_TRUE(buf.ok());
    auto* base = static_cast<uint8_t*>(buf->data());
    EXPECT_TRUE(gpu_->copy_to_device(base + offset_bytes, bytes, size).ok());
    buffers_.push_back(std::move(*buf));
    return TensorView(base + offset_bytes, dtype, shape);
  }
  TensorView upload(const Stored& s, Shape shape, size_t offset_bytes = 0) {
    return upload_raw(s.bytes.data(), s.bytes.size(), s.dtype, shape, offset_bytes);
  }
  TensorView upload_i32(const std::vector<int32_t>& v, Shape shape) {
    return upload_raw(v.data(), v.size() * sizeof(int32_t), DType::kI32, shape);
  }
  // A NaN-poisoned device tensor.
  TensorView poisoned(DType dtype, Shape shape) {
    const Stored s(test::poisoned(static_cast<size_t>(shape.numel())), dtype);
    return upload(s, shape);
  }
  std::vector<float> download(const TensorView& t) {
    Stored s(std::vector<float>(static_cast<size_t>(t.numel())), t.dtype);
    const Status st = gpu_->copy_to_host(s.bytes.data(), t.data, s.bytes.size());
    EXPECT_TRUE(st.ok()) << st.to_string();
    std::vector<float> out(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = s.read(i);
    return out;
  }
  // Device copies of b's metadata, with the host hints the runner would pass.
  AttentionMetadata device_meta(const AttentionBatch& b, int max_query_hint, int max_kv_hint) {
    AttentionMetadata m;
    const int64_t s = static_cast<int64_t>(b.seqs.size());
    m.positions = upload_i32(b.positions, {b.num_tokens});
    m.slot_mapping = upload_i32(b.slot_mapping, {b.num_tokens});
    m.query_start = upload_i32(b.query_start, {s + 1});
    m.kv_lens = upload_i32(b.kv_lens, {s});
    m.block_tables = upload_i32(b.block_tables, {s, b.table_width});
    m.num_seqs = static_cast<int>(s);
    m.max_query_len = max_query_hint;
    m.max_kv_len = max_kv_hint;
    return m;
  }

  std::unique_ptr<CudaBackend> gpu_;
  CpuBackend cpu_{8};  // the reference is the slow part of the long-context cases
  std::vector<DeviceBuffer> buffers_;
};

}  // namespace bw::test
