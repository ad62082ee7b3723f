// vocab_from_gguf: llama.cpp's defaults and detection rules on the real vocabs, and clear
// errors for missing keys and wrong types (on GGUFs built in memory).
#include "tokenizer/vocab.h"

#include <gtest/gtest.h>

#include "io/gguf_writer.h"
#include "support/test_support.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace bw {
namespace {

Result<Vocab> load_vocab(const std::string& name) {
  auto path = test::testdata_file("tokenizer/" + name);
  if (!path) return NotFound("no test data");
  ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path->string()));
  return vocab_from_gguf(gguf);
}

#define VOCAB_OR_SKIP(var, name)                                       \
  BW_TESTDATA_OR_SKIP(var##_path, "tokenizer/" name);                  \
  auto var##_result = load_vocab(name);                                \
  ASSERT_TRUE(var##_result.ok()) << var##_result.status().to_string(); \
  const Vocab& var = *var##_result

TEST(Vocab, SentencePieceDefaults) {
  VOCAB_OR_SKIP(v, "ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(v.type, VocabType::kSpm);
  EXPECT_EQ(v.size(), 32000u);
  EXPECT_TRUE(v.add_bos);
  EXPECT_FALSE(v.add_eos);
  EXPECT_TRUE(v.add_space_prefix);
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_TRUE(v.is_eog(2));
  EXPECT_EQ(v.find("<0x0A>"), 13);
  EXPECT_EQ(v.tokens[13].attr, kAttrByte);
  EXPECT_TRUE(v.chat_template.empty());
}

// baichuan has no add_bos_token key: SentencePiece adds BOS by default.
TEST(Vocab, SentencePieceAddsBosWhenTheKeyIsAbsent) {
  VOCAB_OR_SKIP(v, "ggml-vocab-baichuan.gguf");
  EXPECT_TRUE(v.add_bos);
  EXPECT_EQ(v.bos_id, 1);
}

TEST(Vocab, ByteLevelBpe) {
  VOCAB_OR_SKIP(v, "ggml-vocab-qwen2.gguf");
  EXPECT_EQ(v.type, VocabType::kBpe);
  EXPECT_EQ(v.pre, "qwen2");
  EXPECT_EQ(v.pre_type, PreTokenizerType::kQwen2);
  EXPECT_FALSE(v.add_bos);
  EXPECT_FALSE(v.clean_spaces);
  EXPECT_EQ(v.merges.size(), 151387u);
  EXPECT_EQ(v.bos_id, 151643);
  EXPECT_TRUE(v.is_eog(151643));
  EXPECT_TRUE(v.is_eog(151645));
  EXPECT_TRUE(v.tokens[151646].attr & kAttrUnused);
}

TEST(Vocab, Llama3) {
  VOCAB_OR_SKIP(v, "ggml-vocab-llama-bpe.gguf");
  EXPECT_EQ(v.pre_type, PreTokenizerType::kLlama3);
  EXPECT_TRUE(v.ignore_merges);
  EXPECT_TRUE(v.add_bos);
  EXPECT_EQ(v.bos_id, 128000);
  EXPECT_TRUE(v.is_eog(128001));
  EXPECT_TRUE(v.is_eog(128009));  // <|eot_id|>, found by its text
  EXPECT_EQ(v.eot_id, 128009);
}

TEST(Vocab, MissingPreFallsBackToDefault) {
  VOCAB_OR_SKIP(v, "ggml-vocab-gpt-neox.gguf");
  EXPECT_EQ(v.pre_type, PreTokenizerType::kDefault);
  ASSERT_FALSE(v.warnings.empty());
  EXPECT_NE(v.warnings[0].find("tokenizer.ggml.pre"), std::string::npos);
}

TEST(Vocab, WordPiece) {
  VOCAB_OR_SKIP(v, "ggml-vocab-bert-bge.gguf");
  EXPECT_EQ(v.type, VocabType::kWpm);
  EXPECT_EQ(v.bos_id, 101);
  EXPECT_EQ(v.sep_id, 102);
  EXPECT_EQ(v.unk_id, 100);
  EXPECT_FALSE(v.add_space_prefix);
}

TEST(Vocab, Phi3ChatTemplateAndStripRules) {
  VOCAB_OR_SKIP(v, "ggml-vocab-phi-3.gguf");
  EXPECT_NE(v.chat_template.find("<|assistant|>"), std::string::npos);
  EXPECT_EQ(v.eos_id, 32000);
  EXPECT_TRUE(v.is_eog(32007));  // <|end|>
  EXPECT_TRUE(v.tokens[32007].attr & kAttrRstrip);
  EXPECT_FALSE(v.tokens[1].attr & kAttrRstrip);  // <s>
}

// --- Errors ------------------------------------------------------------------------------

// A small valid gpt2 vocab: the 256 byte characters and one merge.
GgufWriter tiny_gpt2() {
  GgufWriter w;
  w.set("general.architecture", "gpt2");
  w.set("tokenizer.ggml.model", "gpt2");
  w.set("tokenizer.ggml.pre", "gpt-2");
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) {
    std::string t;
    unicode::append_utf8(&t, unicode::byte_to_codepoint(static_cast<uint8_t>(b)));
    tokens.push_back(t);
  }
  tokens.push_back("he");
  tokens.push_back("hel");
  w.set("tokenizer.ggml.tokens", tokens);
  w.set("tokenizer.ggml.merges", std::vector<std::string>{"h e", "he l"});
  return w;
}

struct Parsed {
  std::vector<uint8_t> bytes;
  Result<Vocab> vocab = Status(StatusCode::kInternal, "unset");
};

Parsed parse(const GgufWriter& w) {
  Parsed p;
  auto bytes = w.serialize();
  EXPECT_TRUE(bytes.ok());
  p.bytes = std::move(bytes).value();
  auto gguf = GgufFile::parse(p.bytes, "tiny.gguf");
  EXPECT_TRUE(gguf.ok()) << gguf.status().to_string();
  if (gguf.ok()) p.vocab = vocab_from_gguf(*gguf);
  return p;
}

void expect_error(const GgufWriter& w, StatusCode code, std::string_view needle) {
  Parsed p = parse(w);
  ASSERT_FALSE(p.vocab.ok());
  EXPECT_EQ(p.vocab.status().code(), code) << p.vocab.status().to_string();
  EXPECT_NE(p.vocab.status().message().find(needle), std::string::npos) << p.vocab.status().to_string();
}

TEST(VocabErrors, TinyVocabLoadsAndTokenizes) {
  Parsed p = parse(tiny_gpt2());
  ASSERT_TRUE(p.vocab.ok()) << p.vocab.status().to_string();
  auto tok = Tokenizer::from_vocab(std::move(p.vocab).value());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ((*tok)->encode("hello", false, false), (std::vector<int32_t>{257, 'l', 'o'}));
  EXPECT_EQ((*tok)->decode((*tok)->encode("hello \xFF", false, false)), "hello \xEF\xBF\xBD");
}

TEST(VocabErrors, MissingModel) {
  GgufWriter w = tiny_gpt2();
  w.remove("tokenizer.ggml.model");
  expect_error(w, StatusCode::kNotFound, "tokenizer.ggml.model");
}

TEST(VocabErrors, MissingMergesForGpt2) {
  GgufWriter w = tiny_gpt2();
  w.remove("tokenizer.ggml.merges");
  expect_error(w, StatusCode::kNotFound, "tokenizer.ggml.merges");
}

TEST(VocabErrors, MissingTokens) {
  GgufWriter w = tiny_gpt2();
  w.remove("tokenizer.ggml.tokens");
  expect_error(w, StatusCode::kNotFound, "tokenizer.ggml.tokens");
}

TEST(VocabErrors, WrongTypes) {
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.tokens", "not an array");
    expect_error(w, StatusCode::kDataLoss, "tokenizer.ggml.tokens");
  }
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.model", uint32_t{7});
    expect_error(w, StatusCode::kDataLoss, "tokenizer.ggml.model");
  }
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.token_type", std::vector<std::string>(258, "x"));
    expect_error(w, StatusCode::kDataLoss, "tokenizer.ggml.token_type");
  }
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.bos_token_id", "one");
    expect_error(w, StatusCode::kDataLoss, "tokenizer.ggml.bos_token_id");
  }
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.add_bos_token", uint32_t{1});
    expect_error(w, StatusCode::kDataLoss, "tokenizer.ggml.add_bos_token");
  }
}

TEST(VocabErrors, ShortArrays) {
  GgufWriter w = tiny_gpt2();
  w.set("tokenizer.ggml.scores", std::vector<float>(10, 0.0f));
  expect_error(w, StatusCode::kDataLoss, "tokenizer.ggml.scores");
  GgufWriter w2 = tiny_gpt2();
  w2.set("tokenizer.ggml.token_type", std::vector<int32_t>(3, 1));
  expect_error(w2, StatusCode::kDataLoss, "tokenizer.ggml.token_type");
}

TEST(VocabErrors, UnsupportedModelAndPre) {
  GgufWriter w = tiny_gpt2();
  w.set("tokenizer.ggml.model", "rwkv");
  expect_error(w, StatusCode::kUnimplemented, "rwkv");
  GgufWriter w2 = tiny_gpt2();
  w2.set("tokenizer.ggml.pre", "no-such-pre");
  expect_error(w2, StatusCode::kUnimplemented, "no-such-pre");
}

TEST(VocabErrors, BadContents) {
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.tokens", std::vector<std::string>{"a", "b", "a"});
    expect_error(w, StatusCode::kDataLoss, "duplicate");
  }
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.tokens", std::vector<std::string>{});
    expect_error(w, StatusCode::kDataLoss, "tokenizer.ggml.tokens");
  }
  {
    // The gpt2 default BOS (11) exists here, so point it outside the vocabulary: the key
    // is ignored with a warning, as llama.cpp does, and 11 stays.
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.bos_token_id", uint32_t{100000});
    Parsed p = parse(w);
    ASSERT_TRUE(p.vocab.ok());
    EXPECT_EQ(p.vocab->bos_id, 11);
    EXPECT_FALSE(p.vocab->warnings.empty());
  }
  {
    GgufWriter w = tiny_gpt2();
    w.set("tokenizer.ggml.tokens", std::vector<std::string>{"a", "b"});
    w.set("tokenizer.ggml.add_bos_token", true);  // the default BOS 11 is outside these 2 tokens
    expect_error(w, StatusCode::kDataLoss, "bos_token_id");
  }
}

TEST(VocabErrors, FromVocabValidates) {
  Vocab v;
  EXPECT_EQ(Tokenizer::from_vocab(v).status().code(), StatusCode::kInvalidArgument);
  v.tokens = {{"a", 0, kAttrNormal}, {"a", 0, kAttrNormal}};
  EXPECT_EQ(Tokenizer::from_vocab(v).status().code(), StatusCode::kInvalidArgument);
  v.tokens = {{"a", 0, kAttrNormal}};
  v.add_bos = true;
  v.bos_id = 5;
  EXPECT_EQ(Tokenizer::from_vocab(v).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bw
