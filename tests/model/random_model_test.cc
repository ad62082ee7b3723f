// make-model output loads back, and the same random model written as safetensors and as
// GGUF gives the same logits (which checks llama.cpp's Q/K permutation both ways, the
// GGUF name map and the rope_freqs form of Llama-3 scaling).
#include "model/random_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "backend/cpu/cpu_backend.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "model/presets.h"
#include "runner/generator.h"
#include "support/test_support.h"

namespace bw {
namespace {

std::vector<float> logits_of(const std::string& path, std::span<const int32_t> prompt) {
  auto ckpt = Checkpoint::open(path);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status().to_string();
  if (!ckpt.ok()) return {};
  CpuBackend backend(2);
  WeightLoadOptions options;
  options.weight_dtype = DType::kF32;
  auto model = load_causal_lm(*ckpt, backend, options);
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  if (!model.ok()) return {};
  Generator gen(**model, backend);
  auto logits = gen.prompt_logits(prompt);
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  return logits.ok() ? *logits : std::vector<float>{};
}

class RandomModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RandomModelTest, SafetensorsAndGgufGiveTheSameLogits) {
  test::TempDir tmp;
  auto config = find_model_preset(GetParam());
  ASSERT_TRUE(config.ok());
  ThreadPool pool(2);
  RandomModelOptions st;
  st.dtype = DType::kF32;
  st.seed = 7;
  st.out_path = tmp.file("hf");
  ASSERT_TRUE(write_random_model(*config, st, pool).ok());
  RandomModelOptions gg = st;
  gg.format = RandomModelOptions::Format::kGguf;
  gg.out_path = tmp.file("model.gguf");
  auto params = write_random_model(*config, gg, pool);
  ASSERT_TRUE(params.ok()) << params.status().to_string();

  const std::vector<int32_t> prompt = {1, 5, 9, 200, 33, 400, 7, 7, 100, 63, 64, 65, 300, 2, 10, 11, 12, 13};
  const auto a = logits_of(st.out_path, prompt);
  const auto b = logits_of(gg.out_path, prompt);
  ASSERT_EQ(a.size(), prompt.size() * static_cast<size_t>(config->vocab_size));
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(a[i])));
  }
  EXPECT_LE(max_diff / max_ref, 1e-5);
  // Not degenerate: the logits vary.
  EXPECT_GT(max_ref, 0.1);
}

INSTANTIATE_TEST_SUITE_P(Presets, RandomModelTest, ::testing::Values("tiny-llama", "tiny-qwen2"),
                         test::StringParamName());

TEST(RandomModelTest, SameSeedSameWeightsAndBf16IsHalfTheSize) {
  test::TempDir tmp;
  auto config = find_model_preset("tiny-qwen2");
  ASSERT_TRUE(config.ok());
  ThreadPool pool1(1), pool4(4);
  RandomModelOptions o;
  o.dtype = DType::kBF16;
  o.seed = 3;
  o.out_path = tmp.file("a");
  ASSERT_TRUE(write_random_model(*config, o, pool1).ok());
  o.out_path = tmp.file("b");
  ASSERT_TRUE(write_random_model(*config, o, pool4).ok());
  auto a = SafetensorsModel::open(tmp.file("a"));
  auto b = SafetensorsModel::open(tmp.file("b"));
  ASSERT_TRUE(a.ok() && b.ok());
  for (const TensorEntry* t : a->tensors()) {
    const TensorEntry* u = b->find(t->name);
    ASSERT_NE(u, nullptr);
    EXPECT_EQ(t->dtype, DType::kBF16);
    ASSERT_EQ(t->nbytes, u->nbytes);
    EXPECT_EQ(std::memcmp(t->data, u->data, t->nbytes), 0) << t->name;
  }
  // Every expected tensor is there with its shape.
  for (const auto& s : dense_decoder_tensor_shapes(*config)) {
    const TensorEntry* t = a->find(s.name);
    ASSERT_NE(t, nullptr) << s.name;
    EXPECT_EQ(t->shape, s.shape) << s.name;
  }
}

// A random GGUF model of `config` at `path` with the tokenizer.* keys of `vocab`.
Status write_gguf_with_tokenizer(const ModelConfig& config, const std::string& vocab, const std::string& path) {
  ThreadPool pool(2);
  RandomModelOptions o;
  o.format = RandomModelOptions::Format::kGguf;
  o.out_path = path;
  o.tokenizer_from = vocab;
  return write_random_model(config, o, pool).status();
}

TEST(RandomModelTest, TokenizerFromIsCopiedAndChecked) {
  BW_TESTDATA_OR_SKIP(vocab, "models/stories260K.gguf");  // 512 tokens, like tiny-llama
  test::TempDir tmp;
  auto config = find_model_preset("tiny-llama");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(write_gguf_with_tokenizer(*config, vocab.string(), tmp.file("m.gguf")).ok());
  auto out = GgufFile::open(tmp.file("m.gguf"));
  auto src = GgufFile::open(vocab.string());
  ASSERT_TRUE(out.ok() && src.ok());
  int copied = 0;
  for (const auto& kv : src->metadata()) {
    if (!kv.key.starts_with("tokenizer.")) continue;
    const GgufValue* v = out->find(kv.key);
    ASSERT_NE(v, nullptr) << kv.key;
    EXPECT_TRUE(*v == kv.value) << kv.key;
    ++copied;
  }
  EXPECT_GE(copied, 5);
  // A tokenizer with more tokens than the model's vocabulary is refused.
  auto qwen = find_model_preset("tiny-qwen2");
  qwen->vocab_size = 500;
  EXPECT_EQ(write_gguf_with_tokenizer(*qwen, vocab.string(), tmp.file("bad.gguf")).code(),
            StatusCode::kInvalidArgument);
}

// A model vocabulary with more rows than the tokenizer has tokens (DeepSeek-R1-Distill-
// Qwen-7B: 152,064 rows, 151,936 tokens in the GGUF vocabulary) gets the tokenizer padded
// as llama.cpp's converter pads it: "[PAD<id>]" tokens of type UNUSED, score 0.
TEST(RandomModelTest, TokenizerFromIsPaddedToTheVocabulary) {
  BW_TESTDATA_OR_SKIP(vocab, "models/stories260K.gguf");  // 512 tokens
  test::TempDir tmp;
  auto config = find_model_preset("tiny-llama");
  ASSERT_TRUE(config.ok());
  config->vocab_size = 520;
  ASSERT_TRUE(write_gguf_with_tokenizer(*config, vocab.string(), tmp.file("padded.gguf")).ok());
  auto out = GgufFile::open(tmp.file("padded.gguf"));
  auto src = GgufFile::open(vocab.string());
  ASSERT_TRUE(out.ok() && src.ok());
  for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"}) {
    const GgufValue* was = src->find(key);
    const GgufValue* now = out->find(key);
    ASSERT_TRUE(was != nullptr && now != nullptr && now->as_array() != nullptr) << key;
    EXPECT_EQ(now->as_array()->size(), 520u) << key;
  }
  const auto* tokens = out->find("tokenizer.ggml.tokens")->as_array()->get<std::string>();
  const auto* src_tokens = src->find("tokenizer.ggml.tokens")->as_array()->get<std::string>();
  ASSERT_TRUE(tokens != nullptr && src_tokens != nullptr);
  EXPECT_TRUE(std::equal(src_tokens->begin(), src_tokens->end(), tokens->begin()));
  EXPECT_EQ((*tokens)[512], "[PAD512]");
  EXPECT_EQ((*tokens)[519], "[PAD519]");
  const auto* types = out->find("tokenizer.ggml.token_type")->as_array()->get<int32_t>();
  ASSERT_NE(types, nullptr);
  EXPECT_EQ((*types)[519], 5);  // UNUSED
  EXPECT_EQ((*types)[3], (*src->find("tokenizer.ggml.token_type")->as_array()->get<int32_t>())[3]);
  const auto* scores = out->find("tokenizer.ggml.scores")->as_array()->get<float>();
  ASSERT_NE(scores, nullptr);
  EXPECT_EQ((*scores)[515], 0.0f);
  // Keys that are not per token are copied as they are.
  EXPECT_TRUE(*out->find("tokenizer.ggml.model") == *src->find("tokenizer.ggml.model"));
}

TEST(CheckpointTest, WrongShapeOrMissingTensorNamesIt) {
  test::TempDir tmp;
  auto config = find_model_preset("tiny-llama");
  ASSERT_TRUE(config.ok());
  ThreadPool pool(2);
  RandomModelOptions o;
  o.dtype = DType::kF32;
  o.out_path = tmp.file("m");
  ASSERT_TRUE(write_random_model(*config, o, pool).ok());
  // Lie about the shape in config.json: the loader must name the tensor.
  ModelConfig wrong = *config;
  wrong.intermediate_size = 128;
  ASSERT_TRUE(write_string_to_file(tmp.file("m/config.json"), model_config_to_hf_json(wrong)).ok());
  auto ckpt = Checkpoint::open(tmp.file("m"));
  ASSERT_TRUE(ckpt.ok());
  CpuBackend backend(1);
  auto model = load_causal_lm(*ckpt, backend, {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(model.status().message().find("mlp.gate_proj.weight"), std::string::npos) << model.status().message();

  auto none = Checkpoint::open(tmp.file("nothing-here"));
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace bw
