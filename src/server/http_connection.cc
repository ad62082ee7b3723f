// One HTTP/1.1 connection: the read loop, the request parser, the output queue and the
// responder (see http_connection.h for ownership and threads).
//
// Reading: the connection always waits for the socket to become readable (also while a
// handler is busy), then reads what is there without blocking. While a request is being
// parsed the bytes go to the parser; while a response is in progress they stay in `in_`
// for the next request, and an end of stream or error means the client is gone. Waiting
// for readability instead of reading into a buffer means an idle connection holds no
// read buffer and `in_` is never touched by a pending operation.
#include "server/http_connection.h"

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>
#include <boost/asio/write.hpp>
#include <boost/beast/http/status.hpp>

namespace bw::server::http_internal {
namespace {

using boost::system::error_code;

constexpr size_t kMinRead = 4096;
constexpr size_t kMaxRead = 64 * 1024;
constexpr size_t kMaxGather = 64;  // buffers per gathered write

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

bool is_token_char(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool valid_header(const std::string& name, const std::string& value) {
  if (name.empty() || !std::all_of(name.begin(), name.end(), is_token_char)) return false;
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos;
}

std::string_view reason_phrase(int status) {
  auto beast_reason = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
  std::string_view reason(beast_reason.data(), beast_reason.size());
  return reason == "<unknown-status>" ? std::string_view("Unknown") : reason;
}

bool status_has_no_body(int status) { return status == 204 || status == 304; }

}  // namespace

void fire_disconnect(Exchange& exchange) {
  std::function<void()> callback;
  {
    std::lock_guard<std::mutex> lock(exchange.mu);
    if (exchange.disconnect_fired) return;
    exchange.disconnect_fired = true;
    exchange.disconnected.store(true);
    callback = std::move(exchange.on_disconnect);
  }
  if (callback) callback();
}

// ---------------------------------------------------------------------------------------
// Responder

Responder::~Responder() {
  if (!answered_.load() && !exchange_->disconnected.load()) connection_->post_abandoned(exchange_);
}

void Responder::send(int status, HttpHeaders headers, std::string body) {
  answered_.store(true);
  if (exchange_->disconnected.load()) return;
  connection_->post_send(exchange_, status, std::move(headers), std::move(body));
}

void Responder::start_stream(int status, HttpHeaders headers) {
  if (exchange_->disconnected.load()) return;
  connection_->post_start_stream(exchange_, status, std::move(headers));
}

void Responder::write(std::string data) {
  if (data.empty() || exchange_->disconnected.load()) return;
  connection_->post_write(exchange_, std::move(data));
}

void Responder::end() {
  answered_.store(true);
  if (exchange_->disconnected.load()) return;
  connection_->post_end(exchange_);
}

void Responder::on_disconnect(std::function<void()> callback) {
  {
    std::lock_guard<std::mutex> lock(exchange_->mu);
    if (!exchange_->disconnect_fired) {
      exchange_->on_disconnect = std::move(callback);
      return;
    }
  }
  if (callback) callback();  // already disconnected: run now, on the caller's thread
}

// ---------------------------------------------------------------------------------------
// Connection: construction and entry points from other threads

Connection::Connection(std::shared_ptr<ServerCore> core, tcp::socket socket)
    : core_(std::move(core)),
      socket_(std::move(socket)),
      strand_(socket_.get_executor()),
      timer_(strand_),
      id_(core_->next_connection_id()) {
  error_code ec;
  tcp::endpoint remote = socket_.remote_endpoint(ec);
  if (!ec) remote_address_ = remote.address().to_string();
}

Connection::~Connection() {
  // Normally closed already; this covers a connection dropped with nothing pending.
  close();
}

void Connection::post_start() {
  asio::post(strand_, [self = shared_from_this()] { self->start(); });
}

void Connection::post_close() {
  asio::post(strand_, [self = shared_from_this()] {
    if (self->state_ != State::kClosed) self->core_->logger->debug("http: conn {} closed by shutdown", self->id_);
    self->close();
  });
}

void Connection::post_send(std::shared_ptr<Exchange> exchange, int status, HttpHeaders headers, std::string body) {
  core_->post(strand_,
              [self = shared_from_this(), exchange = std::move(exchange), status, headers = std::move(headers),
               body = std::move(body)]() mutable { self->do_send(exchange, status, headers, std::move(body)); });
}

void Connection::post_start_stream(std::shared_ptr<Exchange> exchange, int status, HttpHeaders headers) {
  core_->post(strand_, [self = shared_from_this(), exchange = std::move(exchange), status,
                        headers = std::move(headers)] { self->do_start_stream(exchange, status, headers); });
}

void Connection::post_write(std::shared_ptr<Exchange> exchange, std::string data) {
  core_->post(strand_, [self = shared_from_this(), exchange = std::move(exchange), data = std::move(data)]() mutable {
    self->do_write(exchange, std::move(data));
  });
}

void Connection::post_end(std::shared_ptr<Exchange> exchange) {
  core_->post(strand_, [self = shared_from_this(), exchange = std::move(exchange)] { self->do_end(exchange); });
}

void Connection::post_abandoned(std::shared_ptr<Exchange> exchange) {
  core_->post(strand_, [self = shared_from_this(), exchange = std::move(exchange)] { self->do_abandoned(exchange); });
}

// ---------------------------------------------------------------------------------------
// Reading and parsing

void Connection::start() {
  if (state_ == State::kClosed) return;
  error_code ec;
  socket_.set_option(tcp::no_delay(true), ec);  // each streamed chunk leaves at once
  if (!ec) socket_.non_blocking(true, ec);      // reads after readiness never block
  if (ec) {
    core_->logger->debug("http: conn {} setup failed: {}", id_, ec.message());
    close();
    return;
  }
  core_->logger->debug("http: conn {} open from {}", id_, remote_address_);
  state_ = State::kReading;
  new_parser();
  last_activity_ = Clock::now();
  arm_timer();
  start_read();
}

void Connection::new_parser() {
  parser_.emplace();
  parser_->header_limit(kMaxHeaderBytes);
  parser_->body_limit(core_->config.max_body_bytes);
  parser_->eager(true);
  header_seen_ = false;
}

void Connection::start_read() {
  if (read_pending_ || state_ == State::kClosed) return;
  // While busy, stop reading (TCP flow control) once enough of a next request is buffered.
  if (state_ == State::kBusy && in_.size() >= kMaxBufferedWhileBusy) return;
  read_pending_ = true;
  socket_.async_wait(tcp::socket::wait_read,
                     [self = shared_from_this()](const error_code& ec) { self->on_readable(ec); });
}

void Connection::read_available(error_code& ec) {
  for (int round = 0; round < 16; ++round) {
    size_t available = socket_.available(ec);
    if (ec) return;
    size_t want = std::clamp(available, kMinRead, kMaxRead);
    if (state_ == State::kBusy) {
      if (in_.size() >= kMaxBufferedWhileBusy) return;
      want = std::min(want, kMaxBufferedWhileBusy - in_.size());
    }
    size_t n = socket_.read_some(in_.prepare(want), ec);
    in_.commit(n);
    if (n > 0) last_activity_ = Clock::now();
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      ec.clear();
      return;
    }
    if (ec || n < want) return;
  }
}

void Connection::on_readable(const error_code& ec) {
  read_pending_ = false;
  if (state_ == State::kClosed) return;
  if (ec) {
    on_peer_gone(ec, "wait");
    return;
  }
  error_code read_ec;
  read_available(read_ec);
  if (state_ == State::kLingering) {
    linger_bytes_ += in_.size();
    in_.consume(in_.size());
    if (linger_bytes_ > kMaxLingerBytes) {
      close();
      return;
    }
  } else if (state_ == State::kReading) {
    process_input();  // may dispatch a request, answer an error or close
  }
  if (state_ == State::kClosed) return;
  if (read_ec) {
    on_peer_gone(read_ec, "read");
    return;
  }
  start_read();
}

void Connection::process_input() {
  while (state_ == State::kReading && in_.size() > 0) {
    error_code ec;
    size_t n = parser_->put(in_.data(), ec);
    in_.consume(n);
    if (ec && ec != bhttp::error::need_more) {
      if (ec == bhttp::error::body_limit) {
        respond_error(413, fmt::format("request body exceeds the limit of {} bytes", core_->config.max_body_bytes));
      } else if (ec == bhttp::error::header_limit) {
        respond_error(431, fmt::format("request header exceeds the limit of {} bytes", kMaxHeaderBytes));
      } else {
        respond_error(400, fmt::format("malformed HTTP request: {}", ec.message()));
      }
      return;
    }
    if (!header_seen_ && parser_->is_header_done()) {
      header_seen_ = true;
      if (!on_header_done()) return;
    }
    if (parser_->is_done()) {
      dispatch();
      return;
    }
    if (n == 0) return;  // need more bytes
  }
}

bool Connection::on_header_done() {
  if (core_->draining.load() || core_->stopping.load()) {
    respond_error(503, "the server is shutting down");
    return false;
  }
  const auto& header = parser_->get();
  if (!parser_->is_done() && header.version() >= 11) {
    auto expect = header[bhttp::field::expect];
    if (iequals(std::string_view(expect.data(), expect.size()), "100-continue")) {
      queue("HTTP/1.1 100 Continue\r\n\r\n");
      flush();
    }
  }
  return true;
}

void Connection::dispatch() {
  bhttp::request<bhttp::string_body> message = parser_->release();
  parser_.reset();

  HttpRequest request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  request.path = request.target.substr(0, request.target.find('?'));
  request.headers.reserve(std::distance(message.begin(), message.end()));
  for (const auto& field : message) {
    std::string name(field.name_string());
    std::transform(name.begin(), name.end(), name.begin(), ascii_lower);
    request.headers.emplace_back(std::move(name), std::string(field.value()));
  }
  request.body = std::move(message.body());
  request.remote_address = remote_address_;
  request.received_at = Clock::now();

  auto exchange = std::make_shared<Exchange>();
  exchange->keep_alive = message.keep_alive();
  exchange->http10 = message.version() < 11;
  exchange->head = message.method() == bhttp::verb::head;
  exchange->counted_inflight = true;
  core_->add_inflight();
  exchange_ = exchange;
  state_ = State::kBusy;
  response_queued_ = false;
  close_after_response_ = false;

  core_->logger->debug("http: conn {} {} {} ({} body bytes)", id_, request.method, request.target, request.body.size());
  try {
    if (!core_->handler) throw std::runtime_error("no handler");
    core_->handler(std::move(request), std::make_shared<Responder>(shared_from_this(), exchange));
  } catch (const std::exception& e) {
    core_->logger->warn("http: handler threw: {}", e.what());
    do_send(exchange, 500, {{"Content-Type", "application/json"}}, core_->error_body(500, "internal server error"));
  } catch (...) {
    core_->logger->warn("http: handler threw a non-standard exception");
    do_send(exchange, 500, {{"Content-Type", "application/json"}}, core_->error_body(500, "internal server error"));
  }
}

void Connection::respond_error(int status, const std::string& message) {
  core_->logger->debug("http: conn {} answered {}: {}", id_, status, message);
  parser_.reset();
  state_ = State::kBusy;
  exchange_.reset();
  std::string body = core_->error_body(status, message);
  queue(build_head(status, {{"Content-Type", "application/json"}}, Framing::kLength, body.size(), /*close=*/true,
                   /*http10_keep_alive=*/false));
  queue(std::move(body));
  finish_response(/*keep_alive=*/false);
}

// ---------------------------------------------------------------------------------------
// Responses (on the strand, from the responder)

bool Connection::accepts(const std::shared_ptr<Exchange>& exchange, Exchange::Phase wanted, const char* what) const {
  if (state_ == State::kClosed || exchange != exchange_) return false;  // gone or stale
  if (exchange->phase != wanted) {
    core_->logger->warn("http: conn {}: responder {}() out of order, ignored", id_, what);
    return false;
  }
  return true;
}

void Connection::do_send(const std::shared_ptr<Exchange>& exchange, int status, const HttpHeaders& headers,
                         std::string body) {
  if (!accepts(exchange, Exchange::Phase::kNew, "send")) return;
  if (status < 200 || status > 999) {
    core_->logger->warn("http: conn {}: invalid response status {}, sending 500", id_, status);
    status = 500;
  }
  exchange->phase = Exchange::Phase::kEnded;
  bool keep_alive = exchange->keep_alive && !core_->draining.load();
  bool no_length = status_has_no_body(status);
  queue(build_head(status, headers, no_length ? Framing::kNone : Framing::kLength, body.size(), !keep_alive,
                   keep_alive && exchange->http10));
  if (!no_length && !exchange->head && !body.empty()) queue(std::move(body));
  finish_response(keep_alive);
}

void Connection::do_start_stream(const std::shared_ptr<Exchange>& exchange, int status, const HttpHeaders& headers) {
  if (!accepts(exchange, Exchange::Phase::kNew, "start_stream")) return;
  if (status < 200 || status > 999) {
    core_->logger->warn("http: conn {}: invalid response status {}, sending 500", id_, status);
    status = 500;
  }
  exchange->phase = Exchange::Phase::kStreaming;
  exchange->no_body = exchange->head || status_has_no_body(status);
  // HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
  exchange->chunked = !exchange->http10 && !status_has_no_body(status);
  exchange->stream_keep_alive = exchange->keep_alive && !core_->draining.load() && !exchange->http10;
  Framing framing = exchange->chunked ? Framing::kChunked : Framing::kNone;
  queue(build_head(status, headers, framing, 0, !exchange->stream_keep_alive, false));
  flush();
}

void Connection::do_write(const std::shared_ptr<Exchange>& exchange, std::string data) {
  if (!accepts(exchange, Exchange::Phase::kStreaming, "write")) return;
  if (exchange->no_body || data.empty()) return;
  if (exchange->chunked) {
    queue(fmt::format("{:x}\r\n", data.size()));
    queue(std::move(data));
    queue("\r\n");
  } else {
    queue(std::move(data));
  }
  if (out_bytes_ > core_->config.max_stream_backlog_bytes) {
    core_->logger->warn("http: conn {} ({}): the client is not reading its stream ({} bytes waiting); closing", id_,
                        remote_address_, out_bytes_);
    close();
    return;
  }
  flush();
}

void Connection::do_end(const std::shared_ptr<Exchange>& exchange) {
  if (!accepts(exchange, Exchange::Phase::kStreaming, "end")) return;
  exchange->phase = Exchange::Phase::kEnded;
  if (exchange->chunked && !exchange->no_body) queue("0\r\n\r\n");
  finish_response(exchange->stream_keep_alive);
}

void Connection::do_abandoned(const std::shared_ptr<Exchange>& exchange) {
  if (state_ == State::kClosed || exchange != exchange_) return;
  if (exchange->phase == Exchange::Phase::kNew) {
    core_->logger->warn("http: conn {}: handler dropped the responder without answering; sending 500", id_);
    do_send(exchange, 500, {{"Content-Type", "application/json"}},
            core_->error_body(500, "the request was dropped without a response"));
  } else if (exchange->phase == Exchange::Phase::kStreaming) {
    // Send what was written, then close without the terminating chunk so the client sees
    // the stream was cut short.
    core_->logger->warn("http: conn {}: handler dropped the responder mid-stream; closing", id_);
    exchange->phase = Exchange::Phase::kEnded;
    finish_response(/*keep_alive=*/false);
  }
}

std::string Connection::build_head(int status, const HttpHeaders& headers, Framing framing, size_t content_length,
                                   bool close, bool http10_keep_alive) const {
  std::string head = fmt::format("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
  bool has_server = false;
  for (const auto& [name, value] : headers) {
    if (iequals(name, "content-length") || iequals(name, "transfer-encoding") || iequals(name, "connection")) {
      continue;  // framing and connection management are the server's
    }
    if (!valid_header(name, value)) {
      core_->logger->warn("http: conn {}: invalid response header '{}' dropped", id_, name);
      continue;
    }
    has_server = has_server || iequals(name, "server");
    head.append(name).append(": ").append(value).append("\r\n");
  }
  if (!has_server) head.append("Server: breakwater\r\n");
  if (framing == Framing::kLength) head.append(fmt::format("Content-Length: {}\r\n", content_length));
  if (framing == Framing::kChunked) head.append("Transfer-Encoding: chunked\r\n");
  if (close) {
    head.append("Connection: close\r\n");
  } else if (http10_keep_alive) {
    head.append("Connection: keep-alive\r\n");
  }
  head.append("\r\n");
  return head;
}

// ---------------------------------------------------------------------------------------
// Writing

void Connection::queue(std::string bytes) {
  out_bytes_ += bytes.size();
  out_.push_back(std::move(bytes));
}

void Connection::finish_response(bool keep_alive) {
  response_queued_ = true;
  close_after_response_ = !keep_alive;
  flush();
}

void Connection::flush() {
  if (writing_ || state_ == State::kClosed) return;
  if (!out_.empty()) {
    start_write();
  } else if (response_queued_) {
    on_response_written();
  }
}

void Connection::start_write() {
  writing_ = true;
  out_in_flight_ = std::min(out_.size(), kMaxGather);
  write_buffers_.clear();
  for (size_t i = 0; i < out_in_flight_; ++i)
    write_buffers_.push_back(asio::buffer(out_[i]));
  asio::async_write(socket_, write_buffers_,
                    [self = shared_from_this()](const error_code& ec, size_t) { self->on_write(ec); });
}

void Connection::on_write(const error_code& ec) {
  writing_ = false;
  for (size_t i = 0; i < out_in_flight_; ++i)
    out_bytes_ -= out_[i].size();
  out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(out_in_flight_));
  out_in_flight_ = 0;
  if (state_ == State::kClosed) return;
  if (ec) {
    on_peer_gone(ec, "write");
    return;
  }
  flush();
}

void Connection::on_response_written() {
  response_queued_ = false;
  release_exchange();
  if (close_after_response_ || core_->stopping.load()) {
    begin_linger();
    return;
  }
  state_ = State::kReading;
  new_parser();
  last_activity_ = Clock::now();
  if (in_.size() == 0 && in_.capacity() > kMaxRead) in_.shrink_to_fit();
  arm_timer();
  process_input();  // a pipelined request may be buffered already
  if (state_ != State::kClosed) start_read();
}

void Connection::release_exchange() {
  if (exchange_ && exchange_->counted_inflight) {
    exchange_->counted_inflight = false;
    core_->remove_inflight();
  }
  exchange_.reset();
}

// ---------------------------------------------------------------------------------------
// Timers, lingering close and closing

void Connection::arm_timer() {
  if (timer_pending_ || state_ == State::kClosed) return;
  Clock::time_point deadline;
  if (state_ == State::kReading) {
    if (core_->config.idle_timeout.count() <= 0) return;  // no idle timeout
    deadline = last_activity_ + core_->config.idle_timeout;
  } else if (state_ == State::kLingering) {
    deadline = linger_deadline_;
  } else {
    return;  // no timeout while a response is in progress
  }
  timer_pending_ = true;
  timer_.expires_at(deadline);
  timer_.async_wait([self = shared_from_this()](const error_code& ec) { self->on_timer(ec); });
}

void Connection::on_timer(const error_code& /*ec*/) {
  // Also runs after a cancel (state change): the deadline is recomputed from the state.
  timer_pending_ = false;
  if (state_ == State::kClosed) return;
  Clock::time_point now = Clock::now();
  if (state_ == State::kReading && core_->config.idle_timeout.count() > 0 &&
      now >= last_activity_ + core_->config.idle_timeout) {
    core_->logger->debug("http: conn {} idle timeout", id_);
    close();
    return;
  }
  if (state_ == State::kLingering && now >= linger_deadline_) {
    close();
    return;
  }
  arm_timer();
}

void Connection::begin_linger() {
  release_exchange();
  state_ = State::kLingering;
  parser_.reset();
  error_code ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) {
    close();
    return;
  }
  linger_bytes_ = in_.size();
  in_.consume(in_.size());
  linger_deadline_ = Clock::now() + kLingerTime;
  if (timer_pending_) {
    timer_.cancel();  // its handler re-arms for the linger deadline
  } else {
    arm_timer();
  }
  start_read();
}

void Connection::on_peer_gone(const error_code& ec, const char* during) {
  if (exchange_ && exchange_->phase != Exchange::Phase::kEnded) {
    core_->logger->debug("http: conn {} client gone during the response ({}: {})", id_, during, ec.message());
  } else {
    core_->logger->debug("http: conn {} closed by the client ({}: {})", id_, during, ec.message());
  }
  close();
}

void Connection::close() {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  error_code ec;
  socket_.close(ec);
  timer_.cancel();
  parser_.reset();
  in_.clear();
  if (!writing_) {
    out_.clear();
    out_bytes_ = 0;
  }
  std::shared_ptr<Exchange> exchange = exchange_;
  bool cut_short = exchange && exchange->phase != Exchange::Phase::kEnded;
  release_exchange();
  core_->num_connections.fetch_sub(1);
  core_->remove_connection(this);
  if (cut_short) {
    try {
      fire_disconnect(*exchange);
    } catch (const std::exception& e) {
      core_->logger->warn("http: conn {}: disconnect callback threw: {}", id_, e.what());
    } catch (...) {
      core_->logger->warn("http: conn {}: disconnect callback threw", id_);
    }
  }
}

}  // namespace bw::server::http_internal
