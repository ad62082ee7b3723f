#include "bench/openai_stream.h"

#include <gtest/gtest.h>

#include "bench/http_stream_client.h"

namespace bw::bench {
namespace {

using Json = nlohmann::json;

TEST(OpenAiStreamTest, RequestBodies) {
  RequestOptions options;
  options.model = "m";
  Json completion = Json::parse(build_request_body(options, "hello", 16));
  EXPECT_EQ(completion["model"], "m");
  EXPECT_EQ(completion["prompt"], "hello");
  EXPECT_EQ(completion["max_tokens"], 16);
  EXPECT_EQ(completion["stream"], true);
  EXPECT_EQ(completion["stream_options"]["include_usage"], true);
  EXPECT_EQ(completion["ignore_eos"], true);
  EXPECT_EQ(completion["temperature"], 0.0);

  options.api = ApiKind::kChat;
  options.ignore_eos = false;
  options.extra_body = Json{{"top_p", 0.5}, {"max_tokens", 3}};
  Json chat = Json::parse(build_request_body(options, "hi", 16));
  EXPECT_EQ(chat["messages"][0]["role"], "user");
  EXPECT_EQ(chat["messages"][0]["content"], "hi");
  EXPECT_FALSE(chat.contains("prompt"));
  EXPECT_FALSE(chat.contains("ignore_eos"));
  EXPECT_EQ(chat["top_p"], 0.5);
  EXPECT_EQ(chat["max_tokens"], 3);  // --extra-body wins
}

TEST(OpenAiStreamTest, ParseChunks) {
  auto text =
      parse_stream_chunk(R"({"choices":[{"index":0,"text":"abc","finish_reason":null}]})", ApiKind::kCompletions);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->text, "abc");
  EXPECT_FALSE(text->completion_tokens);

  auto role = parse_stream_chunk(R"({"choices":[{"index":0,"delta":{"role":"assistant"}}]})", ApiKind::kChat);
  ASSERT_TRUE(role.ok());
  EXPECT_EQ(role->text, "");
  auto content =
      parse_stream_chunk(R"({"choices":[{"delta":{"content":"x","reasoning_content":null}}]})", ApiKind::kChat);
  ASSERT_TRUE(content.ok());
  EXPECT_EQ(content->text, "x");
  auto thinking = parse_stream_chunk(R"({"choices":[{"delta":{"reasoning_content":"hmm"}}]})", ApiKind::kChat);
  ASSERT_TRUE(thinking.ok());
  EXPECT_EQ(thinking->text, "hmm");

  auto usage = parse_stream_chunk(
      R"({"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":9,"total_tokens":16}})", ApiKind::kChat);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->prompt_tokens, 7);
  EXPECT_EQ(usage->completion_tokens, 9);
  auto null_usage = parse_stream_chunk(R"({"choices":[{"text":"a"}],"usage":null})", ApiKind::kCompletions);
  ASSERT_TRUE(null_usage.ok());
  EXPECT_FALSE(null_usage->completion_tokens);

  auto error = parse_stream_chunk(R"({"error":{"message":"boom","type":"server_error"}})", ApiKind::kChat);
  EXPECT_EQ(error.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(error.status().message().find("boom"), std::string::npos);
  EXPECT_EQ(parse_stream_chunk("{not json", ApiKind::kChat).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(parse_stream_chunk("[1,2]", ApiKind::kChat).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(parse_stream_chunk(R"({"choices":[3]})", ApiKind::kChat).status().code(), StatusCode::kDataLoss);
}

TEST(HttpUrlTest, ParseAndTargets) {
  auto a = parse_http_url("http://127.0.0.1:8000");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, "8000");
  EXPECT_EQ(openai_target(*a, "/completions"), "/v1/completions");
  auto b = parse_http_url("http://localhost/v1/");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->port, "80");
  EXPECT_EQ(openai_target(*b, "/chat/completions"), "/v1/chat/completions");
  auto c = parse_http_url("http://[::1]:9000/proxy");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(openai_target(*c, "/models"), "/proxy/v1/models");
  EXPECT_EQ(parse_http_url("https://x").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(parse_http_url("ftp://x").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_http_url("http://:80").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_http_url("http://h:99999").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_http_url("http://h:8a").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(failure_kind_name(FailureKind::kHttpStatus, 429), "http_429");
  EXPECT_EQ(failure_kind_name(FailureKind::kConnect, 0), "connect_error");
}

}  // namespace
}  // namespace bw::bench
