// HttpStreamClient: a plain HTTP/1.1 client on Boost.Beast for load generation. Many
// requests run at once on one io_context (one thread), each on its own keep-alive
// connection taken from a pool of idle ones (a new one is opened when none is idle), and
// the body of a 2xx response is handed over as its bytes arrive (chunked or not), so the
// caller can time every server-sent event.
//
// Failures are classified for the report: the connection could not be opened, the server
// answered with a non-2xx status, the deadline passed, the connection broke, or the caller
// rejected the body (a broken event stream). A request that fails on a reused idle
// connection before any response byte arrived is retried once on a new connection (the
// server may have closed it while idle).
//
// Ownership: the client must outlive the io_context's run(); requests in flight hold
// shared state of their own. Threads: every call and callback on the io_context's thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "common/status.h"

namespace bw::bench {

// Where an OpenAI-compatible server lives: "http://host:port[/prefix]".
struct HttpEndpoint {
  std::string host;
  std::string port = "80";
  std::string base_path;  // "" or "/prefix" without a trailing slash
};

// Parses "http://host[:port][/path]" (IPv6 as "[::1]"). https:// is Unimplemented (put a
// TLS-terminating proxy in front, or benchmark the plain-HTTP port), anything else
// InvalidArgument.
Result<HttpEndpoint> parse_http_url(std::string_view url);

// The target of an OpenAI API route under the endpoint: base_path + "/v1" + route, where
// a base path that already ends in "/v1" is not given a second one.
std::string openai_target(const HttpEndpoint& endpoint, std::string_view route);

enum class FailureKind {
  kNone,
  kConnect,     // resolve/connect failed or was refused
  kHttpStatus,  // the server answered with a status other than 2xx
  kTimeout,     // the request's deadline passed
  kIo,          // the connection broke after it was opened
  kBadStream,   // the body could not be understood (bad SSE/JSON, an error event, no tokens)
};

// The name used in reports: "connect_error", "http_<status>", "timeout", "io_error",
// "bad_stream" ("ok" for kNone).
std::string failure_kind_name(FailureKind kind, int http_status);

struct HttpRequestSpec {
  bool is_post = true;  // POST with `body`, else GET
  std::string target;   // "/v1/completions"
  std::string body;
  std::string api_key;                                       // sent as "Authorization: Bearer <key>" when not empty
  std::vector<std::pair<std::string, std::string>> headers;  // extra request headers
  std::chrono::milliseconds timeout{600'000};
};

struct HttpOutcome {
  FailureKind kind = FailureKind::kNone;
  int http_status = 0;  // 0 when no response header arrived
  std::string message;  // what failed, for the report
};

class HttpStreamClient {
 public:
  // Gets the 2xx body bytes as they arrive; a non-OK status aborts the request as kBadStream.
  using BodyFn = std::function<Status(std::string_view bytes)>;
  // Called exactly once per request, after the last BodyFn call.
  using DoneFn = std::function<void(const HttpOutcome& outcome)>;

  // Resolves the host now (Unavailable when it cannot be resolved).
  static Result<std::unique_ptr<HttpStreamClient>> create(boost::asio::io_context& io, const HttpEndpoint& endpoint);
  ~HttpStreamClient();
  HttpStreamClient(const HttpStreamClient&) = delete;
  HttpStreamClient& operator=(const HttpStreamClient&) = delete;

  // Starts one request; returns at once.
  void start(HttpRequestSpec spec, BodyFn on_body, DoneFn on_done);

  const HttpEndpoint& endpoint() const { return endpoint_; }
  // Connections opened so far (a measure of keep-alive reuse).
  size_t num_connections_opened() const { return num_connections_opened_; }

  struct Connection;  // a socket and its read buffer

 private:
  class Exchange;
  HttpStreamClient(boost::asio::io_context& io, HttpEndpoint endpoint,
                   boost::asio::ip::tcp::resolver::results_type addresses);

  std::unique_ptr<Connection> take_idle();
  void put_idle(std::unique_ptr<Connection> connection);

  boost::asio::io_context& io_;
  HttpEndpoint endpoint_;
  std::string host_header_;
  boost::asio::ip::tcp::resolver::results_type addresses_;
  std::vector<std::unique_ptr<Connection>> idle_;
  size_t num_connections_opened_ = 0;
  // Requests in flight see this to know whether the client (and its pool) still exists.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// One blocking request on a private io_context (for setup calls such as GET /v1/models):
// the whole body of a 2xx response, else the failure as a Status naming the kind.
Result<std::string> fetch_once(const HttpEndpoint& endpoint, HttpRequestSpec spec);

}  // namespace bw::bench
