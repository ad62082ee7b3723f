#include "server/openai_protocol.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bw::server {
namespace {

using Json = nlohmann::ordered_json;

constexpr Endpoint kChat = Endpoint::kChatCompletions;
constexpr Endpoint kCompletions = Endpoint::kCompletions;

// A minimal valid body of the endpoint with `extra` fields appended ("" for none).
std::string body_with(Endpoint endpoint, const std::string& extra) {
  std::string body = endpoint == kChat ? R"({"model": "m", "messages": [{"role": "user", "content": "hi"}])"
                                       : R"({"model": "m", "prompt": "hi")";
  if (!extra.empty()) body += ", " + extra;
  return body + "}";
}

ParseLimits vocab_limits(int64_t vocab_size = 1000) {
  ParseLimits limits;
  limits.vocab_size = vocab_size;
  return limits;
}

ParsedRequest parse_ok(Endpoint endpoint, const std::string& body, const ParseLimits& limits = vocab_limits()) {
  ApiError error;
  Result<ParsedRequest> r = parse_request(endpoint, body, limits, &error);
  EXPECT_TRUE(r.ok()) << body << "\n-> " << error.message << " (param " << error.param << ")";
  if (!r.ok()) return ParsedRequest{};
  return std::move(r).value();
}

ApiError parse_error(Endpoint endpoint, const std::string& body, const ParseLimits& limits = vocab_limits()) {
  ApiError error;
  Result<ParsedRequest> r = parse_request(endpoint, body, limits, &error);
  EXPECT_FALSE(r.ok()) << body;
  if (!r.ok()) {
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(), error.message);
  }
  EXPECT_EQ(error.http_status, 400);
  EXPECT_EQ(error.type, "invalid_request_error");
  EXPECT_FALSE(error.message.empty());
  return error;
}

ParsedRequest chat_ok(const std::string& extra) { return parse_ok(kChat, body_with(kChat, extra)); }
ParsedRequest completion_ok(const std::string& extra) { return parse_ok(kCompletions, body_with(kCompletions, extra)); }

// --- Body -----------------------------------------------------------------------------------

TEST(ParseRequest, MinimalChatGetsDefaults) {
  const ParsedRequest r = chat_ok("");
  EXPECT_EQ(r.endpoint, kChat);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.messages, Json::parse(R"([{"role": "user", "content": "hi"}])"));
  EXPECT_TRUE(r.tools.is_null());
  EXPECT_TRUE(r.tool_choice.is_null());
  EXPECT_TRUE(r.add_generation_prompt);
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);  // OpenAI's default
  EXPECT_FLOAT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_EQ(r.sampling.logprobs, -1);
  EXPECT_FALSE(r.sampling.seed.has_value());
  EXPECT_TRUE(r.stop.empty());
  EXPECT_TRUE(r.stop_token_ids.empty());
  EXPECT_FALSE(r.ignore_eos);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.logprobs);
  EXPECT_EQ(r.priority, 0);
  EXPECT_FALSE(r.timeout_seconds.has_value());
  EXPECT_TRUE(r.prompt_texts.empty());
}

TEST(ParseRequest, InvalidJsonIs400) {
  for (const std::string body : {"", "{", "{\"model\": }", "nul", "{\"a\": 1} x", "{\"a\": \"\xff\"}", "1e999999"}) {
    SCOPED_TRACE(body);
    const ApiError e = parse_error(kChat, body);
    EXPECT_EQ(e.message.rfind("the body is not valid JSON: ", 0), 0u) << e.message;
    EXPECT_EQ(e.param, "");
  }
}

TEST(ParseRequest, BodyMustBeAnObject) {
  for (const std::string body : {"[]", "1", "\"x\"", "null", "true"}) {
    SCOPED_TRACE(body);
    const ApiError e = parse_error(kCompletions, body);
    EXPECT_NE(e.message.find("must be a JSON object"), std::string::npos) << e.message;
  }
}

TEST(ParseRequest, DeepNestingIsRejectedBeforeParsing) {
  // Far deeper than any recursion could take: must be rejected by the scan, not crash.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  ApiError e = parse_error(kChat, deep);
  EXPECT_NE(e.message.find("deeper than 64"), std::string::npos) << e.message;
  e = parse_error(kChat, body_with(kChat, "\"x\": " + std::string(65, '{') + std::string(65, '}')));
  EXPECT_NE(e.message.find("deeper than 64"), std::string::npos);
  // Unbalanced and truncated: still no crash.
  parse_error(kChat, std::string(100000, '{'));
  // Brackets inside strings do not count; escaped quotes do not end them.
  const std::string in_string = "\"x\": \"" + std::string(1000, '[') + "\\\"" + std::string(1000, '{') + "\"";
  chat_ok(in_string);
  // 63 levels inside the body object (64 in all) are fine.
  chat_ok("\"x\": " + std::string(63, '[') + std::string(63, ']'));
}

TEST(ParseRequest, TooManyObjectKeysAreRejected) {
  std::string many = "\"x\": {";
  for (int i = 0; i < 5000; ++i)
    many += (i > 0 ? ", " : "") + std::string("\"k") + std::to_string(i) + "\": 1";
  many += "}";
  const ApiError e = parse_error(kChat, body_with(kChat, many));
  EXPECT_NE(e.message.find("too many object keys"), std::string::npos);
  // A thousand keys are fine.
  std::string some = "\"x\": {";
  for (int i = 0; i < 1000; ++i)
    some += (i > 0 ? ", " : "") + std::string("\"k") + std::to_string(i) + "\": 1";
  chat_ok(some + "}");
}

TEST(ParseRequest, HugeNumbersNeverCrash) {
  chat_ok(R"("unknown": 1e308)");
  EXPECT_EQ(chat_ok(R"("max_tokens": 1e300)").max_tokens, std::numeric_limits<int32_t>::max());  // clipped
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("n": -1e300)")).param, "n");
}

TEST(ParseRequest, UnknownFieldsAreIgnoredAndNullIsAbsent) {
  const ParsedRequest r = chat_ok(
      R"("response_format": {"type": "json_object"}, "suffix": 3, "temperature": null, "stop": null, "n": null,
         "seed": null, "logprobs": null, "stream_options": null, "tools": null, "model": null)");
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.model, "");
  EXPECT_TRUE(r.tools.is_null());
}

TEST(ParseRequest, NullErrorPointerIsAllowed) {
  EXPECT_FALSE(parse_request(kChat, "[]", ParseLimits{}, nullptr).ok());
  EXPECT_TRUE(parse_request(kChat, body_with(kChat, ""), ParseLimits{}, nullptr).ok());
}

// --- Happy paths of every field ------------------------------------------------------------

TEST(ParseRequest, SamplingFields) {
  const ParsedRequest r = chat_ok(
      R"("temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "presence_penalty": -1.5,
         "frequency_penalty": 2, "repetition_penalty": 1.1, "seed": 42, "n": 3, "max_tokens": 100,
         "user": "u1", "priority": -5, "timeout": 2.5, "ignore_eos": true, "add_generation_prompt": false)");
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, -1.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, 2.0f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.max_tokens, 100);
  EXPECT_EQ(r.user, "u1");
  EXPECT_EQ(r.priority, -5);
  EXPECT_EQ(r.timeout_seconds, 2.5);
  EXPECT_TRUE(r.ignore_eos);
  EXPECT_FALSE(r.add_generation_prompt);
}

TEST(ParseRequest, RangeEdgesAreAccepted) {
  chat_ok(R"("temperature": 0, "top_p": 1, "min_p": 0, "presence_penalty": -2, "frequency_penalty": -2)");
  chat_ok(R"("temperature": 2, "top_p": 1e-9, "min_p": 1, "presence_penalty": 2, "frequency_penalty": 2)");
  EXPECT_EQ(chat_ok(R"("top_k": -1)").sampling.top_k, -1);
  EXPECT_EQ(chat_ok(R"("top_k": 0)").sampling.top_k, 0);
  EXPECT_EQ(chat_ok(R"("top_k": 1)").sampling.top_k, 1);
  EXPECT_FLOAT_EQ(chat_ok(R"("repetition_penalty": 5)").sampling.repetition_penalty, 5.0f);
  EXPECT_EQ(chat_ok(R"("n": 128)").n, 128);
}

TEST(ParseRequest, IntegralFloatsAreIntegers) {
  const ParsedRequest r = chat_ok(R"("n": 2.0, "max_tokens": 5.0, "top_k": 1e1, "seed": 7.0, "priority": -1.0)");
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_EQ(r.sampling.top_k, 10);
  EXPECT_EQ(r.sampling.seed, 7u);
  EXPECT_EQ(r.priority, -1);
}

TEST(ParseRequest, MaxCompletionTokensWins) {
  EXPECT_EQ(chat_ok(R"("max_tokens": 10, "max_completion_tokens": 20)").max_tokens, 20);
  EXPECT_EQ(chat_ok(R"("max_completion_tokens": 20, "max_tokens": 10)").max_tokens, 20);
  EXPECT_EQ(chat_ok(R"("max_completion_tokens": 7)").max_tokens, 7);
  EXPECT_EQ(completion_ok(R"("max_tokens": 9)").max_tokens, 9);
  // Limits past int32 are clipped (the service clips to the context length).
  EXPECT_EQ(chat_ok(R"("max_tokens": 99999999999999)").max_tokens, std::numeric_limits<int32_t>::max());
  EXPECT_EQ(chat_ok(R"("max_tokens": 18446744073709551615)").max_tokens, std::numeric_limits<int32_t>::max());
}

TEST(ParseRequest, SeedTakesAny64BitInteger) {
  EXPECT_EQ(chat_ok(R"("seed": 0)").sampling.seed, 0u);
  EXPECT_EQ(chat_ok(R"("seed": -1)").sampling.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(chat_ok(R"("seed": -9223372036854775808)").sampling.seed, uint64_t{1} << 63);
  EXPECT_EQ(chat_ok(R"("seed": 18446744073709551615)").sampling.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(chat_ok(R"("seed": -2.0)").sampling.seed, std::numeric_limits<uint64_t>::max() - 1);
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("seed": 1.5)")).param, "seed");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("seed": 1e30)")).param, "seed");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("seed": "1")")).param, "seed");
}

TEST(ParseRequest, TimeoutIsClippedToAYear) {
  EXPECT_EQ(chat_ok(R"("timeout": 1e300)").timeout_seconds, 365.0 * 24 * 3600);
  EXPECT_EQ(chat_ok(R"("timeout": 0.001)").timeout_seconds, 0.001);
}

TEST(ParseRequest, StopStrings) {
  EXPECT_EQ(chat_ok(R"("stop": "\n\n")").stop, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(chat_ok(R"("stop": ["a", "b"])").stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(chat_ok(R"("stop": [])").stop.empty());
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("stop": "")")).param, "stop");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("stop": ["a", ""])")).param, "stop");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("stop": ["a", 1])")).param, "stop");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("stop": 1)")).param, "stop");
  ParseLimits limits = vocab_limits();
  limits.max_stop_strings = 2;
  const ApiError e = parse_error(kChat, body_with(kChat, R"("stop": ["a", "b", "c"])"), limits);
  EXPECT_EQ(e.param, "stop");
  EXPECT_NE(e.message.find("at most 2"), std::string::npos);
}

TEST(ParseRequest, StopTokenIds) {
  EXPECT_EQ(chat_ok(R"("stop_token_ids": [0, 2, 999])").stop_token_ids, (std::vector<int32_t>{0, 2, 999}));
  for (const std::string bad : {R"([1000])", R"([-1])", R"([1.5])", R"(["1"])", R"(3)"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(parse_error(kChat, body_with(kChat, "\"stop_token_ids\": " + bad)).param, "stop_token_ids");
  }
  // Without a vocabulary only the int32 range is checked.
  ParseLimits no_vocab;
  EXPECT_EQ(parse_ok(kChat, body_with(kChat, R"("stop_token_ids": [123456])"), no_vocab).stop_token_ids[0], 123456);
  parse_error(kChat, body_with(kChat, R"("stop_token_ids": [2147483648])"), no_vocab);
}

TEST(ParseRequest, ReturnTokenIds) {
  EXPECT_FALSE(chat_ok("").return_token_ids);
  EXPECT_TRUE(chat_ok(R"("return_token_ids": true)").return_token_ids);
  EXPECT_TRUE(parse_ok(kCompletions, body_with(kCompletions, R"("return_token_ids": true)")).return_token_ids);
}

TEST(ParseRequest, LogitBias) {
  const ParsedRequest r = chat_ok(R"("logit_bias": {"5": 10, "0": -100, "999": 100.0})");
  ASSERT_EQ(r.sampling.logit_bias.size(), 3u);
  EXPECT_EQ(r.sampling.logit_bias[0], (std::pair<int32_t, float>{5, 10.0f}));  // body order kept
  EXPECT_EQ(r.sampling.logit_bias[1], (std::pair<int32_t, float>{0, -100.0f}));
  EXPECT_EQ(r.sampling.logit_bias[2], (std::pair<int32_t, float>{999, 100.0f}));
  for (const std::string bad : {R"({"1000": 1})", R"({"-1": 1})", R"({"x": 1})", R"({"": 1})", R"({"1": 101})",
                                R"({"1": -100.5})", R"({"1": "1"})", R"({"99999999999": 1})", R"([1])"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(parse_error(kChat, body_with(kChat, "\"logit_bias\": " + bad)).param, "logit_bias");
  }
}

TEST(ParseRequest, StreamAndStreamOptions) {
  ParsedRequest r = chat_ok(R"("stream": true)");
  EXPECT_TRUE(r.stream);
  EXPECT_FALSE(r.include_usage);
  r = chat_ok(R"("stream": true, "stream_options": {"include_usage": true})");
  EXPECT_TRUE(r.include_usage);
  r = completion_ok(R"("stream": true, "stream_options": {"include_usage": false, "other": 1})");
  EXPECT_FALSE(r.include_usage);
  // As OpenAI: stream_options without stream is a 400.
  for (const std::string extra : {R"("stream_options": {"include_usage": true})",
                                  R"("stream": false, "stream_options": {"include_usage": true})"}) {
    SCOPED_TRACE(extra);
    const ApiError e = parse_error(kChat, body_with(kChat, extra));
    EXPECT_EQ(e.param, "stream_options");
  }
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("stream": true, "stream_options": {"include_usage": 1})")).param,
            "stream_options");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("stream": true, "stream_options": true)")).param, "stream_options");
}

TEST(ParseRequest, ChatLogprobs) {
  ParsedRequest r = chat_ok(R"("logprobs": true)");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 0);
  EXPECT_EQ(r.sampling.logprobs, 0);
  r = chat_ok(R"("logprobs": true, "top_logprobs": 20)");
  EXPECT_EQ(r.top_logprobs, 20);
  EXPECT_EQ(r.sampling.logprobs, 20);
  r = chat_ok(R"("logprobs": false, "top_logprobs": 0)");
  EXPECT_FALSE(r.logprobs);
  EXPECT_EQ(r.sampling.logprobs, -1);
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("top_logprobs": 2)")).param, "top_logprobs");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("logprobs": false, "top_logprobs": 2)")).param, "top_logprobs");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("logprobs": true, "top_logprobs": 21)")).param, "top_logprobs");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("logprobs": true, "top_logprobs": -1)")).param, "top_logprobs");
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("logprobs": 1)")).param, "logprobs");
}

TEST(ParseRequest, CompletionLogprobs) {
  ParsedRequest r = completion_ok(R"("logprobs": 3)");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.sampling.logprobs, 3);
  r = completion_ok(R"("logprobs": 0)");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.sampling.logprobs, 0);
  r = completion_ok(R"("top_logprobs": 3)");  // not a completions field: ignored
  EXPECT_FALSE(r.logprobs);
  EXPECT_EQ(r.sampling.logprobs, -1);
  EXPECT_EQ(parse_error(kCompletions, body_with(kCompletions, R"("logprobs": 6)")).param, "logprobs");
  EXPECT_EQ(parse_error(kCompletions, body_with(kCompletions, R"("logprobs": true)")).param, "logprobs");
}

// --- Wrong types and ranges: a 400 naming the field ------------------------------------------

struct BadField {
  Endpoint endpoint;
  std::string extra;
  std::string param;
  std::string message_part;  // "" to skip
};

TEST(ParseRequest, WrongTypesAndRangesNameTheField) {
  const std::vector<BadField> cases = {
      {kChat, R"("model": 1)", "model", "'model' must be a string, got number"},
      {kChat, R"("temperature": "hot")", "temperature", "'temperature' must be a number, got string"},
      {kChat, R"("temperature": -0.1)", "temperature", "'temperature' must be in [0, 2], got -0.1"},
      {kChat, R"("temperature": 2.5)", "temperature", "in [0, 2]"},
      {kChat, R"("top_p": 0)", "top_p", "'top_p' must be in (0, 1], got 0"},
      {kChat, R"("top_p": 1.01)", "top_p", ""},
      {kChat, R"("top_p": true)", "top_p", "got boolean"},
      {kChat, R"("top_k": -2)", "top_k", "'top_k' must be in [-1, 2147483647], got -2"},
      {kChat, R"("top_k": 1.5)", "top_k", "'top_k' must be an integer, got 1.5"},
      {kChat, R"("top_k": 3000000000)", "top_k", ""},
      {kChat, R"("top_k": "5")", "top_k", "'top_k' must be an integer, got string"},
      {kChat, R"("min_p": 1.5)", "min_p", ""},
      {kChat, R"("min_p": -0.5)", "min_p", ""},
      {kChat, R"("n": 0)", "n", "'n' must be in [1, 128], got 0"},
      {kChat, R"("n": 129)", "n", ""},
      {kChat, R"("n": 1e30)", "n", ""},
      {kChat, R"("n": 18446744073709551615)", "n", ""},
      {kChat, R"("n": [1])", "n", "got array"},
      {kChat, R"("max_tokens": 0)", "max_tokens", "'max_tokens' must be >= 1, got 0"},
      {kChat, R"("max_tokens": -5)", "max_tokens", ""},
      {kChat, R"("max_tokens": 1.5)", "max_tokens", ""},
      {kChat, R"("max_tokens": "10")", "max_tokens", ""},
      {kChat, R"("max_completion_tokens": 0)", "max_completion_tokens", ""},
      {kChat, R"("presence_penalty": 2.1)", "presence_penalty", ""},
      {kChat, R"("frequency_penalty": -3)", "frequency_penalty", ""},
      {kChat, R"("frequency_penalty": {})", "frequency_penalty", "got object"},
      {kChat, R"("repetition_penalty": 0)", "repetition_penalty", "'repetition_penalty' must be > 0, got 0"},
      {kChat, R"("repetition_penalty": -1)", "repetition_penalty", ""},
      {kChat, R"("repetition_penalty": 1e300)", "repetition_penalty", "out of range"},
      {kChat, R"("stream": 1)", "stream", "'stream' must be a boolean, got number"},
      {kChat, R"("ignore_eos": "yes")", "ignore_eos", ""},
      {kChat, R"("user": 5)", "user", ""},
      {kChat, R"("priority": 1.5)", "priority", ""},
      {kChat, R"("priority": 3000000000)", "priority", ""},
      {kChat, R"("timeout": 0)", "timeout", "'timeout' must be > 0, got 0"},
      {kChat, R"("timeout": -1)", "timeout", ""},
      {kChat, R"("timeout": "1")", "timeout", ""},
      {kChat, R"("add_generation_prompt": 1)", "add_generation_prompt", ""},
      {kChat, R"("tools": {})", "tools", "'tools' must be an array, got object"},
      {kChat, R"("tool_choice": 1)", "tool_choice", ""},
      {kCompletions, R"("echo": "true")", "echo", ""},
      {kChat, R"("return_token_ids": 1)", "return_token_ids", ""},
      {kCompletions, R"("temperature": [])", "temperature", ""},
      {kCompletions, R"("n": 0.5)", "n", ""},
  };
  for (const BadField& c : cases) {
    SCOPED_TRACE(c.extra);
    const ApiError e = parse_error(c.endpoint, body_with(c.endpoint, c.extra));
    EXPECT_EQ(e.param, c.param);
    if (!c.message_part.empty()) {
      EXPECT_NE(e.message.find(c.message_part), std::string::npos) << e.message;
    }
  }
}

TEST(ParseRequest, MaxNIsALimit) {
  ParseLimits limits = vocab_limits();
  limits.max_n = 4;
  EXPECT_EQ(parse_ok(kChat, body_with(kChat, R"("n": 4)"), limits).n, 4);
  EXPECT_EQ(parse_error(kChat, body_with(kChat, R"("n": 5)"), limits).message, "'n' must be in [1, 4], got 5");
}

TEST(ParseRequest, NoVocabularySkipsTokenChecks) {
  ParseLimits no_vocab;
  const ParsedRequest r = parse_ok(kChat, body_with(kChat, R"("logit_bias": {"100000": 5})"), no_vocab);
  ASSERT_EQ(r.sampling.logit_bias.size(), 1u);
  EXPECT_EQ(r.sampling.logit_bias[0].first, 100000);
}

// --- Chat messages ---------------------------------------------------------------------------

TEST(ParseRequest, MessagesRequiredNonEmptyArrayOfObjects) {
  EXPECT_EQ(parse_error(kChat, R"({"model": "m"})").param, "messages");
  EXPECT_EQ(parse_error(kChat, R"({"messages": null})").param, "messages");
  EXPECT_EQ(parse_error(kChat, R"({"messages": []})").param, "messages");
  EXPECT_EQ(parse_error(kChat, R"({"messages": "hi"})").param, "messages");
  EXPECT_EQ(parse_error(kChat, R"({"messages": ["hi"]})").param, "messages[0]");
}

TEST(ParseRequest, MessageRoles) {
  for (const std::string role : {"system", "user", "assistant", "developer"}) {
    parse_ok(kChat, R"({"messages": [{"role": ")" + role + R"(", "content": "x"}]})");
  }
  parse_ok(kChat, R"({"messages": [{"role": "tool", "content": "42", "tool_call_id": "call_1"}]})");
  ApiError e =
      parse_error(kChat, R"({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "x"}]})");
  EXPECT_EQ(e.param, "messages[1].role");
  EXPECT_NE(e.message.find("\"bot\""), std::string::npos) << e.message;
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"content": "x"}]})").param, "messages[0].role");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": 1, "content": "x"}]})").param, "messages[0].role");
  e = parse_error(kChat, R"({"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]})");
  EXPECT_EQ(e.param, "messages[0].tool_call_id");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "user", "content": "x", "name": 5}]})").param,
            "messages[0].name");
}

TEST(ParseRequest, MessageContentForms) {
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "user"}]})").param, "messages[0].content");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "user", "content": null}]})").param, "messages[0].content");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "assistant", "content": null}]})").param,
            "messages[0].content");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "user", "content": 5}]})").param, "messages[0].content");
  // Assistant messages with tool_calls may have no content; tool_calls pass through.
  const std::string tool_calls =
      R"([{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"x\": 1}"}}])";
  const ParsedRequest r = parse_ok(kChat, R"({"messages": [{"role": "user", "content": "q"},
      {"role": "assistant", "content": null, "tool_calls": )" +
                                              tool_calls + R"(},
      {"role": "tool", "tool_call_id": "call_1", "content": "1"}]})");
  EXPECT_TRUE(r.messages[1]["content"].is_null());
  EXPECT_EQ(r.messages[1]["tool_calls"], Json::parse(tool_calls));
  EXPECT_EQ(r.messages[2]["tool_call_id"], "call_1");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "assistant", "tool_calls": {}}]})").param,
            "messages[0].tool_calls");
}

TEST(ParseRequest, TextContentPartsAreJoined) {
  const ParsedRequest r = parse_ok(kChat, R"({"messages": [{"role": "user", "content":
      [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}], "extra": 1}]})");
  EXPECT_EQ(r.messages, Json::parse(R"([{"role": "user", "content": "Hello, world", "extra": 1}])"));
  EXPECT_EQ(r.messages[0].begin().key(), "role");  // key order kept
  EXPECT_EQ(parse_ok(kChat, R"({"messages": [{"role": "user", "content": []}]})").messages[0]["content"], "");

  ApiError e = parse_error(kChat, R"({"messages": [{"role": "user", "content":
      [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "http://x"}}]}]})");
  EXPECT_EQ(e.param, "messages[0].content[1].type");
  EXPECT_NE(e.message.find("only text content parts are supported"), std::string::npos);
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})").param,
            "messages[0].content[0].text");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "user", "content": [{"text": "a"}]}]})").param,
            "messages[0].content[0].type");
  EXPECT_EQ(parse_error(kChat, R"({"messages": [{"role": "user", "content": ["a"]}]})").param,
            "messages[0].content[0]");
}

TEST(ParseRequest, ToolsPassThroughKeepingKeyOrder) {
  const std::string tools =
      R"([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
          "properties": {"zeta": {"type": "string"}, "alpha": {"type": "number"}}, "required": ["zeta"]}}}])";
  const std::string choice = R"({"type": "function", "function": {"name": "get_weather"}})";
  const ParsedRequest r = chat_ok("\"tools\": " + tools + ", \"tool_choice\": " + choice);
  EXPECT_EQ(r.tools, Json::parse(tools));
  EXPECT_EQ(r.tools.dump(), Json::parse(tools).dump());
  const Json& props = r.tools[0]["function"]["parameters"]["properties"];
  EXPECT_EQ(props.begin().key(), "zeta");
  EXPECT_EQ(r.tool_choice, Json::parse(choice));
  EXPECT_EQ(chat_ok(R"("tool_choice": "auto")").tool_choice, "auto");
}

// --- Completions prompts ---------------------------------------------------------------------

TEST(ParseRequest, CompletionPromptForms) {
  ParsedRequest r = parse_ok(kCompletions, R"({"prompt": "Once upon"})");
  EXPECT_EQ(r.prompt_texts, std::vector<std::string>{"Once upon"});
  EXPECT_FALSE(r.prompt_is_tokens);

  r = parse_ok(kCompletions, R"({"prompt": ["a", "b", "c"]})");
  EXPECT_EQ(r.prompt_texts, (std::vector<std::string>{"a", "b", "c"}));

  r = parse_ok(kCompletions, R"({"prompt": [1, 2, 3]})");
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_TRUE(r.prompt_texts.empty());
  EXPECT_EQ(r.prompt_token_ids, (std::vector<std::vector<int32_t>>{{1, 2, 3}}));

  r = parse_ok(kCompletions, R"({"prompt": [[1, 2], [999], [0.0]]})");
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_token_ids, (std::vector<std::vector<int32_t>>{{1, 2}, {999}, {0}}));

  EXPECT_TRUE(parse_ok(kCompletions, R"({"prompt": "x", "echo": true})").echo);
}

TEST(ParseRequest, CompletionPromptErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"model": "m"})", "prompt"},
      {R"({"prompt": null})", "prompt"},
      {R"({"prompt": ""})", "prompt"},
      {R"({"prompt": []})", "prompt"},
      {R"({"prompt": [[]]})", "prompt[0]"},
      {R"({"prompt": ["a", ""]})", "prompt[1]"},
      {R"({"prompt": 5})", "prompt"},
      {R"({"prompt": {"a": 1}})", "prompt"},
      {R"({"prompt": [true]})", "prompt"},
      {R"({"prompt": [{}]})", "prompt"},
      {R"({"prompt": ["a", 1]})", "prompt[1]"},
      {R"({"prompt": [1, "a"]})", "prompt[1]"},
      {R"({"prompt": [1, 1000]})", "prompt[1]"},
      {R"({"prompt": [-1]})", "prompt[0]"},
      {R"({"prompt": [1.5]})", "prompt[0]"},
      {R"({"prompt": [[1], 2]})", "prompt[1]"},
      {R"({"prompt": [[1], [2, 1000]]})", "prompt[1][1]"},
      {R"({"prompt": [[1], ["a"]]})", "prompt[1][0]"},
  };
  for (const auto& [body, param] : cases) {
    SCOPED_TRACE(body);
    EXPECT_EQ(parse_error(kCompletions, body).param, param);
  }
  ParseLimits limits = vocab_limits();
  limits.max_prompts = 2;
  EXPECT_EQ(parse_error(kCompletions, R"({"prompt": ["a", "b", "c"]})", limits).param, "prompt");
  EXPECT_EQ(parse_ok(kCompletions, R"({"prompt": [1, 2, 3]})", limits).prompt_token_ids.size(), 1u);
}

TEST(ParseRequest, EndpointSpecificFieldsAreIgnoredElsewhere) {
  // "prompt" on chat and "messages" on completions are unknown fields there.
  EXPECT_TRUE(chat_ok(R"("prompt": 5, "echo": "x")").prompt_texts.empty());
  EXPECT_TRUE(completion_ok(R"("messages": 5, "add_generation_prompt": 3)").messages.is_null());
}

// --- Errors ----------------------------------------------------------------------------------

TEST(ErrorBody, OpenAiShape) {
  ApiError error;
  error.message = "'n' must be in [1, 128], got 0";
  error.param = "n";
  Json j = Json::parse(error_body(error));
  EXPECT_EQ(j, Json::parse(R"({"error": {"message": "'n' must be in [1, 128], got 0",
                                         "type": "invalid_request_error", "param": "n", "code": null}})"));
  EXPECT_EQ(j["error"].begin().key(), "message");

  error = ApiError{429, "busy", "rate_limit_error", "", "queue_full"};
  j = Json::parse(error_body(error));
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_EQ(j["error"]["code"], "queue_full");
  // Invalid UTF-8 in a message (echoed input) is replaced, never thrown on.
  error.message = "bad \xff\xfe";
  j = Json::parse(error_body(error));
  EXPECT_EQ(j["error"]["message"], "bad \xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(ApiErrorFromStatus, MapsEveryCode) {
  const std::vector<std::pair<Status, int>> cases = {
      {InvalidArgument("bad"), 400},    {OutOfRange("far"), 400},   {NotFound("gone"), 404},
      {ResourceExhausted("full"), 429}, {Unavailable("down"), 503}, {Unimplemented("no"), 501},
      {Internal("bug"), 500},           {DataLoss("corrupt"), 500}, {FailedPrecondition("state"), 500},
  };
  for (const auto& [status, http] : cases) {
    SCOPED_TRACE(status.to_string());
    const ApiError e = api_error_from_status(status);
    EXPECT_EQ(e.http_status, http);
    EXPECT_EQ(e.message, status.message());
    EXPECT_EQ(e.param, "");
    EXPECT_FALSE(e.type.empty());
  }
  EXPECT_EQ(api_error_from_status(InvalidArgument("x")).type, "invalid_request_error");
  EXPECT_EQ(api_error_from_status(NotFound("x")).type, "not_found_error");
  EXPECT_EQ(api_error_from_status(Internal("x")).type, "server_error");
}

// --- Responses -------------------------------------------------------------------------------

ResponseMeta test_meta(const std::string& id) {
  ResponseMeta meta;
  meta.id = id;
  meta.created = 1700000000;
  meta.model = "tiny";
  return meta;
}

std::string fake_token_text(int32_t id) {
  if (id == 7) return "\xE2\x82";  // the first two bytes of "€": not valid UTF-8 alone
  return "t" + std::to_string(id);
}

SampledLogprobs sampled(int32_t id, float logprob, std::vector<TokenLogprob> top = {}) {
  SampledLogprobs s;
  s.token_id = id;
  s.logprob = logprob;
  s.top = std::move(top);
  return s;
}

Usage test_usage() {
  Usage usage;
  usage.prompt_tokens = 10;
  usage.completion_tokens = 5;
  usage.cached_tokens = 4;
  return usage;
}

TEST(Responses, ChatCompletionBody) {
  ChoiceResult a;
  a.index = 0;
  a.text = "Hello";
  a.reasoning_content = "thinking";
  a.finish_reason = "stop";
  a.stop_reason = "###";
  ChoiceResult b;
  b.index = 1;
  b.text = "Hi";
  b.finish_reason = "length";
  b.logprobs = {sampled(1, -0.5f, {{1, -0.5f}, {7, -1.25f}}), sampled(7, -std::numeric_limits<float>::infinity())};
  const Json j = Json::parse(chat_completion_body(test_meta("chatcmpl-1"), {a, b}, test_usage(), fake_token_text));
  const Json expected = Json::parse(R"({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "tiny",
    "choices": [
      {"index": 0, "message": {"role": "assistant", "content": "Hello", "reasoning_content": "thinking"},
       "logprobs": null, "finish_reason": "stop", "stop_reason": "###"},
      {"index": 1, "message": {"role": "assistant", "content": "Hi"},
       "logprobs": {"content": [
         {"token": "t1", "logprob": -0.5, "bytes": [116, 49], "top_logprobs": [
           {"token": "t1", "logprob": -0.5, "bytes": [116, 49]},
           {"token": "\ufffd", "logprob": -1.25, "bytes": [226, 130]}]},
         {"token": "\ufffd", "logprob": -9999.0, "bytes": [226, 130], "top_logprobs": []}]},
       "finish_reason": "length", "stop_reason": null}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
              "prompt_tokens_details": {"cached_tokens": 4}}})");
  EXPECT_EQ(j, expected) << j.dump(2);
  // Field order as OpenAI's.
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it)
    keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"id", "object", "created", "model", "choices", "usage"}));
}

TEST(Responses, LogprobsAreWrittenShort) {
  ChoiceResult c;
  c.text = "x";
  c.finish_reason = "stop";
  c.logprobs = {sampled(1, -0.1f)};
  const std::string body = chat_completion_body(test_meta("c"), {c}, Usage{}, fake_token_text);
  EXPECT_NE(body.find("\"logprob\":-0.1,"), std::string::npos) << body;
}

TEST(Responses, CompletionBody) {
  ChoiceResult c;
  c.index = 0;
  c.text = "Prompt: t1t2";  // echo: the prompt text before the tokens
  c.finish_reason = "abort";
  c.logprobs = {sampled(1, -1.0f, {{1, -1.0f}, {3, -2.0f}}), sampled(2, -0.25f, {{2, -0.25f}})};
  const Json j = Json::parse(completion_body(test_meta("cmpl-9"), {c}, test_usage(), fake_token_text));
  const Json expected = Json::parse(R"({
    "id": "cmpl-9", "object": "text_completion", "created": 1700000000, "model": "tiny",
    "choices": [{"index": 0, "text": "Prompt: t1t2",
      "logprobs": {"tokens": ["t1", "t2"], "token_logprobs": [-1.0, -0.25],
                   "top_logprobs": [{"t1": -1.0, "t3": -2.0}, {"t2": -0.25}], "text_offset": [8, 10]},
      "finish_reason": "abort", "stop_reason": null}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
              "prompt_tokens_details": {"cached_tokens": 4}}})");
  EXPECT_EQ(j, expected) << j.dump(2);

  // Text shorter than its tokens (a trimmed stop string): offsets from 0.
  c.text = "t1";
  const Json k = Json::parse(completion_body(test_meta("cmpl-9"), {c}, test_usage(), nullptr));
  EXPECT_EQ(k["choices"][0]["logprobs"]["text_offset"], Json::parse("[0, 10]"));  // "token_id:1" without a detokenizer
  EXPECT_EQ(k["choices"][0]["logprobs"]["tokens"][0], "token_id:1");
}

// Strips the "data: " framing of one SSE event and parses it.
Json event_json(const std::string& event) {
  EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
  EXPECT_GE(event.size(), 8u);
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  EXPECT_EQ(event.find('\n'), event.size() - 2) << "one line per event";
  return Json::parse(event.substr(6, event.size() - 8));
}

TEST(Responses, ChatChunks) {
  const ResponseMeta meta = test_meta("chatcmpl-2");
  StreamDelta first;
  first.index = 1;
  first.role = true;
  Json j = event_json(chat_chunk_event(meta, first, fake_token_text));
  EXPECT_EQ(j, Json::parse(R"({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1700000000,
      "model": "tiny", "choices": [{"index": 1, "delta": {"role": "assistant", "content": ""},
      "logprobs": null, "finish_reason": null}]})"));

  StreamDelta text;
  text.content = "Hel\nlo";
  text.reasoning_content = "hmm";
  text.logprobs = {sampled(4, -0.5f)};
  j = event_json(chat_chunk_event(meta, text, fake_token_text));
  EXPECT_EQ(j["choices"][0]["delta"], Json::parse(R"({"content": "Hel\nlo", "reasoning_content": "hmm"})"));
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["token"], "t4");

  StreamDelta reasoning_only;
  reasoning_only.reasoning_content = "r";
  j = event_json(chat_chunk_event(meta, reasoning_only, fake_token_text));
  EXPECT_EQ(j["choices"][0]["delta"], Json::parse(R"({"reasoning_content": "r"})"));

  StreamDelta finish;
  finish.finish_reason = "timeout";
  j = event_json(chat_chunk_event(meta, finish, fake_token_text));
  EXPECT_EQ(j["choices"][0]["delta"], Json::object());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "timeout");
  EXPECT_TRUE(j["choices"][0]["stop_reason"].is_null());
  EXPECT_FALSE(j.contains("usage"));
}

TEST(Responses, CompletionChunksAndUsage) {
  const ResponseMeta meta = test_meta("cmpl-3");
  StreamDelta delta;
  delta.content = "abc";
  delta.finish_reason = "stop";
  delta.stop_reason = "\n";
  Json j = event_json(completion_chunk_event(meta, delta, fake_token_text));
  EXPECT_EQ(j, Json::parse(R"({"id": "cmpl-3", "object": "text_completion", "created": 1700000000, "model": "tiny",
      "choices": [{"index": 0, "text": "abc", "logprobs": null, "finish_reason": "stop", "stop_reason": "\n"}]})"));

  j = event_json(usage_chunk_event(meta, kCompletions, test_usage()));
  EXPECT_EQ(j, Json::parse(R"({"id": "cmpl-3", "object": "text_completion", "created": 1700000000, "model": "tiny",
      "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
      "prompt_tokens_details": {"cached_tokens": 4}}})"));
  j = event_json(usage_chunk_event(meta, kChat, Usage{}));
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["usage"]["total_tokens"], 0);
  EXPECT_EQ(kStreamDone, "data: [DONE]\n\n");
}

TEST(Responses, TokenIdsWhenAsked) {
  ChoiceResult c;
  c.text = "t1t2";
  c.token_ids = {1, 2};
  c.prompt_token_ids = {7, 8, 9};
  c.finish_reason = "length";
  ResponseMeta meta = test_meta("cmpl-4");
  // Not asked: no token id fields anywhere.
  for (const std::string& body :
       {completion_body(meta, {c}, test_usage(), nullptr), chat_completion_body(meta, {c}, test_usage(), nullptr)}) {
    EXPECT_EQ(body.find("token_ids"), std::string::npos) << body;
  }
  meta.token_ids = true;
  Json j = Json::parse(completion_body(meta, {c}, test_usage(), nullptr));
  EXPECT_EQ(j["choices"][0]["prompt_token_ids"], Json::parse("[7, 8, 9]"));
  EXPECT_EQ(j["choices"][0]["token_ids"], Json::parse("[1, 2]"));
  j = Json::parse(chat_completion_body(meta, {c}, test_usage(), nullptr));
  EXPECT_EQ(j["prompt_token_ids"], Json::parse("[7, 8, 9]"));
  EXPECT_EQ(j["choices"][0]["token_ids"], Json::parse("[1, 2]"));
  EXPECT_FALSE(j["choices"][0].contains("prompt_token_ids"));

  StreamDelta first;
  first.token_ids = {1};
  first.prompt_token_ids = std::vector<int32_t>{7, 8, 9};
  j = event_json(completion_chunk_event(meta, first, nullptr));
  EXPECT_EQ(j["choices"][0]["prompt_token_ids"], Json::parse("[7, 8, 9]"));
  EXPECT_EQ(j["choices"][0]["token_ids"], Json::parse("[1]"));
  j = event_json(chat_chunk_event(meta, first, nullptr));
  EXPECT_EQ(j["prompt_token_ids"], Json::parse("[7, 8, 9]"));
  EXPECT_EQ(j["choices"][0]["token_ids"], Json::parse("[1]"));
  StreamDelta next;
  next.token_ids = {2};
  j = event_json(completion_chunk_event(meta, next, nullptr));
  EXPECT_FALSE(j["choices"][0].contains("prompt_token_ids"));
  EXPECT_EQ(j["choices"][0]["token_ids"], Json::parse("[2]"));
}

TEST(Responses, InvalidUtf8TextIsReplaced) {
  ChoiceResult c;
  c.text = "ok \xC3";
  c.finish_reason = "stop";
  const Json j = Json::parse(chat_completion_body(test_meta("x"), {c}, Usage{}, nullptr));
  EXPECT_EQ(j["choices"][0]["message"]["content"], "ok \xEF\xBF\xBD");
}

}  // namespace
}  // namespace bw::server
