// `breakwater bench offline`: the engine in-process (no HTTP) on synthetic prompts. For
// each batch size B, B random prompts of --input-len tokens are submitted at once and
// each generates --output-len tokens (EOS ignored). Reported per B: prefill tokens/s
// (B * input_len over the time until every request has its first token), decode tokens/s
// (the remaining B * (output_len - 1) tokens over the rest of the run), time per output
// token, and device memory in use (CUDA: total - free after the run). Each B first runs
// an untimed round of the same prompts' shape with up to 4 output tokens in the same
// engine (see run_batch). Tokens are greedy unless --temperature (with --top-p, --top-k)
// asks for sampled ones, each request seeded (--seed plus its index) so reruns draw alike.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
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

Result<BatchResult> run_batch(CausalLM& model, Backend& backend, const BenchOfflineArgs& args, DType kv_dtype,
                              int32_t batch, uint32_t seed) {
  const ModelConfig& mc = model.config();
  EngineConfig config;
  config.scheduler.max_num_seqs = batch;
  config.scheduler.max_num_batched_tokens = std::max(args.max_batched_tokens, batch);
  config.scheduler.max_model_len = args.input_len + args.output_len;
  config.kv_block_size = 16;
  const int64_t blocks_per_seq = (config.scheduler.max_model_len + 15) / 16;
  config.kv_num_blocks = static_cast<int32_t>(blocks_per_seq * batch + 16);
  config.kv_dtype = kv_dtype;
  config.enable_prefix_caching = false;
  if (args.enforce_eager) config.max_graph_batch = 0;
  config.async_scheduling = !args.no_async_scheduling;
  Logger log = make_stderr_logger("bench", "warn");
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::create(model, backend, nullptr, config, log));

  // Submits `batch` random prompts at once, each generating `output_len` tokens; returns
  // when all are done: the seconds until every request had its first token, and in all.
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(mc.vocab_size - 1));
  auto round = [&](int32_t output_len) -> Result<std::pair<double, double>> {
    std::vector<std::unique_ptr<EventQueue>> queues;
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
      queues.push_back(std::make_unique<EventQueue>());
      ASSIGN_OR_RETURN(RequestId id, engine->submit(std::move(request), queues.back()->sink()));
      (void)id;
    }
    double first_token = 0.0;
    for (auto& q : queues) {
      for (;;) {
        std::optional<EngineEvent> event = q->pop();
        if (!event) return Unavailable("bench: no answer from the engine");
        if (!event->done) continue;
        if (!event->error.ok()) return event->error;
        first_token = std::max(first_token, event->timings.first_token_seconds);
        break;
      }
    }
    return std::make_pair(first_token, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  // Warm-up round in the same engine, untimed: what a server pays once per batch shape
  // (the decode graphs of this padded batch captured, cuBLASLt plans for its row counts,
  // kernels that only larger batches use loaded) stays out of the measured round. Without
  // it the first batch size of a process ran up to ~25% slower than the same size again.
  RETURN_IF_ERROR(round(std::min(args.output_len, 4)).status());
  ASSIGN_OR_RETURN(const auto timed, round(args.output_len));

  BatchResult r;
  r.batch = batch;
  r.prefill_seconds = timed.first;
  r.total_seconds = timed.second;
  const double decode_seconds = r.total_seconds - r.prefill_seconds;
  r.prefill_tokens_per_second =
      r.prefill_seconds > 0 ? batch * static_cast<double>(args.input_len) / r.prefill_seconds : 0.0;
  if (args.output_len > 1 && decode_seconds > 0) {
    r.decode_tokens_per_second = batch * static_cast<double>(args.output_len - 1) / decode_seconds;
    r.time_per_output_token_ms = 1e3 * decode_seconds / (args.output_len - 1);
  }
  r.memory_used_gib = device_memory_used_gib(backend);
  return r;
}

Status run_bench_offline(const BenchOfflineArgs& args) {
  if (args.input_len <= 0 || args.output_len <= 0) return InvalidArgument("--input-len and --output-len must be > 0");
  ASSIGN_OR_RETURN(std::vector<int32_t> batches, parse_batches(args.batches));
  ASSIGN_OR_RETURN(std::optional<DType> weight_dtype, parse_weight_dtype(args.weight_dtype));
  auto kv_dtype = dtype_from_name(args.kv_dtype);
  if (!kv_dtype || !is_float(*kv_dtype)) return InvalidArgument("--kv-dtype must be f32, f16 or bf16");
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
