// The response cache end to end: the real `breakwater serve` on stories260K with a real
// redis-server as L2, driven by curl. Covers the issue's acceptance: an identical greedy
// request is a hit from L1 and, after a restart, from L2; sampled requests are never
// cached by default; killing Redis mid-run fails no request. Also prints the server-side
// latency of L1 and L2 hits (recorded in docs/PERF.md; never pass/fail on time).
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/redis_connection.h"
#include "support/redis_server.h"
#include "support/server_process.h"
#include "support/test_support.h"

namespace bw {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

test::CommandResult shell(const std::string& command) { return test::run_shell(command); }

using test::ServerProcess;

struct HttpResult {
  int status = 0;
  std::string body;
  std::string headers;  // lower-cased

  // The X-Cache header's value, "" when absent.
  std::string x_cache() const {
    const size_t at = headers.find("x-cache: ");
    if (at == std::string::npos) return "";
    const size_t end = headers.find_first_of("\r\n", at);
    return headers.substr(at + 9, end - at - 9);
  }
};

HttpResult post(const std::string& url, const std::string& body, const std::string& extra_headers = "") {
  static std::atomic<int> counter{0};
  const std::string header_file = std::filesystem::temp_directory_path() /
                                  ("bw-rc-curl-" + std::to_string(getpid()) + "-" + std::to_string(++counter));
  std::string quoted;
  for (char c : body)
    quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  test::CommandResult r = shell("curl -sS -N -D " + header_file + " -w '\\n%{http_code}' " + extra_headers +
                                " -H 'Content-Type: application/json' -d '" + quoted + "' " + url);
  HttpResult h;
  const size_t nl = r.output.rfind('\n');
  if (nl != std::string::npos) {
    h.status = std::atoi(r.output.c_str() + nl + 1);
    h.body = r.output.substr(0, nl);
  }
  std::ifstream f(header_file);
  h.headers.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  for (char& c : h.headers)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::filesystem::remove(header_file);
  return h;
}

// The value of one sample line of /metrics ("name{labels} value"), -1 when absent.
double metric(const std::string& metrics, const std::string& name_and_labels) {
  const size_t at = metrics.find(name_and_labels + " ");
  if (at == std::string::npos) return -1;
  return std::stod(metrics.substr(at + name_and_labels.size() + 1));
}

std::string get_metrics(const ServerProcess& server) { return shell("curl -s " + server.url() + "/metrics").output; }

// The choices of a non-streamed response without the per-response id and created.
Json content_of(const std::string& body) {
  Json j = Json::parse(body);
  return Json{{"choices", j["choices"]}, {"usage", j["usage"]}};
}

// A streamed completions response: the concatenated text, finish reason, usage chunk.
struct Streamed {
  std::string text;
  std::string finish_reason;
  Json usage;
  bool done = false;
  bool ok = true;
};

Streamed parse_stream(const std::string& body) {
  Streamed s;
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    if (line.rfind("data: ", 0) != 0 || s.done) {
      s.ok = false;
      continue;
    }
    if (line == "data: [DONE]") {
      s.done = true;
      continue;
    }
    Json chunk = Json::parse(line.substr(6), nullptr, false);
    if (chunk.is_discarded()) {
      s.ok = false;
      continue;
    }
    if (chunk.contains("usage") && !chunk["usage"].is_null()) s.usage = chunk["usage"];
    for (const Json& c : chunk["choices"]) {
      if (c.contains("text")) s.text += c["text"].get<std::string>();
      if (c.contains("delta") && c["delta"].contains("content")) s.text += c["delta"]["content"].get<std::string>();
      if (!c["finish_reason"].is_null()) s.finish_reason = c["finish_reason"];
    }
  }
  return s;
}

// Waits until the Redis at `port` holds at least `keys` keys (the L2 writer is async).
bool wait_for_redis_keys(int port, int64_t keys) {
  RedisOptions o;
  o.port = port;
  auto c = RedisConnection::connect(o);
  if (!c.ok()) return false;
  for (int i = 0; i < 200; ++i) {
    auto r = (*c)->command({"DBSIZE"});
    if (r.ok() && r->integer >= keys) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

class ResponseCacheE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = test::testdata_file("models/stories260K.gguf");
    if (!model) GTEST_SKIP() << "shared test data not found: models/stories260K.gguf (set BW_TESTDATA)";
    BW_REDIS_OR_SKIP();
    model_ = model->string();
    chat_template_ = (test::source_dir() / "tests/e2e/simple_chat.jinja").string();
    ASSERT_TRUE(redis_.start());
  }
  std::vector<std::string> server_args(std::vector<std::string> extra = {}) const {
    std::vector<std::string> args = {"--model",         model_,         "--served-model-name", "stories",
                                     "--chat-template", chat_template_, "--redis-url",         redis_.url()};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
  std::string model_;
  std::string chat_template_;
  test::RedisServer redis_;
};

constexpr const char* kGreedy = R"({"prompt":"Once upon a time","max_tokens":12,"temperature":0})";

TEST_F(ResponseCacheE2eTest, GreedyHitFromL1StreamedReplayAndFromL2AfterRestart) {
  Json first_content;
  {
    ServerProcess server(BW_BREAKWATER_BIN, server_args(), "error");
    ASSERT_TRUE(server.wait_ready());
    const std::string url = server.url() + "/v1/completions";
    HttpResult first = post(url, kGreedy);
    ASSERT_EQ(first.status, 200) << first.body;
    EXPECT_EQ(first.x_cache(), "miss") << first.headers;
    HttpResult second = post(url, kGreedy);
    ASSERT_EQ(second.status, 200) << second.body;
    EXPECT_EQ(second.x_cache(), "hit") << second.headers;
    first_content = content_of(first.body);
    EXPECT_EQ(content_of(second.body), first_content);
    EXPECT_NE(Json::parse(second.body)["id"], Json::parse(first.body)["id"]);  // a fresh id

    // The same request streamed: a hit replayed as SSE, with the usage chunk.
    HttpResult streamed = post(url, R"({"prompt":"Once upon a time","max_tokens":12,"temperature":0,)"
                                    R"("stream":true,"stream_options":{"include_usage":true}})");
    ASSERT_EQ(streamed.status, 200) << streamed.body;
    EXPECT_EQ(streamed.x_cache(), "hit") << streamed.headers;
    EXPECT_NE(streamed.headers.find("text/event-stream"), std::string::npos);
    Streamed s = parse_stream(streamed.body);
    EXPECT_TRUE(s.ok && s.done) << streamed.body;
    EXPECT_EQ(s.text, first_content["choices"][0]["text"]);
    EXPECT_EQ(s.finish_reason, first_content["choices"][0]["finish_reason"]);
    EXPECT_EQ(s.usage, first_content["usage"]);

    // Chat: a streamed miss first, then a non-streamed hit with the same message.
    const std::string chat_url = server.url() + "/v1/chat/completions";
    const std::string chat = R"({"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":10,)"
                             R"("temperature":0)";
    HttpResult chat_stream = post(chat_url, chat + R"(,"stream":true})");
    ASSERT_EQ(chat_stream.status, 200) << chat_stream.body;
    EXPECT_EQ(chat_stream.x_cache(), "miss");
    HttpResult chat_again = post(chat_url, chat + "}");
    ASSERT_EQ(chat_again.status, 200) << chat_again.body;
    EXPECT_EQ(chat_again.x_cache(), "hit");
    EXPECT_EQ(Json::parse(chat_again.body)["choices"][0]["message"]["content"], parse_stream(chat_stream.body).text);

    const std::string m = get_metrics(server);
    EXPECT_EQ(metric(m, R"(breakwater:response_cache_hits_total{model_name="stories",level="l1"})"), 3) << m;
    EXPECT_EQ(metric(m, R"(breakwater:response_cache_misses_total{model_name="stories"})"), 2) << m;
    EXPECT_GT(metric(m, R"(breakwater:response_cache_bytes{model_name="stories"})"), 0) << m;
    EXPECT_EQ(metric(m, R"(breakwater:response_cache_entries{model_name="stories"})"), 2) << m;
    ASSERT_TRUE(wait_for_redis_keys(redis_.port(), 2));
    EXPECT_EQ(server.stop(), 0);
  }
  // A restarted server (empty L1) on the same Redis: a hit from L2, then from L1.
  ServerProcess server(BW_BREAKWATER_BIN, server_args(), "error");
  ASSERT_TRUE(server.wait_ready());
  HttpResult from_l2 = post(server.url() + "/v1/completions", kGreedy);
  ASSERT_EQ(from_l2.status, 200) << from_l2.body;
  EXPECT_EQ(from_l2.x_cache(), "hit");
  EXPECT_EQ(content_of(from_l2.body), first_content);
  HttpResult from_l1 = post(server.url() + "/v1/completions", kGreedy);
  EXPECT_EQ(from_l1.x_cache(), "hit");
  const std::string m = get_metrics(server);
  EXPECT_EQ(metric(m, R"(breakwater:response_cache_hits_total{model_name="stories",level="l2"})"), 1) << m;
  EXPECT_EQ(metric(m, R"(breakwater:response_cache_hits_total{model_name="stories",level="l1"})"), 1) << m;
  EXPECT_EQ(server.stop(), 0);
}

TEST_F(ResponseCacheE2eTest, SampledRequestsAreNotCachedButSeededOnesAre) {
  ServerProcess server(BW_BREAKWATER_BIN, server_args(), "error");
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url() + "/v1/completions";
  const std::string sampled = R"({"prompt":"Once upon a time","max_tokens":8,"temperature":1.0})";
  for (int i = 0; i < 3; ++i) {
    HttpResult r = post(url, sampled);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.x_cache(), "miss") << "attempt " << i;
  }
  // Without a temperature OpenAI's default (1) applies: sampled too.
  EXPECT_EQ(post(url, R"({"prompt":"Once upon a time","max_tokens":8})").x_cache(), "miss");
  EXPECT_EQ(post(url, R"({"prompt":"Once upon a time","max_tokens":8})").x_cache(), "miss");
  // An explicit seed makes the output a function of the request: cached.
  const std::string seeded = R"({"prompt":"Once upon a time","max_tokens":8,"temperature":1.0,"seed":7})";
  HttpResult a = post(url, seeded);
  HttpResult b = post(url, seeded);
  EXPECT_EQ(a.x_cache(), "miss");
  EXPECT_EQ(b.x_cache(), "hit");
  EXPECT_EQ(content_of(a.body), content_of(b.body));
  const std::string m = get_metrics(server);
  EXPECT_EQ(metric(m, R"(breakwater:response_cache_hits_total{model_name="stories",level="l1"})"), 1) << m;
  EXPECT_EQ(metric(m, R"(breakwater:response_cache_entries{model_name="stories"})"), 1) << m;
  EXPECT_EQ(server.stop(), 0);
}

TEST_F(ResponseCacheE2eTest, CacheControlNoCacheBypassesTheLookup) {
  ServerProcess server(BW_BREAKWATER_BIN, server_args(), "error");
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url() + "/v1/completions";
  EXPECT_EQ(post(url, kGreedy).x_cache(), "miss");
  HttpResult bypass = post(url, kGreedy, "-H 'Cache-Control: no-cache'");
  EXPECT_EQ(bypass.status, 200);
  EXPECT_EQ(bypass.x_cache(), "miss");
  EXPECT_EQ(post(url, kGreedy).x_cache(), "hit");
  // no-store: neither looked up nor stored.
  const std::string other = R"({"prompt":"The cat","max_tokens":6,"temperature":0})";
  EXPECT_EQ(post(url, other, "-H 'Cache-Control: no-store'").x_cache(), "miss");
  EXPECT_EQ(post(url, other).x_cache(), "miss");
  EXPECT_EQ(post(url, other).x_cache(), "hit");
  EXPECT_EQ(server.stop(), 0);
}

TEST_F(ResponseCacheE2eTest, KillingRedisFailsNoRequest) {
  ServerProcess server(BW_BREAKWATER_BIN, server_args({"--redis-timeout-ms", "50"}), "error");
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url() + "/v1/completions";
  ASSERT_EQ(post(url, kGreedy).x_cache(), "miss");
  // Requests in the background; Redis is killed once a few have finished, and a few
  // more run after that.
  std::mutex mutex;
  std::vector<HttpResult> results;
  std::atomic<bool> stop{false};
  std::thread client([&] {
    for (int i = 0; !stop && i < 200; ++i) {
      HttpResult r =
          post(url, R"({"prompt":"Once upon a time )" + std::to_string(i) + R"(","max_tokens":6,"temperature":0})");
      std::lock_guard lock(mutex);
      results.push_back(std::move(r));
    }
  });
  auto num_done = [&] {
    std::lock_guard lock(mutex);
    return results.size();
  };
  while (num_done() < 4)
    std::this_thread::sleep_for(5ms);
  redis_.stop(/*kill=*/true);
  const size_t killed_at = num_done();
  while (num_done() < killed_at + 6)
    std::this_thread::sleep_for(5ms);
  stop = true;
  client.join();
  std::printf("%zu requests, Redis killed after %zu\n", results.size(), killed_at);
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].status, 200) << i << ": " << results[i].body;
    EXPECT_EQ(results[i].x_cache(), "miss") << i;
  }
  // Redis is gone: L1 still answers, new requests run, nothing fails.
  HttpResult hit = post(url, kGreedy);
  EXPECT_EQ(hit.status, 200);
  EXPECT_EQ(hit.x_cache(), "hit");
  HttpResult fresh = post(url, R"({"prompt":"A new prompt","max_tokens":6,"temperature":0})");
  EXPECT_EQ(fresh.status, 200) << fresh.body;
  EXPECT_EQ(fresh.x_cache(), "miss");
  const std::string m = get_metrics(server);
  EXPECT_GT(metric(m, R"(breakwater:response_cache_l2_errors_total{model_name="stories"})"), 0) << m;
  EXPECT_EQ(metric(m, R"(breakwater:response_cache_hits_total{model_name="stories",level="l1"})"), 1) << m;
  EXPECT_EQ(server.stop(), 0);
}

// A stalled Redis (stopped, so an L2 lookup waits for its full timeout) holds up only the
// request that looks up: with one HTTP I/O thread, /health and /v1/models still answer at
// once, and the waiting request is served (a miss) when the lookup times out.
TEST_F(ResponseCacheE2eTest, StalledRedisHoldsUpOnlyTheLookingRequest) {
  ServerProcess server(BW_BREAKWATER_BIN, server_args({"--redis-timeout-ms", "3000", "--io-threads", "1"}), "error");
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url();
  ASSERT_EQ(post(url + "/v1/completions", kGreedy).status, 200);  // connects to Redis
  redis_.pause();
  HttpResult slow;
  std::thread looking(
      [&] { slow = post(url + "/v1/completions", R"({"prompt":"Stalled lookup","max_tokens":4,"temperature":0})"); });
  std::this_thread::sleep_for(500ms);  // the lookup is waiting on Redis by now
  for (const char* path : {"/health", "/v1/models"}) {
    const auto start = std::chrono::steady_clock::now();
    const test::CommandResult r = shell("curl -s -o /dev/null -w '%{http_code}' " + url + path);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(r.output, "200") << path;
    EXPECT_LT(seconds, 1.5) << path << " waited for the stalled lookup";
  }
  looking.join();
  redis_.resume();
  EXPECT_EQ(slow.status, 200) << slow.body;
  EXPECT_EQ(slow.x_cache(), "miss");
  EXPECT_EQ(server.stop(), 0);
}

// Two prompts, n = 2, logprobs and echo: every choice is replayed, in both shapes.
TEST_F(ResponseCacheE2eTest, ManyChoicesWithLogprobsAndEchoReplay) {
  ServerProcess server(BW_BREAKWATER_BIN, server_args(), "error");
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url() + "/v1/completions";
  const std::string body = R"({"prompt":["Once upon a time","The dog"],"n":2,"max_tokens":5,"temperature":0,)"
                           R"("logprobs":2,"echo":true)";
  HttpResult miss = post(url, body + "}");
  ASSERT_EQ(miss.status, 200) << miss.body;
  EXPECT_EQ(miss.x_cache(), "miss");
  HttpResult hit = post(url, body + "}");
  ASSERT_EQ(hit.status, 200) << hit.body;
  EXPECT_EQ(hit.x_cache(), "hit");
  const Json content = content_of(miss.body);
  EXPECT_EQ(content_of(hit.body), content);
  ASSERT_EQ(content["choices"].size(), 4u);
  EXPECT_EQ(content["choices"][2]["text"].get<std::string>().rfind("The dog", 0), 0u);  // echo
  EXPECT_EQ(content["choices"][3]["logprobs"]["tokens"].size(), 5u);
  // Streamed: per choice its echo + text, its logprobs and a finish chunk.
  HttpResult streamed = post(url, body + R"(,"stream":true})");
  EXPECT_EQ(streamed.x_cache(), "hit");
  std::map<int, std::string> texts;
  std::map<int, size_t> num_logprobs;
  std::map<int, std::string> finish;
  std::istringstream lines(streamed.body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: {", 0) != 0) continue;
    const Json chunk = Json::parse(line.substr(6));
    for (const Json& c : chunk["choices"]) {
      const int i = c["index"];
      texts[i] += c["text"].get<std::string>();
      if (!c["logprobs"].is_null()) num_logprobs[i] += c["logprobs"]["tokens"].size();
      if (!c["finish_reason"].is_null()) finish[i] = c["finish_reason"];
    }
  }
  ASSERT_EQ(texts.size(), 4u) << streamed.body;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(texts[i], content["choices"][i]["text"]) << i;
    EXPECT_EQ(num_logprobs[i], 5u) << i;
    EXPECT_EQ(finish[i], content["choices"][i]["finish_reason"]) << i;
  }
  // Without echo or logprobs it is another entry (logprobs are in the key; echo is not).
  EXPECT_EQ(post(url, R"({"prompt":["Once upon a time","The dog"],"n":2,"max_tokens":5,"temperature":0,)"
                      R"("logprobs":2})")
                .x_cache(),
            "hit");
  EXPECT_EQ(post(url, R"({"prompt":["Once upon a time","The dog"],"n":2,"max_tokens":5,"temperature":0})").x_cache(),
            "miss");
  EXPECT_EQ(server.stop(), 0);
}

TEST_F(ResponseCacheE2eTest, TimedOutResultsAreNotStored) {
  ServerProcess server(BW_BREAKWATER_BIN, server_args({"--debug-step-delay-ms", "10"}), "error");
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url() + "/v1/completions";
  // About 0.5 s of work against a 0.1 s deadline; `timeout` is not part of the key.
  const std::string body =
      R"({"prompt":"Once upon a time","max_tokens":50,"ignore_eos":true,"temperature":0,"timeout":0.1})";
  for (int i = 0; i < 2; ++i) {
    HttpResult r = post(url, body);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(Json::parse(r.body)["choices"][0]["finish_reason"], "timeout") << r.body;
    EXPECT_EQ(r.x_cache(), "miss") << "attempt " << i;
  }
  const std::string m = get_metrics(server);
  EXPECT_EQ(metric(m, R"(breakwater:response_cache_stores_total{model_name="stories"})"), 0) << m;
  EXPECT_EQ(metric(m, R"(breakwater:response_cache_entries{model_name="stories"})"), 0) << m;
  EXPECT_EQ(server.stop(), 0);
}

// Server-side latency of cache hits (arrival -> response queued), from the histograms in
// /metrics. Printed for docs/PERF.md; the test only checks that hits were recorded.
TEST_F(ResponseCacheE2eTest, HitLatency) {
  auto mean = [](const std::string& m, const std::string& level) {
    const std::string labels = R"({model_name="stories",level=")" + level + R"("})";
    const double sum = metric(m, "breakwater:response_cache_hit_latency_seconds_sum" + labels);
    const double count = metric(m, "breakwater:response_cache_hit_latency_seconds_count" + labels);
    return std::make_pair(count, count > 0 ? sum / count : 0.0);
  };
  auto bucket_le = [](const std::string& m, const std::string& level, const std::string& le) {
    return metric(m, R"(breakwater:response_cache_hit_latency_seconds_bucket{model_name="stories",level=")" + level +
                         R"(",le=")" + le + R"("})");
  };
  constexpr int kHits = 100;
  {
    ServerProcess server(BW_BREAKWATER_BIN, server_args(), "error");
    ASSERT_TRUE(server.wait_ready());
    const std::string url = server.url() + "/v1/completions";
    ASSERT_EQ(post(url, kGreedy).x_cache(), "miss");
    for (int i = 0; i < kHits; ++i)
      ASSERT_EQ(post(url, kGreedy).x_cache(), "hit");
    const std::string m = get_metrics(server);
    const auto [count, seconds] = mean(m, "l1");
    EXPECT_EQ(count, kHits);
    std::printf("L1 hit: %d requests, mean %.1f us server-side; <=0.5 ms: %.0f, <=1 ms: %.0f\n", kHits, seconds * 1e6,
                bucket_le(m, "l1", "0.0005"), bucket_le(m, "l1", "0.001"));
    ASSERT_TRUE(wait_for_redis_keys(redis_.port(), 1));
    server.stop();
  }
  // No L1 (budget 0): every hit comes from Redis.
  ServerProcess server(BW_BREAKWATER_BIN, server_args({"--cache-max-bytes", "0"}), "error");
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url() + "/v1/completions";
  for (int i = 0; i < kHits; ++i)
    ASSERT_EQ(post(url, kGreedy).x_cache(), "hit");
  const std::string m = get_metrics(server);
  const auto [count, seconds] = mean(m, "l2");
  EXPECT_EQ(count, kHits);
  std::printf("L2 hit: %d requests, mean %.1f us server-side; <=1 ms: %.0f, <=2.5 ms: %.0f, <=5 ms: %.0f\n", kHits,
              seconds * 1e6, bucket_le(m, "l2", "0.001"), bucket_le(m, "l2", "0.0025"), bucket_le(m, "l2", "0.005"));
  EXPECT_EQ(server.stop(), 0);
}

}  // namespace
}  // namespace bw
