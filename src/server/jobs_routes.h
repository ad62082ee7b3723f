// JobsRoutes: the HTTP side of async work, in OpenAI's shapes, on top of a JobStore.
//
//   POST /v1/files                 multipart/form-data (fields `purpose` = "batch", `file`)
//   GET  /v1/files/{id}            the file object
//   GET  /v1/files/{id}/content    the bytes
//   POST /v1/batches               {input_file_id, endpoint, completion_window, metadata}
//   GET  /v1/batches               ?limit=&after=  (newest first; first_id/last_id/has_more)
//   GET  /v1/batches/{id}
//   POST /v1/batches/{id}/cancel
//   POST /v1/jobs                  a chat/completions body (+ optional "url") -> 202 job
//   GET  /v1/jobs/{id}             status and result
//   DELETE /v1/jobs/{id}           cancels
//
// The service (OpenAiService::set_extra_routes) calls handle() after its API-key and ready
// checks. Bodies of single jobs are validated at POST time through the executor (a bad body
// is a 400 now, not a failed job later); a batch input file is validated when the batch is
// created (a bad file makes a `failed` batch with OpenAI's `errors` list). The store calls
// are short and made on the calling (I/O) thread. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/logging.h"
#include "jobs/batch_finaliser.h"
#include "jobs/job_executor.h"
#include "jobs/job_store.h"
#include "jobs/job_worker.h"
#include "server/http_server.h"

namespace bw::server {

struct JobsRoutesConfig {
  int64_t max_file_bytes = int64_t{100} << 20;  // OpenAI's batch input limit (the HTTP body limit applies first)
  int64_t max_batch_requests = 50000;
};

class JobsRoutes {
 public:
  JobsRoutes(jobs::JobStore* store, jobs::JobExecutor* executor, JobsRoutesConfig config, Logger logger);

  // Whether a path belongs to these routes (/v1/files..., /v1/batches..., /v1/jobs...).
  static bool handles(const std::string& path);
  void handle(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder);

  // Called after a batch was cancelled (so the finaliser can finish it soon).
  void set_on_batch_cancel(std::function<void()> callback) { on_batch_cancel_ = std::move(callback); }

 private:
  void upload_file(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder);
  void get_file(const std::string& id, bool content, const std::shared_ptr<HttpResponder>& responder);
  void create_batch(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder);
  void list_batches(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder);
  void get_batch(const std::string& id, const std::shared_ptr<HttpResponder>& responder);
  void cancel_batch(const std::string& id, const std::shared_ptr<HttpResponder>& responder);
  void create_job(const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder);
  void get_job(const std::string& id, const std::shared_ptr<HttpResponder>& responder);
  void cancel_job(const std::string& id, const std::shared_ptr<HttpResponder>& responder);

  jobs::JobStore* store_;
  jobs::JobExecutor* executor_;
  JobsRoutesConfig config_;
  Logger logger_;
  std::function<void()> on_batch_cancel_;
};

// OpenAI's JSON objects.
std::string file_object_json(const jobs::FileRecord& file);
std::string batch_object_json(const jobs::BatchRecord& batch);
// {"id","object":"job","url","status","created_at","finished_at","attempts","result","error"}
std::string job_object_json(const jobs::JobRecord& job);

// Prometheus lines of this replica's job worker and finaliser (breakwater:jobs_*).
std::string render_job_metrics(const std::string& worker_id, const jobs::WorkerStats& worker,
                               const jobs::FinaliserStats& finaliser);

}  // namespace bw::server
