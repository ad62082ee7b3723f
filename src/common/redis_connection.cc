#include "common/redis_connection.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <charconv>

namespace bw {

namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

RedisReply convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i)
        out.elements.push_back(convert(r->element[i]));
      break;
    default:
      out.type = RedisReply::Type::kNil;
      break;
  }
  return out;
}

bool parse_int(std::string_view text, int* value) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

Result<RedisOptions> parse_redis_url(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument("redis URL '{}' must start with redis:// (e.g. redis://127.0.0.1:6379/0)", url);
  }
  RedisOptions options;
  std::string_view rest = url.substr(kScheme.size());
  if (const size_t at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view credentials = rest.substr(0, at);
    rest = rest.substr(at + 1);
    if (const size_t colon = credentials.find(':'); colon != std::string_view::npos) {
      options.username = std::string(credentials.substr(0, colon));
      options.password = std::string(credentials.substr(colon + 1));
    } else {
      options.password = std::string(credentials);
    }
  }
  if (const size_t slash = rest.find('/'); slash != std::string_view::npos) {
    const std::string_view db = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    if (!db.empty() && (!parse_int(db, &options.db) || options.db < 0)) {
      return InvalidArgument("redis URL '{}': database '{}' is not a non-negative number", url, db);
    }
  }
  if (const size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
    const std::string_view port = rest.substr(colon + 1);
    if (!parse_int(port, &options.port) || options.port <= 0 || options.port > 65535) {
      return InvalidArgument("redis URL '{}': port '{}' is not in 1..65535", url, port);
    }
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return InvalidArgument("redis URL '{}' names no host", url);
  options.host = std::string(rest);
  return options;
}

RedisConnection::RedisConnection(RedisOptions options) : options_(std::move(options)) {}

RedisConnection::~RedisConnection() { drop(); }

std::unique_ptr<RedisConnection> RedisConnection::create(RedisOptions options) {
  return std::unique_ptr<RedisConnection>(new RedisConnection(std::move(options)));
}

Result<std::unique_ptr<RedisConnection>> RedisConnection::connect(RedisOptions options) {
  std::unique_ptr<RedisConnection> connection = create(std::move(options));
  std::lock_guard lock(connection->mutex_);
  RETURN_IF_ERROR(connection->ensure_connected());
  return connection;
}

void RedisConnection::drop() {
  if (context_ != nullptr) redisFree(context_);
  context_ = nullptr;
}

Status RedisConnection::ensure_connected() {
  if (context_ != nullptr) return OkStatus();
  const auto now = std::chrono::steady_clock::now();
  if (now < next_attempt_) {
    return Unavailable("redis {}:{} is unreachable (retrying shortly)", options_.host, options_.port);
  }
  next_attempt_ = now + options_.reconnect_backoff;
  context_ = redisConnectWithTimeout(options_.host.c_str(), options_.port, to_timeval(options_.connect_timeout));
  if (context_ == nullptr || context_->err != 0) {
    Status status = Unavailable("cannot connect to redis {}:{}: {}", options_.host, options_.port,
                                context_ != nullptr ? context_->errstr : "out of memory");
    drop();
    return status;
  }
  if (redisSetTimeout(context_, to_timeval(options_.command_timeout)) != REDIS_OK) {
    drop();
    return Unavailable("cannot set the redis command timeout");
  }
  // Authentication and database selection, sent as ordinary commands.
  std::vector<std::vector<std::string>> setup;
  if (!options_.password.empty()) {
    if (options_.username.empty()) {
      setup.push_back({"AUTH", options_.password});
    } else {
      setup.push_back({"AUTH", options_.username, options_.password});
    }
  }
  if (options_.db != 0) setup.push_back({"SELECT", std::to_string(options_.db)});
  for (const auto& args : setup) {
    std::vector<const char*> argv;
    std::vector<size_t> argvlen;
    for (const std::string& a : args) {
      argv.push_back(a.data());
      argvlen.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), argvlen.data()));
    if (reply == nullptr) {
      drop();
      return Unavailable("redis {}:{}: {} failed", options_.host, options_.port, args[0]);
    }
    const bool failed = reply->type == REDIS_REPLY_ERROR;
    const std::string message = failed ? std::string(reply->str, reply->len) : "";
    freeReplyObject(reply);
    if (failed) {
      drop();
      return FailedPrecondition("redis {}:{}: {}: {}", options_.host, options_.port, args[0], message);
    }
  }
  next_attempt_ = {};
  return OkStatus();
}

Result<RedisReply> RedisConnection::command(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(std::vector<RedisReply> replies, pipeline({args}));
  return std::move(replies.front());
}

Result<std::vector<RedisReply>> RedisConnection::pipeline(const std::vector<std::vector<std::string>>& commands) {
  std::lock_guard lock(mutex_);
  RETURN_IF_ERROR(ensure_connected());
  for (const auto& args : commands) {
    if (args.empty()) return InvalidArgument("an empty redis command");
    std::vector<const char*> argv;
    std::vector<size_t> argvlen;
    argv.reserve(args.size());
    argvlen.reserve(args.size());
    for (const std::string& a : args) {
      argv.push_back(a.data());
      argvlen.push_back(a.size());
    }
    if (redisAppendCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), argvlen.data()) != REDIS_OK) {
      drop();
      return Internal("cannot queue a redis command");
    }
  }
  std::vector<RedisReply> replies;
  replies.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
      Status status = Unavailable("redis {}:{}: {}", options_.host, options_.port,
                                  context_->errstr[0] != '\0' ? context_->errstr : "connection lost");
      drop();
      next_attempt_ = std::chrono::steady_clock::now() + options_.reconnect_backoff;
      return status;
    }
    auto* reply = static_cast<redisReply*>(raw);
    replies.push_back(convert(reply));
    freeReplyObject(reply);
  }
  return replies;
}

}  // namespace bw
