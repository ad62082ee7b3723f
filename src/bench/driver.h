// The load driver of `breakwater bench serve`: sends the prompts to an OpenAI-compatible
// server as streamed requests, open loop (seeded arrival times, --request-rate), closed
// loop (a fixed number in flight, --concurrency) or both (arrivals, capped in flight, as
// vLLM's --max-concurrency), and records what each request measured.
//
// Everything runs on one io_context on the calling thread: one timer releases arrivals,
// one optional timer reports progress, and each request streams on its own connection.
// Threads: run_benchmark blocks its caller; the progress callback runs on that thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench/dataset.h"
#include "bench/http_stream_client.h"
#include "bench/metrics.h"
#include "bench/openai_stream.h"
#include "common/status.h"

namespace bw::bench {

struct DriverOptions {
  HttpEndpoint endpoint;
  std::string api_key;
  RequestOptions request;
  std::vector<double> arrival_offsets_s;  // one per prompt (arrival_offsets)
  size_t max_concurrency = 0;             // 0: no cap
  std::chrono::milliseconds timeout{600'000};
  size_t num_warmups = 0;  // requests sent (one at a time, first prompts) before the run; not recorded
  // Sends "Cache-Control: no-store" so a server with a response cache (Breakwater's) runs
  // every request through the engine; other servers ignore the header.
  bool bypass_response_cache = true;
};

struct Progress {
  size_t num_total = 0;
  size_t num_sent = 0;
  size_t num_completed = 0;
  size_t num_failed = 0;
  size_t num_in_flight = 0;
  int64_t output_tokens = 0;  // of completed requests
  double elapsed_s = 0.0;
};

struct DriverResult {
  std::vector<RequestRecord> records;  // in prompt order
  double duration_s = 0.0;             // first send to last end
  size_t max_in_flight = 0;
  size_t num_connections = 0;  // connections opened (keep-alive reuse shows as fewer)
  size_t num_warmup_failed = 0;
};

using ProgressFn = std::function<void(const Progress&)>;

// Runs the whole benchmark. Setup errors (an unresolvable host) are a Status; a request
// that fails is a record with its failure kind. `on_progress` (may be empty) is called
// every `progress_interval` and once at the end.
Result<DriverResult> run_benchmark(const std::vector<BenchPrompt>& prompts, const DriverOptions& options,
                                   const ProgressFn& on_progress,
                                   std::chrono::milliseconds progress_interval = std::chrono::milliseconds(250));

// The id of the first model in GET /v1/models (what vLLM does without --model).
Result<std::string> discover_model(const HttpEndpoint& endpoint, const std::string& api_key);

}  // namespace bw::bench
