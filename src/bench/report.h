// The outputs of `breakwater bench serve`: the table printed to stdout and the JSON file
// (--json) with the configuration, the summary and every request's record.
// Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include <nlohmann/json.hpp>

#include "bench/metrics.h"
#include "bench/openai_stream.h"

namespace bw::bench {

// How the run was set up, as the report states it.
struct RunDescription {
  std::string url;
  std::string model;
  ApiKind api = ApiKind::kCompletions;
  std::string dataset;            // "synthetic" or the file
  bool lengths_in_words = false;  // no tokenizer: dataset lengths are word counts
  double request_rate = 0.0;      // inf: all at once
  double burstiness = 1.0;
  size_t max_concurrency = 0;  // 0: no cap
  size_t num_prompts = 0;
  size_t num_warmups = 0;
  size_t num_warmup_failed = 0;
  uint64_t seed = 0;
  bool ignore_eos = true;
  bool use_response_cache = false;
  SloOptions slo;
  size_t num_connections = 0;
};

// The human-readable table.
std::string format_report(const BenchSummary& summary, const RunDescription& run);

// {"config": ..., "summary": ..., "requests": [...]}; times in the summary are in ms,
// in the request records in seconds (as in vLLM's result files).
nlohmann::json report_json(const BenchSummary& summary, std::span<const RequestRecord> records,
                           const RunDescription& run);

}  // namespace bw::bench
