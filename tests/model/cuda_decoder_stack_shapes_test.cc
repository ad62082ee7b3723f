// The fused decoder stack's shape limits (cuda::decoder_stack_supported: host code, no
// device needed) take the model presets whose single-stream decode docs/PERF.md measures
// (DeepSeek-R1-Distill-Qwen-1.5B and -7B, and -Llama-8B) on the SM counts of an H100 SXM /
// H200 (132) and an H100 PCIe (114), and refuse the shapes the kernel cannot run, so a
// change to its plan (page sizes, shared-memory budget, warps) that drops a real model
// back to the op-by-op path fails here, in CI, not only in a GPU benchmark. Built where
// the CUDA backend is.
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "model/presets.h"

#ifdef BW_HAVE_CUDA
#include "backend/cuda/cuda_kernels.h"
#endif

namespace bw {
namespace {

#ifdef BW_HAVE_CUDA
cuda::DecoderStackArgs args_for(const ModelConfig& c) {
  cuda::DecoderStackArgs a;
  a.num_layers = static_cast<int>(c.num_layers);
  a.hidden = static_cast<int>(c.hidden_size);
  a.num_heads = static_cast<int>(c.num_heads);
  a.num_kv_heads = static_cast<int>(c.num_kv_heads);
  a.head_dim = static_cast<int>(c.head_dim);
  a.intermediate = static_cast<int>(c.intermediate_size);
  a.vocab = c.vocab_size;
  return a;
}

cuda::DecoderStackArgs preset_args(const std::string& name) {
  auto config = find_model_preset(name);
  EXPECT_TRUE(config.ok()) << config.status().to_string();
  return config.ok() ? args_for(*config) : cuda::DecoderStackArgs{};
}

TEST(DecoderStackShapes, TakesTheMeasuredPresets) {
  for (const char* name :
       {"deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-llama-8b"}) {
    const cuda::DecoderStackArgs a = preset_args(name);
    for (const int sms : {132, 114}) {
      EXPECT_TRUE(cuda::decoder_stack_supported(a, sms)) << name << " on " << sms << " SMs";
      EXPECT_GT(cuda::decoder_stack_counters(a), 0);
      EXPECT_GT(cuda::decoder_stack_partial_floats(a, sms), 0);
    }
  }
}

TEST(DecoderStackShapes, RefusesWhatTheKernelCannotRun) {
  const cuda::DecoderStackArgs base = preset_args("deepseek-r1-distill-qwen-1.5b");
  ASSERT_TRUE(cuda::decoder_stack_supported(base, 132));

  cuda::DecoderStackArgs a = base;
  a.head_dim = 96;  // the attention step is written for 64 and 128
  a.num_heads = 16;
  EXPECT_FALSE(cuda::decoder_stack_supported(a, 132));

  a = base;
  a.num_heads = 32, a.num_kv_heads = 2;  // 16 query heads per KV head: more than 8
  EXPECT_FALSE(cuda::decoder_stack_supported(a, 132));

  a = base;
  a.num_heads = 13;  // not a multiple of the KV heads
  EXPECT_FALSE(cuda::decoder_stack_supported(a, 132));

  a = base;
  a.num_layers = 0;
  EXPECT_FALSE(cuda::decoder_stack_supported(a, 132));

  a = base;
  a.hidden = 1540;  // rows no longer 16-byte aligned
  EXPECT_FALSE(cuda::decoder_stack_supported(a, 132));

  EXPECT_FALSE(cuda::decoder_stack_supported(base, 1)) << "more KV heads than CTAs";
  EXPECT_FALSE(cuda::decoder_stack_supported(base, 0));
}

// The ring depths docs/PERF.md measured: 8 pages of 24 KiB for the 1.5B (a second
// attention tile buffer takes one of them only where items walk 3 tiles or more), 5 of
// 37 KiB for the 7B (whose shared memory has room for the second buffer beside them).
TEST(DecoderStackShapes, KeepsTheMeasuredRings) {
  cuda::DecoderStackArgs a = preset_args("deepseek-r1-distill-qwen-1.5b");
  a.block_size = 16;
  a.table_width = 1024 / 16;  // a short context: one tile per item
  cuda::DecoderStackRing ring = cuda::decoder_stack_ring(a, 132);
  EXPECT_EQ(ring.pages, 8);
  EXPECT_EQ(ring.page_bytes, 24 * 1024);
  EXPECT_EQ(ring.tile_buffers, 1);
  a.table_width = 8192 / 16;  // 4 tiles per item (66 splits per KV head)
  ring = cuda::decoder_stack_ring(a, 132);
  EXPECT_EQ(ring.pages, 7);
  EXPECT_EQ(ring.tile_buffers, 2);

  a = preset_args("deepseek-r1-distill-qwen-7b");
  a.block_size = 16;
  a.table_width = 1024 / 16;
  ring = cuda::decoder_stack_ring(a, 132);
  EXPECT_EQ(ring.pages, 5);
  EXPECT_EQ(ring.page_bytes, 2 * 18'944);  // one row of the down projection
  EXPECT_EQ(ring.tile_buffers, 2);
}

// Long contexts go op by op (measured faster there, docs/PERF.md): the limit is in tiles
// of 32 keys per attention item, i.e. a block table of 16 x 32 x (132 / KV heads) tokens
// on 132 SMs. The block table's width bounds the context.
TEST(DecoderStackShapes, LongContextsGoOpByOp) {
  for (const auto& [name, longest_taken] : {std::pair<const char*, int>{"deepseek-r1-distill-qwen-1.5b", 33'792},
                                            std::pair<const char*, int>{"deepseek-r1-distill-qwen-7b", 16'896}}) {
    cuda::DecoderStackArgs a = preset_args(name);
    a.block_size = 16;
    a.table_width = longest_taken / 16;
    EXPECT_TRUE(cuda::decoder_stack_supported(a, 132)) << name << " at " << longest_taken << " tokens";
    a.table_width = longest_taken / 16 + 2;  // one tile more per item
    EXPECT_FALSE(cuda::decoder_stack_supported(a, 132)) << name << " past " << longest_taken << " tokens";
    a.table_width = 8192 / 16;  // R1's typical reasoning lengths stay on the stack
    EXPECT_TRUE(cuda::decoder_stack_supported(a, 132)) << name << " at 8,192 tokens";
  }
}
#else
TEST(DecoderStackShapes, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend"; }
#endif

}  // namespace
}  // namespace bw
