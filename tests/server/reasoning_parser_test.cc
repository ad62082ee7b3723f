#include "server/reasoning_parser.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "support/test_support.h"

namespace bw::server {
namespace {

struct Parts {
  std::string reasoning;
  std::string content;
  bool operator==(const Parts& other) const = default;
};

std::ostream& operator<<(std::ostream& os, const Parts& p) {
  return os << "{reasoning: \"" << p.reasoning << "\", content: \"" << p.content << "\"}";
}

void append(Parts* parts, const ReasoningParser::Delta& delta) {
  parts->reasoning += delta.reasoning;
  parts->content += delta.content;
}

Parts parse_deltas(bool starts_in_reasoning, const std::vector<std::string>& deltas) {
  ReasoningParser parser(starts_in_reasoning);
  Parts parts;
  for (const std::string& d : deltas)
    append(&parts, parser.feed(d));
  append(&parts, parser.flush());
  return parts;
}

Parts parse_whole(bool starts_in_reasoning, const std::string& text) {
  return parse_deltas(starts_in_reasoning, {text});
}

struct Case {
  bool starts_in_reasoning;
  std::string output;
  Parts expected;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> kCases = {
      // Output opens the reasoning itself.
      {false, "<think>abc</think>\n\nHi", {"abc", "Hi"}},
      {false, " \n<think>x</think>y", {"x", "y"}},
      {false, "<think>\nx</think> \n y", {"\nx", "y"}},
      {false, "<think>a<</think>b", {"a<", "b"}},
      {false, "<think>a</</think>b", {"a</", "b"}},
      {false, "<think></think></think>", {"", "</think>"}},
      {false, "<think>abc</thi", {"abc</thi", ""}},
      {false, "<think>abc", {"abc", ""}},
      {false, "<think>", {"", ""}},
      // No reasoning: everything is content, leading whitespace included.
      {false, "Hello <think>x", {"", "Hello <think>x"}},
      {false, "  Hi there", {"", "  Hi there"}},
      {false, "<thinking>no</thinking>", {"", "<thinking>no</thinking>"}},
      {false, "<thi", {"", "<thi"}},
      {false, " \n ", {"", " \n "}},
      {false, "<<think>", {"", "<<think>"}},
      {false, "a</think>b", {"", "a</think>b"}},
      {false, "", {"", ""}},
      // The prompt opened the reasoning (DeepSeek-R1's template).
      {true, "abc</think>  \n answer", {"abc", "answer"}},
      {true, "a</think>x</think>y", {"a", "x</think>y"}},
      {true, "</think>", {"", ""}},
      {true, "r</think>\n\n", {"r", ""}},
      {true, "<think>a</think>b", {"<think>a", "b"}},
      {true, "half </thin", {"half </thin", ""}},
      {true, "</think>a \n b", {"", "a \n b"}},
      {true, "", {"", ""}},
  };
  return kCases;
}

TEST(ReasoningParser, WholeTexts) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.output);
    EXPECT_EQ(parse_whole(c.starts_in_reasoning, c.output), c.expected);
  }
}

// Feeds `text` from `pos` in every way of splitting it into 1..3-byte deltas (a copy of
// the parser per branch), checking each ends with `expected`. Returns the splits tried.
int64_t feed_every_split(const ReasoningParser& parser, const Parts& so_far, const std::string& text, size_t pos,
                         const Parts& expected) {
  if (pos == text.size()) {
    ReasoningParser last = parser;
    Parts parts = so_far;
    append(&parts, last.flush());
    EXPECT_EQ(parts, expected) << "text: " << text;
    return 1;
  }
  int64_t count = 0;
  for (size_t len = 1; len <= 3 && pos + len <= text.size(); ++len) {
    ReasoningParser next = parser;
    Parts parts = so_far;
    append(&parts, next.feed(std::string_view(text).substr(pos, len)));
    // Nothing emitted is ever taken back: each part grows as a prefix of the final one.
    if (expected.reasoning.compare(0, parts.reasoning.size(), parts.reasoning) != 0 ||
        expected.content.compare(0, parts.content.size(), parts.content) != 0) {
      ADD_FAILURE() << "emitted " << parts << " is not a prefix of " << expected << " for " << text;
      return count;
    }
    count += feed_every_split(next, parts, text, pos + len, expected);
  }
  return count;
}

TEST(ReasoningParser, EverySplitGivesTheWholeTextParts) {
  int64_t total = 0;
  // Tribonacci growth: the 22-byte outputs split ~400,000 ways each (under a sanitizer only
  // the outputs up to 16 bytes, ~10,000 ways at most, take every split).
  const size_t exhaustive_len = test::kUnderSanitizer ? 16 : 24;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.output);
    ASSERT_LE(c.output.size(), 24u);
    if (c.output.size() <= exhaustive_len)
      total += feed_every_split(ReasoningParser(c.starts_in_reasoning), Parts{}, c.output, 0, c.expected);
    // Also with empty deltas sprinkled in.
    std::vector<std::string> deltas = {""};
    for (const char ch : c.output)
      deltas.insert(deltas.end(), {std::string(1, ch), ""});
    EXPECT_EQ(parse_deltas(c.starts_in_reasoning, deltas), c.expected);
  }
  EXPECT_GT(total, test::kUnderSanitizer ? 10000 : 100000);
}

TEST(ReasoningParser, RandomSplitsOfLongerOutputs) {
  const std::vector<std::string> outputs = {
      "<think>\nLet me think: 2 + 2 = 4. Is </ a tag? No. </thinking> is not either.\n</think>\n\nThe answer is 4.",
      "   <think>¿Qué? 😀 </think>   ünïcode ✓ </think> stays",
  };
  std::mt19937 rng(1234);
  for (const std::string& output : outputs) {
    const Parts whole = parse_whole(false, output);
    EXPECT_FALSE(whole.reasoning.empty());
    EXPECT_EQ(whole.reasoning.find("<think>"), std::string::npos);
    EXPECT_NE(whole.content.front(), ' ');
    for (int trial = 0; trial < 500; ++trial) {
      std::vector<std::string> deltas;
      size_t pos = 0;
      while (pos < output.size()) {
        size_t len = 1 + rng() % 6;
        // Deltas carry whole UTF-8 characters.
        while (pos + len < output.size() && (static_cast<unsigned char>(output[pos + len]) & 0xC0) == 0x80)
          ++len;
        len = std::min(len, output.size() - pos);
        deltas.push_back(output.substr(pos, len));
        pos += len;
      }
      ASSERT_EQ(parse_deltas(false, deltas), whole);
    }
  }
}

TEST(ReasoningParser, HoldsOnlyUndecidedText) {
  ReasoningParser p(true);
  ReasoningParser::Delta d = p.feed("abc</th");
  EXPECT_EQ(d.reasoning, "abc");
  EXPECT_TRUE(p.in_reasoning());
  d = p.feed("ink>\n");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "");
  EXPECT_FALSE(p.in_reasoning());
  d = p.feed("  \n");  // whitespace after the tag spans deltas
  EXPECT_EQ(d.content, "");
  d = p.feed(" Answer ");
  EXPECT_EQ(d.content, "Answer ");
  d = p.feed("\n more");  // only the whitespace right after the tag is stripped
  EXPECT_EQ(d.content, "\n more");
  d = p.flush();
  EXPECT_EQ(d.content, "");
  EXPECT_EQ(d.reasoning, "");
}

TEST(ReasoningParser, UndecidedStartIsHeldThenReleased) {
  ReasoningParser p(false);
  EXPECT_FALSE(p.in_reasoning());
  ReasoningParser::Delta d = p.feed("\n<th");
  EXPECT_EQ(d.content, "");
  EXPECT_EQ(d.reasoning, "");
  d = p.feed("ink>");
  EXPECT_TRUE(p.in_reasoning());
  EXPECT_EQ(d.reasoning, "");

  ReasoningParser q(false);
  EXPECT_EQ(q.feed(" <th").content, "");
  EXPECT_EQ(q.feed("e").content, " <the");  // diverged from "<think>": all content
  EXPECT_FALSE(q.in_reasoning());

  ReasoningParser r(false);
  EXPECT_EQ(r.feed("<thi").content, "");
  EXPECT_EQ(r.flush().content, "<thi");  // a partial tag that never completed is text
}

TEST(ReasoningParser, PromptOpensReasoning) {
  EXPECT_TRUE(prompt_opens_reasoning("<|Assistant|><think>\n"));
  EXPECT_TRUE(prompt_opens_reasoning("x<think>"));
  EXPECT_TRUE(prompt_opens_reasoning("<think> \n\t\r\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<think>\n</think>\n\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<|Assistant|>"));
  EXPECT_FALSE(prompt_opens_reasoning("think>"));
  EXPECT_FALSE(prompt_opens_reasoning(""));
  EXPECT_FALSE(prompt_opens_reasoning("  \n"));
}

}  // namespace
}  // namespace bw::server
