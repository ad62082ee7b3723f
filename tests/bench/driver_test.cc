// The driver and HTTP client against a canned loopback server: framing, SSE split across
// TCP writes, usage, and every failure kind.
#include "bench/driver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bw::bench {
namespace {

using namespace std::chrono_literals;

// Answers every connection with the pieces `respond(request)` returns, written one by one
// a few ms apart, then closes. No pieces: holds the connection until the client closes it.
class CannedServer {
 public:
  using Respond = std::function<std::vector<std::string>(const std::string& request)>;

  explicit CannedServer(Respond respond) : respond_(std::move(respond)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return;
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    listen(listen_fd_, 64);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~CannedServer() {
    stopping_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    close(listen_fd_);
    acceptor_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& t : handlers_)
      t.join();
  }
  HttpEndpoint endpoint() const { return {"127.0.0.1", std::to_string(port_), ""}; }
  int max_concurrent() const { return max_concurrent_; }

 private:
  void accept_loop() {
    while (!stopping_) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      std::lock_guard<std::mutex> lock(mu_);
      handlers_.emplace_back([this, fd] { handle(fd); });
    }
  }

  void handle(int fd) {
    const int now = ++concurrent_;
    int seen = max_concurrent_;
    while (now > seen && !max_concurrent_.compare_exchange_weak(seen, now)) {
    }
    std::string request;
    char buf[4096];
    size_t need = std::string::npos;
    while (request.size() < need) {
      const ssize_t n = read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
      const size_t end = request.find("\r\n\r\n");
      if (end != std::string::npos && need == std::string::npos) {
        size_t length = 0;
        const size_t at = request.find("Content-Length: ");
        if (at != std::string::npos && at < end) length = std::stoul(request.substr(at + 16));
        need = end + 4 + length;
      }
    }
    const std::vector<std::string> pieces = respond_(request);
    if (pieces.empty()) {
      while (read(fd, buf, sizeof(buf)) > 0) {
      }
    }
    for (const std::string& piece : pieces) {
      if (write(fd, piece.data(), piece.size()) < 0) break;
      std::this_thread::sleep_for(3ms);
    }
    --concurrent_;
    close(fd);
  }

  Respond respond_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> concurrent_{0};
  std::atomic<int> max_concurrent_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> handlers_;
};

std::string chunk(const std::string& data) {
  char size[16];
  std::snprintf(size, sizeof(size), "%zx", data.size());
  return std::string(size) + "\r\n" + data + "\r\n";
}

const char* kStreamHeader =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

// A completion stream of three text chunks, the SSE lines cut in odd places.
std::vector<std::string> good_stream(bool with_usage) {
  std::string sse =
      "data: {\"choices\":[{\"text\":\"Once\"}]}\n\n"
      "data: {\"choices\":[{\"text\":\" upon\"}]}\r\n\r\n"
      "data: {\"choices\":[{\"text\":\" a\",\"finish_reason\":\"length\"}]}\n\n";
  if (with_usage) sse += "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\n";
  sse += "data: [DONE]\n\n";
  std::vector<std::string> pieces = {kStreamHeader};
  for (size_t pos = 0; pos < sse.size(); pos += 17)
    pieces.push_back(chunk(sse.substr(pos, 17)));
  pieces.emplace_back("0\r\n\r\n");
  return pieces;
}

DriverOptions options_for(const HttpEndpoint& endpoint, size_t n) {
  DriverOptions options;
  options.endpoint = endpoint;
  options.request.model = "m";
  options.arrival_offsets_s.assign(n, 0.0);
  options.timeout = 5000ms;
  return options;
}

std::vector<BenchPrompt> prompts(size_t n) { return std::vector<BenchPrompt>(n, BenchPrompt{"hello", 1, 3}); }

TEST(DriverTest, StreamedTokensUsageAndConcurrencyCap) {
  std::atomic<int> bodies_ok{0};
  CannedServer server([&](const std::string& request) {
    if (request.rfind("POST /v1/completions HTTP/1.1", 0) == 0 &&
        request.find("\"stream_options\":{\"include_usage\":true}") != std::string::npos &&
        request.find("Authorization: Bearer sk-test") != std::string::npos &&
        request.find("Cache-Control: no-store") != std::string::npos) {
      ++bodies_ok;
    }
    return good_stream(true);
  });
  DriverOptions options = options_for(server.endpoint(), 6);
  options.api_key = "sk-test";
  options.max_concurrency = 2;
  std::vector<Progress> seen;
  auto result = run_benchmark(
      prompts(6), options, [&](const Progress& p) { seen.push_back(p); }, 5ms);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(bodies_ok.load(), 6);
  EXPECT_EQ(result->max_in_flight, 2u);
  EXPECT_GE(server.max_concurrent(), 2);  // the two really overlapped
  ASSERT_EQ(result->records.size(), 6u);
  for (const RequestRecord& r : result->records) {
    EXPECT_TRUE(r.success) << r.failure << ": " << r.error;
    EXPECT_EQ(r.output_tokens, 3);
    EXPECT_TRUE(r.usage_reported);
    EXPECT_EQ(r.prompt_tokens, 5);
    EXPECT_EQ(r.num_text_chunks, 3);
    EXPECT_EQ(r.itl_s.size(), 2u);
    EXPECT_GT(r.ttft_s, 0.0);
    EXPECT_GE(r.e2e_s, r.ttft_s);
    EXPECT_EQ(r.output_bytes, std::string("Once upon a").size());
  }
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().num_completed, 6u);
  EXPECT_EQ(seen.back().output_tokens, 18);
  EXPECT_GT(result->duration_s, 0.0);
}

TEST(DriverTest, WithoutUsageTextChunksAreCounted) {
  CannedServer server([](const std::string&) { return good_stream(false); });
  auto result = run_benchmark(prompts(2), options_for(server.endpoint(), 2), nullptr);
  ASSERT_TRUE(result.ok());
  for (const RequestRecord& r : result->records) {
    EXPECT_TRUE(r.success) << r.error;
    EXPECT_FALSE(r.usage_reported);
    EXPECT_EQ(r.output_tokens, 3);
  }
  const BenchSummary s = summarize(result->records, result->duration_s, {});
  EXPECT_EQ(s.num_without_usage, 2u);
}

TEST(DriverTest, FailureKinds) {
  CannedServer server([](const std::string& request) -> std::vector<std::string> {
    if (request.find("\"prompt\":\"limited\"") != std::string::npos) {
      const std::string body = R"({"error":{"message":"queue full","type":"rate_limit"}})";
      return {"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: " +
              std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body};
    }
    if (request.find("\"prompt\":\"garbage\"") != std::string::npos) {
      return {kStreamHeader, chunk("data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {oops\n\n"), "0\r\n\r\n"};
    }
    if (request.find("\"prompt\":\"error\"") != std::string::npos) {
      return {kStreamHeader, chunk("data: {\"error\":{\"message\":\"engine died\"}}\n\n"), "0\r\n\r\n"};
    }
    if (request.find("\"prompt\":\"empty\"") != std::string::npos) {
      return {kStreamHeader, chunk("data: [DONE]\n\n"), "0\r\n\r\n"};
    }
    if (request.find("\"prompt\":\"cut\"") != std::string::npos) {
      return {kStreamHeader, chunk("data: {\"choices\":[{\"text\":\"a\"}]}\n\n")};  // closes mid-body
    }
    return {};  // "hang": never answers
  });
  std::vector<BenchPrompt> ps;
  for (const char* p : {"limited", "garbage", "error", "empty", "cut", "hang"})
    ps.push_back({p, 1, 3});
  DriverOptions options = options_for(server.endpoint(), ps.size());
  options.timeout = 300ms;
  auto result = run_benchmark(ps, options, nullptr);
  ASSERT_TRUE(result.ok());
  const auto& r = result->records;
  EXPECT_EQ(r[0].failure, "http_429");
  EXPECT_EQ(r[0].http_status, 429);
  EXPECT_NE(r[0].error.find("queue full"), std::string::npos) << r[0].error;
  EXPECT_EQ(r[1].failure, "bad_stream") << r[1].error;
  EXPECT_EQ(r[2].failure, "bad_stream");
  EXPECT_NE(r[2].error.find("engine died"), std::string::npos) << r[2].error;
  EXPECT_EQ(r[3].failure, "bad_stream");
  EXPECT_NE(r[3].error.find("without any generated text"), std::string::npos) << r[3].error;
  EXPECT_EQ(r[4].failure, "io_error") << r[4].error;
  EXPECT_EQ(r[5].failure, "timeout") << r[5].error;
  const BenchSummary s = summarize(r, result->duration_s, {});
  EXPECT_EQ(s.num_failed, 6u);
  EXPECT_EQ(s.num_completed, 0u);
  EXPECT_EQ(s.failures.at("bad_stream"), 3u);
}

TEST(DriverTest, ConnectErrorAndOpenLoopTiming) {
  // A port that was free a moment ago: nothing listens there.
  int port = 0;
  {
    CannedServer probe([](const std::string&) { return std::vector<std::string>{}; });
    port = std::stoi(probe.endpoint().port);
  }
  DriverOptions options = options_for({"127.0.0.1", std::to_string(port), ""}, 3);
  options.arrival_offsets_s = {0.0, 0.05, 0.40};
  auto result = run_benchmark(prompts(3), options, nullptr);
  ASSERT_TRUE(result.ok());
  for (const RequestRecord& r : result->records)
    EXPECT_EQ(r.failure, "connect_error") << r.error;
  // Open loop: each request goes at its arrival time, not earlier, and does not wait for
  // later arrivals.
  EXPECT_GE(result->records[1].start_s, 0.05);
  EXPECT_GE(result->records[2].start_s, 0.40);
  EXPECT_LT(result->records[1].start_s, result->records[2].start_s - 0.2);
  EXPECT_GE(result->duration_s, 0.40);
}

TEST(DriverTest, ArrivalCountMustMatch) {
  DriverOptions options = options_for({"127.0.0.1", "1", ""}, 1);
  EXPECT_EQ(run_benchmark(prompts(2), options, nullptr).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bw::bench
