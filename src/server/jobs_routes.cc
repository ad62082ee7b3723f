#include "server/jobs_routes.h"

#include <charconv>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "jobs/batch_format.h"
#include "server/multipart.h"
#include "server/openai_protocol.h"

namespace bw::server {

namespace {

using Json = nlohmann::ordered_json;

const HttpHeaders kJsonHeaders = {{"Content-Type", "application/json"}};
constexpr std::string_view kFiles = "/v1/files";
constexpr std::string_view kBatches = "/v1/batches";
constexpr std::string_view kJobs = "/v1/jobs";

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// "/v1/files/abc/content" under "/v1/files" -> {"abc", "content"}; "" parts when absent.
struct Subpath {
  std::string id;
  std::string action;
  bool valid = true;
};
Subpath split_subpath(std::string_view path, std::string_view prefix) {
  Subpath out;
  std::string_view rest = path.substr(prefix.size());
  if (rest.empty()) return out;
  if (rest.front() != '/') {
    out.valid = false;
    return out;
  }
  rest.remove_prefix(1);
  const size_t slash = rest.find('/');
  out.id = std::string(rest.substr(0, slash));
  if (slash != std::string_view::npos) out.action = std::string(rest.substr(slash + 1));
  out.valid = !out.id.empty() && out.action.find('/') == std::string::npos;
  return out;
}

std::string query_param(const std::string& target, std::string_view key) {
  const size_t q = target.find('?');
  if (q == std::string::npos) return "";
  std::string_view query = std::string_view(target).substr(q + 1);
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t end = query.find('&', pos);
    if (end == std::string_view::npos) end = query.size();
    std::string_view item = query.substr(pos, end - pos);
    pos = end + 1;
    const size_t eq = item.find('=');
    if (item.substr(0, eq) == key) return eq == std::string_view::npos ? "" : std::string(item.substr(eq + 1));
  }
  return "";
}

Json nullable_time(int64_t seconds) { return seconds > 0 ? Json(seconds) : Json(nullptr); }
Json nullable_string(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

Json parse_or_null(const std::string& text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? Json(nullptr) : j;
}

ApiError not_found(const std::string& what, const std::string& id) {
  return ApiError{404, fmt::format("No such {}: '{}'", what, id), "invalid_request_error", "", "not_found"};
}

ApiError bad_request(std::string message, std::string param = "") {
  return ApiError{400, std::move(message), "invalid_request_error", std::move(param), ""};
}

// "24h" -> seconds; also "<n>m" and "<n>s" (shorter windows, for tests and small jobs).
Result<int64_t> completion_window_seconds(const std::string& window) {
  if (window.size() < 2) return InvalidArgument("bad completion_window");
  int64_t n = 0;
  const auto [ptr, ec] = std::from_chars(window.data(), window.data() + window.size() - 1, n);
  if (ec != std::errc() || ptr != window.data() + window.size() - 1 || n <= 0 || n > 24 * 7)
    return InvalidArgument("bad completion_window");
  switch (window.back()) {
    case 'h':
      return n * 3600;
    case 'm':
      return n * 60;
    case 's':
      return n;
    default:
      return InvalidArgument("bad completion_window");
  }
}

}  // namespace

std::string file_object_json(const jobs::FileRecord& file) {
  return Json{{"id", file.id},
              {"object", "file"},
              {"bytes", file.bytes},
              {"created_at", file.created_at},
              {"expires_at", nullptr},
              {"filename", file.filename},
              {"purpose", file.purpose},
              {"status", "processed"},
              {"status_details", nullptr}}
      .dump();
}

namespace {

Json batch_json(const jobs::BatchRecord& b) {
  return Json{{"id", b.id},
              {"object", "batch"},
              {"endpoint", b.endpoint},
              {"errors", parse_or_null(b.errors_json)},
              {"input_file_id", b.input_file_id},
              {"completion_window", b.completion_window},
              {"status", std::string(jobs::batch_state_name(b.state))},
              {"output_file_id", nullable_string(b.output_file_id)},
              {"error_file_id", nullable_string(b.error_file_id)},
              {"created_at", b.created_at},
              {"in_progress_at", nullable_time(b.in_progress_at)},
              {"expires_at", nullable_time(b.expires_at)},
              {"finalizing_at", nullable_time(b.finalizing_at)},
              {"completed_at", nullable_time(b.completed_at)},
              {"failed_at", nullable_time(b.failed_at)},
              {"expired_at", nullable_time(b.expired_at)},
              {"cancelling_at", nullable_time(b.cancelling_at)},
              {"cancelled_at", nullable_time(b.cancelled_at)},
              {"request_counts", {{"total", b.total}, {"completed", b.completed}, {"failed", b.failed}}},
              {"metadata", parse_or_null(b.metadata_json)}};
}

}  // namespace

std::string batch_object_json(const jobs::BatchRecord& batch) { return batch_json(batch).dump(); }

std::string job_object_json(const jobs::JobRecord& job) {
  Json error = nullptr;
  Json result = nullptr;
  if (job.state == jobs::JobState::kSucceeded && job.result) result = parse_or_null(job.result->body);
  if (job.state == jobs::JobState::kFailed) {
    std::string code = "request_failed";
    std::string message = job.error.empty() ? "the request failed" : job.error;
    if (job.result) {
      // The endpoint's own error answer (a final 4xx, or the last of the retried ones).
      Json answer = parse_or_null(job.result->body);
      if (answer.is_object() && answer.contains("error") && answer["error"].is_object()) {
        const Json& e = answer["error"];
        if (e.contains("message") && e["message"].is_string()) message = e["message"].get<std::string>();
        if (e.contains("code") && e["code"].is_string()) code = e["code"].get<std::string>();
      }
      code = code == "request_failed" ? fmt::format("http_{}", job.result->http_status) : code;
    }
    error = {{"message", message}, {"code", code}};
  } else if (job.state == jobs::JobState::kCancelled) {
    error = {{"message", job.error.empty() ? std::string("cancelled") : job.error}, {"code", "cancelled"}};
  }
  return Json{{"id", job.spec.id},
              {"object", "job"},
              {"url", job.spec.url},
              {"status", std::string(jobs::job_state_name(job.state))},
              {"created_at", job.spec.created_at_ms / 1000},
              {"finished_at", nullable_time(job.finished_at_ms / 1000)},
              {"attempts", job.attempts},
              {"result", std::move(result)},
              {"error", std::move(error)}}
      .dump();
}

std::string render_job_metrics(const std::string& worker_id, const jobs::WorkerStats& worker,
                               const jobs::FinaliserStats& finaliser) {
  std::string out;
  const std::string label = fmt::format("worker=\"{}\"", worker_id);
  auto counter = [&](std::string_view name, std::string_view help, int64_t value) {
    out += fmt::format("# HELP breakwater:{} {}\n# TYPE breakwater:{} counter\nbreakwater:{}{{{}}} {}\n", name, help,
                       name, name, label, value);
  };
  counter("jobs_claimed_total", "Job attempts this replica claimed.", worker.claimed);
  counter("jobs_succeeded_total", "Jobs this replica completed.", worker.succeeded);
  counter("jobs_failed_total", "Jobs this replica failed for good.", worker.failed);
  counter("jobs_retried_total", "Job attempts put back for a retry with backoff.", worker.retried);
  counter("jobs_cancelled_total", "Jobs stopped on a cancel request.", worker.cancelled);
  counter("jobs_lost_leases_total", "Attempts abandoned because another worker took the lease.", worker.lost_leases);
  counter("batches_finalized_total", "Batches this replica moved to completed.", finaliser.batches_completed);
  out += fmt::format(
      "# HELP breakwater:jobs_running Jobs running on this replica.\n# TYPE breakwater:jobs_running gauge\n"
      "breakwater:jobs_running{{{}}} {}\n",
      label, worker.running);
  return out;
}

JobsRoutes::JobsRoutes(jobs::JobStore* store, jobs::JobExecutor* executor, JobsRoutesConfig config, Logger logger)
    : store_(store), executor_(executor), config_(config), logger_(std::move(logger)) {}

bool JobsRoutes::handles(const std::string& path) {
  for (std::string_view prefix : {kFiles, kBatches, kJobs}) {
    if (starts_with(path, prefix) && (path.size() == prefix.size() || path[prefix.size()] == '/')) return true;
  }
  return false;
}

namespace {

void send_error(const std::shared_ptr<HttpResponder>& responder, const ApiError& error, HttpHeaders headers = {}) {
  headers.insert(headers.begin(), kJsonHeaders.front());
  responder->send(error.http_status, std::move(headers), error_body(error));
}

void send_status_error(const std::shared_ptr<HttpResponder>& responder, const Status& status) {
  send_error(responder, api_error_from_status(status));
}

void method_not_allowed(const std::shared_ptr<HttpResponder>& responder, const std::string& path,
                        const std::string& allowed, const std::string& got) {
  send_error(responder,
             ApiError{405, fmt::format("{} needs {}, got {}", path, allowed, got), "invalid_request_error", "",
                      "method_not_allowed"},
             {{"Allow", allowed}});
}

std::string random_hex(size_t n) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  while (out.size() < n)
    out += fmt::format("{:016x}", rng());
  out.resize(n);
  return out;
}

}  // namespace

void JobsRoutes::handle(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
  const std::string& path = request.path;
  const std::string& method = request.method;
  if (starts_with(path, kFiles)) {
    const Subpath sub = split_subpath(path, kFiles);
    if (!sub.valid || (!sub.action.empty() && sub.action != "content")) {
      send_error(responder, not_found("route", path));
    } else if (sub.id.empty()) {
      if (method != "POST") return method_not_allowed(responder, path, "POST", method);
      upload_file(request, responder);
    } else {
      if (method != "GET") return method_not_allowed(responder, path, "GET", method);
      get_file(sub.id, sub.action == "content", responder);
    }
    return;
  }
  if (starts_with(path, kBatches)) {
    const Subpath sub = split_subpath(path, kBatches);
    if (!sub.valid || (!sub.action.empty() && sub.action != "cancel")) {
      send_error(responder, not_found("route", path));
    } else if (sub.id.empty()) {
      if (method == "POST") {
        create_batch(request, responder);
      } else if (method == "GET") {
        list_batches(request, responder);
      } else {
        method_not_allowed(responder, path, "GET, POST", method);
      }
    } else if (sub.action == "cancel") {
      if (method != "POST") return method_not_allowed(responder, path, "POST", method);
      cancel_batch(sub.id, responder);
    } else {
      if (method != "GET") return method_not_allowed(responder, path, "GET", method);
      get_batch(sub.id, responder);
    }
    return;
  }
  const Subpath sub = split_subpath(path, kJobs);
  if (!sub.valid || !sub.action.empty()) {
    send_error(responder, not_found("route", path));
  } else if (sub.id.empty()) {
    if (method != "POST") return method_not_allowed(responder, path, "POST", method);
    create_job(request, responder);
  } else if (method == "GET") {
    get_job(sub.id, responder);
  } else if (method == "DELETE") {
    cancel_job(sub.id, responder);
  } else {
    method_not_allowed(responder, path, "GET, DELETE", method);
  }
}

// ---- Files ---------------------------------------------------------------------------------

void JobsRoutes::upload_file(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
  Result<std::string> boundary = multipart_boundary(request.header("content-type"));
  if (!boundary.ok()) return send_error(responder, bad_request(boundary.status().message()));
  Result<std::vector<FormPart>> parts = parse_multipart(request.body, *boundary);
  if (!parts.ok()) return send_error(responder, bad_request(parts.status().message()));
  const FormPart* purpose = nullptr;
  const FormPart* file = nullptr;
  for (const FormPart& part : *parts) {
    if (part.name == "purpose") purpose = &part;
    if (part.name == "file") file = &part;
  }
  if (purpose == nullptr) return send_error(responder, bad_request("the form field 'purpose' is required", "purpose"));
  if (purpose->content != "batch")
    return send_error(
        responder, bad_request(fmt::format("purpose '{}' is not supported; use 'batch'", purpose->content), "purpose"));
  if (file == nullptr) return send_error(responder, bad_request("the form field 'file' is required", "file"));
  if (static_cast<int64_t>(file->content.size()) > config_.max_file_bytes) {
    return send_error(responder, ApiError{413, fmt::format("the file is larger than {} bytes", config_.max_file_bytes),
                                          "invalid_request_error", "file", "file_too_large"});
  }
  jobs::FileRecord record;
  record.id = "file-" + random_hex(24);
  record.purpose = purpose->content;
  record.filename = file->filename.empty() ? "upload.jsonl" : file->filename;
  record.bytes = static_cast<int64_t>(file->content.size());
  record.created_at = jobs::wall_clock_ms() / 1000;
  if (Status s = store_->put_file(record, file->content); !s.ok()) return send_status_error(responder, s);
  responder->send(200, kJsonHeaders, file_object_json(record));
}

void JobsRoutes::get_file(const std::string& id, bool content, const std::shared_ptr<HttpResponder>& responder) {
  Result<jobs::FileRecord> file = store_->get_file(id);
  if (!file.ok()) {
    if (file.status().code() == StatusCode::kNotFound) return send_error(responder, not_found("file", id));
    return send_status_error(responder, file.status());
  }
  if (!content) return responder->send(200, kJsonHeaders, file_object_json(*file));
  Result<std::string> bytes = store_->get_file_content(id);
  if (!bytes.ok()) return send_status_error(responder, bytes.status());
  responder->send(200, {{"Content-Type", "application/jsonl"}}, std::move(*bytes));
}

// ---- Batches -------------------------------------------------------------------------------

void JobsRoutes::create_batch(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
  Json body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object())
    return send_error(responder, bad_request("the body must be a JSON object"));
  auto string_field = [&](const char* name) -> std::optional<std::string> {
    auto it = body.find(name);
    if (it == body.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  std::optional<std::string> input_file_id = string_field("input_file_id");
  if (!input_file_id)
    return send_error(responder, bad_request("input_file_id is required (a string)", "input_file_id"));
  std::optional<std::string> endpoint = string_field("endpoint");
  if (!endpoint || (*endpoint != "/v1/chat/completions" && *endpoint != "/v1/completions")) {
    return send_error(responder,
                      bad_request("endpoint must be \"/v1/chat/completions\" or \"/v1/completions\"", "endpoint"));
  }
  const std::string window = string_field("completion_window").value_or("24h");
  Result<int64_t> window_seconds = completion_window_seconds(window);
  if (!window_seconds.ok()) {
    return send_error(responder,
                      bad_request("completion_window must be like \"24h\" (at most 168h)", "completion_window"));
  }
  std::string metadata = "null";
  if (auto it = body.find("metadata"); it != body.end() && !it->is_null()) {
    if (!it->is_object() || it->size() > 16)
      return send_error(responder, bad_request("metadata must be an object of at most 16 pairs", "metadata"));
    for (const auto& [key, value] : it->items()) {
      if (!value.is_string() || key.size() > 64 || value.get<std::string>().size() > 512)
        return send_error(responder,
                          bad_request("metadata values must be strings (keys <= 64, values <= 512 chars)", "metadata"));
    }
    metadata = it->dump();
  }
  Result<jobs::FileRecord> file = store_->get_file(*input_file_id);
  if (!file.ok()) {
    if (file.status().code() == StatusCode::kNotFound) return send_error(responder, not_found("file", *input_file_id));
    return send_status_error(responder, file.status());
  }
  if (file->purpose != "batch") {
    return send_error(responder,
                      bad_request(fmt::format("the file '{}' has purpose '{}', not 'batch'", file->id, file->purpose),
                                  "input_file_id"));
  }
  Result<std::string> content = store_->get_file_content(*input_file_id);
  if (!content.ok()) return send_status_error(responder, content.status());

  const int64_t now_ms = jobs::wall_clock_ms();
  jobs::BatchRecord batch;
  batch.id = "batch_" + random_hex(24);
  batch.input_file_id = *input_file_id;
  batch.endpoint = *endpoint;
  batch.completion_window = window;
  batch.metadata_json = metadata;
  batch.state = jobs::BatchState::kInProgress;
  batch.created_at = now_ms / 1000;
  batch.in_progress_at = batch.created_at;
  batch.expires_at = batch.created_at + *window_seconds;

  jobs::BatchInputLimits limits;
  limits.max_requests = config_.max_batch_requests;
  jobs::ParsedBatchInput parsed = jobs::parse_batch_input(*content, *endpoint, limits);
  std::vector<jobs::JobSpec> specs;
  if (parsed.errors.empty()) {
    specs.reserve(parsed.lines.size());
    for (jobs::BatchInputLine& line : parsed.lines) {
      jobs::JobSpec spec;
      spec.id = fmt::format("job-{}-{}", batch.id, line.line);
      spec.batch_id = batch.id;
      spec.line = line.line;
      spec.custom_id = std::move(line.custom_id);
      spec.method = "POST";
      spec.url = std::move(line.url);
      spec.body = std::move(line.body);
      spec.created_at_ms = now_ms;
      specs.push_back(std::move(spec));
    }
  }
  batch.total = static_cast<int64_t>(specs.size());
  if (Status s = store_->create_batch(batch, specs); !s.ok()) return send_status_error(responder, s);
  if (!parsed.errors.empty()) {
    // OpenAI creates the batch and fails it in validation, with the errors listed.
    jobs::BatchRecord failed = batch;
    failed.state = jobs::BatchState::kFailed;
    failed.in_progress_at = 0;
    failed.failed_at = now_ms / 1000;
    failed.errors_json = jobs::batch_errors_json(parsed.errors);
    Result<bool> moved = store_->transition_batch(batch.id, jobs::BatchState::kInProgress, failed);
    if (!moved.ok()) return send_status_error(responder, moved.status());
  }
  Result<jobs::BatchRecord> stored = store_->get_batch(batch.id);
  if (!stored.ok()) return send_status_error(responder, stored.status());
  logger_->info("batch {}: {} requests for {}{}", batch.id, batch.total, batch.endpoint,
                parsed.errors.empty() ? "" : " (failed validation)");
  responder->send(200, kJsonHeaders, batch_object_json(*stored));
}

void JobsRoutes::list_batches(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
  int limit = 20;
  const std::string limit_text = query_param(request.target, "limit");
  if (!limit_text.empty()) {
    const auto [ptr, ec] = std::from_chars(limit_text.data(), limit_text.data() + limit_text.size(), limit);
    if (ec != std::errc() || ptr != limit_text.data() + limit_text.size() || limit < 1 || limit > 100)
      return send_error(responder, bad_request("limit must be an integer in [1, 100]", "limit"));
  }
  const std::string after = query_param(request.target, "after");
  Result<std::vector<jobs::BatchRecord>> page = store_->list_batches(after, limit + 1);
  if (!page.ok()) {
    if (page.status().code() == StatusCode::kNotFound) return send_error(responder, not_found("batch", after));
    return send_status_error(responder, page.status());
  }
  const bool has_more = static_cast<int>(page->size()) > limit;
  if (has_more) page->resize(static_cast<size_t>(limit));
  Json data = Json::array();
  for (const jobs::BatchRecord& b : *page)
    data.push_back(batch_json(b));
  Json out = {{"object", "list"},
              {"data", std::move(data)},
              {"first_id", page->empty() ? Json(nullptr) : Json(page->front().id)},
              {"last_id", page->empty() ? Json(nullptr) : Json(page->back().id)},
              {"has_more", has_more}};
  responder->send(200, kJsonHeaders, out.dump());
}

void JobsRoutes::get_batch(const std::string& id, const std::shared_ptr<HttpResponder>& responder) {
  Result<jobs::BatchRecord> batch = store_->get_batch(id);
  if (!batch.ok()) {
    if (batch.status().code() == StatusCode::kNotFound) return send_error(responder, not_found("batch", id));
    return send_status_error(responder, batch.status());
  }
  responder->send(200, kJsonHeaders, batch_object_json(*batch));
}

void JobsRoutes::cancel_batch(const std::string& id, const std::shared_ptr<HttpResponder>& responder) {
  Result<jobs::BatchRecord> batch = store_->get_batch(id);
  if (!batch.ok()) {
    if (batch.status().code() == StatusCode::kNotFound) return send_error(responder, not_found("batch", id));
    return send_status_error(responder, batch.status());
  }
  if (batch->state == jobs::BatchState::kInProgress || batch->state == jobs::BatchState::kValidating) {
    if (Status s = store_->cancel_batch(id, jobs::wall_clock_ms()); !s.ok()) return send_status_error(responder, s);
    if (on_batch_cancel_) on_batch_cancel_();
    batch = store_->get_batch(id);
    if (!batch.ok()) return send_status_error(responder, batch.status());
  } else if (batch->state != jobs::BatchState::kCancelling && batch->state != jobs::BatchState::kCancelled) {
    return send_error(
        responder,
        ApiError{409, fmt::format("Cannot cancel a batch with status '{}'.", jobs::batch_state_name(batch->state)),
                 "invalid_request_error", "", "batch_not_cancellable"});
  }
  responder->send(200, kJsonHeaders, batch_object_json(*batch));
}

// ---- Single jobs ---------------------------------------------------------------------------

void JobsRoutes::create_job(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
  Json body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object())
    return send_error(responder, bad_request("the body must be a JSON object (a chat/completions request)"));
  std::string url = "/v1/chat/completions";
  if (auto it = body.find("url"); it != body.end()) {
    if (!it->is_string() ||
        (it->get<std::string>() != "/v1/chat/completions" && it->get<std::string>() != "/v1/completions")) {
      return send_error(responder, bad_request("url must be \"/v1/chat/completions\" or \"/v1/completions\"", "url"));
    }
    url = it->get<std::string>();
    body.erase(it);
  }
  std::string request_body = body.dump();
  if (std::optional<jobs::JobResult> invalid = executor_->validate(url, request_body)) {
    return responder->send(invalid->http_status, kJsonHeaders, std::move(invalid->body));
  }
  jobs::JobSpec spec;
  spec.id = "job-" + random_hex(24);
  spec.url = url;
  spec.body = std::move(request_body);
  spec.created_at_ms = jobs::wall_clock_ms();
  if (Status s = store_->enqueue(spec); !s.ok()) return send_status_error(responder, s);
  jobs::JobRecord record;
  record.spec = spec;
  Result<jobs::JobRecord> stored = store_->get_job(spec.id);
  responder->send(202, kJsonHeaders, job_object_json(stored.ok() ? *stored : record));
}

void JobsRoutes::get_job(const std::string& id, const std::shared_ptr<HttpResponder>& responder) {
  Result<jobs::JobRecord> job = store_->get_job(id);
  if (!job.ok()) {
    if (job.status().code() == StatusCode::kNotFound) return send_error(responder, not_found("job", id));
    return send_status_error(responder, job.status());
  }
  responder->send(200, kJsonHeaders, job_object_json(*job));
}

void JobsRoutes::cancel_job(const std::string& id, const std::shared_ptr<HttpResponder>& responder) {
  Result<bool> cancelled = store_->cancel_job(id, jobs::wall_clock_ms());
  if (!cancelled.ok()) {
    if (cancelled.status().code() == StatusCode::kNotFound) return send_error(responder, not_found("job", id));
    return send_status_error(responder, cancelled.status());
  }
  Result<jobs::JobRecord> job = store_->get_job(id);
  if (!job.ok()) return send_status_error(responder, job.status());
  if (!*cancelled) {
    return send_error(
        responder, ApiError{409, fmt::format("Cannot cancel a job with status '{}'.", jobs::job_state_name(job->state)),
                            "invalid_request_error", "", "job_not_cancellable"});
  }
  responder->send(200, kJsonHeaders, job_object_json(*job));
}

}  // namespace bw::server
