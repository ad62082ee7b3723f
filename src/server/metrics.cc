#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace bw::server {

namespace {

// Prometheus label values escape backslash, double quote and newline.
std::string escape_label(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void header(std::string* out, std::string_view name, std::string_view type, std::string_view help) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void sample(std::string* out, std::string_view name, std::string_view labels, double value) {
  if (labels.empty()) {
    *out += fmt::format("{} {}\n", name, value);
  } else {
    *out += fmt::format("{}{{{}}} {}\n", name, labels, value);
  }
}

void gauge(std::string* out, std::string_view name, std::string_view help, std::string_view labels, double value) {
  header(out, name, "gauge", help);
  sample(out, name, labels, value);
}

void counter(std::string* out, std::string_view name, std::string_view help, std::string_view labels, double value) {
  header(out, name, "counter", help);
  sample(out, name, labels, value);
}

// Response cache latencies: microseconds to a few hundred milliseconds.
std::vector<double> cache_latency_buckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25};
}

std::vector<double> latency_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double value) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  std::lock_guard lock(mutex_);
  counts_[i] += 1;
  sum_ += value;
  count_ += 1;
}

void Histogram::render(std::string_view name, std::string_view labels, std::string* out) const {
  std::lock_guard lock(mutex_);
  const std::string prefix = labels.empty() ? "" : fmt::format("{},", labels);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? fmt::format("{}", bounds_[i]) : "+Inf";
    *out += fmt::format("{}_bucket{{{}le=\"{}\"}} {}\n", name, prefix, le, cumulative);
  }
  sample(out, fmt::format("{}_sum", name), labels, sum_);
  sample(out, fmt::format("{}_count", name), labels, static_cast<double>(count_));
}

ServerMetrics::ServerMetrics(const std::string& model_name)
    : model_label_(fmt::format("model_name=\"{}\"", escape_label(model_name))),
      ttft_(latency_buckets()),
      tpot_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5}),
      e2e_(latency_buckets()),
      cache_lookup_l1_(cache_latency_buckets()),
      cache_lookup_l2_(cache_latency_buckets()),
      cache_lookup_miss_(cache_latency_buckets()),
      cache_hit_l1_(cache_latency_buckets()),
      cache_hit_l2_(cache_latency_buckets()) {}

void ServerMetrics::record_cache_lookup(cache::CacheLevel level, double seconds) {
  switch (level) {
    case cache::CacheLevel::kL1:
      cache_lookup_l1_.observe(seconds);
      break;
    case cache::CacheLevel::kL2:
      cache_lookup_l2_.observe(seconds);
      break;
    case cache::CacheLevel::kNone:
      cache_lookup_miss_.observe(seconds);
      break;
  }
}

void ServerMetrics::record_cache_hit_latency(cache::CacheLevel level, double seconds) {
  if (level == cache::CacheLevel::kL1) cache_hit_l1_.observe(seconds);
  if (level == cache::CacheLevel::kL2) cache_hit_l2_.observe(seconds);
}

void ServerMetrics::record_request(std::string_view route, int http_status) {
  std::lock_guard lock(mutex_);
  requests_[{std::string(route), http_status}] += 1;
}

void ServerMetrics::record_generation(double ttft_seconds, double tpot_seconds, double e2e_seconds,
                                      int64_t prompt_tokens, int64_t generation_tokens) {
  ttft_.observe(ttft_seconds);
  if (generation_tokens > 1) tpot_.observe(tpot_seconds);
  e2e_.observe(e2e_seconds);
  prompt_tokens_ += prompt_tokens;
  generation_tokens_ += generation_tokens;
}

// The response cache (cache/response_cache.h): hits by level, misses, L1 size, L2 health.
void ServerMetrics::render_response_cache(const cache::ResponseCache& cache, std::string* out) const {
  const cache::ResponseCacheStats s = cache.stats();
  const std::string& m = model_label_;
  header(out, "breakwater:response_cache_hits_total", "counter", "Requests answered from the response cache by level.");
  sample(out, "breakwater:response_cache_hits_total", fmt::format("{},level=\"l1\"", m),
         static_cast<double>(s.l1_hits));
  sample(out, "breakwater:response_cache_hits_total", fmt::format("{},level=\"l2\"", m),
         static_cast<double>(s.l2_hits));
  counter(out, "breakwater:response_cache_misses_total", "Cacheable requests not found in the response cache.", m,
          static_cast<double>(s.misses));
  counter(out, "breakwater:response_cache_stores_total", "Responses stored in the response cache.", m,
          static_cast<double>(s.stores));
  gauge(out, "breakwater:response_cache_bytes", "Bytes held by the in-process (L1) response cache.", m,
        static_cast<double>(s.l1.bytes));
  gauge(out, "breakwater:response_cache_max_bytes", "Byte budget of the in-process (L1) response cache.", m,
        static_cast<double>(cache.config().l1_max_bytes));
  gauge(out, "breakwater:response_cache_entries", "Entries in the in-process (L1) response cache.", m,
        static_cast<double>(s.l1.entries));
  counter(out, "breakwater:response_cache_evictions_total", "L1 entries evicted for room.", m,
          static_cast<double>(s.l1.evictions));
  counter(out, "breakwater:response_cache_expirations_total", "L1 entries dropped after their TTL.", m,
          static_cast<double>(s.l1.expirations));
  counter(out, "breakwater:response_cache_l2_errors_total",
          "Failed Redis (L2) cache commands: unreachable, timed out, error reply or unreadable value.", m,
          static_cast<double>(s.l2.errors));
  counter(out, "breakwater:response_cache_l2_dropped_writes_total", "L2 writes dropped because the queue was full.", m,
          static_cast<double>(s.l2.dropped_writes));
  gauge(out, "breakwater:response_cache_l2_enabled", "1 when a Redis (L2) response cache is configured.", m,
        s.has_l2 ? 1.0 : 0.0);
  header(out, "breakwater:response_cache_lookup_seconds", "histogram",
         "Response cache lookup time by outcome (l1, l2 or miss).");
  cache_lookup_l1_.render("breakwater:response_cache_lookup_seconds", fmt::format("{},level=\"l1\"", m), out);
  cache_lookup_l2_.render("breakwater:response_cache_lookup_seconds", fmt::format("{},level=\"l2\"", m), out);
  cache_lookup_miss_.render("breakwater:response_cache_lookup_seconds", fmt::format("{},level=\"miss\"", m), out);
  header(out, "breakwater:response_cache_hit_latency_seconds", "histogram",
         "Server-side time of requests answered from the response cache: arrival to response queued, by level.");
  cache_hit_l1_.render("breakwater:response_cache_hit_latency_seconds", fmt::format("{},level=\"l1\"", m), out);
  cache_hit_l2_.render("breakwater:response_cache_hit_latency_seconds", fmt::format("{},level=\"l2\"", m), out);
}

std::string ServerMetrics::render(const EngineStats& stats, int http_connections) const {
  std::string out;
  const std::string& m = model_label_;
  // Request counts by route and status.
  header(&out, "breakwater:http_requests_total", "counter", "HTTP requests on API routes by route and status.");
  {
    std::lock_guard lock(mutex_);
    for (const auto& [key, count] : requests_) {
      sample(&out, "breakwater:http_requests_total",
             fmt::format("{},route=\"{}\",status=\"{}\"", m, escape_label(key.first), key.second),
             static_cast<double>(count));
    }
  }
  header(&out, "breakwater:request_success_total", "counter", "Finished generations by finish reason.");
  for (size_t r = 0; r < stats.finished_by_reason.size(); ++r) {
    sample(&out, "breakwater:request_success_total",
           fmt::format("{},finished_reason=\"{}\"", m, finish_reason_name(static_cast<FinishReason>(r))),
           static_cast<double>(stats.finished_by_reason[r]));
  }
  // Latency histograms.
  header(&out, "breakwater:time_to_first_token_seconds", "histogram", "Time from arrival to the first token.");
  ttft_.render("breakwater:time_to_first_token_seconds", m, &out);
  header(&out, "breakwater:time_per_output_token_seconds", "histogram",
         "Mean time per output token after the first, per request.");
  tpot_.render("breakwater:time_per_output_token_seconds", m, &out);
  header(&out, "breakwater:e2e_request_latency_seconds", "histogram", "Time from arrival to the last token.");
  e2e_.render("breakwater:e2e_request_latency_seconds", m, &out);
  // Tokens.
  counter(&out, "breakwater:prompt_tokens_total", "Prompt tokens of finished requests.", m,
          static_cast<double>(prompt_tokens_.load()));
  counter(&out, "breakwater:generation_tokens_total", "Generated tokens of finished requests.", m,
          static_cast<double>(generation_tokens_.load()));
  counter(&out, "breakwater:computed_tokens_total", "Tokens run through the model (prefill, decode, recompute).", m,
          static_cast<double>(stats.computed_tokens));
  // Scheduler and KV cache gauges (the Gateway API inference extension reads these).
  gauge(&out, "breakwater:num_requests_waiting", "Sequences waiting to be scheduled (queue length).", m,
        stats.num_waiting);
  gauge(&out, "breakwater:num_requests_running", "Sequences in the running batch.", m, stats.num_running);
  gauge(&out, "breakwater:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0..1).", m, stats.kv_usage());
  gauge(&out, "breakwater:kv_cache_blocks", "KV cache blocks in the pool.", m, stats.kv_num_blocks);
  gauge(&out, "breakwater:kv_cache_cached_blocks", "KV cache blocks holding reusable prefixes.", m,
        stats.kv_cached_blocks);
  counter(&out, "breakwater:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", m,
          static_cast<double>(stats.prefix_queried_tokens));
  counter(&out, "breakwater:prefix_cache_hits_total", "Prompt tokens served from the prefix cache.", m,
          static_cast<double>(stats.prefix_hit_tokens));
  const double hit_rate = stats.prefix_queried_tokens == 0 ? 0.0
                                                           : static_cast<double>(stats.prefix_hit_tokens) /
                                                                 static_cast<double>(stats.prefix_queried_tokens);
  gauge(&out, "breakwater:prefix_cache_hit_rate", "Prefix cache hits over queries since start (0..1).", m, hit_rate);
  counter(&out, "breakwater:num_preemptions_total", "Sequences preempted for KV cache space.", m,
          static_cast<double>(stats.num_preemptions));
  counter(&out, "breakwater:num_overlapped_steps_total",
          "Engine steps launched while the step before was still running (async scheduling).", m,
          static_cast<double>(stats.num_overlapped_steps));
  gauge(&out, "breakwater:num_pending_requests", "Accepted requests not finished.", m, stats.num_pending_requests);
  gauge(&out, "breakwater:http_connections", "Open HTTP connections.", m, http_connections);
  gauge(&out, "breakwater:draining", "1 while the server drains before exit.", m, draining_ ? 1.0 : 0.0);
  // The same gauges under vLLM's names, for tools configured for vLLM.
  gauge(&out, "vllm:num_requests_waiting", "Alias of breakwater:num_requests_waiting.", m, stats.num_waiting);
  gauge(&out, "vllm:num_requests_running", "Alias of breakwater:num_requests_running.", m, stats.num_running);
  gauge(&out, "vllm:kv_cache_usage_perc", "Alias of breakwater:kv_cache_usage_perc.", m, stats.kv_usage());
  gauge(&out, "vllm:gpu_cache_usage_perc", "Alias of breakwater:kv_cache_usage_perc (older vLLM name).", m,
        stats.kv_usage());
  if (const cache::ResponseCache* response_cache = response_cache_.load(); response_cache != nullptr) {
    render_response_cache(*response_cache, &out);
  }
  return out;
}

}  // namespace bw::server
