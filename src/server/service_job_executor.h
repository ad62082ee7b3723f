// ServiceJobExecutor: the JobExecutor of `breakwater serve` — runs a job's body through the
// OpenAiService in-process (no HTTP, no API key), with streaming forced off, at the engine
// priority offset the worker asks for, and collects the status and JSON body a client
// would have received. cancel() acts like a client disconnect (the engine request ends
// within one step). Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "jobs/job_executor.h"
#include "server/openai_service.h"

namespace bw::server {

class ServiceJobExecutor final : public jobs::JobExecutor {
 public:
  explicit ServiceJobExecutor(OpenAiService* service) : service_(service) {}

  std::optional<jobs::JobResult> validate(const std::string& url, const std::string& body) override;
  Result<jobs::ExecutionId> execute(const std::string& url, const std::string& body, int32_t priority_offset,
                                    jobs::ExecutionCallback done) override;
  void cancel(jobs::ExecutionId id) override;

  // The body a job runs: `body` with "stream" false and no "stream_options" (unchanged when
  // it is not a JSON object: the endpoint's parser then answers 400).
  static std::string non_streaming_body(const std::string& body);

 private:
  class CapturingResponder;

  OpenAiService* service_;
  std::mutex mutex_;
  std::unordered_map<jobs::ExecutionId, std::weak_ptr<CapturingResponder>> running_;  // guarded by mutex_
  jobs::ExecutionId next_id_ = 1;                                                     // guarded by mutex_
};

}  // namespace bw::server
