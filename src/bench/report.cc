#include "bench/report.h"

#include <cmath>

#include <fmt/format.h>

namespace bw::bench {

using Json = nlohmann::json;

namespace {

std::string mode_line(const RunDescription& run) {
  std::string cap = run.max_concurrency > 0 ? fmt::format(", at most {} in flight", run.max_concurrency) : "";
  if (std::isinf(run.request_rate)) {
    if (run.max_concurrency > 0) return fmt::format("closed loop, {} in flight", run.max_concurrency);
    return "all requests at once (rate inf)";
  }
  const std::string process =
      run.burstiness == 1.0 ? std::string("Poisson") : fmt::format("gamma (burstiness {:g})", run.burstiness);
  return fmt::format("open loop, {} arrivals at {:g} req/s{}", process, run.request_rate, cap);
}

Json stats_json(const LatencyStats& s) {
  return Json{{"count", s.count}, {"mean", s.mean}, {"p50", s.p50}, {"p90", s.p90},
              {"p99", s.p99},     {"min", s.min},   {"max", s.max}, {"std", s.stddev}};
}

Json rate_json(double rate) { return std::isinf(rate) ? Json("inf") : Json(rate); }

}  // namespace

std::string format_report(const BenchSummary& s, const RunDescription& run) {
  std::string out;
  auto line = [&out](const std::string& label, const std::string& value) {
    out += fmt::format("{:<34}{}\n", label, value);
  };
  out += "================ Serving Benchmark Result ================\n";
  line("Server:", fmt::format("{} ({}, model {})", run.url, api_kind_name(run.api), run.model));
  line("Load:", mode_line(run));
  line("Dataset:", fmt::format("{}, {} prompts, seed {}", run.dataset, run.num_prompts, run.seed));
  if (run.num_warmups > 0) {
    line("Warm-up requests (not counted):", fmt::format("{} ({} failed)", run.num_warmups, run.num_warmup_failed));
  }
  line("Requests sent:", std::to_string(s.num_sent));
  line("Successful requests:", std::to_string(s.num_completed));
  line("Failed requests:", std::to_string(s.num_failed));
  for (const auto& [kind, count] : s.failures)
    line(fmt::format("  {}:", kind), std::to_string(count));
  line("Benchmark duration (s):", fmt::format("{:.2f}", s.duration_s));
  line("Total input tokens:",
       fmt::format("{}{}", s.total_input_tokens,
                   s.input_from_usage ? "" : (run.lengths_in_words ? " (dataset word counts)" : " (dataset counts)")));
  line("Total generated tokens:", std::to_string(s.total_output_tokens));
  if (s.num_without_usage > 0) {
    out += fmt::format("  note: {} of {} responses had no usage; their output tokens were counted as text chunks\n",
                       s.num_without_usage, s.num_completed);
  }
  line("Request throughput (req/s):", fmt::format("{:.2f}", s.request_throughput));
  line("Output token throughput (tok/s):", fmt::format("{:.2f}", s.output_throughput));
  line("Total token throughput (tok/s):", fmt::format("{:.2f}", s.total_token_throughput));
  if (s.has_slo) {
    std::string slos;
    if (run.slo.ttft_ms) slos += fmt::format(" TTFT<={:g}ms", *run.slo.ttft_ms);
    if (run.slo.tpot_ms) slos += fmt::format(" TPOT<={:g}ms", *run.slo.tpot_ms);
    if (run.slo.e2e_ms) slos += fmt::format(" E2E<={:g}ms", *run.slo.e2e_ms);
    line("Request goodput (req/s):",
         fmt::format("{:.2f} ({} of {} met{})", s.goodput, s.num_good, s.num_completed, slos));
  }
  line("Max requests in flight:", std::to_string(s.max_in_flight));
  out += "--------------------- Latency (ms) -----------------------\n";
  out += fmt::format("{:<12}{:>11}{:>11}{:>11}{:>11}\n", "", "mean", "p50", "p90", "p99");
  auto row = [&out](const char* name, const LatencyStats& l) {
    out += fmt::format("{:<12}{:>11.2f}{:>11.2f}{:>11.2f}{:>11.2f}\n", name, l.mean, l.p50, l.p90, l.p99);
  };
  row("TTFT", s.ttft_ms);
  row("TPOT", s.tpot_ms);
  row("ITL", s.itl_ms);
  row("E2E", s.e2e_ms);
  out += "==========================================================\n";
  return out;
}

Json report_json(const BenchSummary& s, std::span<const RequestRecord> records, const RunDescription& run) {
  Json config = {{"url", run.url},
                 {"model", run.model},
                 {"endpoint", std::string(api_kind_name(run.api))},
                 {"dataset", run.dataset},
                 {"lengths_in_words", run.lengths_in_words},
                 {"request_rate", rate_json(run.request_rate)},
                 {"burstiness", run.burstiness},
                 {"max_concurrency", run.max_concurrency},
                 {"num_prompts", run.num_prompts},
                 {"num_warmups", run.num_warmups},
                 {"seed", run.seed},
                 {"ignore_eos", run.ignore_eos},
                 {"use_response_cache", run.use_response_cache}};
  Json slo = Json::object();
  if (run.slo.ttft_ms) slo["ttft_ms"] = *run.slo.ttft_ms;
  if (run.slo.tpot_ms) slo["tpot_ms"] = *run.slo.tpot_ms;
  if (run.slo.e2e_ms) slo["e2e_ms"] = *run.slo.e2e_ms;
  config["slo"] = slo;
  Json summary = {{"num_sent", s.num_sent},
                  {"num_completed", s.num_completed},
                  {"num_failed", s.num_failed},
                  {"failures", s.failures},
                  {"duration_s", s.duration_s},
                  {"total_input_tokens", s.total_input_tokens},
                  {"input_tokens_from_usage", s.input_from_usage},
                  {"total_output_tokens", s.total_output_tokens},
                  {"num_without_usage", s.num_without_usage},
                  {"request_throughput", s.request_throughput},
                  {"output_throughput", s.output_throughput},
                  {"total_token_throughput", s.total_token_throughput},
                  {"max_in_flight", s.max_in_flight},
                  {"num_connections", run.num_connections},
                  {"num_warmup_failed", run.num_warmup_failed},
                  {"ttft_ms", stats_json(s.ttft_ms)},
                  {"tpot_ms", stats_json(s.tpot_ms)},
                  {"itl_ms", stats_json(s.itl_ms)},
                  {"e2e_ms", stats_json(s.e2e_ms)}};
  if (s.has_slo) {
    summary["num_good"] = s.num_good;
    summary["goodput"] = s.goodput;
  }
  Json requests = Json::array();
  for (const RequestRecord& r : records) {
    Json j = {{"index", r.index},
              {"success", r.success},
              {"prompt_len", r.prompt_len},
              {"expected_output_len", r.expected_output_len},
              {"output_tokens", r.output_tokens},
              {"usage_reported", r.usage_reported},
              {"num_text_chunks", r.num_text_chunks},
              {"output_bytes", r.output_bytes},
              {"http_status", r.http_status},
              {"start_s", r.start_s},
              {"ttft_s", r.ttft_s},
              {"e2e_s", r.e2e_s},
              {"itl_s", r.itl_s}};
    j["prompt_tokens"] = r.prompt_tokens ? Json(*r.prompt_tokens) : Json(nullptr);
    const std::optional<double> tpot = request_tpot_s(r);
    j["tpot_s"] = tpot ? Json(*tpot) : Json(nullptr);
    if (!r.success) {
      j["failure"] = r.failure;
      j["error"] = r.error;
    }
    requests.push_back(std::move(j));
  }
  return Json{{"config", config}, {"summary", summary}, {"requests", requests}};
}

}  // namespace bw::bench
