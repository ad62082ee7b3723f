// CachedResponse: what the response cache stores for one finished generation request —
// enough to replay it in either shape (one JSON body or an SSE stream), never the HTTP
// bytes: per choice its text, reasoning_content, token ids, logprobs, finish_reason and
// stop_reason, plus the usage. The replay gets a fresh id and `created`, and applies the
// current request's echo / include_usage / stream options.
//
// The serialised form (L2 values) is JSON carrying a format version `v`; a value of
// another version or a malformed one reads as DataLoss, which the cache treats as a miss.
// Plain values; the functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/engine_client.h"

namespace bw::cache {

// Bump when the serialised layout changes: older entries then read as misses.
inline constexpr int kCachedResponseFormatVersion = 1;

struct CachedChoice {
  std::string text;               // completions text or chat content, without any echo
  std::string reasoning_content;  // chat: the <think> part
  std::vector<int32_t> token_ids;
  std::vector<SampledLogprobs> logprobs;  // empty unless the request asked for logprobs
  std::string finish_reason;              // "stop" or "length" (nothing else is stored)
  std::string stop_reason;                // the stop string that ended it, "" when none
};

struct CachedResponse {
  std::vector<CachedChoice> choices;  // in response order (prompt-major, then choice)
  Usage usage;
};

// JSON text with the format version.
std::string serialize(const CachedResponse& response);
// DataLoss for malformed text or another format version.
Result<CachedResponse> deserialize(std::string_view text);

// Approximate memory held by the value (strings, ids, logprobs, vectors' headers); the L1
// byte budget counts this.
uint64_t approximate_bytes(const CachedResponse& response);

}  // namespace bw::cache
