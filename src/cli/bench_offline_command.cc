// `breakwater bench offline`: the engine in-process (no HTTP) on synthetic prompts. For
// each batch size B, B random prompts of --input-len tokens are submitted at once and
// each generates --output-len tokens (EOS ignored). Reported per B: prefill tokens/s
// (B * input_len over the time until every request has its first token), decode tokens/s
// (while all B decode: see run_batch), time per output token (each request's, averaged),
// and device memory in use (CUDA: total - free after the run). Each B first runs
// an untimed round of the same prompts' shape with up to 4 output tokens in the same
// engine (see run_batch). Tokens are greedy unless --temperature (with --top-p, --top-k)
// asks for sampled ones, each request seeded (--seed plus its index) so reruns draw alike.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/backend_factory.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/logging.h"
#include "common/thread_pool.h"
#include "engine/engine.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "sched/sampling_params.h"

namespace bw::cli {

namespace {

struct BenchOfflineArgs {
  std::string model;
  std::string device = "cpu";
  int threads = 0;
  std::string weight_dtype = "auto";
  std::string kv_dtype = "bf16";
  int32_t kv_block_size = 16;
  int32_t input_len = 512;
  int32_t output_len = 128;
  std::string batches = "1";
  int32_t max_batched_tokens = 2048;
  uint64_t seed = 0;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  bool json = false;
  bool enforce_eager = false;
  bool no_async_scheduling = false;
};

struct BatchResult {
  int32_t batch = 0;
  double prefill_seconds = 0.0;
  double total_seconds = 0.0;
  double decode_seconds = 0.0;  // the stretch decode_tokens_per_second measures
  double prefill_tokens_per_second = 0.0;
  double decode_tokens_per_second = 0.0;
  double time_per_output_token_ms = 0.0;
  double memory_used_gib = 0.0;
};

Result<std::vector<int32_t>> parse_batches(const std::string& text) {
  std::vector<int32_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v <= 0 || v > 65536) {
      return InvalidArgument("--batch '{}': want positive integers separated by commas", text);
    }
    out.push_back(static_cast<int32_t>(v));
  }
  if (out.empty()) return InvalidArgument("--batch is empty");
  return out;
}

double device_memory_used_gib(const Backend& backend) {
  uint64_t free_bytes = 0, total_bytes = 0;
  if (!backend.memory_info(&free_bytes, &total_bytes).ok()) return 0.0;  // host memory
  return static_cast<double>(total_bytes - free_bytes) / static_cast<double>(uint64_t{1} << 30);
}

// The time (seconds from the round's start) of every token of a round's requests, recorded
// as the engine hands them over (on its thread; the accessors after wait()).
class TokenTimes {
 public:
  explicit TokenTimes(int32_t requests) : requests_(static_cast<size_t>(requests)) {}

  // Request `index`'s event, `now` seconds after the round's start.
  void record(int32_t index, double now, const EngineEvent& event) {
    std::lock_guard lock(mutex_);
    Request& r = requests_[static_cast<size_t>(index)];
    if (!event.token_ids.empty()) {
      if (r.tokens == 0) r.first = now;
      r.last = now;
      r.tokens += static_cast<int64_t>(event.token_ids.size());
      tokens_.emplace_back(now, static_cast<int64_t>(event.token_ids.size()));
    }
    if (event.done) {
      if (!event.error.ok() && error_.ok()) error_ = event.error;
      ++num_done_;
      done_.notify_all();
    }
  }
  // Waits until every request is done; its error if one failed.
  Status wait() {
    std::unique_lock lock(mutex_);
    if (!done_.wait_for(lock, std::chrono::minutes(10), [this] { return num_done_ == requests_.size(); })) {
      return Unavailable("bench: no answer from the engine");
    }
    return error_;
  }
  // (requests_ holds at least one request: --batch sizes are positive.)
  double last_first_token() const { return std::ranges::max(requests_, {}, &Request::first).first; }
  double last_token() const { return std::ranges::max(requests_, {}, &Request::last).last; }
  // The first moment a request had all its tokens.
  double first_finish() const { return std::ranges::min(requests_, {}, &Request::last).last; }
  // Tokens made in (from, to].
  int64_t tokens_between(double from, double to) const {
    int64_t n = 0;
    for (const auto& [when, count] : tokens_)
      n += when > from && when <= to ? count : 0;
    return n;
  }
  // Each request's (last token - first token) / (tokens - 1), averaged (vLLM's TPOT).
  double mean_time_per_output_token() const {
    double sum = 0.0;
    int n = 0;
    for (const Request& r : requests_) {
      if (r.tokens < 2) continue;
      sum += (r.last - r.first) / static_cast<double>(r.tokens - 1);
      ++n;
    }
    return n > 0 ? sum / n : 0.0;
  }

 private:
  struct Request {
    double first = 0.0;
    double last = 0.0;
    int64_t tokens = 0;
  };
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<Request> requests_;
  std::vector<std::pair<double, int64_t>> tokens_;  // (time, tokens) of each event
  size_t num_done_ = 0;
  Status error_;
};

Result<BatchResult> run_batch(CausalLM& model, Backend& backend, const BenchOfflineArgs& args, DType kv_dtype,
                              int32_t batch, uint32_t seed) {
  const ModelConfig& mc = model.config();
  EngineConfig config;
  config.scheduler.max_num_seqs = batch;
  config.scheduler.max_num_batched_tokens = std::max(args.max_batched_tokens, batch);
  config.scheduler.max_model_len = args.input_len + args.output_len;
  config.kv_block_size = args.kv_block_size;
  const int64_t blocks_per_seq = (config.scheduler.max_model_len + args.kv_block_size - 1) / args.kv_block_size;
  config.kv_num_blocks = static_cast<int32_t>(blocks_per_seq * batch + 16);
  config.kv_dtype = kv_dtype;
  config.enable_prefix_caching = false;
  if (args.enforce_eager) config.max_graph_batch = 0;
  // The warm-up round below records the graphs this batch replays and warms its step
  // sizes; recording every size up to it and warming every GEMM bucket at start-up as well
  // would only lengthen the run.
  config.lazy_graph_capture = true;
  config.warm_up = false;
  config.async_scheduling = !args.no_async_scheduling;
  Logger log = make_stderr_logger("bench", "warn");
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::create(model, backend, nullptr, config, log));

  // Submits `batch` random prompts at once, each generating `output_len` tokens; returns
  // when all are done, with the time of every token (TokenTimes).
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(mc.vocab_size - 1));
  auto round = [&](int32_t output_len) -> Result<std::shared_ptr<const TokenTimes>> {
    auto times = std::make_shared<TokenTimes>(batch);
    const auto start = std::chrono::steady_clock::now();
    for (int32_t b = 0; b < batch; ++b) {
      GenerationRequest request;
      request.prompt_ids.resize(static_cast<size_t>(args.input_len));
      for (int32_t& id : request.prompt_ids)
        id = token(rng);
      request.stop.max_tokens = output_len;
      request.stop.ignore_eos = true;
      request.sampling.temperature = args.temperature;
      request.sampling.top_p = args.top_p;
      request.sampling.top_k = args.top_k;
      request.sampling.seed = args.seed + static_cast<uint64_t>(b);
      request.detokenize = false;
      EventSink sink = [times, b, start](const EngineEvent& event) {
        times->record(b, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), event);
      };
      ASSIGN_OR_RETURN(RequestId id, engine->submit(std::move(request), std::move(sink)));
      (void)id;
    }
    RETURN_IF_ERROR(times->wait());
    return std::shared_ptr<const TokenTimes>(times);
  };
  // Warm-up round in the same engine, untimed: what a server pays once per batch shape
  // (the decode graphs of this padded batch captured, cuBLASLt plans for its row counts,
  // kernels that only larger batches use loaded) stays out of the measured round. Without
  // it the first batch size of a process ran up to ~25% slower than the same size again.
  RETURN_IF_ERROR(round(std::min(args.output_len, 4)).status());
  ASSIGN_OR_RETURN(const std::shared_ptr<const TokenTimes> round_times, round(args.output_len));
  const TokenTimes& timed = *round_times;

  BatchResult r;
  r.batch = batch;
  r.prefill_seconds = timed.last_first_token();
  r.total_seconds = timed.last_token();
  r.prefill_tokens_per_second =
      r.prefill_seconds > 0 ? batch * static_cast<double>(args.input_len) / r.prefill_seconds : 0.0;
  // Decode: the tokens made while every request decodes, from the last first token to the
  // first request's end (no prefill shares those steps, no request has left yet), over that
  // stretch. Requests admitted early decode while later ones prefill, and early ones end
  // first, so the run's other tokens come from smaller or mixed steps. When the output is
  // too short for such a stretch (under two steps' worth), up to the last token instead.
  double decode_end = timed.first_finish();
  int64_t decode_tokens = timed.tokens_between(r.prefill_seconds, decode_end);
  if (decode_tokens < 2 * static_cast<int64_t>(batch)) {
    decode_end = r.total_seconds;
    decode_tokens = timed.tokens_between(r.prefill_seconds, decode_end);
  }
  r.decode_seconds = decode_end - r.prefill_seconds;
  if (r.decode_seconds > 0) r.decode_tokens_per_second = static_cast<double>(decode_tokens) / r.decode_seconds;
  r.time_per_output_token_ms = 1e3 * timed.mean_time_per_output_token();
  r.memory_used_gib = device_memory_used_gib(backend);
  return r;
}

Status run_bench_offline(const BenchOfflineArgs& args) {
  if (args.input_len <= 0 || args.output_len <= 0) return InvalidArgument("--input-len and --output-len must be > 0");
  ASSIGN_OR_RETURN(std::vector<int32_t> batches, parse_batches(args.batches));
  ASSIGN_OR_RETURN(std::optional<DType> weight_dtype, parse_weight_dtype(args.weight_dtype));
  auto kv_dtype = dtype_from_name(args.kv_dtype);
  if (!kv_dtype || !is_float(*kv_dtype)) return InvalidArgument("--kv-dtype must be f32, f16 or bf16");
  if (args.kv_block_size <= 0) return InvalidArgument("--kv-block-size must be > 0");
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::open(args.model));
  SamplingParams sampling;
  sampling.temperature = args.temperature;
  sampling.top_p = args.top_p;
  sampling.top_k = args.top_k;
  if (Status s = sampling.validate(checkpoint.config().vocab_size); !s.ok()) {
    return InvalidArgument("--temperature / --top-p / --top-k: {}", s.message());
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                   create_backend(args.device, args.threads, weight_dtype.value_or(checkpoint.config().weight_dtype)));
  ThreadPool load_pool(args.threads);
  WeightLoadOptions load_options;
  load_options.weight_dtype = weight_dtype;
  load_options.pool = &load_pool;
  const auto load_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<CausalLM> model, load_causal_lm(checkpoint, *backend, load_options));
  RETURN_IF_ERROR(backend->synchronize());
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  std::vector<BatchResult> results;
  for (size_t i = 0; i < batches.size(); ++i) {
    ASSIGN_OR_RETURN(BatchResult r,
                     run_batch(*model, *backend, args, *kv_dtype, batches[i], static_cast<uint32_t>(args.seed + i)));
    results.push_back(r);
  }
  const double weight_gib = static_cast<double>(model->weight_bytes()) / static_cast<double>(uint64_t{1} << 30);
  if (args.json) {
    nlohmann::ordered_json j = {{"model", args.model},
                                {"device", backend->name()},
                                {"activation_dtype", std::string(dtype_name(backend->activation_dtype()))},
                                {"kv_dtype", args.kv_dtype},
                                {"kv_block_size", args.kv_block_size},
                                {"input_len", args.input_len},
                                {"output_len", args.output_len},
                                {"temperature", args.temperature},
                                {"top_p", args.top_p},
                                {"top_k", args.top_k},
                                {"weight_gib", weight_gib},
                                {"load_seconds", load_seconds},
                                {"runs", nlohmann::ordered_json::array()}};
    for (const BatchResult& r : results) {
      j["runs"].push_back({{"batch", r.batch},
                           {"prefill_seconds", r.prefill_seconds},
                           {"total_seconds", r.total_seconds},
                           {"decode_seconds", r.decode_seconds},
                           {"prefill_tokens_per_second", r.prefill_tokens_per_second},
                           {"decode_tokens_per_second", r.decode_tokens_per_second},
                           {"time_per_output_token_ms", r.time_per_output_token_ms},
                           {"memory_used_gib", r.memory_used_gib}});
    }
    std::printf("%s\n", j.dump().c_str());
    return OkStatus();
  }
  std::printf("%s on %s (activations %s, KV %s): %.2f GiB of weights, loaded in %.1f s\n", args.model.c_str(),
              backend->name().c_str(), std::string(dtype_name(backend->activation_dtype())).c_str(),
              args.kv_dtype.c_str(), weight_gib, load_seconds);
  const std::string tokens = args.temperature > 0.0f ? fmt::format("sampled (temperature {}, top-p {}, top-k {})",
                                                                   args.temperature, args.top_p, args.top_k)
                                                     : std::string("greedy");
  std::printf("input %d, output %d tokens per request, %s\n", args.input_len, args.output_len, tokens.c_str());
  std::printf("%8s %16s %16s %10s %12s\n", "batch", "prefill tok/s", "decode tok/s", "TPOT ms", "memory GiB");
  for (const BatchResult& r : results) {
    std::printf("%8d %16.1f %16.1f %10.3f %12.2f\n", r.batch, r.prefill_tokens_per_second, r.decode_tokens_per_second,
                r.time_per_output_token_ms, r.memory_used_gib);
  }
  return OkStatus();
}

}  // namespace

void add_bench_offline(CLI::App& bench, CommandRunner* runner) {
  CLI::App* app = bench.add_subcommand("offline", "Benchmark the engine in-process on synthetic prompts");
  auto args = std::make_shared<BenchOfflineArgs>();
  app->add_option("--model", args->model, "Model folder or GGUF file")->required();
  app->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  app->add_option("--threads", args->threads, "CPU threads (0: all)")->capture_default_str();
  app->add_option("--dtype", args->weight_dtype, "Weight dtype in memory: auto, f32, f16, bf16")->capture_default_str();
  app->add_option("--kv-dtype", args->kv_dtype, "KV cache dtype: f32, f16, bf16")->capture_default_str();
  app->add_option("--kv-block-size", args->kv_block_size, "Tokens per KV cache block")->capture_default_str();
  app->add_option("--input-len", args->input_len, "Prompt tokens per request")->capture_default_str();
  app->add_option("--output-len", args->output_len, "Generated tokens per request")->capture_default_str();
  app->add_option("--batch", args->batches, "Batch sizes, e.g. 1,8,32")->capture_default_str();
  app->add_option("--max-batched-tokens", args->max_batched_tokens, "Tokens per engine step")->capture_default_str();
  app->add_option("--seed", args->seed, "Seed of the random prompts and of the sampled tokens")->capture_default_str();
  app->add_option("--temperature", args->temperature, "Sampling temperature; 0 is greedy")->capture_default_str();
  app->add_option("--top-p", args->top_p, "Nucleus sampling: keep the smallest set reaching this probability")
      ->capture_default_str();
  app->add_option("--top-k", args->top_k, "Keep the k most likely tokens (0: all)")->capture_default_str();
  app->add_flag("--json", args->json, "One JSON object instead of the table");
  app->add_flag("--enforce-eager", args->enforce_eager, "No CUDA graphs for decode steps");
  app->add_flag("--no-async-scheduling", args->no_async_scheduling,
                "Wait for each decode step's tokens before scheduling the next");
  app->callback([runner, args] {
    *runner = [args] {
      Status s = run_bench_offline(*args);
      if (!s.ok()) return report_error(s);
      return 0;
    };
  });
}

}  // namespace bw::cli
