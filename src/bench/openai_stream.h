// The OpenAI wire format as the benchmark speaks it: the body of a streamed chat or text
// completion request (stream_options.include_usage, max_tokens = the wanted output length,
// ignore_eos so the server generates exactly that many), and the reading of one streamed
// chunk (its text, its usage, an error object). Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace bw::bench {

enum class ApiKind { kChat, kCompletions };

// "chat" / "completions"; InvalidArgument otherwise.
Result<ApiKind> parse_api_kind(std::string_view name);
std::string_view api_kind_name(ApiKind kind);
// "/chat/completions" or "/completions" (under /v1).
std::string_view api_route(ApiKind kind);

struct RequestOptions {
  ApiKind api = ApiKind::kCompletions;
  std::string model;
  bool ignore_eos = true;
  double temperature = 0.0;
  nlohmann::json extra_body = nlohmann::json::object();  // merged over the fields above
};

// The JSON body of one streamed request for `prompt` with `max_tokens` new tokens.
std::string build_request_body(const RequestOptions& options, const std::string& prompt, int64_t max_tokens);

struct StreamChunk {
  std::string text;                      // the content of choice 0 (chat: delta.content or reasoning)
  std::optional<int64_t> prompt_tokens;  // from "usage", when the chunk carries it
  std::optional<int64_t> completion_tokens;
};

// Reads the JSON of one "data:" event. DataLoss for JSON that is not a chunk object,
// Unavailable with the server's message for an {"error": ...} event.
Result<StreamChunk> parse_stream_chunk(std::string_view data, ApiKind api);

}  // namespace bw::bench
