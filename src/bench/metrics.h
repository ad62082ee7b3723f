// What one benchmark request measured (RequestRecord) and what a run adds up to
// (BenchSummary), with vLLM's definitions:
//   TTFT  time from sending the request to the first chunk with generated text;
//   ITL   the gaps between successive chunks with text (one token each on most servers);
//   TPOT  per request, (e2e - TTFT) / (output_tokens - 1), for requests of > 1 token;
//   E2E   time from sending the request to the end of the response.
// Output tokens come from the server's usage (the last chunk, stream_options.include_usage);
// only when a server sends none are the text chunks counted instead, and the summary says
// so. Throughput is tokens (or requests) over the wall time of the whole run; goodput counts
// only the requests that met every SLO given.
//
// Thread-safe: values and pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace bw::bench {

struct RequestRecord {
  size_t index = 0;
  int64_t prompt_len = 0;           // from the dataset (tokens, or words without a tokenizer)
  int64_t expected_output_len = 0;  // max_tokens asked for
  bool success = false;
  std::string failure;  // "" on success, else a failure kind ("http_429", "timeout" ...)
  std::string error;    // the detail
  int http_status = 0;
  double start_s = 0.0;  // send time after the start of the run
  double ttft_s = 0.0;   // 0 when no text arrived
  double e2e_s = 0.0;
  std::vector<double> itl_s;  // gaps between text chunks
  int64_t num_text_chunks = 0;
  int64_t output_tokens = 0;             // usage.completion_tokens, else num_text_chunks
  std::optional<int64_t> prompt_tokens;  // usage.prompt_tokens
  bool usage_reported = false;
  size_t output_bytes = 0;
};

// Linear interpolation between closest ranks (numpy's default); `sorted` ascending.
// 0 for an empty span; p in [0, 100].
double percentile(std::span<const double> sorted, double p);

struct LatencyStats {
  size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, min = 0, max = 0, stddev = 0;
};
// Over `values` in any order.
LatencyStats latency_stats(std::vector<double> values);

struct SloOptions {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;
  std::optional<double> e2e_ms;
  bool any() const { return ttft_ms || tpot_ms || e2e_ms; }
};

struct BenchSummary {
  size_t num_sent = 0;
  size_t num_completed = 0;
  size_t num_failed = 0;
  std::map<std::string, size_t> failures;  // kind -> count
  double duration_s = 0.0;                 // wall time from the first send to the last end
  int64_t total_input_tokens = 0;          // server usage where given, else the dataset's counts
  int64_t total_output_tokens = 0;         // over completed requests
  size_t num_without_usage = 0;            // completed requests whose output was counted from chunks
  bool input_from_usage = true;            // every completed request reported prompt_tokens
  double request_throughput = 0.0;
  double output_throughput = 0.0;
  double total_token_throughput = 0.0;
  LatencyStats ttft_ms, tpot_ms, itl_ms, e2e_ms;
  size_t max_in_flight = 0;
  // Goodput, only with SLOs.
  bool has_slo = false;
  size_t num_good = 0;
  double goodput = 0.0;  // requests/s that met every SLO
};

// Adds up the records of a run that took `duration_s` of wall time.
BenchSummary summarize(std::span<const RequestRecord> records, double duration_s, const SloOptions& slo);

// A request's TPOT in seconds (nullopt for failed or one-token requests).
std::optional<double> request_tpot_s(const RequestRecord& record);

}  // namespace bw::bench
