// The OpenAI wire format: request bodies of /v1/chat/completions and /v1/completions
// parsed and validated into plain structs, the error body, and the JSON of responses and
// stream chunks. No engine, tokenizer or HTTP here: the service (openai_service.h) wires
// them together. Pure functions; thread-safe.
//
// Parsing follows OpenAI (and vLLM's extensions): unknown fields are ignored, a known field
// of the wrong type or out of range is a 400 naming it (`param`), null means "not given".
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "engine/engine_client.h"

namespace bw::server {

enum class Endpoint { kChatCompletions, kCompletions };

// An OpenAI error: HTTP status and the fields of {"error": {...}}.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";  // or "authentication_error", "not_found_error", ...
  std::string param;                           // the offending field, "" when none
  std::string code;                            // e.g. "context_length_exceeded", "" when none
};

// {"error": {"message", "type", "param" (null when empty), "code" (null when empty)}}
std::string error_body(const ApiError& error);
// The one place Status codes become HTTP statuses: InvalidArgument/OutOfRange 400,
// NotFound 404, ResourceExhausted 429, Unavailable 503, Unimplemented 501, others 500.
ApiError api_error_from_status(const Status& status);

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string model;  // "" when absent

  // Chat: the messages as sent (roles and contents checked; content parts of type "text"
  // are joined into one string), tools and tool_choice passed to the chat template.
  nlohmann::ordered_json messages;
  nlohmann::ordered_json tools;  // null when absent
  nlohmann::ordered_json tool_choice;
  bool add_generation_prompt = true;

  // Completions: each prompt is text or token ids (a string, an array of strings, an
  // array of ints, or an array of arrays of ints). One choice group per prompt.
  std::vector<std::string> prompt_texts;
  std::vector<std::vector<int32_t>> prompt_token_ids;
  bool prompt_is_tokens = false;
  bool echo = false;  // completions: prepend the prompt text to the completion
  // vLLM extension: the response carries the prompt's and each choice's token ids
  // (prompt_token_ids, token_ids), e.g. for clients that tokenize themselves or a model
  // without a tokenizer.
  bool return_token_ids = false;

  std::optional<int32_t> max_tokens;  // max_completion_tokens wins over max_tokens; clipped to int32
  int32_t n = 1;
  SamplingParams sampling;              // temperature defaults to 1 (OpenAI's default) when not given
  std::vector<std::string> stop;        // "stop": a string or up to 4 (OpenAI) strings
  std::vector<int32_t> stop_token_ids;  // vLLM extension
  bool ignore_eos = false;              // vLLM extension
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // chat: logprobs (bool); completions: logprobs (int) given
  int32_t top_logprobs = 0;    // chat: top_logprobs; completions: the logprobs int
  std::string user;
  int32_t priority = 0;                   // lower runs first
  std::optional<double> timeout_seconds;  // per-request deadline (> 0; clipped to a year)
};

struct ParseLimits {
  int32_t max_n = 128;
  int32_t max_stop_strings = 16;
  int32_t max_prompts = 1024;  // completions batch
  int64_t vocab_size = 0;      // > 0: token ids (prompt, stop_token_ids, logit_bias) are checked
};

// Parses and validates a body. Errors are 400 ApiErrors naming the field.
Result<ParsedRequest> parse_request(Endpoint endpoint, std::string_view body, const ParseLimits& limits,
                                    ApiError* error);

// --- Responses -----------------------------------------------------------------------------

// One choice of a finished request, as the service assembled it.
struct ChoiceResult {
  int32_t index = 0;
  std::string text;               // completions text, or chat content
  std::string reasoning_content;  // chat: the <think> part, "" when none
  std::vector<int32_t> token_ids;
  std::vector<int32_t> prompt_token_ids;  // with ResponseMeta::token_ids
  std::vector<SampledLogprobs> logprobs;  // when requested
  std::string finish_reason;              // "stop", "length", "abort", "timeout", "error"
  std::string stop_reason;                // matched stop string, "" when none
};

struct ResponseMeta {
  std::string id;       // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;
  // return_token_ids: completions put prompt_token_ids and token_ids in each choice; chat
  // puts prompt_token_ids in the response (its one prompt) and token_ids in each choice.
  // Streams send prompt_token_ids with a choice's first chunk and each chunk's token_ids.
  bool token_ids = false;
};

// Token text for logprobs entries (the service passes a detokenizer of single tokens).
using TokenText = std::function<std::string(int32_t token_id)>;

// The whole non-streamed response body.
std::string chat_completion_body(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices, const Usage& usage,
                                 const TokenText& token_text);
std::string completion_body(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices, const Usage& usage,
                            const TokenText& token_text);

// One streamed delta of one choice.
struct StreamDelta {
  int32_t index = 0;
  bool role = false;  // chat: the first chunk of a choice carries {"role": "assistant"}
  std::string content;
  std::string reasoning_content;
  std::vector<SampledLogprobs> logprobs;
  std::optional<std::string> finish_reason;
  std::string stop_reason;
  std::vector<int32_t> token_ids;                        // with ResponseMeta::token_ids
  std::optional<std::vector<int32_t>> prompt_token_ids;  // the choice's first chunk
};

// "data: {...}\n\n" for one chunk (chat.completion.chunk / text_completion); usage, when
// given, is the final usage-only chunk (choices empty).
std::string chat_chunk_event(const ResponseMeta& meta, const StreamDelta& delta, const TokenText& token_text);
std::string completion_chunk_event(const ResponseMeta& meta, const StreamDelta& delta, const TokenText& token_text);
std::string usage_chunk_event(const ResponseMeta& meta, Endpoint endpoint, const Usage& usage);
inline constexpr std::string_view kStreamDone = "data: [DONE]\n\n";

}  // namespace bw::server
