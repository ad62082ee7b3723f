#include "jobs/redis_job_store.h"

#include <charconv>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/redis_connection.h"
#include "jobs/store_util.h"

namespace bw::jobs {

namespace {

// All transitions, dispatched on ARGV[1]; ARGV[2] is the key prefix, KEYS[1] the stream.
// Times arrive as decimal strings and are stored as given (Lua numbers are doubles: they
// are only used for comparisons, never formatted back).
constexpr const char* kScript = R"lua(
local op = ARGV[1]
local P = ARGV[2]
local STREAM = KEYS[1]
local GROUP = 'workers'
local RETRY = P .. 'retry'
local LEASES = P .. 'leases'
local SINGLES_DONE = P .. 'jobs:done'
local BATCHES = P .. 'batches'
local BATCHES_DONE = P .. 'batches:done'
local BATCHES_ACTIVE = P .. 'batches:active'  -- not yet terminal, scored as in BATCHES
local function jk(id) return P .. 'job:' .. id end
local function bk(id) return P .. 'batch:' .. id end

-- Takes a job out of the stream (acknowledged and deleted).
local function drop_entry(key)
  local entry = redis.call('HGET', key, 'entry')
  if entry and entry ~= '' then
    redis.call('XACK', STREAM, GROUP, entry)
    redis.call('XDEL', STREAM, entry)
    redis.call('HSET', key, 'entry', '')
  end
end

-- The one terminal transition of a job (callers checked its state) and its batch counter.
local function finish(id, state, err, now, has_result, status, body)
  local key = jk(id)
  redis.call('HSET', key, 'state', state, 'error', err, 'finished_at_ms', now, 'lease_expires_ms', '0',
             'next_attempt_ms', '0')
  if has_result == '1' then
    redis.call('HSET', key, 'has_result', '1', 'result_status', status, 'result_body', body)
  end
  drop_entry(key)
  redis.call('ZREM', LEASES, id)
  redis.call('ZREM', RETRY, id)
  local batch_id = redis.call('HGET', key, 'batch_id')
  if batch_id and batch_id ~= '' then
    redis.call('HINCRBY', bk(batch_id), state == 'succeeded' and 'completed' or 'failed', 1)
  else
    redis.call('ZADD', SINGLES_DONE, now, id)
  end
end

local function take(id, worker, lease_until)
  local key = jk(id)
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'state', 'running', 'worker_id', worker, 'lease_expires_ms', lease_until,
             'next_attempt_ms', '0')
  redis.call('ZADD', LEASES, lease_until, id)
end

local function new_job(a, i, batch_id)
  -- a[i..i+6]: id, line, custom_id, method, url, body, created_at_ms
  local id = a[i]
  local key = jk(id)
  redis.call('HSET', key, 'id', id, 'batch_id', batch_id, 'line', a[i + 1], 'custom_id', a[i + 2],
             'method', a[i + 3], 'url', a[i + 4], 'body', a[i + 5], 'created_at_ms', a[i + 6], 'state', 'queued',
             'attempts', '0', 'worker_id', '', 'lease_expires_ms', '0', 'next_attempt_ms', '0',
             'cancel_requested', '0', 'has_result', '0', 'result_status', '0', 'result_body', '', 'error', '',
             'finished_at_ms', '0')
  local entry = redis.call('XADD', STREAM, '*', 'job', id)
  redis.call('HSET', key, 'entry', entry)
  return id
end

if op == 'create_batch' then
  -- ARGV: 3 batch_id, 4 score, 5 finished_ms or '', 6 num batch field args, fields..., num jobs, jobs...
  local batch_id = ARGV[3]
  local nfields = tonumber(ARGV[6])
  local njobs = tonumber(ARGV[7 + nfields])
  local first = 8 + nfields
  if redis.call('EXISTS', bk(batch_id)) == 1 then return {0, 'batch ' .. batch_id .. ' already exists'} end
  local seen = {}
  for j = 0, njobs - 1 do
    local id = ARGV[first + 7 * j]
    if seen[id] or redis.call('EXISTS', jk(id)) == 1 then return {0, 'job ' .. id .. ' already exists'} end
    seen[id] = true
  end
  local fields = {}
  for j = 7, 6 + nfields do fields[#fields + 1] = ARGV[j] end
  redis.call('HSET', bk(batch_id), unpack(fields))
  redis.call('ZADD', BATCHES, ARGV[4], batch_id)
  if ARGV[5] ~= '' then
    redis.call('ZADD', BATCHES_DONE, ARGV[5], batch_id)
  else
    redis.call('ZADD', BATCHES_ACTIVE, ARGV[4], batch_id)
  end
  for j = 0, njobs - 1 do
    local i = first + 7 * j
    new_job(ARGV, i, batch_id)
    redis.call('ZADD', bk(batch_id) .. ':jobs', ARGV[i + 1], ARGV[i])
  end
  return {1}

elseif op == 'enqueue' then
  if redis.call('EXISTS', jk(ARGV[3])) == 1 then return 0 end
  new_job(ARGV, 3, '')
  return 1

elseif op == 'claim' then
  -- ARGV: 3 worker, 4 max_jobs, 5 lease_until, 6 max_attempts, 7 now
  local worker, max_jobs, lease_until = ARGV[3], tonumber(ARGV[4]), ARGV[5]
  local max_attempts, now = tonumber(ARGV[6]), ARGV[7]
  local now_n = tonumber(now)
  local out = {}
  -- 1. Retries whose backoff is over go back into the stream.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', RETRY, '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', RETRY, id)
    local key = jk(id)
    if redis.call('HGET', key, 'state') == 'queued' then
      redis.call('HSET', key, 'entry', redis.call('XADD', STREAM, '*', 'job', id))
    end
  end
  -- 2. Expired leases: the worker died. Re-run, or fail past max_attempts.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 1000)) do
    local f = redis.call('HMGET', jk(id), 'state', 'lease_expires_ms', 'attempts', 'cancel_requested', 'entry')
    if f[1] ~= 'running' then
      redis.call('ZREM', LEASES, id)
    elseif tonumber(f[2]) > now_n then
      redis.call('ZADD', LEASES, f[2], id)
    elseif f[4] == '1' then
      finish(id, 'cancelled', 'cancelled (its worker was lost before it stopped)', now, '0')
    elseif tonumber(f[3]) >= max_attempts then
      finish(id, 'failed', 'worker lost: the lease expired on attempt ' .. f[3] .. ' of ' .. ARGV[6], now, '0')
    elseif #out < max_jobs then
      take(id, worker, lease_until)
      if f[5] and f[5] ~= '' then redis.call('XCLAIM', STREAM, GROUP, worker, 0, f[5], 'JUSTID') end
      out[#out + 1] = redis.call('HGETALL', jk(id))
    end
  end
  -- 3. New entries, in queue order. An entry whose job is no longer queued is dropped.
  while #out < max_jobs do
    local reply = redis.call('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', max_jobs - #out, 'STREAMS', STREAM, '>')
    if not reply or #reply[1][2] == 0 then break end
    for _, e in ipairs(reply[1][2]) do
      local entry_id, id = e[1], e[2][2]
      local key = jk(id)
      local f = redis.call('HMGET', key, 'state', 'attempts', 'entry', 'error')
      if f[1] == 'queued' and f[3] == entry_id then
        if tonumber(f[2]) >= max_attempts then
          finish(id, 'failed', 'gave up after ' .. f[2] .. ' attempts: ' .. f[4], now, '0')
        else
          take(id, worker, lease_until)
          out[#out + 1] = redis.call('HGETALL', key)
        end
      else
        redis.call('XACK', STREAM, GROUP, entry_id)
        redis.call('XDEL', STREAM, entry_id)
      end
    end
  end
  return out

elseif op == 'renew' then
  -- ARGV: 3 id, 4 worker, 5 lease_until
  local id = ARGV[3]
  local f = redis.call('HMGET', jk(id), 'state', 'worker_id', 'cancel_requested', 'entry')
  local cancel = f[3] == '1' and 1 or 0
  if f[1] ~= 'running' or f[2] ~= ARGV[4] then return {0, cancel} end
  redis.call('HSET', jk(id), 'lease_expires_ms', ARGV[5])
  redis.call('ZADD', LEASES, ARGV[5], id)
  -- Resets the entry's idle time, so XPENDING shows the job as alive.
  if f[4] and f[4] ~= '' then redis.call('XCLAIM', STREAM, GROUP, ARGV[4], 0, f[4], 'JUSTID') end
  return {1, cancel}

elseif op == 'complete' then
  -- ARGV: 3 id, 4 worker, 5 now, 6 status, 7 body
  local f = redis.call('HMGET', jk(ARGV[3]), 'state', 'worker_id')
  if f[1] ~= 'running' or f[2] ~= ARGV[4] then return 0 end
  finish(ARGV[3], 'succeeded', '', ARGV[5], '1', ARGV[6], ARGV[7])
  return 1

elseif op == 'fail' then
  -- ARGV: 3 id, 4 worker, 5 now, 6 reason, 7 has_result, 8 status, 9 body, 10 retry_at or ''
  local id = ARGV[3]
  local key = jk(id)
  local f = redis.call('HMGET', key, 'state', 'worker_id', 'cancel_requested')
  if f[1] ~= 'running' or f[2] ~= ARGV[4] then return 0 end
  if f[3] == '1' then
    finish(id, 'cancelled', ARGV[6] ~= '' and ARGV[6] or 'cancelled', ARGV[5], ARGV[7], ARGV[8], ARGV[9])
  elseif ARGV[10] ~= '' then
    redis.call('HSET', key, 'state', 'queued', 'worker_id', '', 'lease_expires_ms', '0', 'next_attempt_ms', ARGV[10],
               'error', ARGV[6])
    if ARGV[7] == '1' then redis.call('HSET', key, 'has_result', '1', 'result_status', ARGV[8], 'result_body', ARGV[9]) end
    drop_entry(key)
    redis.call('ZREM', LEASES, id)
    redis.call('ZADD', RETRY, ARGV[10], id)
  else
    finish(id, 'failed', ARGV[6], ARGV[5], ARGV[7], ARGV[8], ARGV[9])
  end
  return 1

elseif op == 'cancel_job' then
  -- ARGV: 3 id, 4 now
  local state = redis.call('HGET', jk(ARGV[3]), 'state')
  if not state then return -1 end
  if state == 'queued' then
    finish(ARGV[3], 'cancelled', 'cancelled', ARGV[4], '0')
  elseif state == 'running' then
    redis.call('HSET', jk(ARGV[3]), 'cancel_requested', '1')
  else
    return 0
  end
  return 1

elseif op == 'cancel_batch' then
  -- ARGV: 3 id, 4 now, 5 now in seconds
  local key = bk(ARGV[3])
  local state = redis.call('HGET', key, 'state')
  if not state then return {-1} end
  if state == 'cancelling' or state == 'cancelled' then return {1} end
  if state ~= 'validating' and state ~= 'in_progress' then return {0, state} end
  for _, id in ipairs(redis.call('ZRANGE', key .. ':jobs', 0, -1)) do
    local job_state = redis.call('HGET', jk(id), 'state')
    if job_state == 'queued' then
      finish(id, 'cancelled', 'cancelled', ARGV[4], '0')
    elseif job_state == 'running' then
      redis.call('HSET', jk(id), 'cancel_requested', '1')
    end
  end
  redis.call('HSET', key, 'state', 'cancelling', 'cancelling_at', ARGV[5])
  return {1}

elseif op == 'transition' then
  -- ARGV: 3 id, 4 from, 5 finished_ms or '', field/value pairs...
  local key = bk(ARGV[3])
  local state = redis.call('HGET', key, 'state')
  if not state then return -1 end
  if state ~= ARGV[4] then return 0 end
  local fields = {}
  for j = 6, #ARGV do fields[#fields + 1] = ARGV[j] end
  redis.call('HSET', key, unpack(fields))
  if ARGV[5] ~= '' then
    redis.call('ZADD', BATCHES_DONE, ARGV[5], ARGV[3])
    redis.call('ZREM', BATCHES_ACTIVE, ARGV[3])
  end
  return 1

elseif op == 'index_active' then
  -- Once per key prefix: stores written before BATCHES_ACTIVE existed get it built from
  -- BATCHES minus BATCHES_DONE.
  if redis.call('SETNX', BATCHES_ACTIVE .. ':indexed', '1') == 0 then return 0 end
  local all = redis.call('ZRANGE', BATCHES, 0, -1, 'WITHSCORES')
  local n = 0
  for j = 1, #all, 2 do
    if not redis.call('ZSCORE', BATCHES_DONE, all[j]) then
      redis.call('ZADD', BATCHES_ACTIVE, all[j + 1], all[j])
      n = n + 1
    end
  end
  return n

elseif op == 'purge' then
  -- ARGV: 3 finished_before_ms
  local before = '(' .. ARGV[3]
  local n = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', SINGLES_DONE, '-inf', before, 'LIMIT', 0, 10000)) do
    n = n + redis.call('DEL', jk(id))
    redis.call('ZREM', SINGLES_DONE, id)
  end
  for _, batch_id in ipairs(redis.call('ZRANGEBYSCORE', BATCHES_DONE, '-inf', before, 'LIMIT', 0, 1000)) do
    local key = bk(batch_id)
    for _, id in ipairs(redis.call('ZRANGE', key .. ':jobs', 0, -1)) do
      drop_entry(jk(id))
      redis.call('ZREM', LEASES, id)
      redis.call('ZREM', RETRY, id)
      n = n + redis.call('DEL', jk(id))
    end
    local files = redis.call('HMGET', key, 'output_file_id', 'error_file_id')
    for _, file_id in ipairs(files) do
      if file_id and file_id ~= '' then n = n + redis.call('DEL', P .. 'file:' .. file_id) end
    end
    redis.call('DEL', key .. ':jobs')
    n = n + redis.call('DEL', key)
    redis.call('ZREM', BATCHES, batch_id)
    redis.call('ZREM', BATCHES_DONE, batch_id)
    redis.call('ZREM', BATCHES_ACTIVE, batch_id)
  end
  -- Consumers (one per worker id ever seen) with nothing pending and idle for an hour are
  -- gone workers; a live one is recreated by its next XREADGROUP.
  if redis.call('EXISTS', STREAM) == 1 then
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', STREAM, GROUP)) do
      local info = {}
      for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
      if info['pending'] == 0 and info['idle'] > 3600000 then
        redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, info['name'])
      end
    end
  end
  return n
end
return redis.error_reply('unknown job store operation ' .. tostring(op))
)lua";

using Fields = std::unordered_map<std::string, std::string>;

bool to_int64(std::string_view text, int64_t* value) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

Fields to_fields(const RedisReply& reply) {
  Fields fields;
  for (size_t i = 0; i + 1 < reply.elements.size(); i += 2)
    fields[reply.elements[i].str] = reply.elements[i + 1].str;
  return fields;
}

class FieldReader {
 public:
  FieldReader(const Fields& fields, std::string what) : fields_(fields), what_(std::move(what)) {}
  std::string text(const std::string& name) const {
    const auto it = fields_.find(name);
    return it == fields_.end() ? std::string() : it->second;
  }
  int64_t number(const std::string& name) {
    const auto it = fields_.find(name);
    if (it == fields_.end() || it->second.empty()) return 0;
    int64_t value = 0;
    if (!to_int64(it->second, &value) && status_.ok()) {
      status_ = DataLoss("job store: {} field '{}' is not a number: '{}'", what_, name, it->second);
    }
    return value;
  }
  Status& status() { return status_; }

 private:
  const Fields& fields_;
  std::string what_;
  Status status_;
};

Result<JobRecord> parse_job(const Fields& fields) {
  FieldReader f(fields, "job '" + (fields.count("id") != 0 ? fields.at("id") : std::string()) + "'");
  JobRecord job;
  job.spec.id = f.text("id");
  job.spec.batch_id = f.text("batch_id");
  job.spec.line = f.number("line");
  job.spec.custom_id = f.text("custom_id");
  job.spec.method = f.text("method");
  job.spec.url = f.text("url");
  job.spec.body = f.text("body");
  job.spec.created_at_ms = f.number("created_at_ms");
  auto state = parse_job_state(f.text("state"));
  if (!state.ok()) return DataLoss("job store: job '{}': {}", job.spec.id, state.status().message());
  job.state = *state;
  job.attempts = static_cast<int>(f.number("attempts"));
  job.worker_id = f.text("worker_id");
  job.lease_expires_ms = f.number("lease_expires_ms");
  job.next_attempt_ms = f.number("next_attempt_ms");
  job.cancel_requested = f.text("cancel_requested") == "1";
  if (f.text("has_result") == "1") {
    job.result = JobResult{static_cast<int>(f.number("result_status")), f.text("result_body")};
  }
  job.error = f.text("error");
  job.finished_at_ms = f.number("finished_at_ms");
  if (!f.status().ok()) return f.status();
  return job;
}

Result<BatchRecord> parse_batch(const Fields& fields) {
  FieldReader f(fields, "batch '" + (fields.count("id") != 0 ? fields.at("id") : std::string()) + "'");
  BatchRecord batch;
  batch.id = f.text("id");
  batch.input_file_id = f.text("input_file_id");
  batch.endpoint = f.text("endpoint");
  batch.completion_window = f.text("completion_window");
  batch.metadata_json = f.text("metadata_json");
  auto state = parse_batch_state(f.text("state"));
  if (!state.ok()) return DataLoss("job store: batch '{}': {}", batch.id, state.status().message());
  batch.state = *state;
  batch.output_file_id = f.text("output_file_id");
  batch.error_file_id = f.text("error_file_id");
  batch.errors_json = f.text("errors_json");
  batch.created_at = f.number("created_at");
  batch.in_progress_at = f.number("in_progress_at");
  batch.expires_at = f.number("expires_at");
  batch.finalizing_at = f.number("finalizing_at");
  batch.completed_at = f.number("completed_at");
  batch.failed_at = f.number("failed_at");
  batch.cancelling_at = f.number("cancelling_at");
  batch.cancelled_at = f.number("cancelled_at");
  batch.total = f.number("total");
  batch.completed = f.number("completed");
  batch.failed = f.number("failed");
  batch.expired_at = f.number("expired_at");
  if (!f.status().ok()) return f.status();
  return batch;
}

// The fields transition_batch may change (everything but identity, request and counts).
void append_mutable_batch_fields(const BatchRecord& batch, std::vector<std::string>* args) {
  const auto add = [&](std::string name, std::string value) {
    args->push_back(std::move(name));
    args->push_back(std::move(value));
  };
  add("state", std::string(batch_state_name(batch.state)));
  add("output_file_id", batch.output_file_id);
  add("error_file_id", batch.error_file_id);
  add("errors_json", batch.errors_json);
  add("in_progress_at", std::to_string(batch.in_progress_at));
  add("expires_at", std::to_string(batch.expires_at));
  add("finalizing_at", std::to_string(batch.finalizing_at));
  add("completed_at", std::to_string(batch.completed_at));
  add("failed_at", std::to_string(batch.failed_at));
  add("cancelling_at", std::to_string(batch.cancelling_at));
  add("cancelled_at", std::to_string(batch.cancelled_at));
  add("expired_at", std::to_string(batch.expired_at));
}

void append_job(const JobSpec& job, std::vector<std::string>* args) {
  args->push_back(job.id);
  args->push_back(std::to_string(job.line));
  args->push_back(job.custom_id);
  args->push_back(job.method);
  args->push_back(job.url);
  args->push_back(job.body);
  args->push_back(std::to_string(job.created_at_ms));
}

Status error_reply(const RedisReply& reply, std::string_view what) {
  return Internal("redis job store: {}: {}", what, reply.str);
}

class RedisJobStore final : public JobStore {
 public:
  RedisJobStore(std::unique_ptr<RedisConnection> connection, std::string prefix)
      : connection_(std::move(connection)), prefix_(std::move(prefix)), stream_(prefix_ + "jobs") {}

  // Loads the script and creates the consumer group (both idempotent).
  Status setup() {
    RETURN_IF_ERROR(load_script());
    RETURN_IF_ERROR(run_script({"index_active"}).status());
    return create_group();
  }

  Status put_file(const FileRecord& file, const std::string& content) override {
    if (file.id.empty()) return InvalidArgument("put_file: empty file id");
    ASSIGN_OR_RETURN(RedisReply reply,
                     connection_->command({"HSET", file_key(file.id), "id", file.id, "purpose", file.purpose,
                                           "filename", file.filename, "bytes", std::to_string(content.size()),
                                           "created_at", std::to_string(file.created_at), "content", content}));
    if (reply.is_error()) return error_reply(reply, "put_file");
    return OkStatus();
  }

  Result<FileRecord> get_file(const std::string& id) override {
    ASSIGN_OR_RETURN(RedisReply reply,
                     connection_->command({"HMGET", file_key(id), "purpose", "filename", "bytes", "created_at"}));
    if (reply.is_error()) return error_reply(reply, "get_file");
    if (reply.elements.size() != 4 || reply.elements[0].is_nil()) return NotFound("file '{}' not found", id);
    FileRecord file{id, reply.elements[0].str, reply.elements[1].str, 0, 0};
    if (!to_int64(reply.elements[2].str, &file.bytes) || !to_int64(reply.elements[3].str, &file.created_at)) {
      return DataLoss("job store: file '{}' has a corrupt size or time", id);
    }
    return file;
  }

  Result<std::string> get_file_content(const std::string& id) override {
    ASSIGN_OR_RETURN(RedisReply reply, connection_->command({"HGET", file_key(id), "content"}));
    if (reply.is_error()) return error_reply(reply, "get_file_content");
    if (reply.is_nil()) return NotFound("file '{}' not found", id);
    return std::move(reply.str);
  }

  Status create_batch(const BatchRecord& batch, const std::vector<JobSpec>& jobs) override {
    if (batch.id.empty()) return InvalidArgument("create_batch: empty batch id");
    for (const JobSpec& job : jobs) {
      if (job.id.empty()) return InvalidArgument("create_batch: batch '{}' has a job without an id", batch.id);
      if (!job.batch_id.empty() && job.batch_id != batch.id) {
        return InvalidArgument("create_batch: job '{}' names batch '{}', not '{}'", job.id, job.batch_id, batch.id);
      }
    }
    // Newest first in list_batches: created_at, then creation order within a second.
    ASSIGN_OR_RETURN(RedisReply seq, connection_->command({"INCR", prefix_ + "batch_seq"}));
    if (seq.is_error()) return error_reply(seq, "create_batch");
    const int64_t score = batch.created_at * 1'000'000 + seq.integer % 1'000'000;

    std::vector<std::string> fields;
    append_mutable_batch_fields(batch, &fields);
    const auto add = [&](std::string name, std::string value) {
      fields.push_back(std::move(name));
      fields.push_back(std::move(value));
    };
    add("id", batch.id);
    add("input_file_id", batch.input_file_id);
    add("endpoint", batch.endpoint);
    add("completion_window", batch.completion_window);
    add("metadata_json", batch.metadata_json);
    add("created_at", std::to_string(batch.created_at));
    add("total", std::to_string(jobs.size()));
    add("completed", "0");
    add("failed", "0");

    std::vector<std::string> args = {"create_batch", batch.id, std::to_string(score),
                                     is_terminal(batch.state) ? std::to_string(batch_finished_ms(batch)) : "",
                                     std::to_string(fields.size())};
    args.insert(args.end(), fields.begin(), fields.end());
    args.push_back(std::to_string(jobs.size()));
    for (const JobSpec& job : jobs)
      append_job(job, &args);
    ASSIGN_OR_RETURN(RedisReply reply, run_script(std::move(args)));
    if (reply.elements.empty()) return Internal("redis job store: create_batch: unexpected reply");
    if (reply.elements[0].integer != 1) {
      return InvalidArgument("create_batch: {}", reply.elements.size() > 1 ? reply.elements[1].str : "refused");
    }
    return OkStatus();
  }

  Result<BatchRecord> get_batch(const std::string& id) override {
    ASSIGN_OR_RETURN(RedisReply reply, connection_->command({"HGETALL", batch_key(id)}));
    if (reply.is_error()) return error_reply(reply, "get_batch");
    if (reply.elements.empty()) return NotFound("batch '{}' not found", id);
    return parse_batch(to_fields(reply));
  }

  Result<std::vector<BatchRecord>> list_batches(const std::string& after, int limit) override {
    return list_batches_in("batches", after, limit);
  }

  Result<std::vector<BatchRecord>> list_unfinished_batches(const std::string& after, int limit) override {
    return list_batches_in("batches:active", after, limit);
  }

  // list_batches over one of the sorted sets of batch ids (scored by creation); the cursor's
  // score comes from the set of all batches, which keeps a batch until it is purged.
  Result<std::vector<BatchRecord>> list_batches_in(const std::string& set, const std::string& after, int limit) {
    std::vector<BatchRecord> batches;
    if (limit <= 0) return batches;
    std::string max = "+inf";
    if (!after.empty()) {
      ASSIGN_OR_RETURN(RedisReply score, connection_->command({"ZSCORE", prefix_ + "batches", after}));
      if (score.is_error()) return error_reply(score, "list_batches");
      if (score.is_nil()) return NotFound("batch '{}' (the 'after' cursor) not found", after);
      max = "(" + score.str;
    }
    ASSIGN_OR_RETURN(RedisReply ids, connection_->command({"ZREVRANGEBYSCORE", prefix_ + set, max, "-inf", "LIMIT", "0",
                                                           std::to_string(limit)}));
    if (ids.is_error()) return error_reply(ids, "list_batches");
    std::vector<std::vector<std::string>> commands;
    for (const RedisReply& id : ids.elements)
      commands.push_back({"HGETALL", batch_key(id.str)});
    if (commands.empty()) return batches;
    ASSIGN_OR_RETURN(std::vector<RedisReply> replies, connection_->pipeline(commands));
    for (const RedisReply& reply : replies) {
      if (reply.is_error()) return error_reply(reply, "list_batches");
      if (reply.elements.empty()) continue;  // purged between the two reads
      ASSIGN_OR_RETURN(BatchRecord batch, parse_batch(to_fields(reply)));
      batches.push_back(std::move(batch));
    }
    return batches;
  }

  Result<std::vector<JobRecord>> batch_jobs(const std::string& batch_id) override {
    ASSIGN_OR_RETURN(
        std::vector<RedisReply> head,
        connection_->pipeline({{"EXISTS", batch_key(batch_id)}, {"ZRANGE", batch_key(batch_id) + ":jobs", "0", "-1"}}));
    if (head.size() != 2 || head[0].is_error() || head[1].is_error()) {
      return Internal("redis job store: batch_jobs: {}{}", head.empty() ? "" : head[0].str,
                      head.size() < 2 ? "" : head[1].str);
    }
    if (head[0].integer == 0) return NotFound("batch '{}' not found", batch_id);
    std::vector<JobRecord> jobs;
    std::vector<std::vector<std::string>> commands;
    for (const RedisReply& id : head[1].elements)
      commands.push_back({"HGETALL", job_key(id.str)});
    if (commands.empty()) return jobs;
    ASSIGN_OR_RETURN(std::vector<RedisReply> replies, connection_->pipeline(commands));
    for (const RedisReply& reply : replies) {
      if (reply.is_error()) return error_reply(reply, "batch_jobs");
      if (reply.elements.empty()) continue;
      ASSIGN_OR_RETURN(JobRecord job, parse_job(to_fields(reply)));
      jobs.push_back(std::move(job));
    }
    return jobs;
  }

  Result<bool> transition_batch(const std::string& id, BatchState from, const BatchRecord& updated) override {
    std::vector<std::string> args = {"transition", id, std::string(batch_state_name(from)),
                                     is_terminal(updated.state) ? std::to_string(batch_finished_ms(updated)) : ""};
    append_mutable_batch_fields(updated, &args);
    ASSIGN_OR_RETURN(RedisReply reply, run_script(std::move(args)));
    if (reply.integer < 0) return NotFound("batch '{}' not found", id);
    return reply.integer == 1;
  }

  Status cancel_batch(const std::string& id, int64_t now_ms) override {
    ASSIGN_OR_RETURN(RedisReply reply,
                     run_script({"cancel_batch", id, std::to_string(now_ms), std::to_string(now_ms / 1000)}));
    if (reply.elements.empty()) return Internal("redis job store: cancel_batch: unexpected reply");
    const int64_t code = reply.elements[0].integer;
    if (code < 0) return NotFound("batch '{}' not found", id);
    if (code == 0) {
      return FailedPrecondition("batch '{}' is {} and can no longer be cancelled", id,
                                reply.elements.size() > 1 ? reply.elements[1].str : "");
    }
    return OkStatus();
  }

  Status enqueue(const JobSpec& job) override {
    if (job.id.empty()) return InvalidArgument("enqueue: empty job id");
    if (!job.batch_id.empty()) {
      return InvalidArgument("enqueue: job '{}' belongs to batch '{}' (batch jobs come with create_batch)", job.id,
                             job.batch_id);
    }
    std::vector<std::string> args = {"enqueue"};
    append_job(job, &args);
    ASSIGN_OR_RETURN(RedisReply reply, run_script(std::move(args)));
    if (reply.integer != 1) return InvalidArgument("job '{}' already exists", job.id);
    return OkStatus();
  }

  Result<JobRecord> get_job(const std::string& id) override {
    ASSIGN_OR_RETURN(RedisReply reply, connection_->command({"HGETALL", job_key(id)}));
    if (reply.is_error()) return error_reply(reply, "get_job");
    if (reply.elements.empty()) return NotFound("job '{}' not found", id);
    return parse_job(to_fields(reply));
  }

  Result<bool> cancel_job(const std::string& id, int64_t now_ms) override {
    ASSIGN_OR_RETURN(RedisReply reply, run_script({"cancel_job", id, std::to_string(now_ms)}));
    if (reply.integer < 0) return NotFound("job '{}' not found", id);
    return reply.integer == 1;
  }

  Result<std::vector<JobRecord>> claim(const ClaimOptions& options, int64_t now_ms) override {
    if (options.worker_id.empty()) return InvalidArgument("claim: empty worker id");
    if (options.lease_ms <= 0) return InvalidArgument("claim: lease_ms must be positive, got {}", options.lease_ms);
    std::vector<JobRecord> claimed;
    if (options.max_jobs <= 0) return claimed;
    ASSIGN_OR_RETURN(RedisReply reply, run_script({"claim", options.worker_id, std::to_string(options.max_jobs),
                                                   std::to_string(now_ms + options.lease_ms),
                                                   std::to_string(options.max_attempts), std::to_string(now_ms)}));
    for (const RedisReply& fields : reply.elements) {
      ASSIGN_OR_RETURN(JobRecord job, parse_job(to_fields(fields)));
      claimed.push_back(std::move(job));
    }
    return claimed;
  }

  Result<bool> renew_lease(const std::string& job_id, const std::string& worker_id, int64_t lease_ms, int64_t now_ms,
                           bool* cancel_requested) override {
    if (lease_ms <= 0) return InvalidArgument("renew_lease: lease_ms must be positive, got {}", lease_ms);
    ASSIGN_OR_RETURN(RedisReply reply, run_script({"renew", job_id, worker_id, std::to_string(now_ms + lease_ms)}));
    if (reply.elements.size() != 2) return Internal("redis job store: renew: unexpected reply");
    if (cancel_requested != nullptr) *cancel_requested = reply.elements[1].integer == 1;
    return reply.elements[0].integer == 1;
  }

  Result<bool> complete(const std::string& job_id, const std::string& worker_id, const JobResult& result,
                        int64_t now_ms) override {
    ASSIGN_OR_RETURN(RedisReply reply, run_script({"complete", job_id, worker_id, std::to_string(now_ms),
                                                   std::to_string(result.http_status), result.body}));
    return reply.integer == 1;
  }

  Result<bool> fail_attempt(const std::string& job_id, const std::string& worker_id, const std::string& reason,
                            std::optional<JobResult> last_result, std::optional<int64_t> retry_at_ms,
                            int64_t now_ms) override {
    ASSIGN_OR_RETURN(
        RedisReply reply,
        run_script({"fail", job_id, worker_id, std::to_string(now_ms), reason, last_result ? "1" : "0",
                    last_result ? std::to_string(last_result->http_status) : "0", last_result ? last_result->body : "",
                    retry_at_ms ? std::to_string(*retry_at_ms) : ""}));
    return reply.integer == 1;
  }

  Result<int64_t> purge_finished(int64_t finished_before_ms) override {
    ASSIGN_OR_RETURN(RedisReply reply, run_script({"purge", std::to_string(finished_before_ms)}));
    return reply.integer;
  }

 private:
  std::string job_key(const std::string& id) const { return prefix_ + "job:" + id; }
  std::string batch_key(const std::string& id) const { return prefix_ + "batch:" + id; }
  std::string file_key(const std::string& id) const { return prefix_ + "file:" + id; }

  Status load_script() {
    ASSIGN_OR_RETURN(RedisReply reply, connection_->command({"SCRIPT", "LOAD", kScript}));
    if (reply.is_error()) return error_reply(reply, "SCRIPT LOAD");
    const std::lock_guard lock(sha_mutex_);
    sha_ = reply.str;
    return OkStatus();
  }

  Status create_group() {
    ASSIGN_OR_RETURN(RedisReply reply, connection_->command({"XGROUP", "CREATE", stream_, "workers", "0", "MKSTREAM"}));
    if (reply.is_error() && reply.str.rfind("BUSYGROUP", 0) != 0) return error_reply(reply, "XGROUP CREATE");
    return OkStatus();
  }

  // EVALSHA of one operation; reloads the script (and the group) after a Redis restart.
  Result<RedisReply> run_script(std::vector<std::string> op_args) {
    std::vector<std::string> command = {"EVALSHA", "", "1", stream_, op_args.front(), prefix_};
    command.insert(command.end(), std::make_move_iterator(op_args.begin() + 1), std::make_move_iterator(op_args.end()));
    for (int attempt = 0;; ++attempt) {
      {
        const std::lock_guard lock(sha_mutex_);
        command[1] = sha_;
      }
      ASSIGN_OR_RETURN(RedisReply reply, connection_->command(command));
      if (!reply.is_error()) return reply;
      const bool no_script = reply.str.rfind("NOSCRIPT", 0) == 0;
      const bool no_group = reply.str.find("NOGROUP") != std::string::npos;
      if (attempt > 0 || (!no_script && !no_group)) return error_reply(reply, command[4]);
      RETURN_IF_ERROR(setup());
    }
  }

  std::unique_ptr<RedisConnection> connection_;
  const std::string prefix_;
  const std::string stream_;
  std::mutex sha_mutex_;
  std::string sha_;  // guarded by sha_mutex_
};

}  // namespace

Result<std::unique_ptr<JobStore>> open_redis_job_store(const std::string& redis_url, const std::string& key_prefix,
                                                       const RedisJobStoreOptions& options) {
  ASSIGN_OR_RETURN(RedisOptions redis_options, parse_redis_url(redis_url));
  redis_options.command_timeout = options.command_timeout;
  redis_options.connect_timeout = options.connect_timeout;
  redis_options.reconnect_backoff = options.reconnect_backoff;
  auto connection = RedisConnection::connect(redis_options);
  if (!connection.ok()) return connection.status().with_context("redis job store");
  auto store = std::make_unique<RedisJobStore>(std::move(connection).value(), key_prefix);
  RETURN_IF_ERROR(store->setup());
  return std::unique_ptr<JobStore>(std::move(store));
}

Result<std::unique_ptr<JobStore>> open_redis_job_store(const std::string& redis_url, const std::string& key_prefix) {
  return open_redis_job_store(redis_url, key_prefix, RedisJobStoreOptions{});
}

}  // namespace bw::jobs
