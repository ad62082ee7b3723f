#include "bench/driver.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include "bench/sse_parser.h"

namespace bw::bench {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The state of one streamed request while it runs.
struct StreamState {
  ApiKind api = ApiKind::kCompletions;
  SseParser sse;
  std::vector<std::string> events;
  Clock::time_point sent;
  std::optional<Clock::time_point> last_text;
  bool got_done = false;  // "data: [DONE]"
  std::string stream_error;
  RequestRecord* record = nullptr;

  Status on_bytes(std::string_view bytes) {
    const Clock::time_point now = Clock::now();
    events.clear();
    RETURN_IF_ERROR(sse.feed(bytes, &events));
    return on_events(now);
  }

  Status on_events(Clock::time_point now) {
    for (const std::string& data : events) {
      if (data == "[DONE]") {
        got_done = true;
        continue;
      }
      if (got_done) return DataLoss("data after [DONE]");
      ASSIGN_OR_RETURN(StreamChunk chunk, parse_stream_chunk(data, api));
      if (!chunk.text.empty()) {
        if (!last_text) {
          record->ttft_s = seconds_between(sent, now);
        } else {
          record->itl_s.push_back(seconds_between(*last_text, now));
        }
        last_text = now;
        ++record->num_text_chunks;
        record->output_bytes += chunk.text.size();
      }
      if (chunk.completion_tokens) {
        record->output_tokens = *chunk.completion_tokens;
        record->usage_reported = true;
      }
      if (chunk.prompt_tokens) record->prompt_tokens = chunk.prompt_tokens;
    }
    return OkStatus();
  }

  // The end of a complete 2xx body: a stream that produced no text is a failure.
  Status finish() {
    events.clear();
    sse.finish(&events);
    RETURN_IF_ERROR(on_events(Clock::now()));
    if (!last_text) return DataLoss("the stream ended without any generated text");
    if (!record->usage_reported) record->output_tokens = record->num_text_chunks;
    return OkStatus();
  }
};

class Driver {
 public:
  Driver(const std::vector<BenchPrompt>& prompts, const DriverOptions& options, const ProgressFn& on_progress,
         std::chrono::milliseconds progress_interval)
      : prompts_(prompts),
        options_(options),
        on_progress_(on_progress),
        progress_interval_(progress_interval),
        arrival_timer_(io_),
        progress_timer_(io_) {}

  Result<DriverResult> run() {
    ASSIGN_OR_RETURN(client_, HttpStreamClient::create(io_, options_.endpoint));
    result_.records.resize(prompts_.size());
    for (size_t i = 0; i < prompts_.size(); ++i) {
      result_.records[i].index = i;
      result_.records[i].prompt_len = prompts_[i].prompt_len;
      result_.records[i].expected_output_len = prompts_[i].output_len;
    }
    warmup();
    start_ = Clock::now();
    last_end_ = start_;
    if (on_progress_) schedule_progress();
    schedule_arrivals();
    io_.run();
    result_.duration_s = seconds_between(start_, last_end_);
    result_.num_connections = client_->num_connections_opened();
    if (on_progress_) on_progress_(progress());
    return std::move(result_);
  }

 private:
  // Sequential requests on the same client (so their connections are reused by the run).
  void warmup() {
    for (size_t i = 0; i < options_.num_warmups && !prompts_.empty(); ++i) {
      RequestRecord scratch;
      bool ok = false;
      send(prompts_[i % prompts_.size()], &scratch, [&ok](bool success) { ok = success; });
      io_.run();
      io_.restart();
      if (!ok) ++result_.num_warmup_failed;
    }
  }

  void schedule_arrivals() {
    const Clock::time_point now = Clock::now();
    while (next_arrival_ < prompts_.size()) {
      const auto due = start_ + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(options_.arrival_offsets_s[next_arrival_]));
      if (due > now) {
        dispatch();
        arrival_timer_.expires_at(due);
        arrival_timer_.async_wait([this](const boost::system::error_code& ec) {
          if (!ec) schedule_arrivals();
        });
        return;
      }
      waiting_.push_back(next_arrival_++);
    }
    dispatch();
    if (next_arrival_ == prompts_.size()) arrivals_done_ = true;
    maybe_stop();
  }

  void dispatch() {
    while (!waiting_.empty() && (options_.max_concurrency == 0 || in_flight_ < options_.max_concurrency)) {
      const size_t i = waiting_.front();
      waiting_.pop_front();
      ++in_flight_;
      ++num_sent_;
      result_.max_in_flight = std::max(result_.max_in_flight, in_flight_);
      RequestRecord* record = &result_.records[i];
      send(prompts_[i], record, [this, record](bool success) {
        --in_flight_;
        last_end_ = Clock::now();
        if (success) {
          ++num_completed_;
          output_tokens_ += record->output_tokens;
        } else {
          ++num_failed_;
        }
        dispatch();
        maybe_stop();
      });
    }
  }

  // Sends one prompt; `done(success)` runs when it ends.
  void send(const BenchPrompt& prompt, RequestRecord* record, std::function<void(bool)> done) {
    auto state = std::make_shared<StreamState>();
    state->api = options_.request.api;
    state->record = record;
    state->sent = Clock::now();
    record->start_s = seconds_between(start_, state->sent);
    HttpRequestSpec spec;
    spec.target = openai_target(options_.endpoint, api_route(options_.request.api));
    spec.body = build_request_body(options_.request, prompt.prompt, prompt.output_len);
    spec.api_key = options_.api_key;
    spec.timeout = options_.timeout;
    if (options_.bypass_response_cache) spec.headers.emplace_back("Cache-Control", "no-store");
    client_->start(
        std::move(spec), [state](std::string_view bytes) { return state->on_bytes(bytes); },
        [state, done = std::move(done)](const HttpOutcome& outcome) {
          RequestRecord& r = *state->record;
          r.e2e_s = seconds_between(state->sent, Clock::now());
          r.http_status = outcome.http_status;
          if (outcome.kind == FailureKind::kNone) {
            Status s = state->finish();
            if (!s.ok()) {
              r.failure = failure_kind_name(FailureKind::kBadStream, 0);
              r.error = s.message();
            }
          } else {
            r.failure = failure_kind_name(outcome.kind, outcome.http_status);
            r.error = outcome.message;
          }
          r.success = r.failure.empty();
          done(r.success);
        });
  }

  void maybe_stop() {
    if (!arrivals_done_ || in_flight_ > 0 || !waiting_.empty()) return;
    finished_ = true;
    arrival_timer_.cancel();
    progress_timer_.cancel();
  }

  void schedule_progress() {
    if (finished_) return;
    progress_timer_.expires_after(progress_interval_);
    progress_timer_.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      on_progress_(progress());
      schedule_progress();
    });
  }

  Progress progress() const {
    Progress p;
    p.num_total = prompts_.size();
    p.num_sent = num_sent_;
    p.num_completed = num_completed_;
    p.num_failed = num_failed_;
    p.num_in_flight = in_flight_;
    p.output_tokens = output_tokens_;
    p.elapsed_s = seconds_between(start_, Clock::now());
    return p;
  }

  const std::vector<BenchPrompt>& prompts_;
  const DriverOptions& options_;
  const ProgressFn& on_progress_;
  std::chrono::milliseconds progress_interval_;
  asio::io_context io_;
  asio::steady_timer arrival_timer_;
  asio::steady_timer progress_timer_;
  std::unique_ptr<HttpStreamClient> client_;
  DriverResult result_;
  Clock::time_point start_;
  Clock::time_point last_end_;
  std::deque<size_t> waiting_;  // arrived, waiting for a free slot under the cap
  size_t next_arrival_ = 0;
  bool arrivals_done_ = false;
  bool finished_ = false;
  size_t in_flight_ = 0;
  size_t num_sent_ = 0;
  size_t num_completed_ = 0;
  size_t num_failed_ = 0;
  int64_t output_tokens_ = 0;
};

}  // namespace

Result<DriverResult> run_benchmark(const std::vector<BenchPrompt>& prompts, const DriverOptions& options,
                                   const ProgressFn& on_progress, std::chrono::milliseconds progress_interval) {
  if (options.arrival_offsets_s.size() != prompts.size()) {
    return InvalidArgument("{} arrival times for {} prompts", options.arrival_offsets_s.size(), prompts.size());
  }
  // The client must be destroyed before the io_context (its idle sockets live on it).
  Driver driver(prompts, options, on_progress, progress_interval);
  return driver.run();
}

Result<std::string> discover_model(const HttpEndpoint& endpoint, const std::string& api_key) {
  HttpRequestSpec spec;
  spec.is_post = false;
  spec.target = openai_target(endpoint, "/models");
  spec.api_key = api_key;
  spec.timeout = std::chrono::milliseconds(30'000);
  ASSIGN_OR_RETURN(std::string body, fetch_once(endpoint, std::move(spec)));
  const nlohmann::json models = nlohmann::json::parse(body, nullptr, false);
  if (models.is_discarded() || !models.is_object() || !models.contains("data") || !models["data"].is_array() ||
      models["data"].empty() || !models["data"][0].is_object() || !models["data"][0].contains("id") ||
      !models["data"][0]["id"].is_string()) {
    return DataLoss("GET /v1/models: no model id in the answer; give --model: {}", body.substr(0, 200));
  }
  return models["data"][0]["id"].get<std::string>();
}

}  // namespace bw::bench
