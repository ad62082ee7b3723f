// `breakwater bench`: load generation and measurement. `bench serve` drives any
// OpenAI-compatible server (Breakwater, vLLM, SGLang, llama.cpp ...) over HTTP with
// streamed requests and reports TTFT, TPOT, ITL, end-to-end latency, throughput, goodput
// and failures (docs/BENCHMARKING.md). The work lives in src/bench; this file maps flags.
//
// Each `bench` subcommand registers itself through an add_bench_<name>(bench, runner)
// function that adds its CLI11 subcommand and, when that subcommand is the one parsed,
// stores its run function in *runner: add_bench_serve here, add_bench_offline (the engine
// in-process, no HTTP) in bench_offline_command.cc, declared just above register_bench.
// A new subcommand follows the same pattern in its own file.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench/arrivals.h"
#include "bench/dataset.h"
#include "bench/driver.h"
#include "bench/metrics.h"
#include "bench/report.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "tokenizer/open_tokenizer.h"

namespace bw::cli {

namespace {

struct BenchServeArgs {
  std::string url;
  std::string model;
  std::string endpoint = "completions";
  std::string api_key;
  std::string request_rate;  // "" (not given), a number or "inf"
  double burstiness = 1.0;
  size_t concurrency = 0;
  size_t num_prompts = 0;
  std::string dataset = "synthetic";
  std::string tokenizer;
  int64_t input_len = 1024;
  int64_t output_len = 128;
  bool output_len_given = false;
  double range_ratio = 0.0;
  uint64_t seed = 0;
  std::string json_out;
  std::optional<double> slo_ttft_ms;
  std::optional<double> slo_tpot_ms;
  std::optional<double> slo_e2e_ms;
  bool no_ignore_eos = false;
  double temperature = 0.0;
  std::string extra_body;
  double timeout_s = 600.0;
  size_t num_warmups = 0;
  bool no_progress = false;
  bool use_response_cache = false;
};

Result<double> parse_rate(const std::string& text) {
  if (text.empty() || text == "inf") return std::numeric_limits<double>::infinity();
  char* end = nullptr;
  const double rate = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !(rate > 0.0)) {
    return InvalidArgument("--request-rate must be a positive number or inf, got '{}'", text);
  }
  return rate;
}

void print_progress(const bench::Progress& p) {
  const double tok_s = p.elapsed_s > 0 ? static_cast<double>(p.output_tokens) / p.elapsed_s : 0.0;
  std::printf("\r\033[K[bench] %zu/%zu sent, %zu done, %zu failed, %zu in flight, %.1f s, %.1f output tok/s",
              p.num_sent, p.num_total, p.num_completed, p.num_failed, p.num_in_flight, p.elapsed_s, tok_s);
  std::fflush(stdout);
}

Status run_bench_serve(const BenchServeArgs& args) {
  if (args.request_rate.empty() && args.concurrency == 0) {
    return InvalidArgument("give --request-rate R (open loop), --concurrency C (closed loop), or both");
  }
  if (args.num_prompts == 0) return InvalidArgument("--num-prompts must be at least 1");
  if (!(args.timeout_s > 0.0)) return InvalidArgument("--timeout must be positive, got {}", args.timeout_s);
  ASSIGN_OR_RETURN(const double rate, parse_rate(args.request_rate));
  ASSIGN_OR_RETURN(bench::HttpEndpoint endpoint, bench::parse_http_url(args.url));

  bench::DriverOptions options;
  options.endpoint = endpoint;
  options.api_key = args.api_key;
  if (options.api_key.empty()) {
    if (const char* env = std::getenv("OPENAI_API_KEY"); env != nullptr) options.api_key = env;
  }
  ASSIGN_OR_RETURN(options.request.api, bench::parse_api_kind(args.endpoint));
  options.request.ignore_eos = !args.no_ignore_eos;
  options.request.temperature = args.temperature;
  if (!args.extra_body.empty()) {
    options.request.extra_body = nlohmann::json::parse(args.extra_body, nullptr, false);
    if (!options.request.extra_body.is_object()) {
      return InvalidArgument("--extra-body must be a JSON object, got '{}'", args.extra_body);
    }
  }
  options.max_concurrency = args.concurrency;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(args.timeout_s * 1000.0));
  options.num_warmups = args.num_warmups;
  options.bypass_response_cache = !args.use_response_cache;

  std::unique_ptr<Tokenizer> tokenizer;
  if (!args.tokenizer.empty()) {
    ASSIGN_OR_RETURN(tokenizer, open_tokenizer(args.tokenizer));
  }
  std::vector<bench::BenchPrompt> prompts;
  if (args.dataset == "synthetic") {
    bench::SyntheticOptions synthetic{args.num_prompts, args.input_len, args.output_len, args.range_ratio, args.seed};
    ASSIGN_OR_RETURN(prompts, bench::synthetic_prompts(synthetic, tokenizer.get()));
  } else {
    bench::ShareGptOptions sharegpt{args.num_prompts, args.seed, std::nullopt};
    if (args.output_len_given) {
      if (args.output_len < 1) return InvalidArgument("--output-len must be at least 1, got {}", args.output_len);
      sharegpt.output_len = args.output_len;
    }
    ASSIGN_OR_RETURN(prompts, bench::load_sharegpt(args.dataset, sharegpt, tokenizer.get()));
  }
  ASSIGN_OR_RETURN(options.arrival_offsets_s, bench::arrival_offsets(prompts.size(), rate, args.burstiness, args.seed));

  options.request.model = args.model;
  if (options.request.model.empty()) {
    ASSIGN_OR_RETURN(options.request.model, bench::discover_model(endpoint, options.api_key));
  }

  const bool show_progress = !args.no_progress && isatty(STDOUT_FILENO) != 0;
  bench::ProgressFn progress;
  if (show_progress) progress = [](const bench::Progress& p) { print_progress(p); };
  ASSIGN_OR_RETURN(bench::DriverResult result, bench::run_benchmark(prompts, options, progress));
  if (show_progress) std::printf("\r\033[K");

  bench::SloOptions slo{args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms};
  bench::BenchSummary summary = bench::summarize(result.records, result.duration_s, slo);
  summary.max_in_flight = result.max_in_flight;

  bench::RunDescription run;
  run.url = args.url;
  run.model = options.request.model;
  run.api = options.request.api;
  run.dataset = args.dataset;
  run.lengths_in_words = tokenizer == nullptr;
  run.request_rate = rate;
  run.burstiness = args.burstiness;
  run.max_concurrency = args.concurrency;
  run.num_prompts = prompts.size();
  run.num_warmups = args.num_warmups;
  run.num_warmup_failed = result.num_warmup_failed;
  run.seed = args.seed;
  run.ignore_eos = options.request.ignore_eos;
  run.use_response_cache = args.use_response_cache;
  run.slo = slo;
  run.num_connections = result.num_connections;

  const std::string table = bench::format_report(summary, run);
  std::fwrite(table.data(), 1, table.size(), stdout);
  std::fflush(stdout);
  if (!args.json_out.empty()) {
    const nlohmann::json j = bench::report_json(summary, result.records, run);
    std::ofstream out(args.json_out, std::ios::binary | std::ios::trunc);
    out << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    out.close();
    if (!out) return Unavailable("--json {}: cannot write the report", args.json_out);
  }
  if (summary.num_completed == 0) {
    return Unavailable("every request failed (first error: {})",
                       result.records.empty() ? std::string("none") : result.records.front().error);
  }
  return OkStatus();
}

void add_bench_serve(CLI::App& bench, CommandRunner* runner) {
  CLI::App* app = bench.add_subcommand(
      "serve", "Benchmark an OpenAI-compatible server over HTTP (Breakwater, vLLM, SGLang, llama.cpp ...)");
  auto args = std::make_shared<BenchServeArgs>();
  app->add_option("--url", args->url, "The server, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")->required();
  app->add_option("--model", args->model, "Model name sent in requests (default: the first of GET /v1/models)");
  app->add_option("--endpoint", args->endpoint, "chat (/v1/chat/completions) or completions (/v1/completions)")
      ->check(CLI::IsMember({"chat", "completions"}))
      ->capture_default_str();
  app->add_option("--api-key", args->api_key, "Bearer token (default: $OPENAI_API_KEY)");
  app->add_option("--request-rate", args->request_rate,
                  "Open loop: requests per second with Poisson arrivals, or inf to send all at once");
  app->add_option("--burstiness", args->burstiness,
                  "Shape of the gamma arrival gaps: 1 Poisson, <1 burstier, >1 more even")
      ->capture_default_str();
  app->add_option("--concurrency,--max-concurrency", args->concurrency,
                  "Closed loop: requests kept in flight (with --request-rate: a cap on requests in flight)");
  app->add_option("--num-prompts", args->num_prompts, "Requests to send")->required();
  app->add_option("--dataset", args->dataset, "synthetic, or the path of a ShareGPT-style JSON file")
      ->capture_default_str();
  app->add_option("--tokenizer", args->tokenizer,
                  "The model's tokenizer (HF folder, tokenizer.json or GGUF): exact prompt lengths in tokens");
  app->add_option("--input-len", args->input_len, "Synthetic prompt length (tokens; words without --tokenizer)")
      ->capture_default_str();
  CLI::Option* output_len =
      app->add_option("--output-len", args->output_len, "Tokens to generate (max_tokens; overrides ShareGPT's)")
          ->capture_default_str();
  app->add_option("--range-ratio", args->range_ratio,
                  "Synthetic lengths uniform in [len*(1-r), len*(1+r)], r in [0, 1)")
      ->capture_default_str();
  app->add_option("--seed", args->seed, "Seed of the prompts and arrival times")->capture_default_str();
  app->add_option("--json", args->json_out, "Also write the summary and every request's record to this JSON file");
  app->add_option("--slo-ttft-ms", args->slo_ttft_ms, "Goodput SLO: time to first token at most this (ms)");
  app->add_option("--slo-tpot-ms", args->slo_tpot_ms, "Goodput SLO: time per output token at most this (ms)");
  app->add_option("--slo-e2e-ms", args->slo_e2e_ms, "Goodput SLO: end-to-end latency at most this (ms)");
  app->add_flag("--no-ignore-eos", args->no_ignore_eos,
                "Do not send ignore_eos: true (outputs may then end before --output-len)");
  app->add_option("--temperature", args->temperature, "Sampling temperature sent")->capture_default_str();
  app->add_option("--extra-body", args->extra_body, "A JSON object merged into every request body");
  app->add_option("--timeout", args->timeout_s, "Seconds before a request counts as a timeout")->capture_default_str();
  app->add_option("--num-warmups", args->num_warmups,
                  "Requests sent one at a time before the run and left out of the results")
      ->capture_default_str();
  app->add_flag("--use-response-cache", args->use_response_cache,
                "Let the server answer from its response cache (by default requests carry Cache-Control: no-store)");
  app->add_flag("--no-progress", args->no_progress, "No live progress line (it is shown only on a terminal)");
  app->callback([runner, args, output_len] {
    args->output_len_given = output_len->count() > 0;
    *runner = [args] {
      Status s = run_bench_serve(*args);
      if (!s.ok()) return report_error(s);
      return 0;
    };
  });
}

}  // namespace

// bench_offline_command.cc
void add_bench_offline(CLI::App& bench, CommandRunner* runner);

CommandRunner register_bench(CLI::App& app) {
  app.require_subcommand(1);
  auto runner = std::make_shared<CommandRunner>();
  add_bench_serve(app, runner.get());
  add_bench_offline(app, runner.get());
  return [runner] { return *runner ? (*runner)() : 1; };
}

}  // namespace bw::cli
