// JobExecutor: how a job's one HTTP request is run in-process. jobs/ sits below server/, so
// the worker sees only this interface; the server implements it by running the body
// through its own route handler (server/service_job_executor.h), tests use a fake.
//
// Thread-safety: every method may be called from any thread; the completion callback runs
// on whatever thread finished the request (an engine or I/O thread) and must be quick.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "common/status.h"
#include "jobs/job_store.h"

namespace bw::jobs {

// Called exactly once per accepted execution: the endpoint's answer (any HTTP status), or
// an error Status when no answer was produced (transport / engine failure).
using ExecutionCallback = std::function<void(Result<JobResult> answer)>;
using ExecutionId = uint64_t;

class JobExecutor {
 public:
  virtual ~JobExecutor() = default;

  // Checks a body the way the endpoint would, without running it: nullopt when valid,
  // else the endpoint's error answer (a 4xx status and an OpenAI error body).
  virtual std::optional<JobResult> validate(const std::string& url, const std::string& body) = 0;

  // Starts the request at the endpoint `url` ("/v1/chat/completions" or "/v1/completions";
  // streaming is forced off) with `priority_offset` added to its engine priority (lower
  // runs first, so a positive offset yields to interactive traffic). On error (e.g. the
  // server is not ready) `done` is never called.
  virtual Result<ExecutionId> execute(const std::string& url, const std::string& body, int32_t priority_offset,
                                      ExecutionCallback done) = 0;

  // Stops a running execution soon; its callback still runs (with whatever answer the
  // endpoint gives an aborted request). Unknown or finished ids are ignored.
  virtual void cancel(ExecutionId id) = 0;
};

}  // namespace bw::jobs
