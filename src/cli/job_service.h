// The async-jobs part of `breakwater serve`: its flags, and JobService, which opens the job
// store (Redis Streams with --redis-url, else SQLite at <--data-dir>/jobs.sqlite3), wires
// the Batch API and /v1/jobs routes into the OpenAiService, and runs this replica's job
// worker and batch finaliser. Created before the model loads; start() once it has.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "common/logging.h"
#include "common/status.h"
#include "jobs/batch_finaliser.h"
#include "jobs/job_store.h"
#include "jobs/job_worker.h"
#include "server/jobs_routes.h"
#include "server/openai_service.h"
#include "server/service_job_executor.h"

namespace bw::cli {

struct JobFlags {
  std::string jobs = "on";  // on | off
  std::string data_dir = "./breakwater-data";
  int max_retries = 3;
  std::string result_ttl = "7d";
  double lease_seconds = 30.0;
  int concurrency = 0;  // 0: half of --max-seqs, at least 1
};

void add_job_flags(CLI::App& app, JobFlags* flags);

// "7d", "12h", "30m", "90s" or plain seconds -> milliseconds.
Result<int64_t> parse_duration_ms(const std::string& text);

class JobService {
 public:
  // nullptr (and OK) for --jobs off. Registers the routes with `service`.
  static Result<std::unique_ptr<JobService>> create(const JobFlags& flags, const std::string& redis_url,
                                                    int32_t max_num_seqs, server::OpenAiService* service,
                                                    const Logger& logger);
  ~JobService();

  // The model is loaded: start claiming jobs and finalising batches.
  void start();
  // SIGTERM: stop claiming; wait up to `grace` for running jobs (the rest are handed back),
  // then stop the finaliser. Before the engine shuts down.
  void drain(std::chrono::milliseconds grace);

 private:
  JobService() = default;

  Logger logger_;
  std::unique_ptr<jobs::JobStore> store_;
  std::unique_ptr<server::ServiceJobExecutor> executor_;
  std::unique_ptr<server::JobsRoutes> routes_;
  std::unique_ptr<jobs::JobWorker> worker_;
  std::unique_ptr<jobs::BatchFinaliser> finaliser_;
};

}  // namespace bw::cli
