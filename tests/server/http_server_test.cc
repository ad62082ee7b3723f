// HttpServer against a small blocking client on POSIX sockets (and the real curl binary):
// keep-alive, limits, malformed input, streaming, disconnects, draining, shutdown, and
// thousands of connections.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace bw::server {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client

std::string lower(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

struct Response {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  std::vector<std::string> chunks;  // when chunked
  bool chunked = false;

  std::string header(const std::string& name) const {
    for (const auto& [n, v] : headers) {
      if (n == name) return v;
    }
    return "";
  }
  bool has_header(const std::string& name) const {
    for (const auto& [n, v] : headers) {
      if (n == name) return true;
    }
    return false;
  }
};

enum class ParseResult { kComplete, kIncomplete, kBad };

// Parses one response (skipping 1xx ones) from the front of `data`. `eof`: the server closed
// (ends a body without length). On kComplete, `*consumed` is its size.
ParseResult parse_response(std::string_view data, bool eof, bool head_request, Response* out, size_t* consumed) {
  size_t pos = 0;
  for (;;) {
    size_t header_end = data.find("\r\n\r\n", pos);
    if (header_end == std::string_view::npos) return ParseResult::kIncomplete;
    std::string_view head = data.substr(pos, header_end - pos);
    size_t line_end = head.find("\r\n");
    std::string_view status_line = head.substr(0, line_end);
    if (status_line.substr(0, 9) != "HTTP/1.1 " || status_line.size() < 12) return ParseResult::kBad;
    *out = Response{};
    out->status = std::atoi(std::string(status_line.substr(9, 3)).c_str());
    while (line_end != std::string_view::npos) {
      size_t next = head.find("\r\n", line_end + 2);
      std::string_view line = head.substr(line_end + 2, next == std::string_view::npos ? next : next - line_end - 2);
      size_t colon = line.find(':');
      if (colon == std::string_view::npos) return ParseResult::kBad;
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ')
        value.remove_prefix(1);
      out->headers.emplace_back(lower(std::string(line.substr(0, colon))), std::string(value));
      line_end = next;
    }
    pos = header_end + 4;
    if (out->status >= 100 && out->status < 200) continue;  // 100 Continue
    break;
  }
  if (head_request || out->status == 204 || out->status == 304) {
    *consumed = pos;
    return ParseResult::kComplete;
  }
  if (lower(out->header("transfer-encoding")) == "chunked") {
    out->chunked = true;
    for (;;) {
      size_t size_end = data.find("\r\n", pos);
      if (size_end == std::string_view::npos) return eof ? ParseResult::kBad : ParseResult::kIncomplete;
      std::string size_text(data.substr(pos, size_end - pos));
      char* end = nullptr;
      unsigned long size = std::strtoul(size_text.c_str(), &end, 16);
      if (size_text.empty() || *end != '\0') return ParseResult::kBad;
      size_t chunk_start = size_end + 2;
      if (data.size() < chunk_start + size + 2) return eof ? ParseResult::kBad : ParseResult::kIncomplete;
      if (data.substr(chunk_start + size, 2) != "\r\n") return ParseResult::kBad;
      pos = chunk_start + size + 2;
      if (size == 0) {
        *consumed = pos;
        return ParseResult::kComplete;
      }
      out->chunks.emplace_back(data.substr(chunk_start, size));
      out->body.append(data.substr(chunk_start, size));
    }
  }
  if (out->has_header("content-length")) {
    size_t length = std::stoul(out->header("content-length"));
    if (data.size() < pos + length) return eof ? ParseResult::kBad : ParseResult::kIncomplete;
    out->body = std::string(data.substr(pos, length));
    *consumed = pos + length;
    return ParseResult::kComplete;
  }
  if (!eof) return ParseResult::kIncomplete;  // delimited by the close
  out->body = std::string(data.substr(pos));
  *consumed = data.size();
  return ParseResult::kComplete;
}

class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) {
      connect_errno_ = errno;
      return;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      connect_errno_ = errno;
      ::close(fd_);
      fd_ = -1;
      return;
    }
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~Client() { close(); }
  Client(Client&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)),
        connect_errno_(other.connect_errno_),
        buf_(std::move(other.buf_)),
        eof_(other.eof_) {}
  Client& operator=(Client&&) = delete;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  int connect_errno() const { return connect_errno_; }
  bool eof() const { return eof_; }
  const std::string& buffer() const { return buf_; }

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  bool send(std::string_view data) const {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // One recv (after waiting up to the deadline); false on timeout or when nothing more
  // can come.
  bool fill(Clock::time_point deadline) {
    if (eof_ || fd_ < 0) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left));
    if (r <= 0) return false;
    return receive();
  }

  // A non-blocking-style read after poll said readable; sets eof on close/reset.
  bool receive() {
    char tmp[65536];
    ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n > 0) {
      buf_.append(tmp, static_cast<size_t>(n));
      return true;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    eof_ = true;
    return true;
  }

  // The next whole response, or nullopt on timeout, bad framing or a close before its end.
  std::optional<Response> read_response(std::chrono::milliseconds timeout = 5s, bool head_request = false) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      auto parsed = try_parse(head_request);
      if (parsed) return parsed;
      if (bad_) return std::nullopt;
      if (eof_) return std::nullopt;
      if (!fill(deadline)) {
        if (eof_) continue;  // parse once more with eof (close-delimited body)
        return std::nullopt;
      }
    }
  }

  std::optional<Response> try_parse(bool head_request = false) {
    Response response;
    size_t consumed = 0;
    ParseResult result = parse_response(buf_, eof_, head_request, &response, &consumed);
    if (result == ParseResult::kBad) bad_ = true;
    if (result != ParseResult::kComplete) return std::nullopt;
    buf_.erase(0, consumed);
    return response;
  }

  // Waits until `needle` is in the received bytes (not consumed).
  bool read_until(std::string_view needle, std::chrono::milliseconds timeout = 5s) {
    auto deadline = Clock::now() + timeout;
    while (buf_.find(needle) == std::string::npos) {
      if (!fill(deadline)) return false;
    }
    return true;
  }

  // True when the server closes the connection within the timeout (bytes received
  // meanwhile are kept).
  bool wait_closed(std::chrono::milliseconds timeout = 5s) {
    auto deadline = Clock::now() + timeout;
    while (!eof_) {
      if (!fill(deadline)) return eof_;
    }
    return true;
  }

 private:
  int fd_ = -1;
  int connect_errno_ = 0;
  std::string buf_;
  bool eof_ = false;
  bool bad_ = false;
};

std::string get_request(const std::string& target, const std::string& extra_headers = "") {
  return fmt::format("GET {} HTTP/1.1\r\nHost: localhost\r\n{}\r\n", target, extra_headers);
}

std::string post_request(const std::string& target, const std::string& body, const std::string& extra_headers = "") {
  return fmt::format("POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n{}\r\n{}", target, body.size(),
                     extra_headers, body);
}

// ---------------------------------------------------------------------------------------
// Server helpers

void raise_fd_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

rlim_t fd_limit() {
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  return limit.rlim_cur;
}

std::string test_error_body(int status, const std::string& message) {
  return nlohmann::json{{"error", {{"message", message}, {"status", status}}}}.dump();
}

HttpServerConfig test_config() {
  HttpServerConfig config;
  config.host = "127.0.0.1";
  config.port = 0;
  config.io_threads = 2;
  config.error_body = test_error_body;
  return config;
}

Logger test_logger() {
  // BW_HTTP_TEST_LOG=debug shows the server's log.
  const char* level = std::getenv("BW_HTTP_TEST_LOG");
  return level != nullptr ? make_stderr_logger("http-test", level) : make_null_logger();
}

std::unique_ptr<HttpServer> start_server(HttpHandler handler, HttpServerConfig config = test_config()) {
  auto result = HttpServer::start(std::move(config), std::move(handler), test_logger());
  if (!result.ok()) {
    ADD_FAILURE() << result.status().to_string();
    return nullptr;
  }
  return std::move(result).value();
}

// Threads started by handlers, joined at the end of the test (declare before the server).
class ThreadBag {
 public:
  ~ThreadBag() { join(); }
  template <typename F>
  void spawn(F&& f) {
    std::lock_guard<std::mutex> lock(mu_);
    threads_.emplace_back(std::forward<F>(f));
  }
  void join() {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads.swap(threads_);
    }
    for (auto& t : threads)
      t.join();
  }

 private:
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

// Waits until `predicate` holds (polling), up to `timeout`.
template <typename P>
bool eventually(P predicate, std::chrono::milliseconds timeout = 5s) {
  auto deadline = Clock::now() + timeout;
  while (!predicate()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

void echo_handler(HttpRequest request, const std::shared_ptr<HttpResponder>& responder) {
  std::string body = fmt::format("{} {} {} [{}] x={} from={}", request.method, request.target, request.path,
                                 request.body, request.header("x-test"), request.remote_address);
  // The server owns framing: a stray Content-Length from the handler is ignored.
  responder->send(200, {{"Content-Type", "text/plain"}, {"X-Echo", "1"}, {"Content-Length", "999"}}, std::move(body));
}

void expect_error_json(const Response& response, int status) {
  EXPECT_EQ(response.status, status);
  EXPECT_EQ(response.header("connection"), "close");
  EXPECT_EQ(response.header("content-type"), "application/json");
  auto json = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(json.is_discarded()) << response.body;
  EXPECT_EQ(json["error"]["status"], status) << response.body;
  EXPECT_FALSE(json["error"]["message"].get<std::string>().empty());
}

// ---------------------------------------------------------------------------------------
// Tests

TEST(HttpRequestTest, HeaderLooksUpFirstLowerCaseName) {
  HttpRequest request;
  request.headers = {{"content-type", "text/plain"}, {"x-a", "1"}, {"x-a", "2"}};
  EXPECT_EQ(request.header("x-a"), "1");
  EXPECT_EQ(request.header("content-type"), "text/plain");
  EXPECT_EQ(request.header("missing"), "");
}

TEST(HttpServerTest, EchoWithKeepAlive) {
  auto server = start_server(echo_handler);
  ASSERT_TRUE(server);
  EXPECT_NE(server->port(), 0);
  Client client(server->port());
  ASSERT_TRUE(client.ok());

  ASSERT_TRUE(client.send(get_request("/v1/models?x=1", "X-Test: Hello\r\n")));
  auto r1 = client.read_response();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->status, 200);
  EXPECT_EQ(r1->body, "GET /v1/models?x=1 /v1/models [] x=Hello from=127.0.0.1");
  EXPECT_EQ(r1->header("content-length"), std::to_string(r1->body.size()));
  EXPECT_EQ(r1->header("server"), "breakwater");
  EXPECT_EQ(r1->header("x-echo"), "1");
  EXPECT_EQ(r1->header("content-type"), "text/plain");
  EXPECT_FALSE(r1->has_header("connection"));
  EXPECT_FALSE(r1->has_header("transfer-encoding"));

  ASSERT_TRUE(client.send(post_request("/v1/chat", "{\"a\":1}")));
  auto r2 = client.read_response();
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->body, "POST /v1/chat /v1/chat [{\"a\":1}] x= from=127.0.0.1");

  // A chunked request body.
  ASSERT_TRUE(
      client.send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"));
  auto r3 = client.read_response();
  ASSERT_TRUE(r3);
  EXPECT_EQ(r3->body, "POST /c /c [abcde] x= from=127.0.0.1");

  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(client.send(get_request(fmt::format("/n/{}", i))));
    auto r = client.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(server->num_connections(), 1);
  EXPECT_TRUE(eventually([&] { return server->num_inflight() == 0; }));
}

TEST(HttpServerTest, Http10AndConnectionClose) {
  auto server = start_server(echo_handler);
  ASSERT_TRUE(server);
  {
    Client client(server->port());
    ASSERT_TRUE(client.send("GET /old HTTP/1.0\r\n\r\n"));
    auto r = client.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->header("connection"), "close");
    EXPECT_TRUE(client.wait_closed());
  }
  {
    Client client(server->port());
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(client.send("GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
      auto r = client.read_response();
      ASSERT_TRUE(r);
      EXPECT_EQ(r->header("connection"), "keep-alive");
    }
  }
  {
    Client client(server->port());
    ASSERT_TRUE(client.send(get_request("/bye", "Connection: close\r\n")));
    auto r = client.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->header("connection"), "close");
    EXPECT_TRUE(client.wait_closed());
  }
}

TEST(HttpServerTest, Http10StreamIsDelimitedByClose) {
  auto server = start_server([](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    responder->start_stream(200, {{"Content-Type", "text/event-stream"}});
    responder->write("one ");
    responder->write("two");
    responder->end();
  });
  ASSERT_TRUE(server);
  Client client(server->port());
  ASSERT_TRUE(client.send("GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  auto r = client.read_response();  // no chunked encoding in HTTP/1.0: the body ends at the close
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->chunked);
  EXPECT_FALSE(r->has_header("transfer-encoding"));
  EXPECT_EQ(r->header("connection"), "close");
  EXPECT_EQ(r->body, "one two");
}

TEST(HttpServerTest, RandomlyDamagedRequestsNeverCrash) {
  std::atomic<int> handled{0};
  auto server = start_server([&](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    ++handled;
    echo_handler(request, responder);
  });
  ASSERT_TRUE(server);
  const std::string valid =
      "POST /v1/x?y=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n4\r\nabcd\r\n0\r\n\r\n" +
      post_request("/z", "hello");
  std::mt19937 rng(1234);
  int answered = 0;
  for (int i = 0; i < 300; ++i) {
    std::string request = valid;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !request.empty(); ++e) {
      size_t pos = rng() % request.size();
      switch (rng() % 4) {
        case 0:
          request[pos] = static_cast<char>(rng() % 256);
          break;
        case 1:
          request.erase(pos, 1 + rng() % 8);
          break;
        case 2:
          request.insert(pos, 1 + rng() % 4, static_cast<char>(rng() % 256));
          break;
        default:
          request.resize(pos);
          break;
      }
    }
    Client client(server->port());
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE(client.send(request));
    if (i % 10 == 0) {  // now and then, read what comes back (responses or a close)
      client.wait_closed(30ms);
      if (!client.buffer().empty()) ++answered;
    }
  }
  Client client(server->port());
  ASSERT_TRUE(client.send(get_request("/still-ok")));
  auto r = client.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_GT(answered, 0);
  EXPECT_TRUE(eventually([&] { return server->num_inflight() == 0; }));
}

TEST(HttpServerTest, OversizedBodyGets413) {
  HttpServerConfig config = test_config();
  config.max_body_bytes = 1024;
  auto server = start_server(echo_handler, config);
  ASSERT_TRUE(server);
  {  // exactly at the limit: fine
    Client client(server->port());
    ASSERT_TRUE(client.send(post_request("/ok", std::string(1024, 'a'))));
    auto r = client.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  {  // Content-Length over the limit: answered from the header, the body is not awaited
    Client client(server->port());
    ASSERT_TRUE(client.send("POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n" + std::string(100, 'a')));
    auto r = client.read_response();
    ASSERT_TRUE(r);
    expect_error_json(*r, 413);
    EXPECT_TRUE(client.wait_closed());
  }
  {  // a chunked body growing over the limit
    Client client(server->port());
    std::string chunk(600, 'b');
    std::string request = "POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 3; ++i)
      request += fmt::format("{:x}\r\n{}\r\n", chunk.size(), chunk);
    request += "0\r\n\r\n";
    ASSERT_TRUE(client.send(request));
    auto r = client.read_response();
    ASSERT_TRUE(r);
    expect_error_json(*r, 413);
    EXPECT_TRUE(client.wait_closed());
  }
  EXPECT_TRUE(eventually([&] { return server->num_connections() == 0; }));
}

TEST(HttpServerTest, MalformedRequestsGet400) {
  std::atomic<int> handled{0};
  auto server = start_server([&](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    ++handled;
    echo_handler(request, responder);
  });
  ASSERT_TRUE(server);
  const std::vector<std::string> bad = {
      "NOT A VALID REQUEST\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      std::string("GET /\x01\x02 HTTP/1.1\r\n\r\n"),
  };
  for (const auto& request : bad) {
    Client client(server->port());
    ASSERT_TRUE(client.send(request));
    auto r = client.read_response();
    ASSERT_TRUE(r) << request;
    expect_error_json(*r, 400);
    EXPECT_TRUE(client.wait_closed()) << request;
  }
  {  // a header over 64 KiB
    Client client(server->port());
    ASSERT_TRUE(client.send("GET / HTTP/1.1\r\nX-Big: " + std::string(70 * 1024, 'h') + "\r\n\r\n"));
    auto r = client.read_response();
    ASSERT_TRUE(r);
    expect_error_json(*r, 431);
    EXPECT_TRUE(client.wait_closed());
  }
  {  // garbage then a hang-up mid-request: no response, no crash
    Client client(server->port());
    ASSERT_TRUE(client.send("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"));
    client.close();
  }
  EXPECT_EQ(handled.load(), 0);
  // The server is still fine.
  Client client(server->port());
  ASSERT_TRUE(client.send(get_request("/still-ok")));
  auto r = client.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, StreamsChunksAsTheyAreWritten) {
  ThreadBag threads;
  std::atomic<int> requests{0};
  std::atomic<int> client_saw_first{0};  // rounds in which the client got the first chunk
  std::atomic<int> writer_waited_ok{0};
  auto server = start_server([&](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    int round = requests++;
    responder->start_stream(200, {{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}});
    threads.spawn([responder, round, &client_saw_first, &writer_waited_ok] {
      responder->write("data: first\n\n");
      // The last chunks are written only once the client has the first one.
      if (eventually([&] { return client_saw_first.load() > round; })) ++writer_waited_ok;
      responder->write("data: second\n\n");
      std::this_thread::sleep_for(20ms);
      responder->write("data: third\n\n");
      responder->end();
    });
  });
  ASSERT_TRUE(server);
  Client client(server->port());
  for (int round = 0; round < 2; ++round) {  // twice on one keep-alive connection
    ASSERT_TRUE(client.send(post_request("/v1/chat/completions", "{}")));
    ASSERT_TRUE(client.read_until("data: first\n\n\r\n"));
    EXPECT_EQ(client.buffer().find("second"), std::string::npos);
    ++client_saw_first;
    auto r = client.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_TRUE(r->chunked);
    EXPECT_FALSE(r->has_header("content-length"));
    EXPECT_EQ(r->header("content-type"), "text/event-stream");
    EXPECT_EQ(r->header("server"), "breakwater");
    EXPECT_EQ(r->chunks, (std::vector<std::string>{"data: first\n\n", "data: second\n\n", "data: third\n\n"}));
    threads.join();
    EXPECT_EQ(writer_waited_ok.load(), round + 1);
  }
  EXPECT_TRUE(eventually([&] { return server->num_inflight() == 0; }));
}

TEST(HttpServerTest, DisconnectCallbackForPendingResponse) {
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<HttpResponder> held;
  std::atomic<int> callbacks{0};
  Clock::time_point fired_at;
  auto server = start_server([&](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
    responder->on_disconnect([&] {
      std::lock_guard<std::mutex> lock(mu);
      fired_at = Clock::now();
      ++callbacks;
      cv.notify_all();
    });
    if (request.path == "/stream") {
      responder->start_stream(200, {{"Content-Type", "text/event-stream"}});
      responder->write("data: hi\n\n");
    }
    std::lock_guard<std::mutex> lock(mu);
    held = std::move(responder);  // answered later (never, here)
    cv.notify_all();
  });
  ASSERT_TRUE(server);

  for (const std::string path : {"/slow", "/stream"}) {
    SCOPED_TRACE(path);
    callbacks = 0;
    Client client(server->port());
    ASSERT_TRUE(client.send(post_request(path, "{}")));
    {
      std::unique_lock<std::mutex> lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return held != nullptr; }));
    }
    if (path == "/stream") {
      ASSERT_TRUE(client.read_until("data: hi"));
    }
    EXPECT_EQ(server->num_inflight(), 1);
    EXPECT_FALSE(held->disconnected());
    Clock::time_point closed_at = Clock::now();
    client.close();
    {
      std::unique_lock<std::mutex> lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return callbacks.load() > 0; }));
    }
    auto latency = std::chrono::duration_cast<std::chrono::milliseconds>(fired_at - closed_at);
    auto latency_us = std::chrono::duration_cast<std::chrono::microseconds>(fired_at - closed_at).count();
    RecordProperty(path == "/slow" ? "disconnect_latency_us_slow" : "disconnect_latency_us_stream", latency_us);
    EXPECT_LT(latency, 500ms) << "disconnect noticed after " << latency_us << " us";
    EXPECT_TRUE(held->disconnected());
    EXPECT_EQ(server->num_inflight(), 0);

    // Late calls are dropped; a callback set now runs at once; the first ran once.
    held->write("late");
    held->send(200, {}, "late");
    held->end();
    bool ran_now = false;
    held->on_disconnect([&] { ran_now = true; });
    EXPECT_TRUE(ran_now);
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(callbacks.load(), 1);
    std::lock_guard<std::mutex> lock(mu);
    held.reset();
  }
  EXPECT_TRUE(eventually([&] { return server->num_connections() == 0; }));
}

TEST(HttpServerTest, StreamToAClientThatStopsReadingIsCutAtTheBacklogLimit) {
  // The handler streams 16 KiB every millisecond (a fast generation). A client that reads
  // gets it all; one that stops reading fills the socket buffers, then the server's backlog
  // passes max_stream_backlog_bytes and the server closes the connection and runs the
  // disconnect callback instead of buffering without bound.
  constexpr size_t kChunk = 16 * 1024;
  constexpr size_t kWriteCap = size_t{96} << 20;  // the writer's own stop, far above the cut
  ThreadBag threads;
  std::atomic<size_t> written{0};
  std::atomic<int> disconnects{0};
  HttpServerConfig config = test_config();
  config.max_stream_backlog_bytes = size_t{1} << 20;
  auto server = start_server(
      [&](const HttpRequest& /*request*/, const std::shared_ptr<HttpResponder>& responder) {
        responder->on_disconnect([&] { ++disconnects; });
        responder->start_stream(200, {{"Content-Type", "text/event-stream"}});
        written = 0;
        threads.spawn([responder, &written] {
          const std::string chunk(kChunk, 'x');
          while (!responder->disconnected() && written.load() < kWriteCap) {
            responder->write(chunk);
            written += kChunk;
            std::this_thread::sleep_for(1ms);
          }
          responder->end();
        });
      },
      config);
  ASSERT_TRUE(server);
  {
    Client reader(server->port());
    ASSERT_TRUE(reader.send(post_request("/v1/completions", "{}")));
    const auto deadline = Clock::now() + 20s;
    while (reader.buffer().size() < (size_t{4} << 20) && reader.fill(deadline)) {
    }
    EXPECT_GE(reader.buffer().size(), size_t{4} << 20);
    EXPECT_EQ(disconnects.load(), 0) << "a reading client was cut";
  }
  EXPECT_TRUE(eventually([&] { return disconnects.load() == 1; }));  // closed by the client
  threads.join();

  Client stalled(server->port());
  int small = 4096;
  ::setsockopt(stalled.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  ASSERT_TRUE(stalled.send(post_request("/v1/completions", "{}")));
  EXPECT_TRUE(eventually([&] { return disconnects.load() == 2; }, 20s)) << written.load() << " bytes written";
  threads.join();
  // What the kernel's socket buffers absorbed plus the backlog, not the writer's cap.
  EXPECT_LT(written.load(), size_t{32} << 20);
  EXPECT_TRUE(eventually([&] { return server->num_inflight() == 0 && server->num_connections() == 0; }));
}

TEST(HttpServerTest, PipelinedRequestsWhileBusyAreKept) {
  ThreadBag threads;
  auto server = start_server([&](HttpRequest request, const std::shared_ptr<HttpResponder>& responder) {
    threads.spawn([request = std::move(request), responder] {
      std::this_thread::sleep_for(30ms);  // busy while the next request arrives
      responder->send(200, {}, request.path + ":" + request.body);
    });
  });
  ASSERT_TRUE(server);
  Client client(server->port());
  // Two requests in one write, then a third while the first is still being computed.
  ASSERT_TRUE(client.send(get_request("/a") + post_request("/b", "bee")));
  std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(client.send(post_request("/c", "sea")));
  for (const char* expected : {"/a:", "/b:bee", "/c:sea"}) {
    auto r = client.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, expected);
  }
}

TEST(HttpServerTest, HeadNoContentAndExpectContinue) {
  auto server = start_server([](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    if (request.path == "/empty") {
      responder->send(204, {}, "");
    } else {
      responder->send(200, {{"Content-Type", "text/plain"}}, "hello:" + request.body);
    }
  });
  ASSERT_TRUE(server);
  Client client(server->port());
  ASSERT_TRUE(client.send("HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto head = client.read_response(5s, /*head_request=*/true);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->header("content-length"), "6");

  ASSERT_TRUE(client.send(get_request("/empty")));
  auto empty = client.read_response();
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->status, 204);
  EXPECT_FALSE(empty->has_header("content-length"));

  // The body is sent only after "100 Continue".
  ASSERT_TRUE(client.send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"));
  ASSERT_TRUE(client.read_until("HTTP/1.1 100 Continue\r\n\r\n"));
  ASSERT_TRUE(client.send("body"));
  auto r = client.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello:body");
}

TEST(HttpServerTest, HandlerFailuresGet500) {
  auto server = start_server([](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    if (request.path == "/throw") throw std::runtime_error("boom");
    if (request.path == "/drop") return;  // the responder is dropped unanswered
    if (request.path == "/drop-stream") {
      responder->start_stream(200, {});
      responder->write("partial");
      return;
    }
    responder->send(200, {}, "ok");
  });
  ASSERT_TRUE(server);
  Client client(server->port());
  for (const char* path : {"/throw", "/drop"}) {
    ASSERT_TRUE(client.send(get_request(path)));
    auto r = client.read_response();
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 500);
    auto json = nlohmann::json::parse(r->body, nullptr, false);
    EXPECT_EQ(json["error"]["status"], 500);
    ASSERT_TRUE(client.send(get_request("/fine")));  // the connection is still usable
    auto ok = client.read_response();
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->body, "ok");
  }
  ASSERT_TRUE(client.send(get_request("/drop-stream")));
  EXPECT_FALSE(client.read_response());  // cut short: no terminating chunk
  EXPECT_TRUE(client.wait_closed());
  EXPECT_NE(client.buffer().find("partial"), std::string::npos);
  client.close();  // ends the server's lingering close
  EXPECT_TRUE(eventually([&] { return server->num_inflight() == 0 && server->num_connections() == 0; }));
}

TEST(HttpServerTest, StopAcceptingRefusesAndAnswers503) {
  auto server = start_server(echo_handler);
  ASSERT_TRUE(server);
  Client kept(server->port());
  ASSERT_TRUE(kept.send(get_request("/before")));
  auto before = kept.read_response();
  ASSERT_TRUE(before);
  EXPECT_EQ(before->status, 200);

  server->stop_accepting();
  Client refused(server->port());
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(refused.connect_errno(), ECONNREFUSED);

  ASSERT_TRUE(kept.send(get_request("/after")));
  auto after = kept.read_response();
  ASSERT_TRUE(after);
  expect_error_json(*after, 503);
  EXPECT_TRUE(kept.wait_closed());
  server->stop_accepting();  // twice is fine
}

TEST(HttpServerTest, ShutdownWaitsForInflightStream) {
  ThreadBag threads;
  std::atomic<bool> handled{false};
  std::atomic<bool> stream_ended{false};
  auto server = start_server([&](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    responder->start_stream(200, {{"Content-Type", "text/event-stream"}});
    handled = true;
    threads.spawn([responder, &stream_ended] {
      for (int i = 0; i < 3; ++i) {
        std::this_thread::sleep_for(100ms);
        responder->write(fmt::format("data: {}\n\n", i));
      }
      stream_ended = true;
      responder->end();
    });
  });
  ASSERT_TRUE(server);
  Client client(server->port());
  ASSERT_TRUE(client.send(post_request("/s", "{}")));
  ASSERT_TRUE(eventually([&] { return handled.load(); }));

  Clock::time_point start = Clock::now();
  server->shutdown(5s);
  auto took = Clock::now() - start;
  EXPECT_TRUE(stream_ended.load());
  EXPECT_GE(took, 200ms);
  EXPECT_LT(took, 4s);
  EXPECT_EQ(server->num_inflight(), 0);
  EXPECT_EQ(server->num_connections(), 0);

  auto r = client.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->chunks, (std::vector<std::string>{"data: 0\n\n", "data: 1\n\n", "data: 2\n\n"}));
  EXPECT_TRUE(client.wait_closed());
  server->shutdown(5s);  // idempotent
}

TEST(HttpServerTest, ShutdownAfterGraceClosesStreamsAndOutlivesResponders) {
  std::mutex mu;
  std::shared_ptr<HttpResponder> held;
  std::atomic<int> disconnects{0};
  auto server = start_server([&](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
    responder->on_disconnect([&] { ++disconnects; });
    responder->start_stream(200, {});
    responder->write("first");
    std::lock_guard<std::mutex> lock(mu);
    held = std::move(responder);
  });
  ASSERT_TRUE(server);
  Client client(server->port());
  ASSERT_TRUE(client.send(post_request("/s", "{}")));
  ASSERT_TRUE(client.read_until("first"));

  Clock::time_point start = Clock::now();
  server->shutdown(100ms);
  auto took = Clock::now() - start;
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 4s);
  EXPECT_EQ(disconnects.load(), 1);
  EXPECT_TRUE(client.wait_closed());
  EXPECT_FALSE(client.read_response());  // never terminated

  std::lock_guard<std::mutex> lock(mu);
  ASSERT_TRUE(held);
  EXPECT_TRUE(held->disconnected());
  held->write("after shutdown");
  server.reset();  // the server is gone; the responder still works, as a no-op
  held->write("after destruction");
  held->end();
  held->send(200, {}, "x");
  bool ran = false;
  held->on_disconnect([&] { ran = true; });
  EXPECT_TRUE(ran);
  held.reset();
}

TEST(HttpServerTest, DestructorWithRespondersStillHeldElsewhere) {
  ThreadBag threads;
  std::atomic<bool> stop{false};
  {
    auto server = start_server([&](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
      responder->start_stream(200, {});
      threads.spawn([responder, &stop] {
        while (!stop.load()) {  // keeps writing through and after the server's destruction
          responder->write("tick");
          std::this_thread::sleep_for(1ms);
        }
        responder->end();
      });
    });
    ASSERT_TRUE(server);
    std::vector<Client> clients;
    for (int i = 0; i < 4; ++i) {
      clients.emplace_back(server->port());
      ASSERT_TRUE(clients.back().send(post_request("/s", "{}")));
      ASSERT_TRUE(clients.back().read_until("tick"));
    }
  }  // ~HttpServer: shutdown(0)
  std::this_thread::sleep_for(20ms);
  stop = true;
  threads.join();
}

TEST(HttpServerTest, IdleTimeoutClosesOnlyIdleConnections) {
  HttpServerConfig config = test_config();
  config.idle_timeout = std::chrono::seconds(1);
  ThreadBag threads;
  auto server = start_server(
      [&](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
        if (request.path != "/slow") {
          responder->send(200, {}, "fast");
          return;
        }
        threads.spawn([responder] {
          std::this_thread::sleep_for(1500ms);  // longer than the idle timeout
          responder->send(200, {}, "slow");
        });
      },
      config);
  ASSERT_TRUE(server);
  Client idle(server->port());
  ASSERT_TRUE(idle.send(get_request("/fast")));
  ASSERT_TRUE(idle.read_response());
  Client busy(server->port());
  ASSERT_TRUE(busy.send(get_request("/slow")));

  Clock::time_point start = Clock::now();
  EXPECT_TRUE(idle.wait_closed(5s));
  auto idle_for = Clock::now() - start;
  EXPECT_GE(idle_for, 900ms);
  auto slow = busy.read_response();
  ASSERT_TRUE(slow);
  EXPECT_EQ(slow->body, "slow");
}

TEST(HttpServerTest, MaxConnectionsClosesExtraConnections) {
  HttpServerConfig config = test_config();
  config.max_connections = 2;
  auto server = start_server(echo_handler, config);
  ASSERT_TRUE(server);
  Client a(server->port());
  Client b(server->port());
  for (Client* c : {&a, &b}) {
    ASSERT_TRUE(c->send(get_request("/x")));
    ASSERT_TRUE(c->read_response());
  }
  EXPECT_EQ(server->num_connections(), 2);
  Client extra(server->port());
  ASSERT_TRUE(extra.ok());
  EXPECT_TRUE(extra.wait_closed());
  EXPECT_TRUE(extra.buffer().empty());
  a.close();
  ASSERT_TRUE(eventually([&] { return server->num_connections() == 1; }));
  Client again(server->port());
  ASSERT_TRUE(again.send(get_request("/y")));
  EXPECT_TRUE(again.read_response());
}

TEST(HttpServerTest, StartFailsWhenThePortIsTaken) {
  auto server = start_server(echo_handler);
  ASSERT_TRUE(server);
  HttpServerConfig config = test_config();
  config.port = server->port();
  auto second = HttpServer::start(config, echo_handler, make_null_logger());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(fmt::format("127.0.0.1:{}", server->port())), std::string::npos)
      << second.status().message();
}

TEST(HttpServerTest, TwoThousandIdleKeepAliveConnections) {
  constexpr int kConnections = 2000;
  raise_fd_limit();
  if (fd_limit() < 2 * kConnections + 100) GTEST_SKIP() << "open-file limit " << fd_limit() << " is too low";
  auto server = start_server(echo_handler);
  ASSERT_TRUE(server);
  std::vector<Client> clients;
  clients.reserve(kConnections);
  for (int i = 0; i < kConnections; ++i) {
    clients.emplace_back(server->port());
    ASSERT_TRUE(clients.back().ok()) << "connection " << i << ": errno " << clients.back().connect_errno();
  }
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kConnections; ++i) {
      ASSERT_TRUE(clients[i].send(get_request(fmt::format("/r{}/c{}", round, i))));
    }
    int ok = 0;
    for (int i = 0; i < kConnections; ++i) {
      auto r = clients[i].read_response(10s);
      if (r && r->status == 200 && r->body.find(fmt::format("/r{}/c{} ", round, i)) != std::string::npos) ++ok;
    }
    EXPECT_EQ(ok, kConnections) << "round " << round;
    if (round == 0) {
      EXPECT_TRUE(eventually([&] { return server->num_connections() == kConnections; })) << server->num_connections();
    }
  }
  EXPECT_EQ(server->num_connections(), kConnections);
  clients.clear();
  EXPECT_TRUE(eventually([&] { return server->num_connections() == 0; })) << server->num_connections();
}

TEST(HttpServerTest, FiveHundredConcurrentStreams) {
  constexpr int kStreams = 500;
  constexpr int kChunks = 20;
  raise_fd_limit();
  if (fd_limit() < 2 * kStreams + 100) GTEST_SKIP() << "open-file limit " << fd_limit() << " is too low";

  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<int, std::shared_ptr<HttpResponder>>> streams;
  auto server = start_server([&](const HttpRequest& request, std::shared_ptr<HttpResponder> responder) {
    int index = std::stoi(request.path.substr(std::string("/stream/").size()));
    responder->start_stream(200, {{"Content-Type", "text/event-stream"}});
    std::lock_guard<std::mutex> lock(mu);
    streams.emplace_back(index, std::move(responder));
    cv.notify_all();
  });
  ASSERT_TRUE(server);

  // One writer thread drives every stream: a chunk to each, a short pause, again.
  std::thread writer([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, 10s, [&] { return streams.size() == kStreams; })) return;
    auto all = streams;
    lock.unlock();
    for (int chunk = 0; chunk < kChunks; ++chunk) {
      for (auto& [index, responder] : all)
        responder->write(fmt::format("data: {}-{}\n\n", index, chunk));
      std::this_thread::sleep_for(2ms);
    }
    for (auto& [index, responder] : all)
      responder->end();
  });

  std::vector<Client> clients;
  clients.reserve(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back(server->port());
    ASSERT_TRUE(clients.back().ok());
    ASSERT_TRUE(clients.back().send(post_request(fmt::format("/stream/{}", i), "{}")));
  }
  // One client thread reads all sockets with poll().
  std::vector<std::optional<Response>> responses(kStreams);
  int done = 0;
  auto deadline = Clock::now() + 15s;
  std::vector<pollfd> fds(kStreams);
  while (done < kStreams && Clock::now() < deadline) {
    for (int i = 0; i < kStreams; ++i)
      fds[i] = {responses[i] ? -1 : clients[i].fd(), POLLIN, 0};
    if (::poll(fds.data(), fds.size(), 100) < 0) break;
    for (int i = 0; i < kStreams; ++i) {
      if (responses[i] || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      clients[i].receive();
      responses[i] = clients[i].try_parse();
      if (responses[i]) {
        ++done;
      } else if (clients[i].eof()) {
        responses[i] = Response{};  // closed early: counted as a failure below
        ++done;
      }
    }
  }
  writer.join();
  int ok = 0;
  for (int i = 0; i < kStreams; ++i) {
    if (!responses[i] || responses[i]->status != 200 || responses[i]->chunks.size() != kChunks) continue;
    bool all_match = true;
    for (int c = 0; c < kChunks; ++c)
      all_match = all_match && responses[i]->chunks[c] == fmt::format("data: {}-{}\n\n", i, c);
    if (all_match) ++ok;
  }
  EXPECT_EQ(ok, kStreams);
  EXPECT_TRUE(eventually([&] { return server->num_inflight() == 0; }));
}

std::pair<int, std::string> run_command(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, ""};
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0)
    output.append(buf, n);
  int status = ::pclose(pipe);
  return {status, output};
}

TEST(HttpServerTest, CurlGetAndStreamedPost) {
  if (::access("/usr/bin/curl", X_OK) != 0) GTEST_SKIP() << "/usr/bin/curl not found";
  ThreadBag threads;
  auto server = start_server([&](const HttpRequest& request, const std::shared_ptr<HttpResponder>& responder) {
    if (request.path == "/hello") {
      responder->send(200, {{"Content-Type", "text/plain"}}, "hello world\n");
      return;
    }
    responder->start_stream(200, {{"Content-Type", "text/event-stream"}});
    threads.spawn([responder, body = request.body] {
      for (int i = 0; i < 5; ++i) {
        responder->write(fmt::format("data: {}-{}\n\n", body, i));
        std::this_thread::sleep_for(10ms);
      }
      responder->write("data: [DONE]\n\n");
      responder->end();
    });
  });
  ASSERT_TRUE(server);
  std::string base = fmt::format("http://127.0.0.1:{}", server->port());
  auto [get_status, get_output] = run_command(fmt::format("/usr/bin/curl -s --max-time 10 {}/hello", base));
  EXPECT_EQ(get_status, 0);
  EXPECT_EQ(get_output, "hello world\n");

  auto [post_status, post_output] = run_command(fmt::format(
      "/usr/bin/curl -sN --max-time 10 -X POST -H 'Content-Type: application/json' -d 'abc' {}/v1/stream", base));
  EXPECT_EQ(post_status, 0);
  EXPECT_EQ(post_output, "data: abc-0\n\ndata: abc-1\n\ndata: abc-2\n\ndata: abc-3\n\ndata: abc-4\n\ndata: [DONE]\n\n");
}

}  // namespace
}  // namespace bw::server
