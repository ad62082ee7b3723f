// RedisJobStore: the JobStore shared by several replicas through one Redis (--redis-url).
//
// Layout under the key prefix P ("bw:" by default):
//   P job:{id}            hash: the job's spec and state (state, attempts, worker_id,
//                         lease_expires_ms, next_attempt_ms, cancel_requested, result,
//                         error, finished_at_ms) and `entry`, its current stream entry id.
//                         The hash is the truth; everything below only finds jobs.
//   P jobs                the queue: a stream with one entry per queued or running job,
//                         read by the consumer group `workers` (one consumer per worker id).
//                         Entries are XACKed and XDELed when their job leaves the queue.
//   P retry               sorted set, score = retry time: jobs waiting for their backoff,
//                         moved into the stream by the first claim after they are due.
//   P leases              sorted set, score = lease expiry: running jobs, so an expired
//                         lease is found by the caller's clock (now_ms), not Redis's idle time.
//   P batch:{id}          hash: the batch record and its counters.
//   P batch:{id}:jobs     sorted set, score = line: the batch's job ids.
//   P batches             sorted set, score = created_at * 1e6 + sequence: list_batches.
//   P batches:done        sorted set, score = finish time (ms): terminal batches, for purge.
//   P jobs:done           sorted set, score = finished_at_ms: finished single jobs, for purge.
//   P file:{id}           hash: file metadata and `content` (binary).
//   P batch_seq           counter for the batches score.
// Every state transition is one Lua script (EVALSHA), so it is atomic against every other
// replica: a claim moves due retries, reclaims expired leases (or fails them past
// max_attempts) and reads new stream entries (XREADGROUP >) in one step; complete/fail
// check the lease holder and the state and move the batch counter exactly once.
// The scripts compute key names from the prefix, so they need a single Redis (or one
// Redis Cluster slot via a hash-tagged prefix such as "{bw}:").
//
// Durability is Redis's: run it with AOF (appendonly yes) when jobs must survive a Redis
// restart. Errors (Redis down, timeouts) come back as Unavailable; nothing is dropped
// silently. Thread-safe: one RedisConnection per store (its mutex serialises commands).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "jobs/job_store.h"

namespace bw::jobs {

struct RedisJobStoreOptions {
  std::chrono::milliseconds command_timeout{2000};
  std::chrono::milliseconds connect_timeout{1000};
  std::chrono::milliseconds reconnect_backoff{200};
};

// Connects at once (Unavailable when Redis cannot be reached), loads the scripts and
// creates the consumer group.
Result<std::unique_ptr<JobStore>> open_redis_job_store(const std::string& redis_url, const std::string& key_prefix,
                                                       const RedisJobStoreOptions& options);

}  // namespace bw::jobs
