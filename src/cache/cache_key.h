// The response cache key: a SHA-256 (hex) of the canonical form of everything that decides
// a response's content. Two requests with equal keys must produce the same response (for
// deterministic sampling); every field that can change the tokens, their text, the
// logprobs or the finish reasons is part of it. Fields that only change the response's
// framing (stream, include_usage, echo, id) or its scheduling (priority, timeout, user)
// are not: the replay applies them from the current request.
//
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine_client.h"

namespace bw::cache {

struct CacheKeyInput {
  std::string endpoint;                // "chat.completions" / "completions": the shape of the stored choices differs
  std::string model;                   // the served model name: the identity of the weights in a shared cache
  int64_t vocab_size = 0;              // part of the model's identity (a different model under the same name)
  std::vector<int32_t> eos_token_ids;  // ditto: they decide where generation stops
  std::string adapter;                 // LoRA adapter ("" today): changes the weights
  std::vector<std::vector<int32_t>> prompts;  // token ids after the chat template, one per prompt
  std::vector<int32_t> max_tokens;            // the effective limit per prompt (defaults depend on prompt length)
  SamplingParams sampling;                    // every sampling field changes which tokens are drawn
  std::vector<int32_t> stop_token_ids;        // end choices
  bool ignore_eos = false;                    // ditto
  std::vector<std::string> stop_strings;      // end choices and set stop_reason
  int32_t n = 1;                              // the number of choices stored
  bool reasoning = false;                     // chat: whether the prompt opens <think>, so text splits differently
};

// The canonical serialisation (length-prefixed, field-tagged; stable across versions of
// this file unless kCacheKeyVersion changes).
std::string canonical_request(const CacheKeyInput& input);

// SHA-256 hex of canonical_request().
std::string cache_key(const CacheKeyInput& input);

// Bump when the canonical form or its meaning changes.
inline constexpr int kCacheKeyVersion = 1;

}  // namespace bw::cache
