#include "server/service_job_executor.h"

#include <functional>
#include <utility>

#include <nlohmann/json.hpp>

namespace bw::server {

// Collects what the service answers; reports it once.
class ServiceJobExecutor::CapturingResponder final : public HttpResponder {
 public:
  explicit CapturingResponder(std::function<void(jobs::JobResult)> done) : done_(std::move(done)) {}

  void send(int status, HttpHeaders /*headers*/, std::string body) override { report(status, std::move(body)); }
  void start_stream(int status, HttpHeaders /*headers*/) override {
    std::lock_guard lock(mutex_);
    stream_status_ = status;
  }
  void write(std::string data) override {
    std::lock_guard lock(mutex_);
    stream_body_ += data;
  }
  void end() override {
    int status = 0;
    std::string body;
    {
      std::lock_guard lock(mutex_);
      status = stream_status_;
      body = std::move(stream_body_);
    }
    report(status, std::move(body));
  }
  void on_disconnect(std::function<void()> callback) override {
    std::unique_lock lock(mutex_);
    if (!cancelled_) {
      on_cancel_ = std::move(callback);
      return;
    }
    lock.unlock();
    if (callback) callback();  // already cancelled: run it now, as a disconnected client would
  }
  bool disconnected() const override {
    std::lock_guard lock(mutex_);
    return cancelled_;
  }

  // Acts like a client that went away: the service cancels its engine requests.
  void cancel() {
    std::function<void()> callback;
    {
      std::lock_guard lock(mutex_);
      if (cancelled_ || reported_) return;
      cancelled_ = true;
      callback = std::move(on_cancel_);
    }
    if (callback) callback();
  }

 private:
  void report(int status, std::string body) {
    std::function<void(jobs::JobResult)> done;
    {
      std::lock_guard lock(mutex_);
      if (reported_) return;
      reported_ = true;
      done = std::move(done_);
      on_cancel_ = nullptr;
    }
    if (done) done(jobs::JobResult{status, std::move(body)});
  }

  mutable std::mutex mutex_;
  std::function<void(jobs::JobResult)> done_;  // guarded by mutex_
  std::function<void()> on_cancel_;            // guarded by mutex_
  bool cancelled_ = false;                     // guarded by mutex_
  bool reported_ = false;                      // guarded by mutex_
  int stream_status_ = 0;                      // guarded by mutex_
  std::string stream_body_;                    // guarded by mutex_
};

std::string ServiceJobExecutor::non_streaming_body(const std::string& body) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return body;
  j["stream"] = false;
  j.erase("stream_options");
  return j.dump();
}

std::optional<jobs::JobResult> ServiceJobExecutor::validate(const std::string& url, const std::string& body) {
  Endpoint endpoint = Endpoint::kChatCompletions;
  if (url == "/v1/completions") {
    endpoint = Endpoint::kCompletions;
  } else if (url != "/v1/chat/completions") {
    return jobs::JobResult{400, error_body(ApiError{400, "url must be \"/v1/chat/completions\" or \"/v1/completions\"",
                                                    "invalid_request_error", "url", ""})};
  }
  std::optional<ApiError> error = service_->validate_body(endpoint, non_streaming_body(body));
  if (!error) return std::nullopt;
  return jobs::JobResult{error->http_status, error_body(*error)};
}

Result<jobs::ExecutionId> ServiceJobExecutor::execute(const std::string& url, const std::string& body,
                                                      int32_t priority_offset, jobs::ExecutionCallback done) {
  jobs::ExecutionId id = 0;
  {
    std::lock_guard lock(mutex_);
    id = next_id_++;
  }
  auto responder = std::make_shared<CapturingResponder>([this, id, done = std::move(done)](jobs::JobResult result) {
    {
      std::lock_guard lock(mutex_);
      running_.erase(id);
    }
    done(std::move(result));
  });
  {
    std::lock_guard lock(mutex_);
    running_[id] = responder;
  }
  if (!service_->run_background(url, non_streaming_body(body), priority_offset, responder)) {
    std::lock_guard lock(mutex_);
    running_.erase(id);
    return Unavailable("the model is still loading");
  }
  return id;
}

void ServiceJobExecutor::cancel(jobs::ExecutionId id) {
  std::shared_ptr<CapturingResponder> responder;
  {
    std::lock_guard lock(mutex_);
    auto it = running_.find(id);
    if (it != running_.end()) responder = it->second.lock();
  }
  if (responder) responder->cancel();
}

}  // namespace bw::server
