#include "bench/sse_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace bw::bench {
namespace {

std::vector<std::string> parse_all(const std::string& body, const std::vector<size_t>& cuts) {
  SseParser parser;
  std::vector<std::string> events;
  size_t pos = 0;
  for (size_t cut : cuts) {
    EXPECT_TRUE(parser.feed(std::string_view(body).substr(pos, cut - pos), &events).ok());
    pos = cut;
  }
  EXPECT_TRUE(parser.feed(std::string_view(body).substr(pos), &events).ok());
  parser.finish(&events);
  return events;
}

TEST(SseParserTest, EventsDataLinesAndComments) {
  const std::string body =
      ": keep-alive\n\ndata: {\"a\":1}\n\ndata:no-space\n\nevent: ping\nid: 7\ndata: one\ndata: two\n\ndata: "
      "[DONE]\n\n";
  const std::vector<std::string> events = parse_all(body, {});
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0], "{\"a\":1}");
  EXPECT_EQ(events[1], "no-space");
  EXPECT_EQ(events[2], "one\ntwo");
  EXPECT_EQ(events[3], "[DONE]");
}

TEST(SseParserTest, EverySplitPointGivesTheSameEvents) {
  for (const std::string& body :
       {std::string("data: hello\r\n\r\ndata: world\r\n\r\n"), std::string("data: hello\n\ndata: world\n\n"),
        std::string("data: hello\r\rdata: world\r\r")}) {
    for (size_t a = 0; a <= body.size(); ++a) {
      for (size_t b = a; b <= body.size(); ++b) {
        const std::vector<std::string> events = parse_all(body, {a, b});
        ASSERT_EQ(events.size(), 2u) << "cuts " << a << "," << b;
        EXPECT_EQ(events[0], "hello");
        EXPECT_EQ(events[1], "world");
      }
    }
  }
}

TEST(SseParserTest, ByteByByte) {
  const std::string body = "data: {\"x\": \"a\\nb\"}\r\n\r\n: c\r\ndata: 2\n\n";
  SseParser parser;
  std::vector<std::string> events;
  for (char c : body)
    ASSERT_TRUE(parser.feed(std::string_view(&c, 1), &events).ok());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0], "{\"x\": \"a\\nb\"}");
  EXPECT_EQ(events[1], "2");
}

TEST(SseParserTest, CrLfSplitAcrossChunksIsOneLineEnd) {
  SseParser parser;
  std::vector<std::string> events;
  ASSERT_TRUE(parser.feed("data: a\r", &events).ok());
  ASSERT_TRUE(parser.feed("\ndata: b\r", &events).ok());
  EXPECT_TRUE(events.empty());  // "\r\n" is one line end: the a/b event is not closed yet
  ASSERT_TRUE(parser.feed("\n\r\n", &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0], "a\nb");
}

TEST(SseParserTest, UnterminatedLastEventIsKeptAtFinish) {
  SseParser parser;
  std::vector<std::string> events;
  ASSERT_TRUE(parser.feed("data: 1\n\ndata: 2", &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_GT(parser.buffered_bytes(), 0u);
  parser.finish(&events);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1], "2");
}

TEST(SseParserTest, OversizedEventIsDataLoss) {
  SseParser parser(64);
  std::vector<std::string> events;
  EXPECT_TRUE(parser.feed("data: short\n\n", &events).ok());
  Status s = parser.feed("data: " + std::string(100, 'x'), &events);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
}

}  // namespace
}  // namespace bw::bench
