// ServerMetrics: the counters and histograms the server records per request, rendered
// with the engine's stats as Prometheus text for GET /metrics.
//
// Names follow vLLM's (prefix `breakwater:`), so dashboards and autoscalers built for vLLM
// read them with a prefix change. The Kubernetes Gateway API inference extension reads a
// queue length and the KV cache utilisation from every model server:
//   breakwater:num_requests_waiting   gauge   (TotalQueuedRequests)
//   breakwater:num_requests_running   gauge   (TotalRunningRequests)
//   breakwater:kv_cache_usage_perc    gauge   (KVCacheUtilization, 0..1)
// and, for an unmodified EPP configured for vLLM, the same values are also exported under
// `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` and
// `vllm:gpu_cache_usage_perc`. Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "cache/response_cache.h"
#include "engine/engine_client.h"

namespace bw::server {

// A Prometheus histogram with fixed upper bounds (cumulative when rendered).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // "<name>_bucket{le=...} n" lines, then _sum and _count, with `labels` ("" or `k="v"`).
  void render(std::string_view name, std::string_view labels, std::string* out) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mutex_;
  std::vector<uint64_t> counts_;  // one per bound, plus +Inf
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  explicit ServerMetrics(const std::string& model_name);

  // One finished HTTP request on an API route ("/v1/chat/completions" ...) with its status.
  void record_request(std::string_view route, int http_status);
  // Per finished generation: seconds to the first token, per output token after the
  // first, and end to end; token counts.
  void record_generation(double ttft_seconds, double tpot_seconds, double e2e_seconds, int64_t prompt_tokens,
                         int64_t generation_tokens);
  void set_draining(bool draining) { draining_ = draining; }
  // The response cache whose counters /metrics shows (nullptr: none); it must outlive this.
  void set_response_cache(const cache::ResponseCache* cache) { response_cache_ = cache; }
  // One cache lookup: where it was answered (kNone: a miss) and how long it took.
  void record_cache_lookup(cache::CacheLevel level, double seconds);
  // A request answered from the cache: seconds from its arrival to the response queued.
  void record_cache_hit_latency(cache::CacheLevel level, double seconds);

  // The whole exposition text, engine gauges from `stats`.
  std::string render(const EngineStats& stats, int http_connections) const;

 private:
  void render_response_cache(const cache::ResponseCache& cache, std::string* out) const;

  std::string model_label_;  // model_name="..."
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (route, status) -> count
  Histogram ttft_;
  Histogram tpot_;
  Histogram e2e_;
  std::atomic<int64_t> prompt_tokens_{0};
  std::atomic<int64_t> generation_tokens_{0};
  std::atomic<bool> draining_{false};
  std::atomic<const cache::ResponseCache*> response_cache_{nullptr};
  Histogram cache_lookup_l1_;  // lookups answered by L1
  Histogram cache_lookup_l2_;  // by L2
  Histogram cache_lookup_miss_;
  Histogram cache_hit_l1_;  // arrival -> response of requests answered by L1
  Histogram cache_hit_l2_;
};

}  // namespace bw::server
