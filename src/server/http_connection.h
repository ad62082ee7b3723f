// Private to http_server*.cc: the state shared by an HttpServer and its connections
// (ServerCore), one keep-alive connection (Connection) and the responder handed to the
// handler for each request.
//
// Ownership: ServerCore owns the io_context and is shared by the server, every Connection
// and (through them) every responder, so the io_context outlives every socket even when a
// responder is kept after the server is gone. A Connection is kept alive by its pending
// asynchronous operations, by posted work and by the responder of its current request; the
// core's registry only holds weak references.
//
// Threads: everything of a Connection runs on its strand, except the `post_*` entry points
// (any thread) and the Exchange fields guarded by Exchange::mu.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "server/http_server.h"

namespace bw::server::http_internal {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

class Connection;

// Limits that are not configurable.
inline constexpr uint32_t kMaxHeaderBytes = 64 * 1024;
// Bytes of a pipelined next request kept while a response is in progress; past this the
// connection stops reading (TCP flow control holds the client) until the response ends.
inline constexpr size_t kMaxBufferedWhileBusy = 1024 * 1024;
// After a response with Connection: close the write side is shut and the input drained
// for at most this long, so the client reads the response instead of a reset.
inline constexpr std::chrono::milliseconds kLingerTime{2000};
inline constexpr size_t kMaxLingerBytes = size_t{64} << 20;

struct ServerCore {
  ServerCore(HttpServerConfig config, HttpHandler handler, Logger logger);

  asio::io_context ioc;  // declared first: destroyed after everything that uses it
  const HttpServerConfig config;
  HttpHandler handler;  // reset by shutdown once no I/O thread runs
  const Logger logger;

  std::atomic<bool> draining{false};  // stop_accepting(): new requests get 503
  std::atomic<bool> stopping{false};  // shutdown(): every connection is being closed
  std::atomic<int> num_connections{0};
  std::atomic<int> num_inflight{0};

  // Posts `fn` onto `executor` unless the server has been shut down (then drops it, so
  // nothing is left queued in an io_context that no longer runs). Any thread.
  template <typename F>
  bool post(const asio::any_io_executor& executor, F&& fn) {
    std::lock_guard<std::mutex> lock(post_mu_);
    if (!post_open_) return false;
    asio::post(executor, std::forward<F>(fn));
    return true;
  }
  void close_posts();

  void add_inflight() { num_inflight.fetch_add(1); }
  void remove_inflight();
  // Waits until no response is in flight or `deadline` passes; true when idle.
  bool wait_idle(Clock::time_point deadline);

  // false when the server is stopping (the connection must not start).
  bool add_connection(const std::shared_ptr<Connection>& connection);
  void remove_connection(const Connection* connection);
  std::vector<std::shared_ptr<Connection>> connections();

  // config.error_body, or a plain JSON error when it is unset or throws.
  std::string error_body(int status, const std::string& message) const;

  uint64_t next_connection_id() { return connection_ids_.fetch_add(1) + 1; }

 private:
  std::mutex post_mu_;
  bool post_open_ = true;  // guarded by post_mu_

  std::mutex inflight_mu_;
  std::condition_variable inflight_cv_;

  std::mutex connections_mu_;
  std::unordered_map<const Connection*, std::weak_ptr<Connection>> connections_;  // guarded by connections_mu_
  std::atomic<uint64_t> connection_ids_{0};
};

// One request/response exchange on a connection, shared by the Connection and the
// request's responder.
struct Exchange {
  // Any thread.
  std::mutex mu;
  std::function<void()> on_disconnect;  // guarded by mu
  bool disconnect_fired = false;        // guarded by mu
  std::atomic<bool> disconnected{false};

  // The connection's strand only.
  enum class Phase { kNew, kStreaming, kEnded };
  Phase phase = Phase::kNew;
  bool keep_alive = true;  // what the request asked for (HTTP/1.0 or 1.1 semantics)
  bool http10 = false;
  bool head = false;
  bool chunked = false;  // the stream uses chunked framing
  bool no_body = false;  // HEAD, 204, 304: the stream carries no bytes
  bool stream_keep_alive = false;
  bool counted_inflight = false;
};

// Runs the exchange's disconnect callback once (the caller's thread).
void fire_disconnect(Exchange& exchange);

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(std::shared_ptr<ServerCore> core, tcp::socket socket);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Any thread: start serving / close now (shutdown).
  void post_start();
  void post_close();

  // Any thread, from the request's responder; dropped after shutdown.
  void post_send(std::shared_ptr<Exchange> exchange, int status, HttpHeaders headers, std::string body);
  void post_start_stream(std::shared_ptr<Exchange> exchange, int status, HttpHeaders headers);
  void post_write(std::shared_ptr<Exchange> exchange, std::string data);
  void post_end(std::shared_ptr<Exchange> exchange);
  void post_abandoned(std::shared_ptr<Exchange> exchange);

 private:
  enum class State {
    kReading,    // parsing the next request (idle keep-alive included)
    kBusy,       // a request is with the handler or its response is being written
    kLingering,  // response done, write side shut, draining input before closing
    kClosed,
  };
  enum class Framing { kLength, kChunked, kNone };

  void start();
  void new_parser();
  void start_read();
  void on_readable(const boost::system::error_code& ec);
  void read_available(boost::system::error_code& ec);
  void process_input();
  bool on_header_done();  // false when it answered (and the request is not dispatched)
  void dispatch();
  void respond_error(int status, const std::string& message);

  bool accepts(const std::shared_ptr<Exchange>& exchange, Exchange::Phase wanted, const char* what) const;
  void do_send(const std::shared_ptr<Exchange>& exchange, int status, const HttpHeaders& headers, std::string body);
  void do_start_stream(const std::shared_ptr<Exchange>& exchange, int status, const HttpHeaders& headers);
  void do_write(const std::shared_ptr<Exchange>& exchange, std::string data);
  void do_end(const std::shared_ptr<Exchange>& exchange);
  void do_abandoned(const std::shared_ptr<Exchange>& exchange);

  std::string build_head(int status, const HttpHeaders& headers, Framing framing, size_t content_length, bool close,
                         bool http10_keep_alive) const;
  void queue(std::string bytes);
  void finish_response(bool keep_alive);
  void flush();
  void start_write();
  void on_write(const boost::system::error_code& ec);
  void on_response_written();
  void release_exchange();

  void arm_timer();
  void on_timer(const boost::system::error_code& ec);
  void begin_linger();
  void on_peer_gone(const boost::system::error_code& ec, const char* during);
  void close();

  const std::shared_ptr<ServerCore> core_;
  tcp::socket socket_;
  const asio::any_io_executor strand_;  // the socket's executor: a strand of core_->ioc
  asio::steady_timer timer_;
  const uint64_t id_;
  std::string remote_address_;

  State state_ = State::kReading;
  bool read_pending_ = false;
  bool timer_pending_ = false;
  Clock::time_point last_activity_;
  Clock::time_point linger_deadline_;
  size_t linger_bytes_ = 0;

  beast::flat_buffer in_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bool header_seen_ = false;

  // Output: whole strings, written in order, several per gathered write.
  std::deque<std::string> out_;
  size_t out_bytes_ = 0;  // bytes in out_
  std::vector<asio::const_buffer> write_buffers_;
  size_t out_in_flight_ = 0;  // leading entries of out_ being written
  bool writing_ = false;
  bool response_queued_ = false;  // the response's last bytes are in out_
  bool close_after_response_ = false;
  std::shared_ptr<Exchange> exchange_;  // the request being answered (null for the server's own errors)
};

// The HttpResponder handed to the handler.
class Responder final : public HttpResponder {
 public:
  Responder(std::shared_ptr<Connection> connection, std::shared_ptr<Exchange> exchange)
      : connection_(std::move(connection)), exchange_(std::move(exchange)) {}
  ~Responder() override;
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;

  void send(int status, HttpHeaders headers, std::string body) override;
  void start_stream(int status, HttpHeaders headers) override;
  void write(std::string data) override;
  void end() override;
  void on_disconnect(std::function<void()> callback) override;
  bool disconnected() const override { return exchange_->disconnected.load(); }

 private:
  const std::shared_ptr<Connection> connection_;
  const std::shared_ptr<Exchange> exchange_;
  std::atomic<bool> answered_{false};  // send() or end() called
};

}  // namespace bw::server::http_internal
