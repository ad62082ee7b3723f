// `breakwater serve`: the OpenAI-compatible HTTP server. It listens at once (/health says
// 503 "loading" until the model is ready), loads the model and starts the engine, then
// serves until SIGTERM or SIGINT: it stops accepting, lets in-flight requests finish up to
// --shutdown-timeout, aborts what is left and exits 0.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend_factory.h"
#include "cache/response_cache.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "cli/job_service.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "common/thread_pool.h"
#include "engine/engine.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "server/http_server.h"
#include "server/openai_service.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/open_tokenizer.h"

namespace bw::cli {

namespace {

struct ServeArgs {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string served_model_name;
  std::vector<std::string> api_keys;
  int32_t max_queue = 1024;
  std::string max_body_bytes = "16MiB";
  double request_timeout = 0.0;
  std::string chat_template_file;
  std::string device = "cpu";
  int threads = 0;
  int io_threads = 2;
  std::string weight_dtype = "auto";
  double shutdown_timeout = 30.0;
  std::string log_level = "info";
  // Response cache (cache/response_cache.h).
  std::string cache_mode = "deterministic";
  std::string cache_max_bytes = "256MiB";
  double cache_ttl = 3600.0;
  std::string redis_url;  // also the Redis of the job store
  int redis_timeout_ms = 50;
  JobFlags jobs;  // async jobs and the Batch API (cli/job_service.h)
  EngineFlags engine;
};

// The loaded model and everything serving it; destroyed in reverse order.
struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<CausalLM> model;
  std::unique_ptr<Engine> engine;
};

Result<LoadedModel> load_model(const ServeArgs& args, const Logger& log, server::ServedModel* served) {
  LoadedModel loaded;
  ASSIGN_OR_RETURN(std::optional<DType> weight_dtype, parse_weight_dtype(args.weight_dtype));
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::open(args.model));
  // The CUDA backend computes in f32 for f32 weights and in bf16 otherwise.
  ASSIGN_OR_RETURN(loaded.backend,
                   create_backend(args.device, args.threads, weight_dtype.value_or(checkpoint.config().weight_dtype)));
  ASSIGN_OR_RETURN(EngineConfig config, engine_config_from_flags(args.engine, loaded.backend->activation_dtype()));
  config.model_name = args.served_model_name;
  config.max_pending_requests = config.scheduler.max_num_seqs + args.max_queue;
  log->info("{}: {}", args.model, checkpoint.config().summary());
  if (auto t = model_tokenizer(checkpoint, args.model); t.ok()) {
    loaded.tokenizer = std::move(*t);
  } else {
    log->warn("no tokenizer ({}): only token-id prompts on /v1/completions will work", t.status().message());
  }
  if (loaded.tokenizer != nullptr) {
    Result<std::string> source = find_chat_template(*loaded.tokenizer, args.model, args.chat_template_file);
    if (source.ok()) {
      ASSIGN_OR_RETURN(ChatTemplate chat_template, ChatTemplate::create(std::move(*source)));
      served->chat_template = std::move(chat_template);
    } else if (!args.chat_template_file.empty()) {
      return source.status();
    } else {
      log->warn("{}; /v1/chat/completions will answer 400", source.status().message());
    }
  }
  ThreadPool load_pool(args.threads);
  WeightLoadOptions load_options;
  load_options.weight_dtype = weight_dtype;
  load_options.pool = &load_pool;
  ASSIGN_OR_RETURN(loaded.model, load_causal_lm(checkpoint, *loaded.backend, load_options));
  ASSIGN_OR_RETURN(loaded.engine, Engine::create(*loaded.model, *loaded.backend, loaded.tokenizer.get(), config, log));
  log->info("engine ready: {} KV blocks of {} tokens, max {} sequences, {} tokens per step, context {}",
            loaded.engine->config().kv_num_blocks, config.kv_block_size, config.scheduler.max_num_seqs,
            config.scheduler.max_num_batched_tokens, loaded.engine->model_info().max_model_len);
  served->engine = loaded.engine.get();
  served->tokenizer = loaded.tokenizer.get();
  return loaded;
}

// The response cache the flags ask for; nullptr for --cache-mode off.
Result<std::unique_ptr<cache::ResponseCache>> make_response_cache(const ServeArgs& args, const Logger& log) {
  ASSIGN_OR_RETURN(cache::CacheMode mode, cache::parse_cache_mode(args.cache_mode));
  if (mode == cache::CacheMode::kOff) return std::unique_ptr<cache::ResponseCache>();
  if (!(args.cache_ttl > 0)) return InvalidArgument("--cache-ttl must be > 0 seconds");
  if (args.redis_timeout_ms <= 0) return InvalidArgument("--redis-timeout-ms must be > 0");
  cache::ResponseCacheConfig config;
  config.mode = mode;
  ASSIGN_OR_RETURN(config.l1_max_bytes, parse_byte_size(args.cache_max_bytes));
  config.ttl = std::chrono::milliseconds(static_cast<int64_t>(std::min(args.cache_ttl, 1e9) * 1000));
  config.redis_url = args.redis_url;
  config.redis_timeout = std::chrono::milliseconds(args.redis_timeout_ms);
  ASSIGN_OR_RETURN(std::unique_ptr<cache::ResponseCache> response_cache, cache::ResponseCache::create(config, log));
  log->info("response cache: {} requests, {} MiB in process, TTL {} s, {}", cache::cache_mode_name(mode),
            config.l1_max_bytes >> 20, args.cache_ttl,
            args.redis_url.empty() ? std::string("no Redis") : "Redis " + args.redis_url);
  return response_cache;
}

Status run_serve(ServeArgs args, int* exit_code) {
  // Every thread started from here on inherits the blocked signals; the main thread waits
  // for them with sigwait, so shutdown runs in ordinary code, not in a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  Logger log = make_stderr_logger("serve", args.log_level);
  if (args.port < 0 || args.port > 65535) return InvalidArgument("--port must be in [0, 65535]");
  if (args.max_queue < 0) return InvalidArgument("--max-queue must be >= 0");
  if (args.request_timeout < 0) return InvalidArgument("--request-timeout must be >= 0");
  if (args.served_model_name.empty()) args.served_model_name = args.model;
  ASSIGN_OR_RETURN(uint64_t max_body, parse_byte_size(args.max_body_bytes));
  ASSIGN_OR_RETURN(std::unique_ptr<cache::ResponseCache> response_cache, make_response_cache(args, log));

  server::ServiceConfig service_config;
  service_config.served_model_name = args.served_model_name;
  service_config.api_keys = args.api_keys;
  if (args.request_timeout > 0) service_config.default_timeout_seconds = args.request_timeout;
  server::OpenAiService service(service_config, log);
  ASSIGN_OR_RETURN(std::unique_ptr<JobService> job_service,
                   JobService::create(args.jobs, args.redis_url, args.engine.max_num_seqs, &service, log));

  server::HttpServerConfig http;
  http.host = args.host;
  http.port = static_cast<uint16_t>(args.port);
  http.max_body_bytes = max_body;
  http.io_threads = args.io_threads;
  http.error_body = [](int status, const std::string& message) {
    server::ApiError e;
    e.http_status = status;
    e.message = message;
    e.type =
        status == 413 ? "invalid_request_error" : (status >= 500 ? "service_unavailable" : "invalid_request_error");
    return server::error_body(e);
  };
  ASSIGN_OR_RETURN(std::unique_ptr<server::HttpServer> http_server,
                   server::HttpServer::start(http, service.handler(), log));
  service.set_connection_counter([s = http_server.get()] { return s->num_connections(); });
  // One line on stdout that scripts can wait for.
  std::printf("breakwater: listening on http://%s:%u (loading %s)\n", args.host.c_str(), http_server->port(),
              args.model.c_str());
  std::fflush(stdout);

  server::ServedModel served;
  served.response_cache = response_cache.get();
  Result<LoadedModel> loaded = load_model(args, log, &served);
  if (!loaded.ok()) {
    http_server->shutdown(std::chrono::milliseconds(0));
    return loaded.status();
  }
  service.attach(std::move(served));
  if (job_service) job_service->start();
  log->info("serving '{}' on http://{}:{}", args.served_model_name, args.host, http_server->port());

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  log->info("{}: draining (up to {} s for in-flight requests)", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
            args.shutdown_timeout);
  service.set_draining(true);
  http_server->stop_accepting();
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(args.shutdown_timeout * 1000));
  const auto drain_deadline = std::chrono::steady_clock::now() + grace;
  if (job_service) job_service->drain(grace);  // running jobs finish (or are handed back)
  http_server->shutdown(std::max(std::chrono::milliseconds(0), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                                   drain_deadline - std::chrono::steady_clock::now())));
  service.stop_workers();  // the requests handed over before the server stopped
  loaded->engine->shutdown();
  log->info("stopped");
  *exit_code = 0;
  return OkStatus();
}

}  // namespace

CommandRunner register_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  app.add_option("--model", args->model, "Model: a .gguf file or a Hugging Face folder")->required();
  app.add_option("--host", args->host, "Address to listen on")->capture_default_str();
  app.add_option("--port", args->port, "Port (0: any free port, printed at start)")->capture_default_str();
  app.add_option("--served-model-name", args->served_model_name,
                 "The model name clients use (default: the --model path)");
  app.add_option("--api-key", args->api_keys, "Require 'Authorization: Bearer KEY' (repeat for several keys)");
  app.add_option("--max-queue", args->max_queue,
                 "Requests that may wait beyond a full batch (--max-seqs); more get 429 with Retry-After")
      ->capture_default_str();
  app.add_option("--max-body-bytes", args->max_body_bytes, "Largest request body (e.g. 16MiB); larger get 413")
      ->capture_default_str();
  app.add_option("--request-timeout", args->request_timeout,
                 "Default per-request deadline in seconds (0: none); a request's `timeout` field overrides it")
      ->capture_default_str();
  app.add_option("--chat-template", args->chat_template_file, "A Jinja chat template file to use instead");
  app.add_option("--device", args->device, "Device: cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--threads", args->threads, "CPU threads for the model; 0 = all")->capture_default_str();
  app.add_option("--io-threads", args->io_threads, "HTTP I/O threads")->capture_default_str();
  app.add_option("--dtype", args->weight_dtype, "Weight dtype in memory: auto, f32, f16, bf16")->capture_default_str();
  app.add_option("--shutdown-timeout", args->shutdown_timeout,
                 "Seconds in-flight requests get to finish after SIGTERM/SIGINT")
      ->capture_default_str();
  app.add_option("--log-level", args->log_level, "trace, debug, info, warn, error, off")->capture_default_str();
  app.add_option("--cache-mode", args->cache_mode,
                 "Response cache: off, deterministic (temperature 0 or an explicit seed), all")
      ->capture_default_str();
  app.add_option("--cache-max-bytes", args->cache_max_bytes, "Byte budget of the in-process response cache (L1)")
      ->capture_default_str();
  app.add_option("--cache-ttl", args->cache_ttl, "Seconds a cached response lives (L1 and L2)")->capture_default_str();
  app.add_option("--redis-url", args->redis_url,
                 "Redis shared by the replicas (redis://[[user]:password@]host[:port][/db]): the response cache's L2");
  app.add_option("--redis-timeout-ms", args->redis_timeout_ms,
                 "Redis connect and command timeout; a slower Redis reads as a cache miss")
      ->capture_default_str();
  add_job_flags(app, &args->jobs);
  add_engine_flags(app, &args->engine);
  return [args]() {
    int exit_code = 1;
    Status s = run_serve(*args, &exit_code);
    if (!s.ok()) return report_error(s);
    return exit_code;
  };
}

}  // namespace bw::cli
