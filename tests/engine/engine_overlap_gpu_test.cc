// The engine's overlapped decoding (EngineConfig::async_scheduling) on a real CUDA backend:
// the next decode step is enqueued, its input tokens taken on the device, before the host
// has seen the tokens of the step still running. With and without it the same requests
// must give the same tokens and finish reasons: greedy and seeded sampling, staggered
// max_tokens, stop token ids hit mid-way (the step scheduled ahead computed one token too
// many for those), penalties (each row's pending token counted on the device), prompt
// chunks and admissions in steps scheduled ahead; logprobs and logit bias sampled on the
// device must match the host Sampler; late arrivals and a cancel must not lose or corrupt
// a request. Skips without a CUDA device.
#include <gtest/gtest.h>

#include <random>

#include "backend/backend_factory.h"
#include "engine/engine.h"
#include "model/checkpoint.h"
#include "support/engine_runs.h"
#include "support/recording_backend.h"
#include "support/test_support.h"
#include "support/tiny_model.h"

namespace bw {
namespace {

using test::expect_same_tokens;
using test::run_all;

class EngineOverlapGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = create_backend("cuda", 0, DType::kF32);
    if (!backend.ok()) GTEST_SKIP() << "no CUDA device: " << backend.status().to_string();
    backend_ = std::move(*backend);
    auto path = test::write_tiny_model(dir_, "tiny-llama", 11);
    ASSERT_TRUE(path.ok()) << path.status().to_string();
    path_ = *path;
    auto ckpt = Checkpoint::open(*path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
    WeightLoadOptions load;
    load.weight_dtype = DType::kF32;
    auto model = load_causal_lm(*ckpt, *backend_, load);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    model_ = std::move(*model);
  }

  static EngineConfig engine_config(bool overlap, int32_t max_batched_tokens = 2048) {
    EngineConfig config;
    config.scheduler.max_num_batched_tokens = max_batched_tokens;
    config.scheduler.max_model_len = 256;
    config.scheduler.max_num_seqs = 16;
    config.kv_num_blocks = 256;
    config.kv_dtype = DType::kF32;
    config.async_scheduling = overlap;
    return config;
  }

  std::unique_ptr<Engine> make_engine(bool overlap, int32_t max_batched_tokens = 2048) {
    const EngineConfig config = engine_config(overlap, max_batched_tokens);
    auto engine = Engine::create(*model_, *backend_, nullptr, config, make_stderr_logger("overlap-test", "warn"));
    EXPECT_TRUE(engine.ok()) << engine.status().to_string();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  std::vector<GenerationRequest> mixed_requests(std::mt19937& rng) const {
    const int64_t vocab = model_->config().vocab_size;
    std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(vocab - 1));
    std::vector<GenerationRequest> requests;
    for (int i = 0; i < 10; ++i) {
      GenerationRequest r;
      r.prompt_ids.resize(static_cast<size_t>(5 + 9 * i));
      for (auto& id : r.prompt_ids)
        id = token(rng);
      r.stop.max_tokens = 12 + 7 * i;
      r.stop.ignore_eos = true;
      r.detokenize = false;
      if (i % 2 == 1) {
        r.sampling.temperature = 0.9f;
        r.sampling.top_k = 40;
        r.sampling.seed = 100 + i;
      }
      requests.push_back(std::move(r));
    }
    return requests;
  }

  test::TempDir dir_;
  std::string path_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<CausalLM> model_;
};

TEST_F(EngineOverlapGpuTest, OverlappedStepsGiveTheSameTokens) {
  std::mt19937 rng(5);
  std::vector<GenerationRequest> requests = mixed_requests(rng);
  auto sync = make_engine(false);
  const std::vector<Completion> plain = run_all(*sync, requests);
  EXPECT_EQ(sync->stats().num_overlapped_steps, 0);

  auto overlapped = make_engine(true);
  const std::vector<Completion> got = run_all(*overlapped, requests);
  expect_same_tokens(got, plain, "limits");
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_EQ(got[i].choices[0].token_ids.size(), static_cast<size_t>(requests[i].stop.max_tokens)) << i;
  // Most decode steps ran overlapped (the first of each batch composition does not).
  const EngineStats stats = overlapped->stats();
  EXPECT_GT(stats.num_overlapped_steps, stats.num_steps / 2) << stats.num_steps;
  EXPECT_EQ(stats.kv_used_blocks, 0);

  // Stop tokens mid-way (the 6th token of the plain run, for every other request) and a
  // penalty on a request that runs to its limit: the plain engine again is the reference.
  for (size_t i = 0; i < requests.size(); i += 2)
    requests[i].stop.stop_token_ids = {plain[i].choices[0].token_ids[5]};
  requests[3].sampling.repetition_penalty = 1.3f;
  const std::vector<Completion> plain_stops = run_all(*sync, requests);
  const int64_t overlapped_before = overlapped->stats().num_overlapped_steps;
  const std::vector<Completion> got_stops = run_all(*overlapped, requests);
  expect_same_tokens(got_stops, plain_stops, "stops");
  int stopped = 0;
  for (const Completion& c : got_stops)
    stopped += c.choices[0].finish_reason == FinishReason::kStop ? 1 : 0;
  EXPECT_GE(stopped, 4);
  EXPECT_GT(overlapped->stats().num_overlapped_steps, overlapped_before);
  EXPECT_EQ(overlapped->stats().kv_used_blocks, 0);
}

TEST_F(EngineOverlapGpuTest, PenaltiesOverlapWithTheSameTokens) {
  std::mt19937 rng(6);
  auto sync = make_engine(false);
  auto overlapped = make_engine(true);
  test::expect_penalties_overlap(*sync, *overlapped, mixed_requests(rng), 5);
}

// Prompt chunks (16 tokens a step) and admissions are scheduled ahead too, eagerly run
// (not graph) steps taking their pending tokens on the device.
TEST_F(EngineOverlapGpuTest, PromptChunksAndAdmissionsOverlapToo) {
  std::mt19937 rng(7);
  auto sync = make_engine(false, 16);
  auto overlapped = make_engine(true, 16);
  test::expect_chunks_overlap(*sync, *overlapped, mixed_requests(rng));
}

// An n = 3 request's choices (first tokens drawn from copies of the prompt's logits) draw
// as single requests with seed + c; seeded rows beside it and beside a row with logprobs
// draw what they draw alone.
TEST_F(EngineOverlapGpuTest, SeededRowsAndChoicesDrawAsSingleRequests) {
  std::mt19937 rng(9);
  std::vector<GenerationRequest> seeded = mixed_requests(rng);
  seeded.resize(6);
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped" : "one step after another");
    auto engine = make_engine(overlap);
    test::expect_seeded_draws_beside_choices(*engine, seeded, 700);
  }
}

// Logprobs and logit bias sample on the device: greedy requests get what the host Sampler
// gives from the same CUDA logits (a recording backend that does not sample over the same
// device is the reference), a seeded request the same draws with and without logprobs.
TEST_F(EngineOverlapGpuTest, LogprobsAndLogitBiasSampleOnTheDevice) {
  test::RecordingBackend host_sampling(*backend_, test::RecordingBackend::Sampling::kNone);
  auto ckpt = Checkpoint::open(path_);
  ASSERT_TRUE(ckpt.ok());
  WeightLoadOptions load;
  load.weight_dtype = DType::kF32;
  auto host_model = load_causal_lm(*ckpt, host_sampling, load);
  ASSERT_TRUE(host_model.ok()) << host_model.status().to_string();
  EngineConfig config = engine_config(false);
  auto host = Engine::create(**host_model, host_sampling, nullptr, config, make_stderr_logger("overlap-test", "warn"));
  ASSERT_TRUE(host.ok()) << host.status().to_string();
  std::mt19937 rng(10);
  auto device = make_engine(true);
  test::expect_logprobs_and_bias_on_device(*device, **host, mixed_requests(rng));
}

TEST_F(EngineOverlapGpuTest, LateArrivalsAndCancelsLoseNothing) {
  std::mt19937 rng(8);
  const std::vector<GenerationRequest> requests = mixed_requests(rng);
  auto engine = make_engine(true);
  // The first wave decodes, then the rest arrive one by one and one request is cancelled.
  const std::vector<Completion> results = run_all(*engine, requests, {5, 6, 7, 8, 9}, 2);
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(results[i].choices.size(), 1u) << i;
    const Completion::Choice& c = results[i].choices[0];
    if (i == 2 && c.finish_reason == FinishReason::kAbort) {
      EXPECT_LT(c.token_ids.size(), static_cast<size_t>(requests[i].stop.max_tokens));
      continue;
    }
    EXPECT_EQ(c.finish_reason, FinishReason::kLength) << i;
    EXPECT_EQ(c.token_ids.size(), static_cast<size_t>(requests[i].stop.max_tokens)) << i;
    for (int32_t id : c.token_ids)
      EXPECT_TRUE(id >= 0 && id < model_->config().vocab_size) << i;
  }
  const EngineStats stats = engine->stats();
  EXPECT_GT(stats.num_overlapped_steps, 0);
  EXPECT_EQ(stats.requests_failed, 0);
  EXPECT_EQ(stats.kv_used_blocks, 0);
}

}  // namespace
}  // namespace bw
