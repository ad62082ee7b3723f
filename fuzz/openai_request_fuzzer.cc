// libFuzzer target for the OpenAI request parser (server/openai_protocol.h): the input is a
// request body, parsed for /v1/chat/completions and /v1/completions with a 1000-token
// vocabulary. Nothing may crash or throw. A rejected body must give a 400 with a message
// and an error body that is valid JSON; an accepted one must satisfy every documented
// limit, turn into a GenerationRequest as the service builds it (no engine), and its texts
// must go through the response builders (valid JSON out) and the ReasoningParser (any
// split of a text gives the same parts as the whole). Seeds: fuzz/corpus/openai_request/.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine_client.h"
#include "server/openai_protocol.h"
#include "server/reasoning_parser.h"

namespace {

using bw::server::ApiError;
using bw::server::Endpoint;
using bw::server::ParsedRequest;
using bw::server::ParseLimits;
using bw::server::ReasoningParser;

constexpr int64_t kVocabSize = 1000;

void check(bool condition) {
  if (!condition) std::abort();
}

bool is_token_id(int32_t id) { return id >= 0 && id < kVocabSize; }

// The concatenated parts of `text` fed in pieces of `step` bytes (0: whole).
std::pair<std::string, std::string> reasoning_parts(bool starts_in_reasoning, std::string_view text, size_t step) {
  ReasoningParser parser(starts_in_reasoning);
  std::string reasoning;
  std::string content;
  const size_t n = step == 0 ? std::max<size_t>(text.size(), 1) : step;
  for (size_t pos = 0; pos < text.size(); pos += n) {
    const ReasoningParser::Delta d = parser.feed(text.substr(pos, n));
    reasoning += d.reasoning;
    content += d.content;
  }
  const ReasoningParser::Delta d = parser.flush();
  return {reasoning + d.reasoning, content + d.content};
}

// The first text a parsed request carries (a message content or a prompt).
std::string some_text(const ParsedRequest& req) {
  if (req.endpoint == Endpoint::kCompletions) return req.prompt_texts.empty() ? "" : req.prompt_texts.front();
  for (const auto& message : req.messages) {
    auto it = message.find("content");
    if (it != message.end() && it->is_string()) return it->get<std::string>();
  }
  return "";
}

void check_accepted(const ParsedRequest& req, const ParseLimits& limits) {
  check(req.sampling.validate(kVocabSize).ok());
  check(req.n >= 1 && req.n <= limits.max_n);
  check(req.stop.size() <= static_cast<size_t>(limits.max_stop_strings));
  for (const std::string& s : req.stop)
    check(!s.empty());
  for (const int32_t id : req.stop_token_ids)
    check(is_token_id(id));
  check(!req.max_tokens || *req.max_tokens >= 1);
  check(!req.timeout_seconds || *req.timeout_seconds > 0.0);
  check(req.sampling.logprobs == (req.logprobs ? req.top_logprobs : -1));
  if (req.endpoint == Endpoint::kCompletions) {
    check(req.prompt_is_tokens == req.prompt_texts.empty());
    check(req.prompt_is_tokens != req.prompt_token_ids.empty());
    check(req.prompt_texts.size() + req.prompt_token_ids.size() <= static_cast<size_t>(limits.max_prompts) ||
          req.prompt_token_ids.size() == 1);
    for (const std::string& text : req.prompt_texts)
      check(!text.empty());
    for (const auto& ids : req.prompt_token_ids) {
      check(!ids.empty());
      for (const int32_t id : ids)
        check(is_token_id(id));
    }
    check(req.sampling.logprobs <= 5);
  } else {
    check(req.messages.is_array() && !req.messages.empty());
    for (const auto& message : req.messages) {
      check(message.is_object() && message.contains("role"));
      auto it = message.find("content");
      check(it == message.end() || it->is_string() || it->is_null());
    }
    check(req.tools.is_null() || req.tools.is_array());
  }
}

// What the service does with an accepted request, minus the engine and tokenizer.
void use_accepted(const ParsedRequest& req) {
  bw::GenerationRequest g;
  g.prompt_ids = req.prompt_is_tokens ? req.prompt_token_ids.front() : std::vector<int32_t>{1, 2, 3};
  g.sampling = req.sampling;
  g.stop.max_tokens = req.max_tokens.value_or(16);
  g.stop.stop_token_ids = req.stop_token_ids;
  g.stop.ignore_eos = req.ignore_eos;
  g.stop_strings = req.stop;
  g.n = req.n;
  g.priority = req.priority;
  if (req.timeout_seconds) {
    g.deadline = bw::SteadyClock::now() + std::chrono::duration_cast<bw::SteadyClock::duration>(
                                              std::chrono::duration<double>(*req.timeout_seconds));
  }

  // Responses carrying the request's texts and ids.
  const std::string text = some_text(req);
  bw::server::ResponseMeta meta;
  meta.id = "chatcmpl-fuzz";
  meta.model = req.model;
  bw::server::ChoiceResult choice;
  const auto [reasoning, content] = reasoning_parts(true, text, 0);
  choice.text = content;
  choice.reasoning_content = reasoning;
  choice.finish_reason = "stop";
  choice.stop_reason = req.stop.empty() ? "" : req.stop.front();
  for (const int32_t id : g.prompt_ids) {
    bw::SampledLogprobs lp;
    lp.token_id = id;
    lp.logprob = -static_cast<float>(id) / 7.0f;
    lp.top = {{id, lp.logprob}, {0, -1e30f}};
    choice.logprobs.push_back(lp);
  }
  const bw::server::TokenText token_text = [&text](int32_t id) {
    return text.substr(static_cast<size_t>(id) % (text.size() + 1), 2);  // may split a character
  };
  bw::Usage usage;
  usage.prompt_tokens = static_cast<int32_t>(g.prompt_ids.size());
  check(nlohmann::json::accept(bw::server::chat_completion_body(meta, {choice}, usage, token_text)));
  check(nlohmann::json::accept(bw::server::completion_body(meta, {choice}, usage, token_text)));
  bw::server::StreamDelta delta;
  delta.role = true;
  delta.content = choice.text;
  delta.logprobs = choice.logprobs;
  delta.finish_reason = choice.finish_reason;
  for (const std::string& event : {bw::server::chat_chunk_event(meta, delta, token_text),
                                   bw::server::completion_chunk_event(meta, delta, token_text)}) {
    check(event.size() > 8 && event.substr(0, 6) == "data: " && event.substr(event.size() - 2) == "\n\n");
    check(nlohmann::json::accept(event.substr(6, event.size() - 8)));
  }

  // Any split of a text gives the parts of the whole text.
  for (const bool starts_in_reasoning : {false, true}) {
    const auto whole = reasoning_parts(starts_in_reasoning, text, 0);
    for (const size_t step : {size_t{1}, size_t{2}, size_t{3}, size_t{5}}) {
      check(reasoning_parts(starts_in_reasoning, text, step) == whole);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  ParseLimits limits;
  limits.vocab_size = kVocabSize;
  for (const Endpoint endpoint : {Endpoint::kChatCompletions, Endpoint::kCompletions}) {
    ApiError error;
    bw::Result<ParsedRequest> parsed = bw::server::parse_request(endpoint, body, limits, &error);
    if (!parsed.ok()) {
      check(error.http_status == 400 && !error.message.empty());
      check(parsed.status().message() == error.message);
      check(nlohmann::json::accept(bw::server::error_body(error)));
      continue;
    }
    check(parsed->endpoint == endpoint);
    check_accepted(*parsed, limits);
    use_accepted(*parsed);
  }
  return 0;
}
