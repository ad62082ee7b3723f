// HttpServer: an asynchronous HTTP/1.1 server (Boost.Beast over Asio) with keep-alive,
// request-body limits and streamed (chunked) responses, knowing nothing of OpenAI or the
// engine. Connections are served by a small pool of I/O threads, so thousands of idle or
// streaming connections need no thread each.
//
// The handler is called on an I/O thread with the whole request and a responder, and must
// return quickly: it either answers at once (send) or keeps the responder and answers
// later from any thread (start_stream / write / end, or send). The server writes queued
// chunks in order and never blocks the caller. When the client goes away before the
// response ends, the responder's disconnect callback runs once (on an I/O thread) — also
// for a non-streamed request still being computed, because the server keeps reading the
// idle socket while a handler is busy.
//
// Shutdown: stop_accepting() closes the listener; shutdown(grace) then waits up to
// `grace` for in-flight responses to end and closes every connection.
// HttpServer is thread-safe; a responder may be used from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/logging.h"
#include "common/status.h"

namespace bw::server {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;   // "GET", "POST", ...
  std::string target;   // path and query as sent: "/v1/files/abc?x=1"
  std::string path;     // target without the query
  HttpHeaders headers;  // names lower-cased, in arrival order
  std::string body;
  std::string remote_address;
  // When the whole request had been read (the response cache's hit latency counts from
  // here); unset (epoch) for requests made in-process.
  std::chrono::steady_clock::time_point received_at{};

  // The first header with this (lower-case) name, or "" when absent.
  std::string header(std::string_view lower_case_name) const;
};

class HttpResponder {
 public:
  virtual ~HttpResponder() = default;

  // A whole response with Content-Length. Call once, instead of the stream calls.
  virtual void send(int status, HttpHeaders headers, std::string body) = 0;

  // A streamed response (Transfer-Encoding: chunked): the status and headers, then any
  // number of writes, then end(). Writes after a disconnect are dropped.
  virtual void start_stream(int status, HttpHeaders headers) = 0;
  virtual void write(std::string data) = 0;
  virtual void end() = 0;

  // Runs once if the client disconnects before the response ended (immediately, on the
  // calling thread, if it already has). Set it before starting work that should be
  // cancelled. A later call replaces a callback that has not run yet.
  virtual void on_disconnect(std::function<void()> callback) = 0;
  virtual bool disconnected() const = 0;
};

using HttpHandler = std::function<void(HttpRequest request, std::shared_ptr<HttpResponder> responder)>;

struct HttpServerConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;  // 0: an ephemeral port (see HttpServer::port())
  uint64_t max_body_bytes = uint64_t{16} << 20;
  int io_threads = 2;
  std::chrono::seconds idle_timeout{300};  // a keep-alive connection with no request is closed (0: never)
  int max_connections = 10000;             // further connections are accepted and closed at once
  // A streamed response whose unsent output grows past this (a client that stopped reading
  // while tokens keep coming) is cut: the connection closes and the handler's disconnect
  // callback runs (the engine drops the request), instead of the server buffering without end.
  size_t max_stream_backlog_bytes = size_t{16} << 20;
  // Body of the error responses the server makes itself (400 bad HTTP, 413 too large,
  // 503 draining): given the status and a message, returns a JSON body.
  std::function<std::string(int status, const std::string& message)> error_body;
};

class HttpServer {
 public:
  // Binds and starts the I/O threads. Unavailable when the address cannot be bound.
  static Result<std::unique_ptr<HttpServer>> start(HttpServerConfig config, HttpHandler handler, Logger logger);
  virtual ~HttpServer() = default;

  virtual uint16_t port() const = 0;
  // Closes the listener; new connections are refused. Open keep-alive connections get 503
  // (with Connection: close) for new requests from now on.
  virtual void stop_accepting() = 0;
  // Waits up to `grace` for in-flight responses to end, then closes every connection and
  // joins the I/O threads. Idempotent; the destructor calls it with zero grace. Not from a
  // handler or disconnect callback (an I/O thread): there it only stops accepting.
  virtual void shutdown(std::chrono::milliseconds grace) = 0;

  virtual int num_connections() const = 0;
  virtual int num_inflight() const = 0;  // requests whose response has not ended
};

}  // namespace bw::server
