// OpenAiService against a fake engine (no model): the request a route submits, and the
// response it assembles from scripted engine events — reasoning_content for DeepSeek-R1's
// chat template, streaming framing, n > 1 across prompts, errors and cancellation.
#include "server/openai_service.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "support/test_support.h"
#include "tokenizer/open_tokenizer.h"

namespace bw::server {
namespace {

using namespace std::chrono_literals;

// Emits scripted text pieces, one event per piece, from its own thread (as the real engine
// calls sinks from its step loop).
class FakeEngine final : public EngineClient {
 public:
  explicit FakeEngine(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {
    info_.name = "fake";
    info_.vocab_size = 151936;
    info_.max_model_len = 4096;
  }
  ~FakeEngine() override { join(); }
  // Waits for every scripted request to finish (call before the service goes away).
  void join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  Result<RequestId> submit(GenerationRequest request, EventSink sink) override {
    std::lock_guard lock(mutex_);
    if (reject_) return ResourceExhausted("the queue is full");
    const RequestId id = next_id_;
    next_id_ += request.n;
    submitted_.push_back(request);
    threads_.emplace_back([this, id, n = request.n, prompt = request.prompt_ids.size(), sink = std::move(sink)] {
      for (int32_t c = 0; c < n; ++c) {
        for (size_t i = 0; i < pieces_.size(); ++i) {
          EngineEvent e;
          e.request_id = id;
          e.index = c;
          e.token_ids = {static_cast<int32_t>(100 + i)};
          e.text = pieces_[i];
          if (i + 1 == pieces_.size()) {
            e.finish_reason = FinishReason::kStop;
            if (c + 1 == n) {
              e.done = true;
              e.usage = {static_cast<int32_t>(prompt), static_cast<int32_t>(n * pieces_.size()), 0};
            }
          }
          sink(std::move(e));
        }
      }
    });
    return id;
  }
  void cancel(RequestId id) override {
    std::lock_guard lock(mutex_);
    cancelled_.push_back(id);
  }
  EngineStats stats() const override { return {}; }
  const ModelInfo& model_info() const override { return info_; }

  std::vector<GenerationRequest> submitted() {
    std::lock_guard lock(mutex_);
    return submitted_;
  }
  void set_reject(bool reject) { reject_ = reject; }

 private:
  std::vector<std::string> pieces_;
  ModelInfo info_;
  std::mutex mutex_;
  RequestId next_id_ = 1;
  bool reject_ = false;
  std::vector<GenerationRequest> submitted_;
  std::vector<RequestId> cancelled_;
  std::vector<std::thread> threads_;
};

// Records the response; wait() blocks until it ended.
class FakeResponder final : public HttpResponder {
 public:
  void send(int status, HttpHeaders headers, std::string body) override {
    std::lock_guard lock(mutex_);
    status_ = status;
    headers_ = std::move(headers);
    body_ = std::move(body);
    ended_ = true;
    cv_.notify_all();
  }
  void start_stream(int status, HttpHeaders headers) override {
    std::lock_guard lock(mutex_);
    status_ = status;
    headers_ = std::move(headers);
    streaming_ = true;
  }
  void write(std::string data) override {
    std::lock_guard lock(mutex_);
    EXPECT_TRUE(streaming_) << "write before start_stream";
    body_ += data;
  }
  void end() override {
    std::lock_guard lock(mutex_);
    ended_ = true;
    cv_.notify_all();
  }
  void on_disconnect(std::function<void()> callback) override {}
  bool disconnected() const override { return false; }

  bool wait() {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, 10s, [this] { return ended_; });
  }
  int status() const { return status_; }
  const std::string& body() const { return body_; }
  std::string header(const std::string& name) const {
    for (const auto& [k, v] : headers_) {
      if (k == name) return v;
    }
    return "";
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int status_ = 0;
  HttpHeaders headers_;
  std::string body_;
  bool streaming_ = false;
  bool ended_ = false;
};

class OpenAiServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto vocab = test::testdata_file("tokenizer/ggml-vocab-qwen2.gguf");
    auto tmpl = test::testdata_file("chat-templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja");
    if (!vocab || !tmpl) GTEST_SKIP() << "shared test data not found (qwen2 vocab, R1 chat template)";
    auto tokenizer = open_tokenizer(vocab->string());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
    tokenizer_ = std::move(*tokenizer);
    std::ifstream f(*tmpl);
    std::stringstream source;
    source << f.rdbuf();
    auto chat_template = ChatTemplate::create(source.str());
    ASSERT_TRUE(chat_template.ok());
    template_ = std::move(*chat_template);
  }

  std::unique_ptr<OpenAiService> make_service(FakeEngine& engine, ServiceConfig config = {}) {
    config.served_model_name = "r1";
    auto service = std::make_unique<OpenAiService>(config, make_null_logger());
    ServedModel model;
    model.engine = &engine;
    model.tokenizer = tokenizer_.get();
    model.chat_template = template_;
    service->attach(std::move(model));
    return service;
  }

  static std::shared_ptr<FakeResponder> post(OpenAiService& service, const std::string& path, const std::string& body,
                                             HttpHeaders headers = {}) {
    HttpRequest request;
    request.method = "POST";
    request.path = path;
    request.target = path;
    request.body = body;
    request.headers = std::move(headers);
    auto responder = std::make_shared<FakeResponder>();
    service.handle(request, responder);
    EXPECT_TRUE(responder->wait());
    return responder;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> template_;
};

const std::vector<std::string> kReasoningOutput = {"Let me ", "think.</th", "ink>\n\nThe answer", " is 4."};

TEST_F(OpenAiServiceTest, DeepSeekR1ReasoningGoesToReasoningContent) {
  FakeEngine engine(kReasoningOutput);
  auto service = make_service(engine);
  auto r = post(*service, "/v1/chat/completions",
                R"({"model":"r1","messages":[{"role":"user","content":"2+2?"}],"temperature":0})");
  ASSERT_EQ(r->status(), 200) << r->body();
  auto j = nlohmann::json::parse(r->body());
  EXPECT_EQ(j["choices"][0]["message"]["reasoning_content"], "Let me think.");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "The answer is 4.");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  // The request the engine got: the R1 template's prompt, tokenized, greedy.
  ASSERT_EQ(engine.submitted().size(), 1u);
  const GenerationRequest sent = engine.submitted()[0];
  const std::string prompt = tokenizer_->decode(sent.prompt_ids);
  EXPECT_NE(prompt.find("2+2?"), std::string::npos) << prompt;
  EXPECT_EQ(prompt.substr(prompt.size() - 8), "<think>\n") << prompt;
  EXPECT_EQ(sent.sampling.temperature, 0.0f);
  EXPECT_EQ(sent.stop.max_tokens, 4096 - static_cast<int32_t>(sent.prompt_ids.size()));
  engine.join();
}

TEST_F(OpenAiServiceTest, StreamedReasoningDeltasThenContent) {
  FakeEngine engine(kReasoningOutput);
  auto service = make_service(engine);
  auto r = post(*service, "/v1/chat/completions",
                R"({"messages":[{"role":"user","content":"2+2?"}],"stream":true,)"
                R"("stream_options":{"include_usage":true}})");
  ASSERT_EQ(r->status(), 200);
  EXPECT_EQ(r->header("Content-Type"), "text/event-stream");
  std::string reasoning, content, role;
  std::vector<std::string> finishes;
  nlohmann::json usage;
  std::istringstream events(r->body());
  std::string line;
  std::vector<std::string> data;
  while (std::getline(events, line)) {
    if (line.empty()) continue;
    ASSERT_EQ(line.rfind("data: ", 0), 0u) << line;
    data.push_back(line.substr(6));
  }
  ASSERT_EQ(data.back(), "[DONE]");
  data.pop_back();
  for (const std::string& d : data) {
    auto chunk = nlohmann::json::parse(d);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    if (chunk.contains("usage") && !chunk["usage"].is_null()) usage = chunk["usage"];
    for (const auto& c : chunk["choices"]) {
      const auto& delta = c["delta"];
      if (delta.contains("role")) role = delta["role"];
      if (delta.contains("reasoning_content") && delta["reasoning_content"].is_string()) {
        EXPECT_TRUE(content.empty()) << "reasoning after content";
        reasoning += delta["reasoning_content"].get<std::string>();
      }
      if (delta.contains("content") && delta["content"].is_string()) content += delta["content"].get<std::string>();
      if (c.contains("finish_reason") && c["finish_reason"].is_string()) finishes.push_back(c["finish_reason"]);
    }
  }
  EXPECT_EQ(role, "assistant");
  EXPECT_EQ(reasoning, "Let me think.");
  EXPECT_EQ(content, "The answer is 4.");
  EXPECT_EQ(finishes, std::vector<std::string>{"stop"});
  EXPECT_EQ(usage["completion_tokens"], 4);
  engine.join();
}

TEST_F(OpenAiServiceTest, CompletionsFanOutPromptsAndChoices) {
  FakeEngine engine({"a", "b"});
  auto service = make_service(engine);
  auto r = post(*service, "/v1/completions", R"({"prompt":["one","two"],"n":2,"max_tokens":5,"echo":true})");
  ASSERT_EQ(r->status(), 200) << r->body();
  auto j = nlohmann::json::parse(r->body());
  ASSERT_EQ(j["choices"].size(), 4u);
  EXPECT_EQ(j["choices"][0]["text"], "oneab");  // echo prepends the prompt
  EXPECT_EQ(j["choices"][3]["text"], "twoab");
  EXPECT_EQ(j["choices"][3]["index"], 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
  ASSERT_EQ(engine.submitted().size(), 2u);
  EXPECT_EQ(engine.submitted()[0].n, 2);
  EXPECT_EQ(engine.submitted()[0].stop.max_tokens, 5);
  engine.join();
}

TEST_F(OpenAiServiceTest, QueueFullIs429WithRetryAfterAndAuthIsChecked) {
  FakeEngine engine({"x"});
  ServiceConfig config;
  config.api_keys = {"k1", "k2"};
  auto service = make_service(engine, config);
  engine.set_reject(true);
  auto limited = post(*service, "/v1/completions", R"({"prompt":"hi"})", {{"authorization", "Bearer k2"}});
  EXPECT_EQ(limited->status(), 429) << limited->body();
  EXPECT_EQ(limited->header("Retry-After"), "1");
  auto unauthorized = post(*service, "/v1/completions", R"({"prompt":"hi"})", {{"authorization", "Bearer nope"}});
  EXPECT_EQ(unauthorized->status(), 401);
  EXPECT_EQ(nlohmann::json::parse(unauthorized->body())["error"]["code"], "invalid_api_key");
  engine.join();
}

TEST_F(OpenAiServiceTest, HealthIs503UntilAttachedAndWhileDraining) {
  OpenAiService service(ServiceConfig{}, make_null_logger());
  HttpRequest health;
  health.method = "GET";
  health.path = "/health";
  auto before = std::make_shared<FakeResponder>();
  service.handle(health, before);
  EXPECT_EQ(before->status(), 503);
  auto loading = post(service, "/v1/completions", R"({"prompt":"hi"})");
  EXPECT_EQ(loading->status(), 503);
  FakeEngine engine({"x"});
  ServedModel model;
  model.engine = &engine;
  service.attach(std::move(model));
  auto ready = std::make_shared<FakeResponder>();
  service.handle(health, ready);
  EXPECT_EQ(ready->status(), 200);
  service.set_draining(true);
  auto draining = std::make_shared<FakeResponder>();
  service.handle(health, draining);
  EXPECT_EQ(draining->status(), 503);
}

}  // namespace
}  // namespace bw::server
