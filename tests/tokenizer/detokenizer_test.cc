// StreamingDetokenizer: deltas are complete UTF-8 and add up to Tokenizer::decode().
#include "tokenizer/detokenizer.h"

#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <random>

#include "support/test_support.h"
#include "tokenizer/unicode.h"

namespace bw {
namespace {

const Tokenizer* load(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(name); it != cache.end()) return it->second.get();
  auto path = test::testdata_file("tokenizer/" + name);
  if (!path) return nullptr;
  auto gguf = GgufFile::open(path->string());
  if (!gguf.ok()) return nullptr;
  auto tok = Tokenizer::from_gguf(*gguf);
  EXPECT_TRUE(tok.ok()) << tok.status().to_string();
  if (!tok.ok()) return nullptr;
  return (cache[name] = std::move(tok).value()).get();
}

#define LOAD_OR_SKIP(var, name)                                        \
  BW_TESTDATA_OR_SKIP(var##_path, std::string("tokenizer/") + (name)); \
  const Tokenizer* var = load(name);                                   \
  ASSERT_NE(var, nullptr)

// Streams `ids` and checks every delta and the total against decode().
void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special, bool continuation = false) {
  StreamingDetokenizer detok(tok, skip_special, continuation);
  std::string joined;
  for (int32_t id : ids) {
    const std::string delta = detok.push(id);
    ASSERT_TRUE(unicode::is_valid_utf8(delta)) << "id " << id;
    joined += delta;
  }
  const std::string tail = detok.flush();
  ASSERT_TRUE(unicode::is_valid_utf8(tail));
  joined += tail;
  ASSERT_EQ(joined, tok.decode(ids, skip_special, continuation));
}

TEST(StreamingDetokenizer, ByteFallbackCharacterIsHeldBack) {
  LOAD_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
  StreamingDetokenizer detok(*tok);
  EXPECT_EQ(detok.push(231), "");              // <0xE4>
  EXPECT_EQ(detok.push(192), "");              // <0xBD>
  EXPECT_EQ(detok.push(163), "\xE4\xBD\xA0");  // <0xA0>: 你
  EXPECT_EQ(detok.flush(), "");
}

TEST(StreamingDetokenizer, SentencePieceFirstSpace) {
  LOAD_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
  const auto ids = tok->encode("Hello world", false, false);  // ▁Hello ▁world
  StreamingDetokenizer detok(*tok);
  EXPECT_EQ(detok.push(ids[0]), "Hello");
  EXPECT_EQ(detok.push(ids[1]), " world");
  EXPECT_EQ(detok.flush(), "");
  // After flush() a new sequence starts.
  EXPECT_EQ(detok.push(ids[1]), "world");
}

TEST(StreamingDetokenizer, ContinuationKeepsTheFirstSpace) {
  LOAD_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
  const auto ids = tok->encode("Hello world", false, false);
  StreamingDetokenizer detok(*tok, true, /*continuation=*/true);
  EXPECT_EQ(detok.push(ids[0]), " Hello");
  EXPECT_EQ(detok.push(ids[1]), " world");
  EXPECT_EQ(detok.flush(), "");
  EXPECT_EQ(tok->decode(ids, true, /*continuation=*/true), " Hello world");
}

TEST(StreamingDetokenizer, SkipsSpecialTokens) {
  LOAD_OR_SKIP(tok, "ggml-vocab-qwen2.gguf");
  const auto ids = tok->encode("<|im_start|>assistant\nHi!<|im_end|>", false, true);
  StreamingDetokenizer skip(*tok, true), keep(*tok, false);
  std::string a, b;
  for (int32_t id : ids) {
    a += skip.push(id);
    b += keep.push(id);
  }
  a += skip.flush();
  b += keep.flush();
  EXPECT_EQ(a, "assistant\nHi!");
  EXPECT_EQ(b, "<|im_start|>assistant\nHi!<|im_end|>");
}

TEST(StreamingDetokenizer, ByteLevelCharacterSplitAcrossTokens) {
  LOAD_OR_SKIP(tok, "ggml-vocab-qwen2.gguf");
  // 🦙 is several byte-level tokens in Qwen2; no delta may cut it.
  const auto ids = tok->encode("a \xF0\x9F\xA6\x99 b", false, false);
  ASSERT_GT(ids.size(), 3u);
  check_stream(*tok, ids, true);
}

// Random id sequences from real vocabularies, with control, byte and unused tokens.
TEST(StreamingDetokenizer, RandomIdsMatchDecode) {
  for (const char* name : {"ggml-vocab-qwen2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-llama-bpe.gguf",
                           "ggml-vocab-phi-3.gguf", "ggml-vocab-bert-bge.gguf", "ggml-vocab-deepseek-llm.gguf"}) {
    LOAD_OR_SKIP(tok, name);
    std::mt19937 rng(42);
    const auto n = static_cast<int32_t>(tok->vocab_size());
    std::uniform_int_distribution<int32_t> any(0, n - 1), low(0, 300), len(0, 40);
    for (int round = 0; round < 300; ++round) {
      std::vector<int32_t> ids;
      for (int k = len(rng); k > 0; --k) {
        // Low ids are byte tokens in most vocabs (SPM <0xXX>, byte-level single bytes).
        ids.push_back(rng() % 2 ? low(rng) : any(rng));
      }
      if (round % 7 == 0 && !ids.empty()) ids.front() = tok->bos();
      if (round % 5 == 0 && !ids.empty() && tok->eos() >= 0) ids.back() = tok->eos();
      if (round % 11 == 0) ids.push_back(-1);  // an id outside the vocabulary
      check_stream(*tok, ids, round % 2 == 0, round % 3 == 0);
    }
  }
}

TEST(StreamingDetokenizer, EosHeldOnlyWhileItMightBeLast) {
  Vocab v;
  v.type = VocabType::kSpm;
  v.model = "llama";
  v.tokens = {{"<unk>", 0, kAttrUnknown},
              {"<s>", 0, kAttrControl},
              {"</s>", 0, kAttrUserDefined},
              {"\xE2\x96\x81hi", 0, kAttrNormal}};
  v.bos_id = 1;
  v.eos_id = 2;
  v.add_bos = true;
  v.add_eos = true;  // decode(skip_special) drops a trailing EOS even though it is not CONTROL
  v.add_space_prefix = true;
  auto tok = Tokenizer::from_vocab(v);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  for (const auto& ids : std::vector<std::vector<int32_t>>{{1, 3, 2}, {3, 2, 3}, {2, 3}, {2}, {1, 2, 2}, {1}}) {
    check_stream(**tok, ids, true);
    check_stream(**tok, ids, false);
  }
  EXPECT_EQ((*tok)->decode(std::vector<int32_t>{1, 3, 2}, true), " hi");
  EXPECT_EQ((*tok)->decode(std::vector<int32_t>{3, 2, 3}, true), "hi</s> hi");
}

}  // namespace
}  // namespace bw
