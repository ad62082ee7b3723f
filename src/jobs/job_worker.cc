#include "jobs/job_worker.h"

#include <unistd.h>

#include <algorithm>
#include <array>

#include <fmt/format.h>

namespace bw::jobs {

std::string make_worker_id() {
  std::array<char, 256> host{};
  if (gethostname(host.data(), host.size() - 1) != 0) host[0] = '\0';
  std::random_device rd;
  const uint64_t random = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return fmt::format("{}:{}:{:08x}", host.data(), getpid(), random & 0xffffffffu);
}

int64_t retry_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms, double unit_random) {
  int64_t delay = base_ms;
  for (int i = 1; i < attempt && delay < cap_ms; ++i)
    delay *= 2;
  delay = std::min(delay, cap_ms);
  const double random = std::clamp(unit_random, 0.0, 1.0);
  const int64_t fixed = delay / 2;
  const int64_t jitter = delay - fixed;
  return fixed + static_cast<int64_t>(static_cast<double>(jitter) * random);
}

bool is_retryable_answer(const Result<JobResult>& answer) {
  if (!answer.ok()) return true;
  const int status = answer->http_status;
  return status == 429 || status >= 500 || status <= 0;
}

JobWorker::JobWorker(JobStore* store, JobExecutor* executor, WorkerConfig config, Logger logger, Clock clock)
    : store_(store),
      executor_(executor),
      config_(std::move(config)),
      logger_(std::move(logger)),
      clock_(std::move(clock)),
      rng_(config_.seed != 0 ? config_.seed : std::random_device{}()) {
  if (config_.worker_id.empty()) config_.worker_id = make_worker_id();
  config_.concurrency = std::max(1, config_.concurrency);
  config_.max_retries = std::max(0, config_.max_retries);
  config_.lease_ms = std::max<int64_t>(300, config_.lease_ms);
}

JobWorker::~JobWorker() { shutdown(std::chrono::milliseconds(0)); }

void JobWorker::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void JobWorker::stop_claiming() { claiming_ = false; }

void JobWorker::run() {
  while (!handing_back_) {
    const int64_t wait_ms = tick();
    if (handing_back_) break;
    wait_for_work(std::chrono::milliseconds(std::max<int64_t>(1, wait_ms)));
  }
  hand_back_all();
}

void JobWorker::shutdown(std::chrono::milliseconds grace) {
  claiming_ = false;
  if (stopping_.exchange(true)) {
    if (thread_.joinable()) thread_.join();
    return;
  }
  if (!thread_.joinable()) {
    hand_back_all();
    return;
  }
  // The thread keeps applying results while running jobs finish.
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (running_count_ > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  handing_back_ = true;
  {
    std::lock_guard lock(inbox_->mutex);
    inbox_->wake = true;
  }
  inbox_->cv.notify_all();
  thread_.join();
}

void JobWorker::hand_back_all() {
  // Finished results first: they are real answers.
  std::deque<Finished> done;
  {
    std::lock_guard lock(inbox_->mutex);
    done.swap(inbox_->finished);
  }
  for (const Finished& f : done)
    apply_finished(f);
  const int64_t now = clock_();
  for (auto& [id, run] : running_) {
    if (run.executing) executor_->cancel(run.execution_id);
    Result<bool> r = store_->fail_attempt(id, config_.worker_id, "the worker shut down", std::nullopt, now, now);
    if (!r.ok()) logger_->warn("job {}: hand back failed: {}", id, r.status().message());
  }
  running_.clear();
  running_count_ = 0;
}

void JobWorker::wait_for_work(std::chrono::milliseconds timeout) {
  std::unique_lock lock(inbox_->mutex);
  inbox_->cv.wait_for(lock, timeout, [this] { return inbox_->wake || !inbox_->finished.empty(); });
  inbox_->wake = false;
}

int64_t JobWorker::tick() {
  std::deque<Finished> done;
  {
    std::lock_guard lock(inbox_->mutex);
    done.swap(inbox_->finished);
  }
  for (const Finished& f : done)
    apply_finished(f);
  int64_t now = clock_();
  renew_leases(now);
  if (claiming_) claim_jobs(now);
  now = clock_();
  int64_t wait = config_.poll_interval_ms;
  for (const auto& [id, run] : running_)
    wait = std::min(wait, std::max<int64_t>(0, run.next_renew_ms - now));
  return wait;
}

void JobWorker::claim_jobs(int64_t now) {
  const int free_slots = config_.concurrency - static_cast<int>(running_.size());
  if (free_slots <= 0) return;
  ClaimOptions options;
  options.worker_id = config_.worker_id;
  options.max_jobs = free_slots;
  options.lease_ms = config_.lease_ms;
  options.max_attempts = 1 + config_.max_retries;
  Result<std::vector<JobRecord>> claimed = store_->claim(options, now);
  if (!claimed.ok()) {
    logger_->warn("claiming jobs failed: {}", claimed.status().message());
    return;
  }
  for (JobRecord& job : *claimed)
    start_job(std::move(job), now);
}

void JobWorker::start_job(JobRecord job, int64_t now) {
  claimed_.fetch_add(1);
  const std::string id = job.spec.id;
  Running& run = running_[id];
  run.job = std::move(job);
  run.run_seq = next_run_seq_++;
  run.next_renew_ms = now + config_.lease_ms / 3;
  running_count_ = static_cast<int64_t>(running_.size());
  std::weak_ptr<Inbox> weak = inbox_;
  const uint64_t seq = run.run_seq;
  auto callback = [weak, id, seq](Result<JobResult> answer) {
    std::shared_ptr<Inbox> inbox = weak.lock();
    if (!inbox) return;
    {
      std::lock_guard lock(inbox->mutex);
      inbox->finished.push_back(Finished{id, seq, std::move(answer)});
    }
    inbox->cv.notify_all();
  };
  Result<ExecutionId> exec = executor_->execute(run.job.spec.url, run.job.spec.body, config_.priority_offset, callback);
  if (!exec.ok()) {
    // Not started (e.g. the engine queue is full): an attempt that failed without an answer.
    callback(exec.status());
    return;
  }
  // The callback may already have run; the entry stays until tick() applies it.
  auto it = running_.find(id);
  if (it != running_.end() && it->second.run_seq == seq) {
    it->second.execution_id = *exec;
    it->second.executing = true;
  }
}

void JobWorker::renew_leases(int64_t now) {
  std::vector<std::string> lost;
  for (auto& [id, run] : running_) {
    if (run.next_renew_ms > now) continue;
    bool cancel_requested = false;
    Result<bool> held = store_->renew_lease(id, config_.worker_id, config_.lease_ms, now, &cancel_requested);
    if (!held.ok()) {
      // The store is unreachable: try again soon; the lease may still run out.
      logger_->warn("job {}: renewing the lease failed: {}", id, held.status().message());
      run.next_renew_ms = now + std::max<int64_t>(100, config_.lease_ms / 10);
      continue;
    }
    if (!*held) {
      lost.push_back(id);
      continue;
    }
    run.next_renew_ms = now + config_.lease_ms / 3;
    if (cancel_requested && !run.cancel_requested) {
      run.cancel_requested = true;
      if (run.executing) executor_->cancel(run.execution_id);
    }
  }
  for (const std::string& id : lost) {
    auto it = running_.find(id);
    logger_->warn("job {}: lease lost (another worker has it now); stopping this attempt", id);
    if (it->second.executing) executor_->cancel(it->second.execution_id);
    running_.erase(it);
    lost_leases_.fetch_add(1);
  }
  running_count_ = static_cast<int64_t>(running_.size());
}

void JobWorker::record_end(const JobRecord& job, bool terminal) {
  if (terminal && !job.spec.batch_id.empty() && on_batch_job_done_) on_batch_job_done_(job.spec.batch_id);
}

void JobWorker::apply_finished(const Finished& finished) {
  auto it = running_.find(finished.job_id);
  if (it == running_.end() || it->second.run_seq != finished.run_seq) return;  // lost or handed back
  Running run = std::move(it->second);
  running_.erase(it);
  running_count_ = static_cast<int64_t>(running_.size());
  const JobRecord& job = run.job;
  const int64_t now = clock_();
  const std::string& worker = config_.worker_id;
  const Result<JobResult>& answer = finished.answer;
  std::optional<JobResult> last_result;
  if (answer.ok()) last_result = *answer;

  Result<bool> written = false;
  bool terminal = true;
  if (run.cancel_requested) {
    written = store_->fail_attempt(job.spec.id, worker, "cancelled", last_result, std::nullopt, now);
    cancelled_.fetch_add(1);
  } else if (answer.ok() && answer->http_status >= 200 && answer->http_status < 300) {
    written = store_->complete(job.spec.id, worker, *answer, now);
    if (written.ok() && *written) succeeded_.fetch_add(1);
  } else {
    const std::string reason =
        answer.ok() ? fmt::format("the endpoint answered HTTP {}", answer->http_status) : answer.status().message();
    const int max_attempts = 1 + config_.max_retries;
    if (is_retryable_answer(answer) && job.attempts < max_attempts) {
      std::uniform_real_distribution<double> unit(0.0, 1.0);
      const int64_t delay = retry_backoff_ms(job.attempts, config_.backoff_base_ms, config_.backoff_cap_ms, unit(rng_));
      written = store_->fail_attempt(job.spec.id, worker, reason, last_result, now + delay, now);
      terminal = false;
      if (written.ok() && *written) retried_.fetch_add(1);
      logger_->info("job {}: attempt {} failed ({}); retrying in {} ms", job.spec.id, job.attempts, reason, delay);
    } else {
      const std::string final_reason =
          is_retryable_answer(answer) ? fmt::format("{} (after {} attempts)", reason, job.attempts) : reason;
      written = store_->fail_attempt(job.spec.id, worker, final_reason, last_result, std::nullopt, now);
      if (written.ok() && *written) failed_.fetch_add(1);
    }
  }
  if (!written.ok()) {
    // The lease runs out and another attempt is made.
    logger_->warn("job {}: recording the attempt failed: {}", job.spec.id, written.status().message());
    return;
  }
  if (!*written) {
    lost_leases_.fetch_add(1);
    return;
  }
  record_end(job, terminal);
}

WorkerStats JobWorker::stats() const {
  WorkerStats s;
  s.claimed = claimed_;
  s.succeeded = succeeded_;
  s.failed = failed_;
  s.retried = retried_;
  s.cancelled = cancelled_;
  s.lost_leases = lost_leases_;
  s.running = running_count_;
  return s;
}

}  // namespace bw::jobs
