// Response half of openai_protocol.h: the error body, the Status -> HTTP mapping, and the
// JSON of responses and stream chunks in OpenAI's shapes (vLLM's extras: reasoning_content,
// stop_reason). Built as ordered_json so fields keep OpenAI's order; dumped with invalid
// UTF-8 replaced (single-token texts may be partial characters; `bytes` carries them).
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "server/openai_protocol.h"

namespace bw::server {

namespace {

using Json = nlohmann::ordered_json;

// What vLLM reports for a logprob that is -inf (or NaN): JSON has no infinities.
constexpr double kMinLogprob = -9999.0;

std::string dump(const Json& json) { return json.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json string_or_null(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

// The float's shortest decimal form as a double, so -0.1f is written -0.1, not
// -0.10000000149011612.
double logprob_value(float logprob) {
  if (!std::isfinite(logprob)) return kMinLogprob;
  const std::string text = fmt::format("{}", logprob);
  double value = logprob;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return std::max(value, kMinLogprob);
}

std::string token_text_of(const TokenText& token_text, int32_t token_id) {
  return token_text ? token_text(token_id) : fmt::format("token_id:{}", token_id);
}

Json utf8_bytes(const std::string& text) {
  Json bytes = Json::array();
  for (const char c : text)
    bytes.push_back(static_cast<int>(static_cast<unsigned char>(c)));
  return bytes;
}

Json usage_json(const Usage& usage) {
  Json j;
  j["prompt_tokens"] = usage.prompt_tokens;
  j["completion_tokens"] = usage.completion_tokens;
  j["total_tokens"] = int64_t{usage.prompt_tokens} + usage.completion_tokens;
  j["prompt_tokens_details"] = Json{{"cached_tokens", usage.cached_tokens}};
  return j;
}

Json meta_json(const ResponseMeta& meta, std::string_view object) {
  Json j;
  j["id"] = meta.id;
  j["object"] = object;
  j["created"] = meta.created;
  j["model"] = meta.model;
  return j;
}

// Chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
Json chat_logprobs(const std::vector<SampledLogprobs>& logprobs, const TokenText& token_text) {
  if (logprobs.empty()) return nullptr;
  Json content = Json::array();
  for (const SampledLogprobs& entry : logprobs) {
    const std::string text = token_text_of(token_text, entry.token_id);
    Json item;
    item["token"] = text;
    item["logprob"] = logprob_value(entry.logprob);
    item["bytes"] = utf8_bytes(text);
    Json top = Json::array();
    for (const TokenLogprob& alt : entry.top) {
      const std::string alt_text = token_text_of(token_text, alt.token_id);
      Json t;
      t["token"] = alt_text;
      t["logprob"] = logprob_value(alt.logprob);
      t["bytes"] = utf8_bytes(alt_text);
      top.push_back(std::move(t));
    }
    item["top_logprobs"] = std::move(top);
    content.push_back(std::move(item));
  }
  Json j;
  j["content"] = std::move(content);
  return j;
}

// Completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}.
// Offsets count from the start of `text` when it ends with the tokens' texts (echo puts
// the prompt before them), else from 0.
Json completion_logprobs(const std::vector<SampledLogprobs>& logprobs, const std::string& text,
                         const TokenText& token_text) {
  if (logprobs.empty()) return nullptr;
  std::vector<std::string> texts;
  texts.reserve(logprobs.size());
  std::string joined;
  for (const SampledLogprobs& entry : logprobs) {
    texts.push_back(token_text_of(token_text, entry.token_id));
    joined += texts.back();
  }
  size_t offset = 0;
  if (joined.size() <= text.size() && text.compare(text.size() - joined.size(), joined.size(), joined) == 0) {
    offset = text.size() - joined.size();
  }
  Json tokens = Json::array();
  Json token_logprobs = Json::array();
  Json top_logprobs = Json::array();
  Json text_offset = Json::array();
  for (size_t i = 0; i < logprobs.size(); ++i) {
    tokens.push_back(texts[i]);
    token_logprobs.push_back(logprob_value(logprobs[i].logprob));
    Json top = Json::object();
    for (const TokenLogprob& alt : logprobs[i].top) {
      top[token_text_of(token_text, alt.token_id)] = logprob_value(alt.logprob);
    }
    top_logprobs.push_back(std::move(top));
    text_offset.push_back(offset);
    offset += texts[i].size();
  }
  Json j;
  j["tokens"] = std::move(tokens);
  j["token_logprobs"] = std::move(token_logprobs);
  j["top_logprobs"] = std::move(top_logprobs);
  j["text_offset"] = std::move(text_offset);
  return j;
}

std::string_view error_type(int http_status) {
  switch (http_status) {
    case 400:
      return "invalid_request_error";
    case 404:
      return "not_found_error";
    case 429:
      return "rate_limit_error";
    case 501:
      return "not_implemented_error";
    case 503:
      return "service_unavailable_error";
    default:
      return "server_error";
  }
}

}  // namespace

std::string error_body(const ApiError& error) {
  Json inner;
  inner["message"] = error.message;
  inner["type"] = error.type;
  inner["param"] = string_or_null(error.param);
  inner["code"] = string_or_null(error.code);
  Json j;
  j["error"] = std::move(inner);
  return dump(j);
}

ApiError api_error_from_status(const Status& status) {
  ApiError error;
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      error.http_status = 400;
      break;
    case StatusCode::kNotFound:
      error.http_status = 404;
      break;
    case StatusCode::kResourceExhausted:
      error.http_status = 429;
      break;
    case StatusCode::kUnavailable:
      error.http_status = 503;
      break;
    case StatusCode::kUnimplemented:
      error.http_status = 501;
      break;
    default:  // kOk here is a caller's bug; still an error answer
      error.http_status = 500;
      break;
  }
  error.type = std::string(error_type(error.http_status));
  error.message = status.message().empty() ? std::string(status_code_name(status.code())) : status.message();
  return error;
}

std::string chat_completion_body(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices, const Usage& usage,
                                 const TokenText& token_text) {
  Json j = meta_json(meta, "chat.completion");
  Json out_choices = Json::array();
  for (const ChoiceResult& choice : choices) {
    Json message;
    message["role"] = "assistant";
    message["content"] = choice.text;
    if (!choice.reasoning_content.empty()) message["reasoning_content"] = choice.reasoning_content;
    Json c;
    c["index"] = choice.index;
    c["message"] = std::move(message);
    c["logprobs"] = chat_logprobs(choice.logprobs, token_text);
    c["finish_reason"] = string_or_null(choice.finish_reason);
    c["stop_reason"] = string_or_null(choice.stop_reason);
    if (meta.token_ids) c["token_ids"] = choice.token_ids;
    out_choices.push_back(std::move(c));
  }
  if (meta.token_ids) j["prompt_token_ids"] = choices.empty() ? Json::array() : Json(choices[0].prompt_token_ids);
  j["choices"] = std::move(out_choices);
  j["usage"] = usage_json(usage);
  return dump(j);
}

std::string completion_body(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices, const Usage& usage,
                            const TokenText& token_text) {
  Json j = meta_json(meta, "text_completion");
  Json out_choices = Json::array();
  for (const ChoiceResult& choice : choices) {
    Json c;
    c["index"] = choice.index;
    c["text"] = choice.text;
    c["logprobs"] = completion_logprobs(choice.logprobs, choice.text, token_text);
    c["finish_reason"] = string_or_null(choice.finish_reason);
    c["stop_reason"] = string_or_null(choice.stop_reason);
    if (meta.token_ids) {
      c["prompt_token_ids"] = choice.prompt_token_ids;
      c["token_ids"] = choice.token_ids;
    }
    out_choices.push_back(std::move(c));
  }
  j["choices"] = std::move(out_choices);
  j["usage"] = usage_json(usage);
  return dump(j);
}

std::string chat_chunk_event(const ResponseMeta& meta, const StreamDelta& delta, const TokenText& token_text) {
  Json j = meta_json(meta, "chat.completion.chunk");
  Json d = Json::object();
  if (delta.role) {
    d["role"] = "assistant";
    d["content"] = delta.content;
  } else if (!delta.content.empty()) {
    d["content"] = delta.content;
  }
  if (!delta.reasoning_content.empty()) d["reasoning_content"] = delta.reasoning_content;
  Json c;
  c["index"] = delta.index;
  c["delta"] = std::move(d);
  c["logprobs"] = chat_logprobs(delta.logprobs, token_text);
  c["finish_reason"] = delta.finish_reason ? Json(*delta.finish_reason) : Json(nullptr);
  if (delta.finish_reason) c["stop_reason"] = string_or_null(delta.stop_reason);
  if (meta.token_ids) {
    c["token_ids"] = delta.token_ids;
    if (delta.prompt_token_ids) j["prompt_token_ids"] = *delta.prompt_token_ids;
  }
  j["choices"] = Json::array({std::move(c)});
  return fmt::format("data: {}\n\n", dump(j));
}

std::string completion_chunk_event(const ResponseMeta& meta, const StreamDelta& delta, const TokenText& token_text) {
  Json j = meta_json(meta, "text_completion");
  Json c;
  c["index"] = delta.index;
  c["text"] = delta.content;
  c["logprobs"] = completion_logprobs(delta.logprobs, delta.content, token_text);
  c["finish_reason"] = delta.finish_reason ? Json(*delta.finish_reason) : Json(nullptr);
  if (delta.finish_reason) c["stop_reason"] = string_or_null(delta.stop_reason);
  if (meta.token_ids) {
    if (delta.prompt_token_ids) c["prompt_token_ids"] = *delta.prompt_token_ids;
    c["token_ids"] = delta.token_ids;
  }
  j["choices"] = Json::array({std::move(c)});
  return fmt::format("data: {}\n\n", dump(j));
}

std::string usage_chunk_event(const ResponseMeta& meta, Endpoint endpoint, const Usage& usage) {
  Json j = meta_json(meta, endpoint == Endpoint::kChatCompletions ? "chat.completion.chunk" : "text_completion");
  j["choices"] = Json::array();
  j["usage"] = usage_json(usage);
  return fmt::format("data: {}\n\n", dump(j));
}

}  // namespace bw::server
