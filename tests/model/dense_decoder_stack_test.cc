// DenseDecoder's hand-off of a whole decode step to a backend that fuses the decoder stack
// (Backend::decoder_stack; CUDA does on Hopper, tests/backend/cuda_decoder_stack_gpu_test.cc
// checks its numbers): only steps of one token and one logit row are offered, with every
// layer's weights and cache, the step's metadata and the token's embedding in the
// residual, and the backend's logits are the step's. A CPU backend wrapped to claim the
// fusion stands in for CUDA, so this runs in CI.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "runner/generator.h"
#include "support/test_support.h"
#include "support/tiny_model.h"

namespace bw {
namespace {

// The CPU backend, claiming to fuse the decoder stack when `fuse` is set: decoder_stack
// records what it was given and writes logits[v] = v + 1000 * calls.
class StackBackend final : public Backend {
 public:
  explicit StackBackend(Backend& inner) : inner_(inner) {}

  std::string name() const override { return "stack(" + inner_.name() + ")"; }
  DType activation_dtype() const override { return inner_.activation_dtype(); }
  bool is_host_memory() const override { return inner_.is_host_memory(); }
  Result<DeviceBuffer> allocate(size_t bytes) override { return inner_.allocate(bytes); }
  Status copy_to_device(void* dst, const void* src, size_t bytes) override {
    return inner_.copy_to_device(dst, src, bytes);
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    return inner_.copy_to_host(dst, src, bytes);
  }
  Status copy_on_device(void* dst, const void* src, size_t bytes) override {
    return inner_.copy_on_device(dst, src, bytes);
  }
  Status synchronize() override { return inner_.synchronize(); }
  Status embedding(TensorView out, const TensorView& table, const TensorView& ids) override {
    return inner_.embedding(out, table, ids);
  }
  Status matmul(TensorView out, const TensorView& x, const TensorView& w, const TensorView& bias) override {
    return inner_.matmul(out, x, w, bias);
  }
  Status rms_norm(TensorView out, const TensorView& x, const TensorView& weight, float eps) override {
    return inner_.rms_norm(out, x, weight, eps);
  }
  Status add_rms_norm(TensorView out, TensorView residual, const TensorView& x, const TensorView& weight,
                      float eps) override {
    return inner_.add_rms_norm(out, residual, x, weight, eps);
  }
  Status add(TensorView out, const TensorView& a, const TensorView& b) override { return inner_.add(out, a, b); }
  Status rope_write_kv(TensorView qkv, const AttentionParams& attn, const RopeParams& rope,
                       const AttentionMetadata& meta, const KvCacheLayer& cache) override {
    return inner_.rope_write_kv(qkv, attn, rope, meta, cache);
  }
  Status paged_attention(TensorView out, const TensorView& qkv, const AttentionParams& attn,
                         const AttentionMetadata& meta, const KvCacheLayer& cache) override {
    return inner_.paged_attention(out, qkv, attn, meta, cache);
  }
  Status silu_mul(TensorView out, const TensorView& gate_up) override { return inner_.silu_mul(out, gate_up); }

  bool fuses_decoder_stack(const DecoderStack& /*stack*/) const override { return fuse; }
  Status decoder_stack(TensorView logits, const DecoderStack& s) override {
    ++calls;
    layers = s.layers.size();
    caches = s.cache.size();
    seqs = s.meta != nullptr ? s.meta->num_seqs : -1;
    kv_len = s.meta != nullptr ? *s.meta->kv_lens.as<const int32_t>() : -1;
    eps = s.eps;
    heads = s.attn.num_heads;
    rotary_dim = s.rope.rotary_dim;
    const auto* r = s.residual.as<const float>();
    residual.assign(r, r + s.residual.numel());
    scratch_ok =
        s.qkv.numel() > 0 && s.attn_out.numel() > 0 && s.act.numel() > 0 && !s.final_norm.empty() && !s.lm_head.empty();
    auto* out = logits.as<float>();
    for (int64_t v = 0; v < logits.numel(); ++v)
      out[v] = static_cast<float>(v + 1000 * calls);
    return OkStatus();
  }

  bool fuse = true;
  int calls = 0;
  size_t layers = 0, caches = 0;
  int seqs = 0, kv_len = 0, heads = 0, rotary_dim = 0;
  float eps = 0.0f;
  std::vector<float> residual;
  bool scratch_ok = false;

 protected:
  void free(void* /*data*/, size_t /*bytes*/) override {}  // buffers belong to inner_

 private:
  Backend& inner_;
};

TEST(DenseDecoderStackTest, OneTokenStepsGoToTheBackendWhole) {
  test::TempDir dir;
  auto path = test::write_tiny_model(dir, "tiny-qwen2", 5);
  ASSERT_TRUE(path.ok()) << path.status().to_string();
  auto ckpt = Checkpoint::open(*path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
  CpuBackend cpu(1);
  StackBackend backend(cpu);
  auto model = load_causal_lm(*ckpt, backend, {});
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const ModelConfig& config = (*model)->config();
  const auto vocab = static_cast<size_t>(config.vocab_size);
  Generator gen(**model, backend);
  const std::vector<int32_t> prompt = {7, 3, 300, 3};

  // Teacher-forced one token at a time: every step goes to decoder_stack.
  auto fused = gen.prompt_logits(prompt, /*chunk_tokens=*/1);
  ASSERT_TRUE(fused.ok()) << fused.status().to_string();
  EXPECT_EQ(backend.calls, 4);
  EXPECT_EQ(backend.layers, static_cast<size_t>(config.num_layers));
  EXPECT_EQ(backend.caches, static_cast<size_t>(config.num_layers));
  EXPECT_EQ(backend.seqs, 1);
  EXPECT_EQ(backend.kv_len, 4);  // the last step sees the whole prompt
  EXPECT_EQ(backend.eps, config.rms_norm_eps);
  EXPECT_EQ(backend.heads, config.num_heads);
  EXPECT_EQ(backend.rotary_dim, config.rope.rotary_dim);
  EXPECT_TRUE(backend.scratch_ok);
  ASSERT_EQ(fused->size(), prompt.size() * vocab);
  for (size_t t = 0; t < prompt.size(); ++t)
    for (size_t v = 0; v < vocab; v += 97)
      ASSERT_EQ((*fused)[t * vocab + v], static_cast<float>(v + 1000 * (t + 1))) << "position " << t;

  // The residual handed over is the token's embedding: the same token (3) at positions 1
  // and 3 gives the same row, another token another.
  std::vector<std::vector<float>> residuals;
  for (int32_t id : {3, 300, 3}) {
    ASSERT_TRUE(gen.prompt_logits(std::vector<int32_t>{id}, 1).ok());
    residuals.push_back(backend.residual);
  }
  ASSERT_EQ(residuals[0].size(), static_cast<size_t>(config.hidden_size));
  EXPECT_EQ(residuals[0], residuals[2]);
  EXPECT_NE(residuals[0], residuals[1]);

  // Prefill chunks of several tokens never go to decoder_stack; and a backend that does not
  // fuse gets the op-by-op step, whose logits are the model's (finite, not the pattern).
  const int before = backend.calls;
  ASSERT_TRUE(gen.prompt_logits(prompt, /*chunk_tokens=*/4).ok());
  EXPECT_EQ(backend.calls, before);
  backend.fuse = false;
  auto per_op = gen.prompt_logits(prompt, /*chunk_tokens=*/1);
  ASSERT_TRUE(per_op.ok()) << per_op.status().to_string();
  EXPECT_EQ(backend.calls, before);
  for (float x : *per_op)
    ASSERT_TRUE(std::isfinite(x));
  EXPECT_NE((*per_op)[1], 1001.0f);
}

}  // namespace
}  // namespace bw
