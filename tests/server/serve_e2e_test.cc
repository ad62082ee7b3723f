// `breakwater serve` end to end: the real binary on the real stories260K model, driven by
// curl and by the official OpenAI SDK (tests/e2e, installed by scripts/install-deps.sh).
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/server_process.h"
#include "support/test_support.h"

namespace bw {
namespace {

using namespace std::chrono_literals;

using test::CommandResult;

CommandResult shell(const std::string& command) { return test::run_shell(command); }

using test::curl;
using test::HttpResult;

using test::ServerProcess;

std::string json_post(const std::string& url, const std::string& body, const std::string& key = "test-key") {
  std::string quoted;
  for (char c : body)
    quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return "-H 'Content-Type: application/json' -H 'Authorization: Bearer " + key + "' -d '" + quoted + "' " + url;
}

class ServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = test::testdata_file("models/stories260K.gguf");
    if (!model) GTEST_SKIP() << "shared test data not found: models/stories260K.gguf (set BW_TESTDATA)";
    model_ = model->string();
    chat_template_ = (test::source_dir() / "tests/e2e/simple_chat.jinja").string();
  }
  std::string model_;
  std::string chat_template_;
};

TEST_F(ServeTest, CurlEndpointsAndErrors) {
  ServerProcess server(BW_BREAKWATER_BIN, {"--model", model_, "--served-model-name", "stories", "--api-key", "test-key",
                                           "--chat-template", chat_template_, "--max-body-bytes", "64KiB"});
  ASSERT_GT(server.port(), 0);
  ASSERT_TRUE(server.wait_ready());
  const std::string v1 = server.url() + "/v1";

  HttpResult models = curl("-H 'Authorization: Bearer test-key' " + v1 + "/models");
  EXPECT_EQ(models.status, 200) << models.body;
  EXPECT_EQ(nlohmann::json::parse(models.body)["data"][0]["id"], "stories");

  HttpResult chat = curl(
      json_post(v1 + "/chat/completions",
                R"({"model":"stories","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":8})"));
  ASSERT_EQ(chat.status, 200) << chat.body;
  auto j = nlohmann::json::parse(chat.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);

  // Streaming: role first, content deltas, finish_reason, usage chunk, [DONE].
  HttpResult stream =
      curl("-N " + json_post(v1 + "/completions", R"({"prompt":"Once upon a time","max_tokens":6,"stream":true,)"
                                                  R"("stream_options":{"include_usage":true}})"));
  ASSERT_EQ(stream.status, 200) << stream.body;
  EXPECT_NE(stream.headers.find("text/event-stream"), std::string::npos) << stream.headers;
  std::vector<nlohmann::json> chunks;
  bool done = false;
  std::istringstream lines(stream.body);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    ASSERT_EQ(line.rfind("data: ", 0), 0u) << line;
    ASSERT_FALSE(done) << "data after [DONE]";
    if (line == "data: [DONE]") {
      done = true;
      continue;
    }
    chunks.push_back(nlohmann::json::parse(line.substr(6)));
  }
  ASSERT_TRUE(done);
  ASSERT_GE(chunks.size(), 3u);
  EXPECT_EQ(chunks.back()["usage"]["completion_tokens"], 6);
  EXPECT_EQ(chunks[chunks.size() - 2]["choices"][0]["finish_reason"], "length");

  // Errors, each with an OpenAI error body.
  auto expect_error = [](const HttpResult& r, int status, const std::string& needle) {
    EXPECT_EQ(r.status, status) << r.body;
    auto e = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << r.body;
    ASSERT_TRUE(e.contains("error")) << r.body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(needle), std::string::npos) << r.body;
    EXPECT_TRUE(e["error"].contains("type") && e["error"].contains("param") && e["error"].contains("code"));
  };
  expect_error(curl(json_post(v1 + "/completions", "{not json")), 400, "JSON");
  expect_error(curl(json_post(v1 + "/completions", R"({"prompt":"x","max_tokens":"many"})")), 400, "max_tokens");
  expect_error(curl(json_post(v1 + "/completions", R"({"prompt":"x","temperature":9})")), 400, "temperature");
  expect_error(curl(json_post(v1 + "/completions", R"({"prompt":"x"})", "wrong-key")), 401, "API key");
  expect_error(curl(json_post(v1 + "/completions", R"({"model":"gpt-9","prompt":"x"})")), 404, "gpt-9");
  expect_error(curl("-H 'Authorization: Bearer test-key' " + server.url() + "/v2/nothing"), 404, "no route");
  const std::string big(70 * 1024, 'a');
  expect_error(curl(json_post(v1 + "/completions", R"({"prompt":")" + big + R"("})")), 413, "");
  std::string long_prompt = "[1";
  for (int i = 0; i < 200; ++i)
    long_prompt += ",403";
  expect_error(curl(json_post(v1 + "/completions", R"({"prompt":)" + long_prompt + "]}")), 400, "context length");

  HttpResult metrics = curl(server.url() + "/metrics");
  EXPECT_EQ(metrics.status, 200);
  for (const char* name : {"breakwater:num_requests_waiting", "breakwater:kv_cache_usage_perc",
                           "breakwater:time_to_first_token_seconds_bucket", "breakwater:prefix_cache_hits_total",
                           "breakwater:http_requests_total"}) {
    EXPECT_NE(metrics.body.find(name), std::string::npos) << name;
  }
  EXPECT_EQ(server.stop(SIGTERM), 0);
}

// Completions logprobs on a SentencePiece vocabulary: the tokens' texts (with their
// leading spaces) add up to the text, and text_offset points at each of them, with and
// without echo.
TEST_F(ServeTest, CompletionLogprobTokensAddUpToTheText) {
  ServerProcess server(BW_BREAKWATER_BIN, {"--model", model_, "--api-key", "test-key"});
  ASSERT_TRUE(server.wait_ready());
  for (bool echo : {false, true}) {
    HttpResult r = curl(json_post(server.url() + "/v1/completions",
                                  std::string(R"({"prompt":"Once upon a time","max_tokens":12,"logprobs":2,"echo":)") +
                                      (echo ? "true" : "false") + "}"));
    ASSERT_EQ(r.status, 200) << r.body;
    const auto choice = nlohmann::json::parse(r.body)["choices"][0];
    const std::string text = choice["text"];
    const auto& lp = choice["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), 12u) << r.body;
    std::string joined;
    for (const auto& t : lp["tokens"])
      joined += t.get<std::string>();
    ASSERT_GE(text.size(), joined.size());
    EXPECT_EQ(text.substr(text.size() - joined.size()), joined) << r.body;
    if (echo) {
      EXPECT_EQ(text.substr(0, text.size() - joined.size()), "Once upon a time") << r.body;
    }
    size_t offset = text.size() - joined.size();
    for (size_t i = 0; i < lp["tokens"].size(); ++i) {
      EXPECT_EQ(lp["text_offset"][i].get<size_t>(), offset) << i << " " << r.body;
      offset += lp["tokens"][i].get<std::string>().size();
    }
    // Words after the first start with a space, as the text has them.
    int spaced = 0;
    for (const auto& t : lp["tokens"])
      spaced += !t.get<std::string>().empty() && t.get<std::string>()[0] == ' ';
    EXPECT_GT(spaced, 0) << r.body;
  }
  EXPECT_EQ(server.stop(SIGTERM), 0);
}

// return_token_ids (vLLM's extension): the prompt's ids and the generated ids, in a body and
// in a stream (the chunks' ids add up to the body's for the same greedy request).
TEST_F(ServeTest, ReturnTokenIdsInBodyAndStream) {
  ServerProcess server(BW_BREAKWATER_BIN, {"--model", model_, "--api-key", "test-key"});
  ASSERT_TRUE(server.wait_ready());
  const std::string url = server.url() + "/v1/completions";
  const std::string request =
      R"({"prompt":[1,403,407,261,378],"max_tokens":10,"temperature":0,"return_token_ids":true)";
  HttpResult r = curl(json_post(url, request + "}"));
  ASSERT_EQ(r.status, 200) << r.body;
  const auto body = nlohmann::json::parse(r.body);
  const auto& choice = body["choices"][0];
  EXPECT_EQ(choice["prompt_token_ids"], nlohmann::json::parse("[1,403,407,261,378]"));
  ASSERT_EQ(choice["token_ids"].size(), 10u) << r.body;
  EXPECT_EQ(body["usage"]["completion_tokens"], 10);

  HttpResult s = curl("-N " + json_post(url, request + R"(,"stream":true})"));
  ASSERT_EQ(s.status, 200) << s.body;
  nlohmann::json streamed = nlohmann::json::array();
  int with_prompt_ids = 0;
  std::istringstream lines(s.body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: {", 0) != 0) continue;
    const auto chunk = nlohmann::json::parse(line.substr(6));
    for (const auto& c : chunk["choices"]) {
      for (const auto& id : c["token_ids"])
        streamed.push_back(id);
      with_prompt_ids += c.contains("prompt_token_ids");
    }
  }
  EXPECT_EQ(streamed, choice["token_ids"]) << s.body;
  EXPECT_EQ(with_prompt_ids, 1) << s.body;

  // Not asked: no ids.
  HttpResult plain = curl(json_post(url, R"({"prompt":"Once","max_tokens":3})"));
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(plain.body.find("token_ids"), std::string::npos) << plain.body;
  EXPECT_EQ(server.stop(SIGTERM), 0);
}

TEST_F(ServeTest, ChatWithoutTemplateIsAClear400) {
  ServerProcess server(BW_BREAKWATER_BIN, {"--model", model_});
  ASSERT_TRUE(server.wait_ready());
  HttpResult r =
      curl(json_post(server.url() + "/v1/chat/completions", R"({"messages":[{"role":"user","content":"hi"}]})"));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("--chat-template"), std::string::npos) << r.body;
  EXPECT_EQ(server.stop(SIGINT), 0);
}

TEST_F(ServeTest, QueueFullGives429WithRetryAfter) {
  ServerProcess server(BW_BREAKWATER_BIN,
                       {"--model", model_, "--max-seqs", "1", "--max-queue", "0", "--debug-step-delay-ms", "10"});
  ASSERT_TRUE(server.wait_ready());
  // 24 concurrent requests of 100 tokens (a second each) against room for one.
  const std::string body = R"({"prompt":"Once upon a time","max_tokens":100,"ignore_eos":true})";
  std::string cmd = "for i in $(seq 24); do curl -s -o /dev/null -D - -w '%{http_code}\\n' " +
                    json_post(server.url() + "/v1/completions", body) + " & done; wait";
  CommandResult r = shell(cmd);
  size_t ok = 0, limited = 0;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    if (line == "200") ++ok;
    if (line == "429") ++limited;
  }
  EXPECT_GE(ok, 1u) << r.output;
  EXPECT_GE(limited, 1u) << r.output;
  EXPECT_EQ(ok + limited, 24u) << r.output;
  EXPECT_NE(r.output.find("Retry-After"), std::string::npos) << r.output;
  EXPECT_EQ(server.stop(SIGTERM), 0);
}

TEST_F(ServeTest, OfficialOpenAiSdk) {
  const auto sdk = test::source_dir() / "tests/e2e/node_modules/openai";
  ASSERT_TRUE(std::filesystem::exists(sdk))
      << "the openai npm package is missing: run scripts/install-deps.sh (npm ci in tests/e2e)";
  ServerProcess server(BW_BREAKWATER_BIN, {"--model", model_, "--served-model-name", "stories", "--api-key", "test-key",
                                           "--chat-template", chat_template_});
  ASSERT_TRUE(server.wait_ready());
  const std::string script = (test::source_dir() / "tests/e2e/openai_client_test.mjs").string();
  CommandResult r = shell("BW_URL=" + server.url() + "/v1 BW_MODEL=stories BW_API_KEY=test-key node " + script);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("all checks passed"), std::string::npos) << r.output;
  EXPECT_EQ(server.stop(SIGTERM), 0);
}

TEST_F(ServeTest, SigtermFinishesInFlightStreamsThenExitsZero) {
  ServerProcess server(BW_BREAKWATER_BIN,
                       {"--model", model_, "--shutdown-timeout", "20", "--debug-step-delay-ms", "10"});
  ASSERT_TRUE(server.wait_ready());
  // A long stream in the background, then SIGTERM while it runs.
  const std::string out = std::filesystem::temp_directory_path() / ("bw-drain-" + std::to_string(getpid()));
  const std::string body = R"({"prompt":"Once upon a time","max_tokens":120,"ignore_eos":true,"stream":true})";
  shell("(curl -sN " + json_post(server.url() + "/v1/completions", body) + " > " + out + " &)");
  std::this_thread::sleep_for(300ms);  // the stream needs about 1.2 s
  EXPECT_EQ(server.stop(SIGTERM), 0);
  std::this_thread::sleep_for(100ms);
  std::ifstream f(out);
  const std::string streamed((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::filesystem::remove(out);
  EXPECT_NE(streamed.find("data: [DONE]"), std::string::npos) << streamed;
  EXPECT_NE(streamed.find("\"finish_reason\":\"length\""), std::string::npos) << streamed;
}

// The issue's bounded load test: 2,000 idle keep-alive connections held while 500
// concurrent streams complete with correct framing; the server's memory stays bounded.
TEST_F(ServeTest, LoopbackLoad2000IdleConnectionsAnd500Streams) {
  ServerProcess server(BW_BREAKWATER_BIN, {"--model", model_, "--io-threads", "2"});
  ASSERT_TRUE(server.wait_ready());
  const std::string script = (test::source_dir() / "tests/e2e/load_test.py").string();
  CommandResult r = shell("python3 " + script + " --port " + std::to_string(server.port()) + " --pid " +
                          std::to_string(server.pid()) + " --idle 2000 --streams 500 --max-tokens 16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The summary is the last line.
  std::string last = r.output.substr(0, r.output.find_last_not_of('\n') + 1);
  last = last.substr(last.rfind('\n') == std::string::npos ? 0 : last.rfind('\n') + 1);
  auto summary = nlohmann::json::parse(last, nullptr, false);
  ASSERT_FALSE(summary.is_discarded()) << r.output;
  EXPECT_EQ(summary["stream_errors"], 0) << r.output;
  EXPECT_EQ(summary["idle_errors"], 0) << r.output;
  const int64_t growth =
      summary["rss_mib"]["after_streams"].get<int64_t>() - summary["rss_mib"]["start"].get<int64_t>();
  EXPECT_LT(growth, 512) << "server memory grew by " << growth << " MiB: " << r.output;
  std::printf("load test: %s\n", summary.dump().c_str());
  EXPECT_EQ(server.stop(SIGTERM), 0);
}

TEST_F(ServeTest, ClientDisconnectCancelsTheRequest) {
  ServerProcess server(BW_BREAKWATER_BIN,
                       {"--model", model_, "--served-model-name", "stories", "--debug-step-delay-ms", "10"});
  ASSERT_TRUE(server.wait_ready());
  // A non-streamed request of about a second; the client gives up after 0.3 s.
  const std::string body = R"({"prompt":"Once upon a time","max_tokens":100,"ignore_eos":true})";
  CommandResult r = shell("curl -s --max-time 0.3 " + json_post(server.url() + "/v1/completions", body));
  EXPECT_NE(r.exit_code, 0);  // curl timed out
  std::string metrics;
  for (int i = 0; i < 100; ++i) {
    metrics = curl(server.url() + "/metrics").body;
    if (metrics.find(R"(finished_reason="abort"} 1)") != std::string::npos) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_NE(metrics.find(R"(finished_reason="abort"} 1)"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find(R"(breakwater:num_requests_running{model_name="stories"} 0)"), std::string::npos) << metrics;
  EXPECT_EQ(server.stop(SIGTERM), 0);
}

}  // namespace
}  // namespace bw
