#include "bench/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace bw::bench {

double percentile(std::span<const double> sorted, double p) {
  if (sorted.empty()) return 0.0;
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = rank - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

LatencyStats latency_stats(std::vector<double> values) {
  LatencyStats s;
  s.count = values.size();
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  const double sum = std::accumulate(values.begin(), values.end(), 0.0);
  s.mean = sum / static_cast<double>(values.size());
  double sq = 0.0;
  for (double v : values)
    sq += (v - s.mean) * (v - s.mean);
  s.stddev = std::sqrt(sq / static_cast<double>(values.size()));
  s.p50 = percentile(values, 50);
  s.p90 = percentile(values, 90);
  s.p99 = percentile(values, 99);
  s.min = values.front();
  s.max = values.back();
  return s;
}

std::optional<double> request_tpot_s(const RequestRecord& record) {
  if (!record.success || record.output_tokens <= 1) return std::nullopt;
  return (record.e2e_s - record.ttft_s) / static_cast<double>(record.output_tokens - 1);
}

BenchSummary summarize(std::span<const RequestRecord> records, double duration_s, const SloOptions& slo) {
  BenchSummary s;
  s.num_sent = records.size();
  s.duration_s = duration_s;
  s.has_slo = slo.any();
  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestRecord& r : records) {
    if (!r.success) {
      ++s.num_failed;
      ++s.failures[r.failure.empty() ? "unknown" : r.failure];
      continue;
    }
    ++s.num_completed;
    s.total_output_tokens += r.output_tokens;
    if (!r.usage_reported) ++s.num_without_usage;
    if (r.prompt_tokens) {
      s.total_input_tokens += *r.prompt_tokens;
    } else {
      s.total_input_tokens += r.prompt_len;
      s.input_from_usage = false;
    }
    ttft.push_back(r.ttft_s * 1e3);
    e2e.push_back(r.e2e_s * 1e3);
    for (double gap : r.itl_s)
      itl.push_back(gap * 1e3);
    const std::optional<double> request_tpot = request_tpot_s(r);
    if (request_tpot) tpot.push_back(*request_tpot * 1e3);
    if (s.has_slo) {
      bool good = true;
      if (slo.ttft_ms && r.ttft_s * 1e3 > *slo.ttft_ms) good = false;
      if (slo.tpot_ms && request_tpot && *request_tpot * 1e3 > *slo.tpot_ms) good = false;
      if (slo.e2e_ms && r.e2e_s * 1e3 > *slo.e2e_ms) good = false;
      if (good) ++s.num_good;
    }
  }
  if (s.num_completed == 0) s.input_from_usage = false;
  s.ttft_ms = latency_stats(std::move(ttft));
  s.tpot_ms = latency_stats(std::move(tpot));
  s.itl_ms = latency_stats(std::move(itl));
  s.e2e_ms = latency_stats(std::move(e2e));
  if (duration_s > 0.0) {
    s.request_throughput = static_cast<double>(s.num_completed) / duration_s;
    s.output_throughput = static_cast<double>(s.total_output_tokens) / duration_s;
    s.total_token_throughput = static_cast<double>(s.total_input_tokens + s.total_output_tokens) / duration_s;
    s.goodput = static_cast<double>(s.num_good) / duration_s;
  }
  return s;
}

}  // namespace bw::bench
