// OpenAiService: the HTTP routes of `breakwater serve` — /v1/chat/completions,
// /v1/completions, /v1/models, /health, /metrics — on top of an EngineClient.
//
// It parses and validates each body (openai_protocol.h), checks the API key and the model
// name, renders the chat template, tokenizes, submits to the engine and answers with one
// JSON body or an SSE stream; reasoning models' <think> text goes to reasoning_content.
// A client that disconnects cancels its engine requests. Until attach() the service
// answers 503 (the model is loading); after set_draining(true) too.
//
// Threads: handler() answers /health and /metrics on the HTTP I/O thread and hands every
// other request to the service's worker threads (ServiceConfig::worker_threads), so that
// template rendering, tokenization, a response-cache lookup in Redis or a jobs-store call
// never holds up the I/O of other connections. Engine events arrive on the engine's
// step-loop thread; per-request state is shared between them under its own mutex.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/response_cache.h"
#include "common/logging.h"
#include "engine/engine_client.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace boost::asio {
class thread_pool;
}  // namespace boost::asio

namespace bw::server {

struct ServiceConfig {
  std::string served_model_name = "model";
  std::vector<std::string> api_keys;  // empty: no authentication
  std::optional<double> default_timeout_seconds;
  int32_t default_completion_max_tokens = 16;  // /v1/completions without max_tokens (OpenAI's default)
  int retry_after_seconds = 1;                 // Retry-After of a 429
  int worker_threads = 4;                      // threads that run handler()'s requests (>= 1)
};

// What the service needs of the loaded model. The pointers must outlive the service.
struct ServedModel {
  EngineClient* engine = nullptr;
  const Tokenizer* tokenizer = nullptr;       // required for text prompts and chat
  std::optional<ChatTemplate> chat_template;  // none: chat requests get a 400
  // The response cache (cache/response_cache.h); nullptr: none. Must outlive the service.
  // Cacheable requests (its mode) are looked up after tokenization and replayed on a hit
  // (header X-Cache: hit); others run and carry X-Cache: miss. `Cache-Control: no-cache`
  // skips the lookup but stores the fresh result; `no-store` skips both.
  cache::ResponseCache* response_cache = nullptr;
};

class OpenAiService {
 public:
  OpenAiService(ServiceConfig config, Logger logger);
  ~OpenAiService();

  // The model is loaded: requests are served from now on.
  void attach(ServedModel model);
  // Draining: /health and new API requests answer 503; in-flight ones finish.
  void set_draining(bool draining);

  // Answers one request on the caller's thread.
  void handle(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder);
  // The HttpHandler of the server: handle() on a worker thread (inline for /health and
  // /metrics).
  HttpHandler handler();
  // Waits for the requests handed to the workers so far; later ones are not run (their
  // responders answer 500, or nothing once the HTTP server is shut down). Call after the
  // HTTP server's shutdown and before the engine goes away. Idempotent.
  void stop_workers();
  // Extra routes (the jobs API), answered after the API-key and ready checks: paths for
  // which `matches` is true go to `handler` (any method). Set before serving.
  void set_extra_routes(std::function<bool(const std::string& path)> matches, HttpHandler handler);
  // Text appended to /metrics (the job counters). Set before serving.
  void set_extra_metrics(std::function<std::string()> render) { extra_metrics_ = std::move(render); }
  // Runs a /v1/chat/completions or /v1/completions body in-process for a background job:
  // no API key or draining check, engine priority + `priority_offset` (lower runs first);
  // the answer goes to `responder` (the caller forces stream off). False, with nothing
  // sent, while the model is loading.
  bool run_background(const std::string& path, std::string body, int32_t priority_offset,
                      const std::shared_ptr<HttpResponder>& responder);
  // The 4xx a body gets at parse time (a bad field, an unknown model), nullopt when valid.
  std::optional<ApiError> validate_body(Endpoint endpoint, std::string_view body) const;

  // For /metrics: the HTTP connection count comes from the server.
  void set_connection_counter(std::function<int()> counter) { connection_counter_ = std::move(counter); }
  ServerMetrics& metrics() { return metrics_; }

 private:
  struct Generation;

  void handle_generation(Endpoint endpoint, const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder,
                         int32_t priority_offset = 0);
  void handle_models(const std::shared_ptr<HttpResponder>& responder);
  void send_error(const std::shared_ptr<HttpResponder>& responder, const std::string& route, const ApiError& error,
                  HttpHeaders headers = {});
  void send_json(const std::shared_ptr<HttpResponder>& responder, const std::string& route, int status,
                 std::string body);
  bool authorized(const HttpRequest& request) const;
  // Renders the chat template and tokenizes; sets *opens_reasoning.
  Result<std::vector<int32_t>> chat_prompt(const ParsedRequest& parsed, bool* opens_reasoning, ApiError* error) const;

  ServiceConfig config_;
  Logger logger_;
  ServerMetrics metrics_;
  std::function<int()> connection_counter_;
  std::function<bool(const std::string&)> extra_routes_match_;
  HttpHandler extra_routes_;
  std::function<std::string()> extra_metrics_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> ready_{false};
  ServedModel model_;  // set once by attach() before ready_
  std::atomic<uint64_t> next_id_{1};
  std::unique_ptr<boost::asio::thread_pool> workers_;  // declared last: joined first
};

}  // namespace bw::server
