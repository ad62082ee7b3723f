#include "server/openai_service.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <mutex>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "server/reasoning_parser.h"

namespace bw::server {

namespace {

const HttpHeaders kJsonHeaders = {{"Content-Type", "application/json"}};

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

ApiError not_ready_error(bool draining) {
  ApiError e;
  e.http_status = 503;
  e.type = "service_unavailable";
  e.message = draining ? "the server is shutting down" : "the model is still loading";
  return e;
}

}  // namespace

// The state of one HTTP generation request: one engine request per prompt (completions
// may send several), n choices each. Shared by the HTTP side and the engine's sinks.
struct OpenAiService::Generation {
  OpenAiService* service = nullptr;
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string route;
  ResponseMeta meta;
  bool stream = false;
  bool include_usage = false;
  bool want_logprobs = false;
  int32_t n = 1;
  std::shared_ptr<HttpResponder> responder;
  TokenText token_text;

  std::mutex mutex;
  std::vector<RequestId> engine_ids;
  size_t num_prompts = 0;
  size_t num_done = 0;
  bool responded = false;  // an error or the final response went out
  std::vector<ChoiceResult> choices;
  std::vector<std::unique_ptr<ReasoningParser>> parsers;  // chat: one per choice
  std::vector<std::string> echo;                          // completions echo: prompt text per prompt
  std::vector<bool> started;                              // stream: role/echo chunk sent per choice
  Usage usage;
  Status error;
  // Response cache: the key to store the result under ("" : not stored), and the
  // X-Cache header of the response (empty without a cache).
  std::string cache_key;
  HttpHeaders cache_headers;

  HttpHeaders json_headers() const {
    HttpHeaders headers = kJsonHeaders;
    headers.insert(headers.end(), cache_headers.begin(), cache_headers.end());
    return headers;
  }
  HttpHeaders stream_headers() const {
    HttpHeaders headers = {{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}};
    headers.insert(headers.end(), cache_headers.begin(), cache_headers.end());
    return headers;
  }

  // A finished, error-free result goes to the response cache when every choice ended by
  // stop or length (never an aborted, timed-out or failed one). Mutex held; before echo.
  void store_in_cache() {
    cache::ResponseCache* cache = service->model_.response_cache;
    if (cache == nullptr || cache_key.empty() || !error.ok()) return;
    cache::CachedResponse cached;
    cached.usage = usage;
    for (const ChoiceResult& c : choices) {
      if (c.finish_reason != "stop" && c.finish_reason != "length") return;
      cached.choices.push_back(
          cache::CachedChoice{c.text, c.reasoning_content, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason});
    }
    cache->store(cache_key, std::move(cached));
  }

  // Answers from a cached result in the shape this request asked for (HTTP thread).
  void replay(const cache::CachedResponse& cached) {
    std::lock_guard lock(mutex);
    responded = true;
    usage = cached.usage;
    for (size_t i = 0; i < choices.size(); ++i) {
      const cache::CachedChoice& c = cached.choices[i];
      ChoiceResult& choice = choices[i];
      choice.text = c.text;
      choice.reasoning_content = c.reasoning_content;
      choice.token_ids = c.token_ids;
      if (want_logprobs) choice.logprobs = c.logprobs;
      choice.finish_reason = c.finish_reason;
      choice.stop_reason = c.stop_reason;
    }
    service->metrics_.record_request(route, 200);
    if (stream) {
      responder->start_stream(200, stream_headers());
      for (size_t i = 0; i < choices.size(); ++i) {
        const ChoiceResult& choice = choices[i];
        StreamDelta delta;
        delta.index = choice.index;
        delta.role = endpoint == Endpoint::kChatCompletions;
        if (!echo.empty()) delta.content = echo[i / static_cast<size_t>(n)];
        delta.content += choice.text;
        delta.reasoning_content = choice.reasoning_content;
        delta.logprobs = choice.logprobs;
        if (meta.token_ids) {
          delta.token_ids = choice.token_ids;
          delta.prompt_token_ids = choice.prompt_token_ids;
        }
        responder->write(chunk(delta));
        StreamDelta finish;
        finish.index = choice.index;
        finish.finish_reason = choice.finish_reason;
        finish.stop_reason = choice.stop_reason;
        responder->write(chunk(finish));
      }
    }
    send_success();
  }

  std::string chunk(const StreamDelta& delta) const {
    return endpoint == Endpoint::kChatCompletions ? chat_chunk_event(meta, delta, token_text)
                                                  : completion_chunk_event(meta, delta, token_text);
  }

  // Engine thread.
  void on_event(size_t prompt_index, EngineEvent event) {
    std::lock_guard lock(mutex);
    const size_t i = prompt_index * static_cast<size_t>(n) + static_cast<size_t>(event.index);
    if (i >= choices.size()) return;
    ChoiceResult& choice = choices[i];
    StreamDelta delta;
    delta.index = static_cast<int32_t>(i);
    if (stream && !started[i]) {
      started[i] = true;
      delta.role = endpoint == Endpoint::kChatCompletions;
      if (!echo.empty()) delta.content = echo[prompt_index];
      if (meta.token_ids) delta.prompt_token_ids = choice.prompt_token_ids;
    }
    std::string content = event.text;
    std::string reasoning;
    if (!parsers.empty()) {
      ReasoningParser::Delta split = parsers[i]->feed(event.text);
      if (event.finish_reason) {
        ReasoningParser::Delta rest = parsers[i]->flush();
        split.reasoning += rest.reasoning;
        split.content += rest.content;
      }
      content = std::move(split.content);
      reasoning = std::move(split.reasoning);
    }
    choice.text += content;
    choice.reasoning_content += reasoning;
    choice.token_ids.insert(choice.token_ids.end(), event.token_ids.begin(), event.token_ids.end());
    if (want_logprobs) choice.logprobs.insert(choice.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
    if (event.finish_reason) {
      choice.finish_reason = std::string(finish_reason_name(*event.finish_reason));
      choice.stop_reason = event.stop_string;
    }
    if (stream && !responded) {
      delta.content += content;
      delta.reasoning_content = std::move(reasoning);
      if (want_logprobs) delta.logprobs = event.logprobs;
      if (meta.token_ids) delta.token_ids = event.token_ids;
      if (delta.role || !delta.content.empty() || !delta.reasoning_content.empty() || !delta.logprobs.empty() ||
          !delta.token_ids.empty() || delta.prompt_token_ids) {
        responder->write(chunk(delta));
      }
      if (event.finish_reason) {
        StreamDelta finish;
        finish.index = delta.index;
        finish.finish_reason = choice.finish_reason;
        finish.stop_reason = choice.stop_reason;
        responder->write(chunk(finish));
      }
    }
    if (!event.done) return;
    usage.prompt_tokens += event.usage.prompt_tokens;
    usage.completion_tokens += event.usage.completion_tokens;
    usage.cached_tokens += event.usage.cached_tokens;
    if (!event.error.ok() && error.ok()) error = event.error;
    const double ttft = event.timings.first_token_seconds;
    const double total = event.timings.total_seconds;
    const int64_t per_choice = event.usage.completion_tokens / std::max<int32_t>(n, 1);
    const double tpot = per_choice > 1 ? (total - ttft) / static_cast<double>(per_choice - 1) : 0.0;
    service->metrics_.record_generation(ttft, tpot, total, event.usage.prompt_tokens, event.usage.completion_tokens);
    if (++num_done == num_prompts) finish();
  }

  // All engine requests are done (mutex held). Metrics are recorded before the response
  // ends: once the client has its answer, nothing here touches the service any more.
  void finish() {
    if (responded) return;
    responded = true;
    if (!error.ok()) {
      const ApiError api = api_error_from_status(error);
      service->metrics_.record_request(route, stream ? 200 : api.http_status);
      if (stream) {
        responder->write("data: " + error_body(api) + "\n\n");
        responder->write(std::string(kStreamDone));
        responder->end();
      } else {
        responder->send(api.http_status, kJsonHeaders, error_body(api));
      }
      return;
    }
    service->metrics_.record_request(route, 200);
    store_in_cache();
    send_success();
  }

  // The end of a successful response (mutex held): the usage chunk and [DONE] of a stream,
  // or the whole JSON body (echoed prompts prepended) — for a fresh result and a cache hit.
  void send_success() {
    if (stream) {
      if (include_usage) responder->write(usage_chunk_event(meta, endpoint, usage));
      responder->write(std::string(kStreamDone));
      responder->end();
      return;
    }
    if (!echo.empty()) {
      for (size_t i = 0; i < choices.size(); ++i)
        choices[i].text = echo[i / static_cast<size_t>(n)] + choices[i].text;
    }
    std::string body = endpoint == Endpoint::kChatCompletions ? chat_completion_body(meta, choices, usage, token_text)
                                                              : completion_body(meta, choices, usage, token_text);
    responder->send(200, json_headers(), std::move(body));
  }
};

OpenAiService::OpenAiService(ServiceConfig config, Logger logger)
    : config_(std::move(config)),
      logger_(std::move(logger)),
      metrics_(config_.served_model_name),
      workers_(std::make_unique<boost::asio::thread_pool>(std::max(config_.worker_threads, 1))) {}

OpenAiService::~OpenAiService() { stop_workers(); }

HttpHandler OpenAiService::handler() {
  return [this](HttpRequest request, std::shared_ptr<HttpResponder> responder) {
    if (request.path == "/health" || request.path == "/metrics") {  // cheap, and must answer under load
      handle(request, responder);
      return;
    }
    boost::asio::post(*workers_, [this, request = std::move(request), responder = std::move(responder)] {
      handle(request, responder);
    });
  };
}

void OpenAiService::stop_workers() { workers_->join(); }

void OpenAiService::attach(ServedModel model) {
  model_ = std::move(model);
  metrics_.set_response_cache(model_.response_cache);
  ready_ = true;
}

void OpenAiService::set_draining(bool draining) {
  draining_ = draining;
  metrics_.set_draining(draining);
}

void OpenAiService::send_json(const std::shared_ptr<HttpResponder>& responder, const std::string& route, int status,
                              std::string body) {
  responder->send(status, kJsonHeaders, std::move(body));
  if (!route.empty()) metrics_.record_request(route, status);
}

void OpenAiService::send_error(const std::shared_ptr<HttpResponder>& responder, const std::string& route,
                               const ApiError& error, HttpHeaders headers) {
  headers.insert(headers.begin(), kJsonHeaders.front());
  responder->send(error.http_status, std::move(headers), error_body(error));
  if (!route.empty()) metrics_.record_request(route, error.http_status);
}

bool OpenAiService::authorized(const HttpRequest& request) const {
  if (config_.api_keys.empty()) return true;
  const std::string auth = request.header("authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (auth.size() <= kBearer.size() || auth.compare(0, kBearer.size(), kBearer) != 0) return false;
  const std::string key = auth.substr(kBearer.size());
  for (const std::string& k : config_.api_keys) {
    if (k == key) return true;
  }
  return false;
}

void OpenAiService::handle(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
  const std::string& path = request.path;
  if (path == "/health") {
    const bool ok = ready_ && !draining_;
    responder->send(ok ? 200 : 503, kJsonHeaders,
                    ok ? R"({"status":"ok"})" : (draining_ ? R"({"status":"draining"})" : R"({"status":"loading"})"));
    return;
  }
  if (path == "/metrics") {
    const EngineStats stats = ready_ ? model_.engine->stats() : EngineStats{};
    responder->send(200, {{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"}},
                    metrics_.render(stats, connection_counter_ ? connection_counter_() : 0) +
                        (extra_metrics_ ? extra_metrics_() : std::string()));
    return;
  }
  const bool is_chat = path == "/v1/chat/completions";
  const bool is_completions = path == "/v1/completions";
  const bool is_models = path == "/v1/models";
  const bool is_extra = extra_routes_match_ && extra_routes_match_(path);  // the jobs API
  if (!is_chat && !is_completions && !is_models && !is_extra) {
    ApiError e{404, fmt::format("no route {} {}", request.method, path), "not_found_error", "", "not_found"};
    send_error(responder, "", e);
    return;
  }
  const std::string method = is_models ? "GET" : "POST";
  if (!is_extra && request.method != method) {
    ApiError e{405, fmt::format("{} needs {}, got {}", path, method, request.method), "invalid_request_error", "",
               "method_not_allowed"};
    send_error(responder, path, e, {{"Allow", method}});
    return;
  }
  if (!authorized(request)) {
    ApiError e{401, "a valid API key is required: send 'Authorization: Bearer <key>'", "authentication_error", "",
               "invalid_api_key"};
    send_error(responder, path, e);
    return;
  }
  if (!ready_ || draining_) {
    send_error(responder, path, not_ready_error(draining_), {{"Retry-After", "5"}});
    return;
  }
  if (is_extra) {
    extra_routes_(request, responder);
    return;
  }
  if (is_models) {
    handle_models(responder);
    return;
  }
  handle_generation(is_chat ? Endpoint::kChatCompletions : Endpoint::kCompletions, request, responder);
}

void OpenAiService::handle_models(const std::shared_ptr<HttpResponder>& responder) {
  const ModelInfo& info = model_.engine->model_info();
  nlohmann::ordered_json model = {{"id", config_.served_model_name},
                                  {"object", "model"},
                                  {"created", unix_seconds()},
                                  {"owned_by", "breakwater"},
                                  {"max_model_len", info.max_model_len}};
  nlohmann::ordered_json body = {{"object", "list"}, {"data", nlohmann::ordered_json::array({model})}};
  send_json(responder, "/v1/models", 200, body.dump());
}

Result<std::vector<int32_t>> OpenAiService::chat_prompt(const ParsedRequest& parsed, bool* opens_reasoning,
                                                        ApiError* error) const {
  if (!model_.chat_template) {
    *error = ApiError{400,
                      "this model has no chat template; use /v1/completions, or start the server with "
                      "--chat-template FILE",
                      "invalid_request_error", "messages", ""};
    return InvalidArgument("no chat template");
  }
  ChatTemplateOptions options;
  options.add_generation_prompt = parsed.add_generation_prompt;
  const Vocab& vocab = model_.tokenizer->vocab();
  if (vocab.valid_id(vocab.bos_id)) options.bos_token = model_.tokenizer->token_to_piece(vocab.bos_id);
  if (vocab.valid_id(vocab.eos_id)) options.eos_token = model_.tokenizer->token_to_piece(vocab.eos_id);
  Result<std::string> rendered = model_.chat_template->render(parsed.messages, parsed.tools, options);
  if (!rendered.ok()) {
    *error =
        ApiError{400, fmt::format("the chat template cannot render these messages: {}", rendered.status().message()),
                 "invalid_request_error", "messages", ""};
    return rendered.status();
  }
  *opens_reasoning = prompt_opens_reasoning(*rendered);
  // The template writes the special tokens (BOS, role markers) itself.
  return model_.tokenizer->encode(*rendered, /*add_special=*/false, /*parse_special=*/true);
}

void OpenAiService::handle_generation(Endpoint endpoint, const HttpRequest& request,
                                      const std::shared_ptr<HttpResponder>& responder, int32_t priority_offset) {
  // A cache hit's latency counts from the request's arrival, so the wait for a worker thread
  // is in it (time to first token and end to end come from the engine's own timings).
  const auto arrival = request.received_at == std::chrono::steady_clock::time_point{} ? std::chrono::steady_clock::now()
                                                                                      : request.received_at;
  const std::string route = request.path;
  EngineClient& engine = *model_.engine;
  const ModelInfo& info = engine.model_info();
  ParseLimits limits;
  limits.vocab_size = info.vocab_size;
  ApiError error;
  Result<ParsedRequest> parsed_or = parse_request(endpoint, request.body, limits, &error);
  if (!parsed_or.ok()) {
    send_error(responder, route, error);
    return;
  }
  ParsedRequest& parsed = *parsed_or;
  if (!parsed.model.empty() && parsed.model != config_.served_model_name) {
    send_error(responder, route,
               ApiError{404,
                        fmt::format("the model '{}' does not exist; this server serves '{}'", parsed.model,
                                    config_.served_model_name),
                        "invalid_request_error", "model", "model_not_found"});
    return;
  }

  // The prompts, as token ids.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> echo_texts;
  bool opens_reasoning = false;
  if (endpoint == Endpoint::kChatCompletions) {
    if (model_.tokenizer == nullptr) {
      send_error(responder, route,
                 ApiError{400, "this model has no tokenizer; chat needs one", "invalid_request_error", "messages", ""});
      return;
    }
    Result<std::vector<int32_t>> ids = chat_prompt(parsed, &opens_reasoning, &error);
    if (!ids.ok()) {
      send_error(responder, route, error);
      return;
    }
    prompts.push_back(std::move(*ids));
  } else if (parsed.prompt_is_tokens) {
    prompts = parsed.prompt_token_ids;
    if (parsed.echo && model_.tokenizer != nullptr) {
      for (const auto& ids : prompts)
        echo_texts.push_back(model_.tokenizer->decode(ids, /*skip_special=*/false));
    }
  } else {
    if (model_.tokenizer == nullptr) {
      send_error(responder, route,
                 ApiError{400, "this model has no tokenizer: send the prompt as token ids", "invalid_request_error",
                          "prompt", ""});
      return;
    }
    for (const std::string& text : parsed.prompt_texts) {
      prompts.push_back(model_.tokenizer->encode(text, /*add_special=*/true, /*parse_special=*/true));
      if (parsed.echo) echo_texts.push_back(text);
    }
  }
  for (const auto& ids : prompts) {
    if (static_cast<int64_t>(ids.size()) >= info.max_model_len) {
      send_error(responder, route,
                 ApiError{400,
                          fmt::format("This model's maximum context length is {} tokens. However, your request has {} "
                                      "input tokens, which leaves no room to generate.",
                                      info.max_model_len, ids.size()),
                          "invalid_request_error", endpoint == Endpoint::kChatCompletions ? "messages" : "prompt",
                          "context_length_exceeded"});
      return;
    }
    if (ids.empty()) {
      send_error(responder, route, ApiError{400, "the prompt is empty", "invalid_request_error", "prompt", ""});
      return;
    }
  }

  auto gen = std::make_shared<Generation>();
  gen->service = this;
  gen->endpoint = endpoint;
  gen->route = route;
  gen->meta.id = fmt::format("{}-{:016x}", endpoint == Endpoint::kChatCompletions ? "chatcmpl" : "cmpl",
                             next_id_.fetch_add(1) * 0x9E3779B97F4A7C15ull);
  gen->meta.created = unix_seconds();
  gen->meta.model = config_.served_model_name;
  gen->stream = parsed.stream;
  gen->include_usage = parsed.include_usage;
  gen->want_logprobs = parsed.logprobs;
  gen->n = parsed.n;
  gen->responder = responder;
  gen->num_prompts = prompts.size();
  gen->choices.resize(prompts.size() * static_cast<size_t>(parsed.n));
  gen->meta.token_ids = parsed.return_token_ids;
  for (size_t i = 0; i < gen->choices.size(); ++i) {
    gen->choices[i].index = static_cast<int32_t>(i);
    if (parsed.return_token_ids) gen->choices[i].prompt_token_ids = prompts[i / static_cast<size_t>(parsed.n)];
  }
  gen->started.assign(gen->choices.size(), false);
  gen->echo = std::move(echo_texts);
  if (endpoint == Endpoint::kChatCompletions) {
    for (size_t i = 0; i < gen->choices.size(); ++i)
      gen->parsers.push_back(std::make_unique<ReasoningParser>(opens_reasoning));
  }
  if (model_.tokenizer != nullptr) {
    const Tokenizer* tokenizer = model_.tokenizer;
    // As a continuation: a SentencePiece token keeps its leading space ("▁Once" -> " Once"), so
    // the tokens' texts add up to the generated text and completions' text_offset is right.
    gen->token_text = [tokenizer](int32_t id) {
      return tokenizer->decode(std::span<const int32_t>(&id, 1), /*skip_special=*/false, /*continuation=*/true);
    };
  } else {
    gen->token_text = [](int32_t id) { return std::to_string(id); };
  }

  // The effective max_tokens of a prompt: the request's, else the room left (chat) or
  // OpenAI's default for completions.
  auto max_tokens_for = [&](const std::vector<int32_t>& prompt) {
    const int32_t room = info.max_model_len - static_cast<int32_t>(prompt.size());
    return parsed.max_tokens.value_or(
        endpoint == Endpoint::kChatCompletions ? room : std::min(room, config_.default_completion_max_tokens));
  };

  // The response cache: look up a cacheable request; replay a hit, else remember the key
  // to store the result under.
  if (cache::ResponseCache* response_cache = model_.response_cache; response_cache != nullptr) {
    gen->cache_headers = {{"X-Cache", "miss"}};
    std::string cache_control = request.header("cache-control");
    std::transform(cache_control.begin(), cache_control.end(), cache_control.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const bool no_store = cache_control.find("no-store") != std::string::npos;
    const bool no_cache = cache_control.find("no-cache") != std::string::npos;
    if (!no_store && cache::is_cacheable(response_cache->mode(), parsed.sampling)) {
      cache::CacheKeyInput key;
      key.endpoint = endpoint == Endpoint::kChatCompletions ? "chat.completions" : "completions";
      key.model = config_.served_model_name;
      key.vocab_size = info.vocab_size;
      key.eos_token_ids = info.eos_token_ids;
      key.prompts = prompts;
      for (const auto& ids : prompts)
        key.max_tokens.push_back(max_tokens_for(ids));
      key.sampling = parsed.sampling;
      key.sampling.logprobs = parsed.logprobs ? parsed.top_logprobs : -1;
      key.stop_token_ids = parsed.stop_token_ids;
      key.ignore_eos = parsed.ignore_eos;
      key.stop_strings = parsed.stop;
      key.n = parsed.n;
      key.reasoning = opens_reasoning;
      gen->cache_key = cache::cache_key(key);
      if (!no_cache) {
        const cache::CacheLookup found = response_cache->lookup(gen->cache_key);
        metrics_.record_cache_lookup(found.level, found.seconds);
        if (found.value != nullptr && found.value->choices.size() == gen->choices.size()) {
          gen->cache_headers = {{"X-Cache", "hit"}};
          gen->replay(*found.value);
          metrics_.record_cache_hit_latency(
              found.level, std::chrono::duration<double>(std::chrono::steady_clock::now() - arrival).count());
          return;
        }
      }
    }
  }

  GenerationRequest base;
  base.sampling = parsed.sampling;
  base.sampling.logprobs = parsed.logprobs ? parsed.top_logprobs : -1;
  base.stop.stop_token_ids = parsed.stop_token_ids;
  base.stop.ignore_eos = parsed.ignore_eos;
  base.stop_strings = parsed.stop;
  base.n = parsed.n;
  base.priority = parsed.priority + priority_offset;  // background jobs yield to interactive requests
  base.detokenize = model_.tokenizer != nullptr;
  const std::optional<double> timeout =
      parsed.timeout_seconds ? parsed.timeout_seconds : config_.default_timeout_seconds;
  if (timeout) {
    base.deadline =
        SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(*timeout));
  }

  {
    std::lock_guard lock(gen->mutex);  // events wait until every prompt is submitted
    for (size_t p = 0; p < prompts.size(); ++p) {
      GenerationRequest r = base;
      r.prompt_ids = std::move(prompts[p]);
      r.stop.max_tokens = max_tokens_for(r.prompt_ids);
      Result<RequestId> id =
          engine.submit(std::move(r), [gen, p](EngineEvent event) { gen->on_event(p, std::move(event)); });
      if (!id.ok()) {
        for (RequestId earlier : gen->engine_ids)
          engine.cancel(earlier);
        gen->responded = true;  // the cancelled ones' events are ignored
        ApiError api = api_error_from_status(id.status());
        HttpHeaders headers;
        if (api.http_status == 429) headers.emplace_back("Retry-After", std::to_string(config_.retry_after_seconds));
        send_error(responder, route, api, std::move(headers));
        return;
      }
      gen->engine_ids.push_back(*id);
    }
    // Before any event can write (they wait for this lock).
    if (gen->stream) {
      responder->start_stream(200, gen->stream_headers());
    }
  }
  // A client that goes away cancels its requests (within one engine step).
  std::weak_ptr<Generation> weak = gen;
  responder->on_disconnect([weak, &engine] {
    if (auto g = weak.lock()) {
      std::vector<RequestId> ids;
      {
        std::lock_guard lock(g->mutex);
        ids = g->engine_ids;
      }
      for (RequestId id : ids)
        engine.cancel(id);
    }
  });
}

void OpenAiService::set_extra_routes(std::function<bool(const std::string& path)> matches, HttpHandler handler) {
  extra_routes_match_ = std::move(matches);
  extra_routes_ = std::move(handler);
}

bool OpenAiService::run_background(const std::string& path, std::string body, int32_t priority_offset,
                                   const std::shared_ptr<HttpResponder>& responder) {
  if (!ready_) return false;
  const bool is_chat = path == "/v1/chat/completions";
  if (!is_chat && path != "/v1/completions") {
    send_error(responder, "",
               ApiError{400, fmt::format("jobs run /v1/chat/completions or /v1/completions, not {}", path),
                        "invalid_request_error", "url", ""});
    return true;
  }
  HttpRequest request;
  request.method = "POST";
  request.path = path;
  request.target = path;
  request.body = std::move(body);
  handle_generation(is_chat ? Endpoint::kChatCompletions : Endpoint::kCompletions, request, responder, priority_offset);
  return true;
}

std::optional<ApiError> OpenAiService::validate_body(Endpoint endpoint, std::string_view body) const {
  ParseLimits limits;
  if (ready_) limits.vocab_size = model_.engine->model_info().vocab_size;
  ApiError error;
  Result<ParsedRequest> parsed = parse_request(endpoint, body, limits, &error);
  if (!parsed.ok()) return error;
  if (!parsed->model.empty() && parsed->model != config_.served_model_name) {
    return ApiError{
        404,
        fmt::format("the model '{}' does not exist; this server serves '{}'", parsed->model, config_.served_model_name),
        "invalid_request_error", "model", "model_not_found"};
  }
  return std::nullopt;
}

}  // namespace bw::server
