// The fused decoder stack (Backend::decoder_stack: a whole batch-1 decode step as one
// persistent kernel on Hopper) against the op-by-op decode path it replaces (whose ops
// are tested against the CPU backend elsewhere), on random-weight models: Qwen2 (QKV
// bias, tied embeddings, head_dim 64, 4 query heads per KV head) and Llama (Llama-3 RoPE
// scaling, untied, head_dim 128, 6 query heads per KV head, one KV head). Each prompt is
// fed one token per forward pass (teacher forcing), so every step is a decode step over a
// growing context: one split of the keys at first, many later, across KV blocks of 1, 16
// and 64 slots. Both paths round every op's output to bf16 the same way, so they differ
// only by the order of f32 sums. Skips without a device that runs the kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_kernels.h"
#include "common/mapped_file.h"
#include "common/thread_pool.h"
#include "cuda_test_util.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "model/presets.h"
#include "model/random_model.h"
#include "runner/generator.h"
#include "support/test_support.h"

namespace bw {
namespace {

struct StackCase {
  std::string name;
  std::string preset;
  int64_t vocab, hidden, ffn, layers, heads, kv_heads;
  bool tied;
};

ModelConfig config_of(const StackCase& c) {
  ModelConfig m = *find_model_preset(c.preset);
  m.vocab_size = c.vocab;
  m.hidden_size = c.hidden;
  m.intermediate_size = c.ffn;
  m.num_layers = c.layers;
  m.num_heads = c.heads;
  m.num_kv_heads = c.kv_heads;
  m.head_dim = c.hidden / c.heads;
  m.rope.rotary_dim = static_cast<int>(m.head_dim);
  m.tie_word_embeddings = c.tied;
  m.weight_dtype = DType::kBF16;
  return m;
}

// A random bf16 model of the case's shape written to `folder`.
Status write_case_model(const StackCase& c, uint64_t seed, const std::string& folder) {
  ThreadPool pool(2);
  RandomModelOptions ro;
  ro.dtype = DType::kBF16;
  ro.seed = seed;
  ro.out_path = folder;
  return write_random_model(config_of(c), ro, pool).status();
}

// The model in `folder` on `backend`, bf16 weights.
Result<std::unique_ptr<CausalLM>> load_bf16_model(const std::string& folder, Backend& backend) {
  ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open(folder));
  WeightLoadOptions wo;
  wo.weight_dtype = DType::kBF16;
  return load_causal_lm(ckpt, backend, wo);
}

size_t argmax(const float* row, size_t n) { return static_cast<size_t>(std::max_element(row, row + n) - row); }

// A bf16 CUDA backend per test (skipped without a device).
class Bf16CudaTest : public test::CudaOpTest {
 protected:
  void SetUp() override {
    CudaBackendOptions options;
    options.activation_dtype = DType::kBF16;
    start(options);
  }
};

class DecoderStackTest : public Bf16CudaTest, public ::testing::WithParamInterface<StackCase> {};

TEST_P(DecoderStackTest, FusedStepsMatchTheOpByOpSteps) {
  CudaBackend& cuda = *gpu_;

  const StackCase& c = GetParam();
  test::TempDir tmp;
  const std::string folder = tmp.file("model");
  const Status written = write_case_model(c, 11, folder);
  ASSERT_TRUE(written.ok()) << written.to_string();
  auto model = load_bf16_model(folder, cuda);
  ASSERT_TRUE(model.ok()) << model.status().to_string();

  std::vector<int32_t> prompt(150);
  for (size_t i = 0; i < prompt.size(); ++i)
    prompt[i] = static_cast<int32_t>((i * 7919 + 13) % static_cast<size_t>(c.vocab));
  const auto vocab = static_cast<size_t>(c.vocab);

  // (block size, attention splits per KV head at most; 0: the kernel's own): two splits
  // of 150 keys give each attention item three tiles of keys.
  const std::pair<int64_t, int> runs[] = {{1, 0}, {16, 0}, {64, 0}, {16, 2}};
  for (const auto& [block_size, max_splits] : runs) {
    if (max_splits > 0) {
      setenv("BW_CUDA_STACK_MAX_SPLITS", std::to_string(max_splits).c_str(), 1);
    } else {
      unsetenv("BW_CUDA_STACK_MAX_SPLITS");
    }
    Generator gen(**model, cuda);
    cuda.set_decoder_stack(true);
    const int64_t before = cuda::decoder_stack_launches();
    auto fused = gen.prompt_logits(prompt, /*chunk_tokens=*/1, block_size, DType::kBF16);
    ASSERT_TRUE(fused.ok()) << fused.status().to_string();
    const int64_t launches = cuda::decoder_stack_launches() - before;
    if (launches == 0) {
      const char* off = std::getenv("BW_CUDA_STACK");
      ASSERT_TRUE((off != nullptr && std::string(off) == "0") || !cuda::prefill_attention_wgmma_available())
          << "the device runs sm_90a code, but the fused decoder stack was not taken";
      GTEST_SKIP() << "the device does not run the fused decoder stack (needs sm_90a), or BW_CUDA_STACK=0";
    }
    EXPECT_EQ(launches, static_cast<int64_t>(prompt.size()));

    cuda.set_decoder_stack(false);
    auto per_op = gen.prompt_logits(prompt, /*chunk_tokens=*/1, block_size, DType::kBF16);
    cuda.set_decoder_stack(true);
    ASSERT_TRUE(per_op.ok()) << per_op.status().to_string();
    EXPECT_EQ(cuda::decoder_stack_launches() - before, launches) << "the op-by-op run took the fused kernel";
    ASSERT_EQ(fused->size(), prompt.size() * vocab);
    ASSERT_EQ(per_op->size(), fused->size());

    double max_diff = 0, max_ref = 0, sq_diff = 0, sq_ref = 0;
    size_t agree = 0;
    for (size_t t = 0; t < prompt.size(); ++t) {
      const float* a = fused->data() + t * vocab;
      const float* b = per_op->data() + t * vocab;
      agree += argmax(a, vocab) == argmax(b, vocab);
      for (size_t v = 0; v < vocab; ++v) {
        const double d = static_cast<double>(a[v]) - b[v];
        ASSERT_TRUE(std::isfinite(a[v])) << "position " << t << " token " << v;
        max_diff = std::max(max_diff, std::abs(d));
        max_ref = std::max(max_ref, std::abs(static_cast<double>(b[v])));
        sq_diff += d * d;
        sq_ref += static_cast<double>(b[v]) * b[v];
      }
    }
    const double rel = std::sqrt(sq_diff / sq_ref);
    std::printf(
        "%s, block %lld, splits %d: relative error %.3g, max |diff| %.3g of max |logit| %.3g, argmax %zu / %zu\n",
        c.name.c_str(), static_cast<long long>(block_size), max_splits, rel, max_diff, max_ref, agree, prompt.size());
    EXPECT_GT(max_ref, 0.1) << "degenerate logits";
    EXPECT_LT(rel, 2e-2);
    EXPECT_GE(agree, prompt.size() * 97 / 100);
  }
  unsetenv("BW_CUDA_STACK_MAX_SPLITS");
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecoderStackTest,
                         ::testing::Values(StackCase{"qwen2_d64_g4_tied", "tiny-qwen2", 1000, 512, 1408, 3, 8, 2, true},
                                           StackCase{"llama_d128_g6_untied", "tiny-llama", 2000, 768, 1024, 2, 6, 1,
                                                     false}),
                         [](const auto& info) { return info.param.name; });

// Writes bf16 NaN over row `token` of the embedding in the model folder's safetensors file.
void poison_embedding_row(const std::string& folder, int64_t token, int64_t hidden) {
  for (const auto& file : std::filesystem::directory_iterator(folder)) {
    if (file.path().extension() != ".safetensors") continue;
    auto contents = read_file_to_string(file.path().string());
    ASSERT_TRUE(contents.ok()) << contents.status().to_string();
    std::string& bytes = *contents;
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    auto parsed = SafetensorsFile::parse({data, bytes.size()}, file.path().string());
    ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
    const TensorEntry* e = parsed->find("model.embed_tokens.weight");
    if (e == nullptr) continue;
    ASSERT_EQ(e->dtype, DType::kBF16);
    const auto at = static_cast<size_t>(e->data - data) + static_cast<size_t>(token * hidden * 2);
    const uint16_t nan_bf16 = 0x7fc0;
    for (int64_t h = 0; h < hidden; ++h)
      std::memcpy(bytes.data() + at + h * 2, &nan_bf16, 2);
    const Status written = write_string_to_file(file.path().string(), bytes);
    ASSERT_TRUE(written.ok()) << written.to_string();
    return;
  }
  FAIL() << "no embedding in " << folder;
}

// A NaN in the weights gives NaN logits from the token that reads it on, and never hangs
// the fused kernel (a divergent early exit in its attention step once left a warp waiting
// in a shuffle forever once NaN scores reached it). Both head sizes, untied (so the rows
// before the poisoned token stay finite).
using DecoderStackNaN = Bf16CudaTest;

TEST_F(DecoderStackNaN, APoisonedTokenGivesNaNLogitsNotAHang) {
  CudaBackend& cuda = *gpu_;
  for (const StackCase& c : {StackCase{"qwen2_d64", "tiny-qwen2", 1000, 512, 1408, 2, 8, 2, false},
                             StackCase{"llama_d128", "tiny-llama", 2000, 768, 1024, 2, 6, 1, false}}) {
    SCOPED_TRACE(c.name);
    test::TempDir tmp;
    const std::string folder = tmp.file("model");
    const Status written = write_case_model(c, 5, folder);
    ASSERT_TRUE(written.ok()) << written.to_string();
    const int32_t poisoned = 7;
    ASSERT_NO_FATAL_FAILURE(poison_embedding_row(folder, poisoned, c.hidden));
    auto model = load_bf16_model(folder, cuda);
    ASSERT_TRUE(model.ok()) << model.status().to_string();

    std::vector<int32_t> prompt(60);
    for (size_t i = 0; i < prompt.size(); ++i)
      prompt[i] = static_cast<int32_t>(100 + i);
    const size_t at = 40;
    prompt[at] = poisoned;
    Generator gen(**model, cuda);
    cuda.set_decoder_stack(true);
    const int64_t before = cuda::decoder_stack_launches();
    auto logits = gen.prompt_logits(prompt, /*chunk_tokens=*/1, /*block_size=*/16, DType::kBF16);
    ASSERT_TRUE(logits.ok()) << logits.status().to_string();
    if (cuda::decoder_stack_launches() == before) GTEST_SKIP() << "the device does not run the fused decoder stack";
    const auto vocab = static_cast<size_t>(c.vocab);
    for (size_t t = 0; t < prompt.size(); ++t) {
      const float* row = logits->data() + t * vocab;
      const bool finite = std::all_of(row, row + vocab, [](float v) { return std::isfinite(v); });
      if (t < at) {
        EXPECT_TRUE(finite) << "position " << t << ", before the poisoned token";
      } else {
        EXPECT_FALSE(finite) << "position " << t << ", at or after the poisoned token";
      }
    }
  }
}

}  // namespace
}  // namespace bw
