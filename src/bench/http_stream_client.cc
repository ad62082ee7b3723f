#include "bench/http_stream_client.h"

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/beast/http/write.hpp>

namespace bw::bench {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

// The part of a non-2xx body kept for the report.
constexpr size_t kMaxErrorBodyBytes = 1024;
constexpr size_t kReadChunkBytes = 16 * 1024;

}  // namespace

struct HttpStreamClient::Connection {
  explicit Connection(asio::io_context& io) : stream(io) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
};

Result<HttpEndpoint> parse_http_url(std::string_view url) {
  constexpr std::string_view kHttp = "http://";
  if (url.rfind("https://", 0) == 0) {
    return Unimplemented("--url {}: https is not supported; benchmark the server's plain-HTTP port", url);
  }
  if (url.rfind(kHttp, 0) != 0) return InvalidArgument("--url must start with http://, got '{}'", url);
  const std::string_view rest = url.substr(kHttp.size());
  const size_t slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  while (!path.empty() && path.back() == '/')
    path.remove_suffix(1);
  HttpEndpoint endpoint;
  endpoint.base_path = std::string(path);
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {  // [::1]:8000
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return InvalidArgument("--url {}: unclosed '[' in the host", url);
    endpoint.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return InvalidArgument("--url {}: expected ':port' after ']'", url);
      port = after.substr(1);
    }
  } else {
    const size_t colon = authority.find(':');
    endpoint.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (endpoint.host.empty()) return InvalidArgument("--url {}: no host", url);
  if (!port.empty()) {
    const bool digits = port.size() <= 5 && port.find_first_not_of("0123456789") == std::string_view::npos;
    if (!digits || std::stoi(std::string(port)) > 65535 || std::stoi(std::string(port)) == 0) {
      return InvalidArgument("--url {}: bad port '{}'", url, port);
    }
    endpoint.port = std::string(port);
  }
  return endpoint;
}

std::string openai_target(const HttpEndpoint& endpoint, std::string_view route) {
  std::string target = endpoint.base_path;
  const bool has_v1 = target.size() >= 3 && target.compare(target.size() - 3, 3, "/v1") == 0;
  if (!has_v1) target += "/v1";
  target += route;
  return target;
}

std::string failure_kind_name(FailureKind kind, int http_status) {
  switch (kind) {
    case FailureKind::kNone:
      return "ok";
    case FailureKind::kConnect:
      return "connect_error";
    case FailureKind::kHttpStatus:
      return "http_" + std::to_string(http_status);
    case FailureKind::kTimeout:
      return "timeout";
    case FailureKind::kIo:
      return "io_error";
    case FailureKind::kBadStream:
      return "bad_stream";
  }
  return "unknown";
}

// One request from connect to the end of the response. Kept alive by its pending
// asynchronous operations (each handler holds a shared_ptr).
class HttpStreamClient::Exchange : public std::enable_shared_from_this<HttpStreamClient::Exchange> {
 public:
  Exchange(HttpStreamClient* client, HttpRequestSpec spec, BodyFn on_body, DoneFn on_done)
      : client_(client),
        alive_(client->alive_),
        spec_(std::move(spec)),
        on_body_(std::move(on_body)),
        on_done_(std::move(on_done)),
        deadline_(std::chrono::steady_clock::now() + spec_.timeout) {
    request_.method(spec_.is_post ? bhttp::verb::post : bhttp::verb::get);
    request_.target(spec_.target);
    request_.version(11);
    request_.set(bhttp::field::host, client->host_header_);
    request_.set(bhttp::field::user_agent, "breakwater-bench");
    request_.set(bhttp::field::accept, "application/json, text/event-stream");
    request_.keep_alive(true);
    if (!spec_.api_key.empty()) request_.set(bhttp::field::authorization, "Bearer " + spec_.api_key);
    for (const auto& [name, value] : spec_.headers)
      request_.set(name, value);
    if (spec_.is_post) {
      request_.set(bhttp::field::content_type, "application/json");
      request_.body() = spec_.body;
      request_.prepare_payload();
    }
  }

  void start() {
    connection_ = client_->take_idle();
    reused_ = connection_ != nullptr;
    if (reused_) {
      connection_->stream.expires_at(deadline_);
      write();
      return;
    }
    connect();
  }

 private:
  void connect() {
    reused_ = false;
    connection_ = std::make_unique<Connection>(client_->io_);
    ++client_->num_connections_opened_;
    connection_->stream.expires_at(deadline_);
    connection_->stream.async_connect(
        client_->addresses_, [self = shared_from_this()](const beast::error_code& ec, const tcp::endpoint&) {
          if (ec) {
            self->fail(ec == beast::error::timeout ? FailureKind::kTimeout : FailureKind::kConnect,
                       "connect: " + ec.message());
            return;
          }
          self->write();
        });
  }

  void write() {
    bhttp::async_write(connection_->stream, request_, [self = shared_from_this()](const beast::error_code& ec, size_t) {
      if (ec) {
        self->fail_or_retry(ec, "write");
        return;
      }
      self->read_header();
    });
  }

  void read_header() {
    parser_.emplace();
    // Streams are unbounded; Beast 1.74 mishandles body_limit(boost::none), hence the max.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    bhttp::async_read_header(connection_->stream, connection_->buffer, *parser_,
                             [self = shared_from_this()](const beast::error_code& ec, size_t) {
                               if (ec) {
                                 self->fail_or_retry(ec, "read");
                                 return;
                               }
                               self->status_ = self->parser_->get().result_int();
                               self->read_body();
                             });
  }

  void read_body() {
    if (parser_->is_done()) {
      complete();
      return;
    }
    parser_->get().body().data = buffer_.data();
    parser_->get().body().size = buffer_.size();
    bhttp::async_read_some(
        connection_->stream, connection_->buffer, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
          if (ec == bhttp::error::need_buffer) ec = {};
          const size_t n = self->buffer_.size() - self->parser_->get().body().size;
          if (n > 0) {
            const std::string_view bytes(self->buffer_.data(), n);
            if (self->is_success()) {
              Status s = self->on_body_(bytes);
              if (!s.ok()) {
                self->fail(FailureKind::kBadStream, s.message());
                return;
              }
            } else if (self->error_body_.size() < kMaxErrorBodyBytes) {
              self->error_body_.append(bytes.substr(0, kMaxErrorBodyBytes - self->error_body_.size()));
            }
          }
          if (ec) {
            self->fail(ec == beast::error::timeout ? FailureKind::kTimeout : FailureKind::kIo,
                       "reading the body: " + ec.message());
            return;
          }
          self->read_body();
        });
  }

  bool is_success() const { return status_ >= 200 && status_ < 300; }

  void complete() {
    const bool keep = parser_->keep_alive();
    parser_.reset();
    if (keep && *alive_) {
      connection_->stream.expires_never();
      client_->put_idle(std::move(connection_));
    } else {
      close();
    }
    if (!is_success()) {
      finish({FailureKind::kHttpStatus, status_, "HTTP " + std::to_string(status_) + ": " + error_body_});
      return;
    }
    finish({FailureKind::kNone, status_, ""});
  }

  // An error before any byte of the response on a connection that had been idle: the
  // server may have closed it meanwhile, so try once more on a new one.
  void fail_or_retry(const beast::error_code& ec, const char* what) {
    const bool nothing_read = !parser_ || !parser_->got_some();
    if (reused_ && !retried_ && nothing_read && ec != beast::error::timeout && *alive_) {
      retried_ = true;
      close();
      connect();
      return;
    }
    fail(ec == beast::error::timeout ? FailureKind::kTimeout : FailureKind::kIo,
         std::string(what) + ": " + ec.message());
  }

  void fail(FailureKind kind, std::string message) {
    close();
    finish({kind, status_, std::move(message)});
  }

  void close() {
    if (!connection_) return;
    beast::error_code ignored;
    connection_->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    connection_->stream.close();
    connection_.reset();
  }

  void finish(const HttpOutcome& outcome) {
    if (done_) return;
    done_ = true;
    on_done_(outcome);
  }

  HttpStreamClient* client_;
  std::shared_ptr<bool> alive_;
  HttpRequestSpec spec_;
  BodyFn on_body_;
  DoneFn on_done_;
  std::chrono::steady_clock::time_point deadline_;
  bhttp::request<bhttp::string_body> request_;
  std::unique_ptr<Connection> connection_;
  std::optional<bhttp::response_parser<bhttp::buffer_body>> parser_;
  std::array<char, kReadChunkBytes> buffer_{};
  std::string error_body_;
  int status_ = 0;
  bool reused_ = false;
  bool retried_ = false;
  bool done_ = false;
};

HttpStreamClient::HttpStreamClient(asio::io_context& io, HttpEndpoint endpoint, tcp::resolver::results_type addresses)
    : io_(io), endpoint_(std::move(endpoint)), addresses_(std::move(addresses)) {
  const bool ipv6 = endpoint_.host.find(':') != std::string::npos;
  host_header_ = (ipv6 ? "[" + endpoint_.host + "]" : endpoint_.host) + ":" + endpoint_.port;
}

HttpStreamClient::~HttpStreamClient() { *alive_ = false; }

Result<std::unique_ptr<HttpStreamClient>> HttpStreamClient::create(asio::io_context& io, const HttpEndpoint& endpoint) {
  tcp::resolver resolver(io);
  beast::error_code ec;
  auto addresses = resolver.resolve(endpoint.host, endpoint.port, ec);
  if (ec) return Unavailable("cannot resolve {}:{}: {}", endpoint.host, endpoint.port, ec.message());
  return std::unique_ptr<HttpStreamClient>(new HttpStreamClient(io, endpoint, std::move(addresses)));
}

void HttpStreamClient::start(HttpRequestSpec spec, BodyFn on_body, DoneFn on_done) {
  std::make_shared<Exchange>(this, std::move(spec), std::move(on_body), std::move(on_done))->start();
}

std::unique_ptr<HttpStreamClient::Connection> HttpStreamClient::take_idle() {
  if (idle_.empty()) return nullptr;
  std::unique_ptr<Connection> connection = std::move(idle_.back());
  idle_.pop_back();
  return connection;
}

void HttpStreamClient::put_idle(std::unique_ptr<Connection> connection) { idle_.push_back(std::move(connection)); }

Result<std::string> fetch_once(const HttpEndpoint& endpoint, HttpRequestSpec spec) {
  asio::io_context io;
  ASSIGN_OR_RETURN(std::unique_ptr<HttpStreamClient> client, HttpStreamClient::create(io, endpoint));
  const std::string target = spec.target;
  std::string body;
  HttpOutcome result;
  client->start(
      std::move(spec),
      [&body](std::string_view bytes) {
        body.append(bytes);
        return OkStatus();
      },
      [&result](const HttpOutcome& outcome) { result = outcome; });
  io.run();
  if (result.kind != FailureKind::kNone) {
    return Unavailable("{} {}: {} ({})", client->endpoint().host + ":" + client->endpoint().port, target,
                       failure_kind_name(result.kind, result.http_status), result.message);
  }
  return body;
}

}  // namespace bw::bench
