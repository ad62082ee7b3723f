// The engine's overlapped decoding (EngineConfig::async_scheduling) in CI: a recording
// backend over the CPU backend stands in for CUDA graphs and asynchronous device sampling
// (tests/support/recording_backend.h), so the engine takes the same path as on a GPU: the
// next decode step is enqueued, its input tokens taken from the last step's sampled ids,
// before the host has seen them. The CPU backend is batch invariant, so every request must
// produce exactly the tokens it produces without overlap, whatever else runs with it:
// greedy and seeded sampling, staggered max_tokens, stop tokens and stop strings mid-way,
// penalties (their pending token counted on the device), logprobs and logit bias (sampled
// on the device too), late arrivals, a cancel and a deadline.
// tests/engine/engine_overlap_gpu_test.cc runs the same comparisons on CUDA.
#include <gtest/gtest.h>

#include <random>
#include <sstream>
#include <thread>

#include <spdlog/sinks/ostream_sink.h>

#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "model/checkpoint.h"
#include "support/engine_runs.h"
#include "support/recording_backend.h"
#include "support/test_support.h"
#include "support/tiny_model.h"
#include "tokenizer/open_tokenizer.h"

namespace bw {
namespace {

using namespace std::chrono_literals;
using test::expect_same_tokens;
using test::RecordingBackend;
using test::run_all;

struct OverlapRig {
  explicit OverlapRig(RecordingBackend::Sampling sampling = RecordingBackend::Sampling::kEmulated)
      : backend(cpu, sampling) {}
  CpuBackend cpu{2};
  RecordingBackend backend;
  std::unique_ptr<CausalLM> model;
  std::unique_ptr<Tokenizer> tokenizer;  // stories260K only

  Status load(const std::string& path, bool with_tokenizer) {
    ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open(path));
    WeightLoadOptions load;
    load.weight_dtype = DType::kF32;
    ASSIGN_OR_RETURN(model, load_causal_lm(ckpt, backend, load));
    if (with_tokenizer) {
      ASSIGN_OR_RETURN(tokenizer, open_tokenizer(path));
    }
    return OkStatus();
  }

  std::unique_ptr<Engine> engine(bool overlap, std::chrono::milliseconds step_delay = {},
                                 int32_t max_batched_tokens = 2048, int32_t kv_blocks = 256,
                                 std::chrono::milliseconds log_slow_steps = {}, Logger logger = nullptr) {
    EngineConfig config;
    config.log_slow_steps = log_slow_steps;
    config.debug_step_delay = step_delay;
    config.scheduler.max_num_batched_tokens = max_batched_tokens;
    config.scheduler.max_model_len = 128;
    config.scheduler.max_num_seqs = 16;
    config.kv_num_blocks = kv_blocks;
    config.async_scheduling = overlap;
    if (logger == nullptr) logger = make_stderr_logger("overlap-test", "warn");
    auto e = Engine::create(*model, backend, tokenizer.get(), config, logger);
    EXPECT_TRUE(e.ok()) << e.status().to_string();
    return e.ok() ? std::move(*e) : nullptr;
  }
};

std::vector<GenerationRequest> mixed_requests(int count, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> token(3, vocab - 1);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < count; ++i) {
    GenerationRequest r;
    r.prompt_ids.resize(static_cast<size_t>(3 + 7 * i));
    for (auto& id : r.prompt_ids)
      id = token(rng);
    r.stop.max_tokens = 9 + 5 * i;
    r.stop.ignore_eos = true;
    r.detokenize = false;
    if (i % 2 == 1) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = 40 + i;
    }
    requests.push_back(std::move(r));
  }
  return requests;
}

class EngineOverlapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto path = test::write_tiny_model(dir_, "tiny-llama", 13);
    ASSERT_TRUE(path.ok()) << path.status().to_string();
    const Status loaded = setup_.load(*path, false);
    ASSERT_TRUE(loaded.ok()) << loaded.to_string();
  }
  int32_t vocab() const { return static_cast<int32_t>(setup_.model->config().vocab_size); }

  test::TempDir dir_;
  OverlapRig setup_;
};

TEST_F(EngineOverlapTest, SameTokensWithAndWithoutOverlap) {
  std::vector<GenerationRequest> requests = mixed_requests(10, vocab(), 1);
  auto plain_engine = setup_.engine(false);
  auto overlapped_engine = setup_.engine(true);
  const std::vector<Completion> plain = run_all(*plain_engine, requests);
  EXPECT_EQ(plain_engine->stats().num_overlapped_steps, 0);
  const int64_t samples_before = setup_.backend.async_samples;
  expect_same_tokens(run_all(*overlapped_engine, requests), plain, "limits");
  EngineStats stats = overlapped_engine->stats();
  EXPECT_GT(stats.num_overlapped_steps, stats.num_steps / 2) << stats.num_steps;
  EXPECT_GT(setup_.backend.async_samples, samples_before);
  EXPECT_GT(setup_.backend.selects, 0);
  EXPECT_EQ(stats.kv_used_blocks, 0);

  // Stop tokens mid-way for every other request, and a penalty on one that runs to its end.
  for (size_t i = 0; i < requests.size(); i += 2)
    requests[i].stop.stop_token_ids = {plain[i].choices[0].token_ids[4]};
  requests[5].sampling.repetition_penalty = 1.2f;
  const std::vector<Completion> plain_stops = run_all(*plain_engine, requests);
  const int64_t overlapped_before = overlapped_engine->stats().num_overlapped_steps;
  expect_same_tokens(run_all(*overlapped_engine, requests), plain_stops, "stops");
  int stopped = 0;
  for (const Completion& c : plain_stops)
    stopped += c.choices[0].finish_reason == FinishReason::kStop ? 1 : 0;
  EXPECT_GE(stopped, 4);
  stats = overlapped_engine->stats();
  EXPECT_GT(stats.num_overlapped_steps, overlapped_before);
  EXPECT_EQ(stats.kv_used_blocks, 0);
  EXPECT_EQ(stats.requests_failed, 0);
}

// --log-slow-steps: with overlapped steps a step's tokens come at least the host's delay
// after the previous step's, so every step but the first is logged with what it computed
// (the prompt in two chunks of 4 and 3 tokens: the first samples nothing and is not waited
// for); a threshold above the delay logs nothing.
TEST_F(EngineOverlapTest, SlowStepsAreLoggedWithWhatTheyComputed) {
  const auto run_logged = [&](std::chrono::milliseconds threshold) {
    std::ostringstream log;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
    auto logger = std::make_shared<spdlog::logger>("slow-steps", sink);
    auto engine = setup_.engine(true, 25ms, /*max_batched_tokens=*/4, 256, threshold, logger);
    GenerationRequest r;
    r.prompt_ids = {5, 6, 7, 8, 9, 10, 11};
    r.stop.max_tokens = 6;
    r.stop.ignore_eos = true;
    r.detokenize = false;
    const std::vector<Completion> done = run_all(*engine, {r});
    EXPECT_EQ(done.at(0).choices.at(0).token_ids.size(), 6U);
    engine->shutdown();
    return log.str();
  };
  const std::string logged = run_logged(20ms);
  size_t lines = 0;
  for (size_t at = logged.find("slow step: "); at != std::string::npos; at = logged.find("slow step: ", at + 1))
    ++lines;
  EXPECT_GE(lines, 4U) << logged;
  EXPECT_NE(logged.find("1 rows (0 of one token, 1 prompt chunks of 3 tokens), longest context 7, overlapped, after 1 "
                        "prompt-chunk step(s) not waited for"),
            std::string::npos)
      << logged;
  // The decode steps: one row of one token, after the 7-token prompt.
  EXPECT_NE(logged.find("1 rows (1 of one token, 0 prompt chunks of 0 tokens), longest context 8, overlapped"),
            std::string::npos)
      << logged;
  EXPECT_EQ(run_logged(10s).find("slow step"), std::string::npos);
}

// Penalty rows overlap too: the step scheduled ahead samples before the host has its newest
// token, so the sampling counts that token from the in-flight step's ids. Penalties strong
// enough to change most tokens of the tiny model, so a history one token short would show.
TEST_F(EngineOverlapTest, PenaltiesOverlapWithTheSameTokens) {
  auto plain_engine = setup_.engine(false);
  auto overlapped_engine = setup_.engine(true);
  test::expect_penalties_overlap(*plain_engine, *overlapped_engine, mixed_requests(8, vocab(), 4), 4);
}

// Not only decode steps: prompt chunks (16 tokens a step here, so long prompts take several
// steps beside the decoding ones) and admissions are scheduled ahead too, the sequences
// whose token is still being sampled taking it on the device as in decode steps.
TEST_F(EngineOverlapTest, PromptChunksAndAdmissionsOverlapToo) {
  std::vector<GenerationRequest> requests = mixed_requests(10, vocab(), 5);
  auto plain_engine = setup_.engine(false, {}, 16);
  auto overlapped_engine = setup_.engine(true, {}, 16);
  test::expect_chunks_overlap(*plain_engine, *overlapped_engine, requests);

  // One long prompt alone (not in the prefix cache): its first chunks sample nothing, and
  // the steps after them have no token to take from the device.
  GenerationRequest long_prompt = requests[9];
  long_prompt.prompt_ids.resize(60);
  for (size_t i = 0; i < long_prompt.prompt_ids.size(); ++i)
    long_prompt.prompt_ids[i] = 3 + static_cast<int32_t>(i * 13) % (vocab() - 3);
  const Completion alone = run_all(*plain_engine, {long_prompt})[0];
  const int64_t steps_before = overlapped_engine->stats().num_steps;
  const int64_t overlapped_before = overlapped_engine->stats().num_overlapped_steps;
  expect_same_tokens(run_all(*overlapped_engine, {long_prompt}), {alone}, "long prompt");
  const EngineStats after = overlapped_engine->stats();
  EXPECT_EQ(after.num_overlapped_steps - overlapped_before, after.num_steps - steps_before - 1);
  EXPECT_EQ(after.requests_failed, 0);
}

// A KV pool too small for every request at once: sequences wait for blocks or are
// preempted (and recomputed) between overlapped steps; every request still gets its tokens.
TEST_F(EngineOverlapTest, PreemptionsBetweenOverlappedSteps) {
  const std::vector<GenerationRequest> requests = mixed_requests(10, vocab(), 8);
  auto plain_engine = setup_.engine(false, {}, 2048, 256);
  const std::vector<Completion> plain = run_all(*plain_engine, requests);
  auto tight_engine = setup_.engine(true, {}, 32, 16);  // 16 blocks of 16 tokens
  expect_same_tokens(run_all(*tight_engine, requests, {7, 8, 9}), plain, "tight pool");
  const EngineStats stats = tight_engine->stats();
  EXPECT_GT(stats.num_preemptions, 0);
  EXPECT_GT(stats.num_overlapped_steps, stats.num_steps / 3) << stats.num_steps;
  EXPECT_EQ(stats.kv_used_blocks, 0);
  EXPECT_EQ(stats.requests_failed, 0);
}

// An n > 1 request arriving while others decode overlapped: it may be admitted in a step
// scheduled ahead, the step where its choices fork is not scheduled ahead of, and nothing
// fails or changes. (A request with logprobs and a logit bias beside it.)
TEST_F(EngineOverlapTest, ChoicesForkBetweenOverlappedSteps) {
  std::vector<GenerationRequest> requests = mixed_requests(8, vocab(), 6);
  for (GenerationRequest& r : requests)
    r.sampling.temperature = 0.0f;
  requests[5].sampling.logprobs = 2;
  requests[5].sampling.logit_bias = {{7, 3.0f}};
  requests[6].n = 2;
  auto plain_engine = setup_.engine(false);
  const std::vector<Completion> plain = run_all(*plain_engine, requests);
  auto overlapped_engine = setup_.engine(true);
  const std::vector<Completion> got = run_all(*overlapped_engine, requests, {5, 6});
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(got[i].choices.size(), plain[i].choices.size()) << i;
    for (size_t c = 0; c < got[i].choices.size(); ++c)
      EXPECT_EQ(got[i].choices[c].token_ids, plain[i].choices[c].token_ids) << "request " << i << " choice " << c;
  }
  EXPECT_EQ(got[5].choices[0].logprobs.size(), got[5].choices[0].token_ids.size());
  const EngineStats stats = overlapped_engine->stats();
  EXPECT_GT(stats.num_overlapped_steps, 0);
  EXPECT_LT(stats.num_overlapped_steps, stats.num_steps);  // not when the n = 2 request started
  EXPECT_EQ(stats.requests_failed, 0);
  EXPECT_EQ(stats.kv_used_blocks, 0);
}

// Logprobs and logit bias sample on the device, in overlapped steps: greedy requests get
// the host Sampler's tokens, log-probabilities and top tokens (an engine whose backend
// does not sample, so every row goes to the host Sampler, is the reference), and a seeded
// request draws the same tokens with and without logprobs.
TEST_F(EngineOverlapTest, LogprobsAndLogitBiasSampleOnTheDevice) {
  OverlapRig host_rig(RecordingBackend::Sampling::kNone);
  auto path = test::write_tiny_model(dir_, "tiny-llama", 13);
  ASSERT_TRUE(path.ok());
  ASSERT_TRUE(host_rig.load(*path, false).ok());
  auto device_engine = setup_.engine(true);
  auto host_engine = host_rig.engine(false);
  test::expect_logprobs_and_bias_on_device(*device_engine, *host_engine, mixed_requests(8, vocab(), 8));
}

// An n > 1 request's choices draw their first tokens on the device (from copies of its
// prompt's logits) as single requests with seed + c draw them, and seeded requests beside
// it and beside one with logprobs draw what they draw alone.
TEST_F(EngineOverlapTest, SeededRowsAndChoicesDrawAsSingleRequests) {
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped" : "one step after another");
    auto engine = setup_.engine(overlap);
    test::expect_seeded_draws_beside_choices(*engine, mixed_requests(6, vocab(), 7), 500);
  }
}

TEST_F(EngineOverlapTest, LateArrivalsCancelsAndDeadlinesLoseNothing) {
  std::vector<GenerationRequest> requests = mixed_requests(12, vocab(), 2);
  requests[7].deadline = SteadyClock::now() + 1h;  // far away: it must not fire
  auto plain_engine = setup_.engine(false);
  const std::vector<Completion> plain = run_all(*plain_engine, requests);
  auto overlapped_engine = setup_.engine(true);
  const std::vector<Completion> got = run_all(*overlapped_engine, requests, {8, 9, 10, 11}, 3);
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(got[i].choices.size(), 1u) << i;
    const Completion::Choice& c = got[i].choices[0];
    if (i == 3) {  // cancelled: a prefix of its tokens, ended as abort (unless it was done)
      const auto& full = plain[i].choices[0].token_ids;
      ASSERT_LE(c.token_ids.size(), full.size());
      EXPECT_TRUE(std::equal(c.token_ids.begin(), c.token_ids.end(), full.begin()));
      if (c.finish_reason != FinishReason::kLength) {
        EXPECT_EQ(c.finish_reason, FinishReason::kAbort);
      }
      continue;
    }
    EXPECT_EQ(c.token_ids, plain[i].choices[0].token_ids) << "request " << i;
    EXPECT_EQ(c.finish_reason, FinishReason::kLength) << "request " << i;
  }
  // A deadline that passes while the request decodes overlapped (each step made to last
  // 2 ms longer, so 100 tokens take longer than the deadline).
  GenerationRequest slow = requests[0];
  slow.stop.max_tokens = 100;
  slow.deadline = SteadyClock::now() + 50ms;
  auto slow_engine = setup_.engine(true, 2ms);
  const Completion timed_out = run_all(*slow_engine, {slow})[0];
  ASSERT_EQ(timed_out.choices.size(), 1u);
  EXPECT_EQ(timed_out.choices[0].finish_reason, FinishReason::kTimeout);
  EXPECT_LT(timed_out.choices[0].token_ids.size(), 100u);
  EXPECT_GT(slow_engine->stats().num_overlapped_steps, 0);
  EXPECT_EQ(slow_engine->stats().kv_used_blocks, 0);
  const EngineStats stats = overlapped_engine->stats();
  EXPECT_GT(stats.num_overlapped_steps, 0);
  EXPECT_EQ(stats.requests_failed, 0);
  EXPECT_EQ(stats.kv_used_blocks, 0);
  EXPECT_EQ(stats.num_running, 0);
}

// Stop strings on a trained model with its tokenizer: the text is cut at the match whether
// or not the step after it was already enqueued.
TEST(EngineOverlapTextTest, StopStringsCutTheSameText) {
  BW_TESTDATA_OR_SKIP(path, "models/stories260K.gguf");
  OverlapRig setup;
  const Status loaded = setup.load(path.string(), true);
  ASSERT_TRUE(loaded.ok()) << loaded.to_string();
  std::vector<GenerationRequest> requests;
  for (const char* prompt : {"Once upon a time", "The little dog", "Lily and Ben"}) {
    GenerationRequest r;
    r.prompt_ids = setup.tokenizer->encode(prompt, true, false);
    r.stop.max_tokens = 60;
    requests.push_back(std::move(r));
  }
  auto plain_engine = setup.engine(false);
  const std::vector<Completion> full = run_all(*plain_engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::string& text = full[i].choices[0].text;
    ASSERT_GT(text.size(), 30u) << text;
    const size_t at = text.find(' ', 15 + 5 * i);
    ASSERT_NE(at, std::string::npos);
    requests[i].stop_strings = {text.substr(at, 4)};
  }
  const std::vector<Completion> plain = run_all(*plain_engine, requests);
  auto overlapped_engine = setup.engine(true);
  expect_same_tokens(run_all(*overlapped_engine, requests), plain, "stop strings");
  for (const Completion& c : plain)
    EXPECT_EQ(c.choices[0].finish_reason, FinishReason::kStop);
  EXPECT_GT(overlapped_engine->stats().num_overlapped_steps, 0);
}

}  // namespace
}  // namespace bw
