#include "cli/job_service.h"

#include <algorithm>
#include <charconv>
#include <filesystem>

namespace bw::cli {

void add_job_flags(CLI::App& app, JobFlags* flags) {
  app.add_option("--jobs", flags->jobs, "Async jobs and the Batch API: on, off")->capture_default_str();
  app.add_option("--data-dir", flags->data_dir, "Folder of the SQLite job store (jobs.sqlite3) without --redis-url")
      ->capture_default_str();
  app.add_option("--job-max-retries", flags->max_retries,
                 "Retries of a job after a transport/engine/5xx/429 failure (exponential backoff)")
      ->capture_default_str();
  app.add_option("--job-result-ttl", flags->result_ttl,
                 "How long finished jobs and batches are kept (e.g. 7d, 12h, 30m, or seconds)")
      ->capture_default_str();
  app.add_option("--job-lease-seconds", flags->lease_seconds,
                 "Lease of a running job; a job whose worker died is run again after it expires")
      ->capture_default_str();
  app.add_option("--job-concurrency", flags->concurrency,
                 "Jobs this replica runs at once (0: half of --max-seqs, at least 1)")
      ->capture_default_str();
}

Result<int64_t> parse_duration_ms(const std::string& text) {
  if (text.empty()) return InvalidArgument("empty duration");
  int64_t unit_ms = 1000;
  std::string number = text;
  switch (text.back()) {
    case 'd':
      unit_ms = int64_t{86400} * 1000;
      number.pop_back();
      break;
    case 'h':
      unit_ms = int64_t{3600} * 1000;
      number.pop_back();
      break;
    case 'm':
      unit_ms = int64_t{60} * 1000;
      number.pop_back();
      break;
    case 's':
      number.pop_back();
      break;
    default:
      break;
  }
  double value = 0;
  const auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (ec != std::errc() || ptr != number.data() + number.size() || !(value >= 0) || value > 1e7)
    return InvalidArgument("bad duration '{}' (e.g. 7d, 12h, 30m, 90s)", text);
  return static_cast<int64_t>(value * static_cast<double>(unit_ms));
}

Result<std::unique_ptr<JobService>> JobService::create(const JobFlags& flags, const std::string& redis_url,
                                                       int32_t max_num_seqs, server::OpenAiService* service,
                                                       const Logger& logger) {
  if (flags.jobs == "off") return std::unique_ptr<JobService>();
  if (flags.jobs != "on") return InvalidArgument("--jobs must be on or off, got '{}'", flags.jobs);
  if (flags.max_retries < 0 || flags.max_retries > 100) return InvalidArgument("--job-max-retries must be in [0, 100]");
  if (!(flags.lease_seconds >= 0.5) || flags.lease_seconds > 86400)
    return InvalidArgument("--job-lease-seconds must be in [0.5, 86400]");
  if (flags.concurrency < 0) return InvalidArgument("--job-concurrency must be >= 0");
  ASSIGN_OR_RETURN(int64_t ttl_ms, parse_duration_ms(flags.result_ttl));

  std::unique_ptr<JobService> jobs(new JobService());
  jobs->logger_ = logger;
  if (!redis_url.empty()) {
    ASSIGN_OR_RETURN(jobs->store_, jobs::open_redis_job_store(redis_url));
    logger->info("job store: Redis Streams at {}", redis_url);
  } else {
    std::error_code ec;
    std::filesystem::create_directories(flags.data_dir, ec);
    if (ec) return Unavailable("cannot create --data-dir {}: {}", flags.data_dir, ec.message());
    const std::string path = (std::filesystem::path(flags.data_dir) / "jobs.sqlite3").string();
    ASSIGN_OR_RETURN(jobs->store_, jobs::open_sqlite_job_store(path));
    logger->info("job store: SQLite {}", path);
  }
  jobs->executor_ = std::make_unique<server::ServiceJobExecutor>(service);
  jobs->routes_ = std::make_unique<server::JobsRoutes>(jobs->store_.get(), jobs->executor_.get(),
                                                       server::JobsRoutesConfig{}, logger);

  jobs::WorkerConfig worker;
  worker.concurrency = flags.concurrency > 0 ? flags.concurrency : std::max(1, max_num_seqs / 2);
  worker.max_retries = flags.max_retries;
  worker.lease_ms = static_cast<int64_t>(flags.lease_seconds * 1000);
  jobs->worker_ = std::make_unique<jobs::JobWorker>(jobs->store_.get(), jobs->executor_.get(), worker, logger);

  jobs::FinaliserConfig finaliser;
  finaliser.result_ttl_ms = ttl_ms;
  finaliser.finalizing_timeout_ms = std::max<int64_t>(10000, 2 * worker.lease_ms);
  jobs->finaliser_ = std::make_unique<jobs::BatchFinaliser>(jobs->store_.get(), finaliser, logger);
  jobs::BatchFinaliser* fin = jobs->finaliser_.get();
  jobs->worker_->set_on_batch_job_done([fin](const std::string&) { fin->poke(); });
  jobs->routes_->set_on_batch_cancel([fin] { fin->poke(); });

  server::JobsRoutes* routes = jobs->routes_.get();
  service->set_extra_routes(
      [](const std::string& path) { return server::JobsRoutes::handles(path); },
      [routes](const server::HttpRequest& request, const std::shared_ptr<server::HttpResponder>& responder) {
        routes->handle(request, responder);
      });
  jobs::JobWorker* w = jobs->worker_.get();
  service->set_extra_metrics([w, fin] { return server::render_job_metrics(w->worker_id(), w->stats(), fin->stats()); });
  logger->info("jobs: worker {} runs up to {} at once, lease {} s, {} retries", w->worker_id(), worker.concurrency,
               flags.lease_seconds, worker.max_retries);
  return jobs;
}

JobService::~JobService() {
  if (worker_) worker_->shutdown(std::chrono::milliseconds(0));
  if (finaliser_) finaliser_->stop();
}

void JobService::start() {
  worker_->start();
  finaliser_->start();
}

void JobService::drain(std::chrono::milliseconds grace) {
  worker_->stop_claiming();
  worker_->shutdown(grace);
  finaliser_->stop();
}

}  // namespace bw::cli
