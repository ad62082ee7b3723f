// Tokenizer against llama.cpp's reference vectors (testdata/tokenizer/*.gguf.inp/.out,
// tokenized with add_special = false, parse_special = false as test-tokenizer-0 does),
// round trips, special-token parsing, add_special, decode rules and concurrency.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "support/test_support.h"
#include "tokenizer/spm.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab_vectors.h"

namespace bw {
namespace {

namespace fs = std::filesystem;

using test::ids_to_string;
using test::read_inputs;
using test::read_outputs;

// Tokenizers are loaded once per test binary (the vocabs are large).
const Tokenizer* load(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(name);
  if (it != cache.end()) return it->second.get();
  auto path = test::testdata_file("tokenizer/" + name);
  if (!path) return nullptr;
  auto gguf = GgufFile::open(path->string());
  EXPECT_TRUE(gguf.ok()) << gguf.status().to_string();
  if (!gguf.ok()) return nullptr;
  auto tokenizer = Tokenizer::from_gguf(*gguf);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
  if (!tokenizer.ok()) return nullptr;
  return (cache[name] = std::move(tokenizer).value()).get();
}

#define LOAD_OR_SKIP(var, name)                                        \
  BW_TESTDATA_OR_SKIP(var##_path, std::string("tokenizer/") + (name)); \
  const Tokenizer* var = load(name);                                   \
  ASSERT_NE(var, nullptr)

// --- Reference vectors ---------------------------------------------------------------------

struct VectorCase {
  std::string vocab;    // the GGUF
  std::string vectors;  // the base name of the .inp/.out pair
};

// Test names show the file, not the bytes of the struct.
void PrintTo(const VectorCase& c, std::ostream* os) { *os << c.vectors << " with " << c.vocab; }

const std::vector<VectorCase>& vector_cases() {
  static const std::vector<VectorCase> cases = [] {
    std::vector<VectorCase> c;
    for (const char* name : {"bert-bge", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe", "llama-spm",
                             "mpt", "phi-3", "qwen2", "refact", "starcoder"}) {
      const std::string file = std::string("ggml-vocab-") + name + ".gguf";
      c.push_back({file, file});
    }
    // llama.cpp maps pre "deepseek-r1-qwen" to Qwen2's pre-tokenizer; the vectors are Qwen2's.
    c.push_back({"ggml-vocab-qwen2.gguf", "ggml-vocab-deepseek-r1-qwen.gguf"});
    return c;
  }();
  return cases;
}

class TokenizerVectorTest : public ::testing::TestWithParam<VectorCase> {};

TEST_P(TokenizerVectorTest, MatchesLlamaCpp) {
  const VectorCase& c = GetParam();
  LOAD_OR_SKIP(tok, c.vocab);
  BW_TESTDATA_OR_SKIP(inp, "tokenizer/" + c.vectors + ".inp");
  BW_TESTDATA_OR_SKIP(out, "tokenizer/" + c.vectors + ".out");
  const auto inputs = read_inputs(inp);
  const auto expected = read_outputs(out);
  ASSERT_EQ(inputs.size(), expected.size());
  ASSERT_FALSE(inputs.empty());
  size_t matched = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::vector<int32_t> ids = tok->encode(inputs[i], /*add_special=*/false, /*parse_special=*/false);
    if (ids == expected[i]) {
      ++matched;
    } else {
      ADD_FAILURE() << c.vocab << " on '" << inputs[i] << "'\n  expected: " << ids_to_string(expected[i])
                    << "\n  got:      " << ids_to_string(ids);
    }
  }
  std::cout << "[vectors] " << c.vocab << " (" << c.vectors << ") model=" << tok->vocab().model
            << " pre=" << (tok->vocab().pre.empty() ? "(none)" : tok->vocab().pre) << ": " << matched << "/"
            << inputs.size() << " match\n";
}

TEST_P(TokenizerVectorTest, DecodeInvertsEncode) {
  const VectorCase& c = GetParam();
  LOAD_OR_SKIP(tok, c.vocab);
  if (tok->vocab().type == VocabType::kWpm) GTEST_SKIP() << "WordPiece lowercases and drops characters";
  BW_TESTDATA_OR_SKIP(inp, "tokenizer/" + c.vectors + ".inp");
  for (const std::string& text : read_inputs(inp)) {
    const std::vector<int32_t> ids = tok->encode(text, false, false);
    // SentencePiece: the prefixed space is dropped again from the first token.
    EXPECT_EQ(tok->decode(ids), text) << c.vocab;
    EXPECT_EQ(tok->decode(ids, /*skip_special=*/true), text) << c.vocab;
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabs, TokenizerVectorTest, ::testing::ValuesIn(vector_cases()),
                         [](const ::testing::TestParamInfo<VectorCase>& info) {
                           return test::sanitize_test_name(info.param.vectors);
                         });

// Every vocab in testdata that has vectors is in the list above.
TEST(TokenizerVectorFiles, EveryVocabWithVectorsIsTested) {
  auto dir = test::testdata_dir();
  if (!dir || !fs::exists(*dir / "tokenizer")) GTEST_SKIP() << "shared test data not found";
  for (const auto& entry : fs::directory_iterator(*dir / "tokenizer")) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".gguf") continue;
    if (!fs::exists(entry.path().string() + ".inp") || !fs::exists(entry.path().string() + ".out")) continue;
    bool listed = false;
    for (const auto& c : vector_cases())
      listed |= c.vocab == name && c.vectors == name;
    EXPECT_TRUE(listed) << name << " has vectors but is not in vector_cases()";
  }
}

// Every vocab in testdata loads (including those without vectors).
TEST(TokenizerVectorFiles, EveryVocabLoads) {
  auto dir = test::testdata_dir();
  if (!dir || !fs::exists(*dir / "tokenizer")) GTEST_SKIP() << "shared test data not found";
  for (const auto& entry : fs::directory_iterator(*dir / "tokenizer")) {
    if (entry.path().extension() != ".gguf") continue;
    const Tokenizer* tok = load(entry.path().filename().string());
    ASSERT_NE(tok, nullptr) << entry.path();
    const std::string text = "Hello world, 123 \xE4\xBD\xA0\xE5\xA5\xBD!\n\tend";
    EXPECT_FALSE(tok->encode(text, true, true).empty());
    if (tok->vocab().type != VocabType::kWpm) {
      EXPECT_EQ(tok->decode(tok->encode(text, false, false)), text) << entry.path();
    }
  }
}

// --- Round trips ------------------------------------------------------------------------------

const char* const kRoundTripTexts[] = {
    "",
    " ",
    "Hello, world!",
    "  leading and trailing  ",
    "tabs\tand\nnew\r\nlines\n\n\n",
    "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C",  // 你好，世界
    "emoji \xF0\x9F\xA6\x99 and \xF0\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB\xEF\xB8\x8F",
    "int main() { return x->y[3] << 2; }  // comment",
    "numbers 1234567890 3.14159 1e-10",
    "\xC3\xA9\xC3\xA0\xC3\xBC \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD8\xB3\xD9\x84\xD8\xA7\xD9\x85",
    "\xE1\x9E\x80\xE1\x9E\xB6\xE1\x9E\x93\xE1\x9F\x8B",  // Khmer
    "a\xE2\x80\xA8"
    "b\xC2\xA0"
    "c\xE3\x80\x80"
    "d",  // non-ASCII whitespace
    "'s 'T 'Re 'vE 'M 'LL 'd",
};

TEST(TokenizerRoundTrip, ByteLevelBpeAndSentencePiece) {
  for (const char* name : {"ggml-vocab-qwen2.gguf", "ggml-vocab-llama-bpe.gguf", "ggml-vocab-gpt-2.gguf",
                           "ggml-vocab-deepseek-llm.gguf", "ggml-vocab-deepseek-coder.gguf", "ggml-vocab-falcon.gguf",
                           "ggml-vocab-starcoder.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf",
                           "ggml-vocab-baichuan.gguf", "ggml-vocab-gpt-neox.gguf", "ggml-vocab-mpt.gguf"}) {
    LOAD_OR_SKIP(tok, name);
    for (const char* text : kRoundTripTexts) {
      for (bool parse_special : {false, true}) {
        EXPECT_EQ(tok->decode(tok->encode(text, false, parse_special)), text) << name << " '" << text << "'";
      }
    }
  }
}

// Invalid UTF-8 never crashes; byte-level BPE sees each bad byte as U+FFFD (llama.cpp),
// SentencePiece keeps the bytes (byte fallback), so they round-trip.
TEST(TokenizerRoundTrip, InvalidUtf8) {
  const std::string bad[] = {"\xFF",         "\x80 x",           "abc\xE4\xBD",          "\xC0\x80",
                             "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xF8\x88\x80\x80\x80", std::string("a\0b", 3)};
  LOAD_OR_SKIP(qwen, "ggml-vocab-qwen2.gguf");
  LOAD_OR_SKIP(spm, "ggml-vocab-llama-spm.gguf");
  for (const std::string& text : bad) {
    const auto ids = qwen->encode(text, false, false);
    EXPECT_EQ(ids, qwen->encode(unicode::canonicalize(text), false, false));
    EXPECT_TRUE(unicode::is_valid_utf8(qwen->decode(ids)));
    EXPECT_EQ(spm->decode(spm->encode(text, false, false)).size() > 0, !text.empty());
  }
  EXPECT_EQ(qwen->encode("\xFF", false, false), qwen->encode("\xEF\xBF\xBD", false, false));
  EXPECT_EQ(spm->encode("\xFF", false, false), (std::vector<int32_t>{29871, 258}));  // "▁", <0xFF>
  // A surrogate encoded in UTF-8 is decoded as llama.cpp decodes it: its bytes are kept.
  std::string pieces;
  for (int32_t id : qwen->encode("\xED\xA0\x80", false, false))
    pieces += qwen->token_to_piece(id);
  EXPECT_EQ(pieces, "\xED\xA0\x80");
}

// SentencePiece merges segment by segment (cached) where the vocab allows it; that must
// give exactly what merging the whole text at once (llama.cpp) gives.
TEST(TokenizerSpm, SegmentsMergeLikeTheWholeText) {
  const char* const words[] = {"the",
                               "Hello",
                               "world",
                               "\xE4\xBD\xA0\xE5\xA5\xBD",
                               "1234",
                               "x",
                               "  ",
                               " ",
                               "\n",
                               "\xF0\x9F\xA6\x99",
                               "don't",
                               "\xFF",
                               "\t",
                               "ing",
                               "\xC3\xA9t\xC3\xA9",
                               "__init__",
                               "<s>",
                               "\xE2\x96\x81",
                               "(",
                               "\xE2",
                               "\x96\x81",
                               "\xF0",
                               "\xC3"};
  for (const char* name : {"ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf", "ggml-vocab-baichuan.gguf"}) {
    LOAD_OR_SKIP(tok, name);
    const SpmModel model(tok->vocab());
    std::cout << "[spm] " << name << " segmentable=" << model.segmentable() << "\n";
    std::mt19937 rng(5);
    for (int round = 0; round < 5000; ++round) {
      std::string text = "\xE2\x96\x81";
      for (int k = static_cast<int>(rng() % 30); k > 0; --k) {
        text += words[rng() % std::size(words)];
        if (rng() % 2) text += "\xE2\x96\x81";
      }
      std::vector<int32_t> segmented, whole;
      model.encode(text, &segmented);
      model.encode_whole(text, &whole);
      ASSERT_EQ(segmented, whole) << name << " '" << text << "'";
    }
  }
}

// --- Special tokens ------------------------------------------------------------------------

TEST(TokenizerSpecialTokens, ParseSpecialOnQwen2) {
  LOAD_OR_SKIP(tok, "ggml-vocab-qwen2.gguf");
  const std::string text = "<|im_start|>user\nHello<|im_end|>\n";
  const auto parsed = tok->encode(text, false, true);
  ASSERT_GE(parsed.size(), 4u);
  EXPECT_EQ(parsed.front(), 151644);
  EXPECT_EQ(std::count(parsed.begin(), parsed.end(), 151645), 1);
  std::vector<int32_t> expected = {151644};
  for (int32_t id : tok->encode("user\nHello", false, false))
    expected.push_back(id);
  expected.push_back(151645);
  for (int32_t id : tok->encode("\n", false, false))
    expected.push_back(id);
  EXPECT_EQ(parsed, expected);

  const auto plain = tok->encode(text, false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 151644), 0);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 151645), 0);
  EXPECT_GT(plain.size(), parsed.size());

  EXPECT_EQ(tok->decode(parsed), text);
  EXPECT_EQ(tok->decode(plain), text);
  EXPECT_EQ(tok->decode(parsed, /*skip_special=*/true), "user\nHello\n");
  EXPECT_EQ(tok->decode(plain, /*skip_special=*/true), text);
  EXPECT_TRUE(tok->is_eog(151645));
  EXPECT_TRUE(tok->is_eog(151643));
  EXPECT_FALSE(tok->is_eog(151644));
  EXPECT_EQ(tok->token_to_piece(151644), "<|im_start|>");
}

TEST(TokenizerSpecialTokens, Llama3HeaderTokens) {
  LOAD_OR_SKIP(tok, "ggml-vocab-llama-bpe.gguf");
  const auto ids = tok->encode("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", true, true);
  ASSERT_GE(ids.size(), 5u);
  EXPECT_EQ(ids[0], 128000);  // BOS (llama3 adds it by default)
  EXPECT_EQ(ids[1], 128006);
  EXPECT_EQ(ids.back(), 128009);
  EXPECT_TRUE(tok->is_eog(128009));
  EXPECT_TRUE(tok->is_eog(128001));
}

// Special tokens are matched longest first, across the whole text, as llama.cpp does.
TEST(TokenizerSpecialTokens, LongestFirstPartition) {
  Vocab v;
  v.type = VocabType::kBpe;
  v.model = "gpt2";
  for (const char* t : {"x", "b", "c", "d", "<", ">"})
    v.tokens.push_back({t, 0.0f, kAttrNormal});
  v.tokens.push_back({"bcd", 0.0f, kAttrUserDefined});  // 6
  v.tokens.push_back({"xb", 0.0f, kAttrUserDefined});   // 7
  v.tokens.push_back({"<c>", 0.0f, kAttrControl});      // 8
  auto tok = Tokenizer::from_vocab(std::move(v));
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  // "bcd" (longer) wins over "xb" even though "xb" starts first.
  EXPECT_EQ((*tok)->encode("xbcd", false, false), (std::vector<int32_t>{0, 6}));
  // User-defined tokens are split out even without parse_special; control tokens are not.
  EXPECT_EQ((*tok)->encode("<c>xb", false, false), (std::vector<int32_t>{4, 2, 5, 7}));
  EXPECT_EQ((*tok)->encode("<c>xb", false, true), (std::vector<int32_t>{8, 7}));
  EXPECT_EQ((*tok)->decode((*tok)->encode("<c>xb", false, true), true), "xb");
}

// --- add_special and decode rules ------------------------------------------------------------

TEST(TokenizerAddSpecial, FollowsTheVocab) {
  struct Case {
    const char* vocab;
    int32_t first;  // kNoToken: nothing added in front
    int32_t last;   // kNoToken: nothing added at the end
  };
  for (const Case& c :
       {Case{"ggml-vocab-llama-spm.gguf", 1, kNoToken}, Case{"ggml-vocab-llama-bpe.gguf", 128000, kNoToken},
        Case{"ggml-vocab-qwen2.gguf", kNoToken, kNoToken}, Case{"ggml-vocab-deepseek-llm.gguf", 100000, kNoToken},
        Case{"ggml-vocab-bert-bge.gguf", 101, 102}, Case{"ggml-vocab-baichuan.gguf", 1, kNoToken}}) {
    LOAD_OR_SKIP(tok, c.vocab);
    const auto plain = tok->encode("Hello world", false, false);
    std::vector<int32_t> expected;
    if (c.first != kNoToken) expected.push_back(c.first);
    expected.insert(expected.end(), plain.begin(), plain.end());
    if (c.last != kNoToken) expected.push_back(c.last);
    EXPECT_EQ(tok->encode("Hello world", true, false), expected) << c.vocab;
    EXPECT_EQ(tok->encode("", true, false).size(), (c.first != kNoToken) + (c.last != kNoToken)) << c.vocab;
  }
}

TEST(TokenizerDecode, SentencePieceLeadingSpace) {
  LOAD_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
  const auto ids = tok->encode("Hello world", true, false);  // <s> ▁Hello ▁world
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(tok->token_to_piece(ids[1]), " Hello");
  EXPECT_EQ(tok->decode(std::span(ids).subspan(1)), "Hello world");
  // llama_detokenize(remove_special=false): BOS shown; only the first token (BOS) may lose a space.
  EXPECT_EQ(tok->decode(ids), "<s> Hello world");
  // llama_detokenize(remove_special=true): BOS dropped, and then the space is kept.
  EXPECT_EQ(tok->decode(ids, true), " Hello world");
  // A text that starts with a space keeps it.
  EXPECT_EQ(tok->decode(tok->encode(" Hello", false, false)), " Hello");
}

TEST(TokenizerDecode, ByteFallbackAndBadIds) {
  LOAD_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
  const std::vector<int32_t> ni_hao = {231, 192, 163};  // <0xE4><0xBD><0xA0> = 你
  EXPECT_EQ(tok->decode(ni_hao), "\xE4\xBD\xA0");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{231, 192}), "\xEF\xBF\xBD");  // incomplete -> U+FFFD
  EXPECT_EQ(tok->decode(std::vector<int32_t>{-5, 1 << 30}), "");           // ids outside the vocab show nothing
  EXPECT_EQ(tok->token_to_piece(-1), "");
}

// --- Concurrency ----------------------------------------------------------------------------

TEST(TokenizerConcurrency, ManyThreadsEncodeTheSame) {
  LOAD_OR_SKIP(qwen, "ggml-vocab-qwen2.gguf");
  LOAD_OR_SKIP(spm, "ggml-vocab-llama-spm.gguf");
  LOAD_OR_SKIP(deepseek, "ggml-vocab-deepseek-llm.gguf");  // PCRE2 stages
  BW_TESTDATA_OR_SKIP(inp, "tokenizer/ggml-vocab-qwen2.gguf.inp");
  const auto inputs = read_inputs(inp);
  std::vector<std::vector<int32_t>> reference;
  for (const auto& text : inputs) {
    reference.push_back(qwen->encode(text, true, true));
    reference.push_back(spm->encode(text, true, true));
    reference.push_back(deepseek->encode(text, true, true));
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < inputs.size(); ++i) {
          const size_t k = (i + static_cast<size_t>(t)) % inputs.size();
          if (qwen->encode(inputs[k], true, true) != reference[3 * k]) ++mismatches;
          if (spm->encode(inputs[k], true, true) != reference[3 * k + 1]) ++mismatches;
          if (deepseek->encode(inputs[k], true, true) != reference[3 * k + 2]) ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace bw
