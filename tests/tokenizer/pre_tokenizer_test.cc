// PreTokenizer: known splits, and the hand-written scanners against the same patterns run
// by PCRE2 on random text.
#include "tokenizer/pre_tokenizer.h"

#include <gtest/gtest.h>

#include <random>

#include "tokenizer/unicode.h"

namespace bw {
namespace {

std::vector<std::string> split(PreTokenizerType type, std::string_view text, bool force_regex = false) {
  auto p = PreTokenizer::create(type, force_regex);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return p->split(text);
}

using Words = std::vector<std::string>;

TEST(PreTokenizer, Gpt2) {
  EXPECT_EQ(split(PreTokenizerType::kGpt2, "Hello world's 123  x\n"),
            (Words{"Hello", " world", "'s", " 123", " ", " x", "\n"}));
  EXPECT_EQ(split(PreTokenizerType::kGpt2, "a  "), (Words{"a", "  "}));
}

TEST(PreTokenizer, Llama3) {
  EXPECT_EQ(split(PreTokenizerType::kLlama3, "Hello World'S 1234567!!\n\n  x"),
            (Words{"Hello", " World", "'S", " ", "123", "456", "7", "!!\n\n", " ", " x"}));
  EXPECT_EQ(split(PreTokenizerType::kLlama3, "a \n b"), (Words{"a", " \n", " b"}));
}

TEST(PreTokenizer, Qwen2DigitsOneByOne) {
  EXPECT_EQ(split(PreTokenizerType::kQwen2, "x=2025;"), (Words{"x", "=", "2", "0", "2", "5", ";"}));
  EXPECT_EQ(split(PreTokenizerType::kQwen2, "\xE4\xBD\xA0\xE5\xA5\xBD world"),
            (Words{"\xE4\xBD\xA0\xE5\xA5\xBD", " world"}));
}

TEST(PreTokenizer, DeepseekLlm) {
  // Newlines alone, letters with one leading space, CJK runs, digits runs, trailing spaces.
  EXPECT_EQ(split(PreTokenizerType::kDeepseekLlm, "ab cd\n\xE4\xBD\xA0\xE5\xA5\xBD 42  "),
            (Words{"ab", " cd", "\n", "\xE4\xBD\xA0\xE5\xA5\xBD", " ", "42", "  "}));
}

TEST(PreTokenizer, Starcoder) {
  EXPECT_EQ(split(PreTokenizerType::kStarcoder, "x 123"), (Words{"x", " ", "1", "2", "3"}));
}

TEST(PreTokenizer, WordsCoverTheText) {
  const std::string text = "Hello, y'all! How are you \xF0\x9F\x98\x81 ?\xE6\x88\x91\xE6\x83\xB3 1314151 \n\n\t x";
  for (int t = 0; t <= static_cast<int>(PreTokenizerType::kGpt4o); ++t) {
    const auto type = static_cast<PreTokenizerType>(t);
    std::string joined;
    for (const auto& w : split(type, text)) {
      EXPECT_FALSE(w.empty()) << pre_tokenizer_type_name(type);
      joined += w;
    }
    EXPECT_EQ(joined, text) << pre_tokenizer_type_name(type);
  }
}

// Random text from characters that exercise every branch of the patterns.
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> pieces = {
      "a",
      "Z",
      "s",
      "t",
      "S",
      "e",
      "E",
      "l",
      "L",
      "d",
      "m",
      "v",
      "r",
      "0",
      "7",
      " ",
      " ",
      " ",
      "\t",
      "\n",
      "\r",
      "'",
      "'",
      "!",
      ".",
      "/",
      "-",
      "_",
      "(",
      "$",
      "~",
      "<",
      "\x01",
      "\x1C",
      "\x7F",
      "\xC3\xA9",          // é
      "\xD0\x96",          // Ж
      "\xE4\xB8\xAD",      // 中
      "\xD9\xA3",          // ٣ (Nd)
      "\xC2\xBD",          // ½ (No)
      "\xC2\xA0",          // NBSP
      "\xE3\x80\x80",      // ideographic space
      "\xE2\x80\xA8",      // line separator
      "\xC2\x85",          // NEL
      "\xCC\x81",          // combining acute (Mn)
      "\xE2\x82\xAC",      // € (Sc)
      "\xF0\x9F\xA6\x99",  // 🦙 (So)
      "\xE2\x80\x8D",      // ZWJ (Cf)
      "\xCD\xB8",          // U+0378, unassigned
      "\xEF\xBF\xBD",      // U+FFFD
      "\xED\xA0\x80",      // a surrogate, as llama.cpp decodes it
      "\xE2\x80\x9C",      // “ (Pi)
      "\xEF\xBC\x81",      // ！
  };
  std::uniform_int_distribution<size_t> len(0, 24), pick(0, pieces.size() - 1);
  std::string s;
  for (size_t n = len(rng); n > 0; --n)
    s += pieces[pick(rng)];
  return s;
}

class PreTokenizerScannerVsRegex : public ::testing::TestWithParam<PreTokenizerType> {};

// The hand-written scanners give what the regex gives (for Qwen2 the regex is what
// llama.cpp runs; for GPT-2 and Llama 3 llama.cpp runs the same scanners).
TEST_P(PreTokenizerScannerVsRegex, SameWords) {
  auto scanner = PreTokenizer::create(GetParam());
  auto regex = PreTokenizer::create(GetParam(), /*force_regex=*/true);
  ASSERT_TRUE(scanner.ok() && regex.ok());
  std::mt19937 rng(1234);
  for (int i = 0; i < 20000; ++i) {
    const std::string text = random_text(rng);
    ASSERT_EQ(scanner->split(text), regex->split(text)) << "text: '" << text << "'";
  }
}

INSTANTIATE_TEST_SUITE_P(Patterns, PreTokenizerScannerVsRegex,
                         ::testing::Values(PreTokenizerType::kQwen2, PreTokenizerType::kLlama3, PreTokenizerType::kGpt2,
                                           PreTokenizerType::kStarcoder),
                         [](const auto& info) {
                           std::string name(pre_tokenizer_type_name(info.param));
                           for (char& c : name)
                             c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

TEST(PreTokenizer, Names) {
  EXPECT_EQ(pre_tokenizer_info("qwen2")->type, PreTokenizerType::kQwen2);
  EXPECT_EQ(pre_tokenizer_info("deepseek-r1-qwen")->type, PreTokenizerType::kQwen2);
  EXPECT_FALSE(pre_tokenizer_info("deepseek-r1-qwen")->clean_spaces);
  EXPECT_TRUE(pre_tokenizer_info("llama-bpe")->ignore_merges);
  EXPECT_TRUE(pre_tokenizer_info("llama-bpe")->add_bos);
  EXPECT_EQ(pre_tokenizer_info("refact")->type, PreTokenizerType::kStarcoder);
  EXPECT_EQ(pre_tokenizer_info("deepseek-v3")->type, PreTokenizerType::kDeepseek3);
  EXPECT_FALSE(pre_tokenizer_info("no-such-pre").has_value());
}

// --- Unicode helpers ---------------------------------------------------------------------

TEST(PreTokenizerUnicode, Flags) {
  EXPECT_TRUE(unicode::flags('a') & unicode::kLetter);
  EXPECT_TRUE(unicode::flags(0x4E2D) & unicode::kLetter);
  EXPECT_TRUE(unicode::flags(0x0663) & unicode::kNumber);
  EXPECT_TRUE(unicode::flags(0x00BD) & unicode::kNumber);
  EXPECT_TRUE(unicode::flags(0x3000) & unicode::kWhitespace);
  EXPECT_TRUE(unicode::flags(0x0085) & unicode::kWhitespace);
  EXPECT_FALSE(unicode::flags(0x001C) & unicode::kWhitespace);
  EXPECT_TRUE(unicode::flags(0x0301) & unicode::kMark);
  EXPECT_TRUE(unicode::flags(0x20AC) & unicode::kSymbol);
  EXPECT_TRUE(unicode::flags(0x200D) & unicode::kControl);
  EXPECT_TRUE(unicode::flags(0x0378) & unicode::kUndefined);
  EXPECT_EQ(unicode::flags(0x110000), unicode::kUndefined);
  EXPECT_EQ(unicode::to_lower('A'), 'a');
  EXPECT_EQ(unicode::to_lower(0x0416), 0x0436u);  // Ж -> ж
  EXPECT_EQ(unicode::nfd_first(0x00E9), 'e');
  EXPECT_EQ(unicode::nfd_first(0xAC00), 0x1100u);  // Hangul syllable -> leading jamo
}

TEST(PreTokenizerUnicode, ByteMap) {
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(unicode::codepoint_to_byte(unicode::byte_to_codepoint(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(unicode::byte_to_codepoint(' '), 0x120u);   // Ġ
  EXPECT_EQ(unicode::byte_to_codepoint('\n'), 0x10Au);  // Ċ
  EXPECT_EQ(unicode::codepoint_to_byte(0x4E2D), -1);
}

TEST(PreTokenizerUnicode, LlamaDecoding) {
  EXPECT_TRUE(unicode::is_canonical("plain \xE4\xBD\xA0 \xF0\x9F\xA6\x99 \xED\xA0\x80"));
  EXPECT_FALSE(unicode::is_canonical("\xC0\x80"));  // overlong
  EXPECT_FALSE(unicode::is_canonical("\xE4\xBD"));  // truncated
  EXPECT_EQ(unicode::canonicalize("\xC0\x80"
                                  "a\xFF"),
            std::string("\0a\xEF\xBF\xBD", 5));
  EXPECT_EQ(unicode::canonicalize("\xE4\xBD"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::canonicalize("\xF4\x90\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(PreTokenizerUnicode, Repair) {
  auto repair = [](std::string_view s) {
    std::string out;
    unicode::append_repaired(&out, s, true);
    return out;
  };
  EXPECT_EQ(repair("ok \xE4\xBD\xA0"), "ok \xE4\xBD\xA0");
  EXPECT_EQ(repair("\xE4\xBD"), "\xEF\xBF\xBD");  // one U+FFFD for the incomplete sequence
  EXPECT_EQ(repair("\xE4\xBDx"), "\xEF\xBF\xBDx");
  EXPECT_EQ(repair("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate: 3 maximal subparts
  EXPECT_EQ(repair("\xF0\x9F\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(repair("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  std::string out;
  EXPECT_EQ(unicode::append_repaired(&out, "a\xE4\xBD", false), 1u);  // the incomplete tail is kept back
  EXPECT_EQ(out, "a");
  EXPECT_TRUE(unicode::is_valid_utf8("\xE4\xBD\xA0"));
  EXPECT_FALSE(unicode::is_valid_utf8("\xED\xA0\x80"));
}

}  // namespace
}  // namespace bw
