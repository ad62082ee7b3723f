// The engine end to end on a tiny random model (CPU, f32): batch invariance, prefix reuse,
// preemption under KV pressure, cancel, deadlines, seeded sampling, n > 1, logprobs; and
// stop strings on the real stories260K model.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/presets.h"
#include "model/random_model.h"
#include "runner/generator.h"
#include "support/test_support.h"
#include "support/tiny_model.h"
#include "tokenizer/open_tokenizer.h"

namespace bw {
namespace {

using namespace std::chrono_literals;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    auto path = test::write_tiny_model(*dir_, "tiny-llama", 7);
    ASSERT_TRUE(path.ok()) << path.status().to_string();
    backend_ = new CpuBackend(2);
    auto ckpt = Checkpoint::open(*path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
    WeightLoadOptions load;
    load.weight_dtype = DType::kF32;
    auto model = load_causal_lm(*ckpt, *backend_, load);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    model_ = model->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
    delete dir_;
  }

  static std::unique_ptr<Engine> make_engine(EngineConfig config = {}) {
    if (config.scheduler.max_model_len == 0) config.scheduler.max_model_len = 256;
    auto engine = Engine::create(*model_, *backend_, nullptr, config, make_stderr_logger("engine-test", "warn"));
    EXPECT_TRUE(engine.ok()) << engine.status().to_string();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  static std::vector<int32_t> random_prompt(std::mt19937& rng, int len) {
    std::uniform_int_distribution<int32_t> token(3, 511);
    std::vector<int32_t> ids(static_cast<size_t>(len));
    for (auto& id : ids)
      id = token(rng);
    return ids;
  }

  static GenerationRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
    GenerationRequest r;
    r.prompt_ids = std::move(prompt);
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;
    return r;
  }

  // Submits all requests at once and waits for every one.
  static std::vector<Completion> run_concurrently(Engine& engine, const std::vector<GenerationRequest>& requests) {
    std::vector<std::unique_ptr<EventQueue>> queues;
    std::vector<RequestId> ids;
    for (const GenerationRequest& r : requests) {
      queues.push_back(std::make_unique<EventQueue>());
      auto id = engine.submit(r, queues.back()->sink());
      EXPECT_TRUE(id.ok()) << id.status().to_string();
      ids.push_back(id.ok() ? *id : 0);
    }
    std::vector<Completion> results(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      for (;;) {
        auto event = queues[i]->pop(60s);
        EXPECT_TRUE(event.has_value()) << "request " << i << " timed out";
        if (!event) break;
        EXPECT_TRUE(event->error.ok()) << event->error.to_string();
        accumulate_event(*event, &results[i]);
        if (event->done) break;
      }
    }
    return results;
  }

  // A consumer that takes `delay` per event: it slows the step loop (sinks run on it), so
  // a test can act while a request is still generating.
  static EventSink slow_sink(EventQueue& queue, std::chrono::milliseconds delay) {
    return [sink = queue.sink(), delay](EngineEvent event) {
      std::this_thread::sleep_for(delay);
      sink(std::move(event));
    };
  }

  static Completion run_alone(Engine& engine, GenerationRequest request) {
    auto result = generate_blocking(engine, std::move(request));
    EXPECT_TRUE(result.ok()) << result.status().to_string();
    return result.ok() ? *result : Completion{};
  }

  static inline test::TempDir* dir_ = nullptr;
  static inline CpuBackend* backend_ = nullptr;
  static inline CausalLM* model_ = nullptr;
};

TEST_F(EngineTest, SingleRequestMatchesTheGenerator) {
  auto engine = make_engine();
  std::mt19937 rng(1);
  const std::vector<int32_t> prompt = random_prompt(rng, 23);
  Completion c = run_alone(*engine, greedy(prompt, 20));
  ASSERT_EQ(c.choices.size(), 1u);
  EXPECT_EQ(c.choices[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.usage.prompt_tokens, 23);
  EXPECT_EQ(c.usage.completion_tokens, 20);

  Generator generator(*model_, *backend_);
  GenerateOptions options;
  options.max_tokens = 20;
  options.ignore_eos = true;
  auto reference = generator.generate(prompt, options);
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(c.choices[0].token_ids, reference->generated_ids);
}

TEST_F(EngineTest, BatchInvarianceOf32ConcurrentPrompts) {
  EngineConfig config;
  config.scheduler.max_num_batched_tokens = 64;  // forces chunked prefill mixed with decode
  config.scheduler.max_num_seqs = 32;
  auto engine = make_engine(config);
  std::mt19937 rng(2);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 32; ++i) {
    requests.push_back(greedy(random_prompt(rng, 5 + (i * 7) % 40), 8 + i % 9));
  }
  std::vector<Completion> alone;
  for (const GenerationRequest& r : requests)
    alone.push_back(run_alone(*engine, r));
  // A fresh engine, so no prompt is served from the prefix cache of the alone runs.
  auto batched_engine = make_engine(config);
  std::vector<Completion> together = run_concurrently(*batched_engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(together[i].choices.size(), 1u);
    EXPECT_EQ(together[i].choices[0].token_ids, alone[i].choices[0].token_ids) << "prompt " << i;
  }
  const EngineStats stats = batched_engine->stats();
  int64_t multi_seq_steps = 0;
  for (size_t b = 3; b < stats.batch_size_histogram.size(); ++b)
    multi_seq_steps += stats.batch_size_histogram[b];
  EXPECT_GT(multi_seq_steps, 0) << "no step ran more than 4 sequences: nothing was batched";
}

TEST_F(EngineTest, PrefixReuseComputesOnlyUncachedTokens) {
  EngineConfig config;
  config.kv_block_size = 8;
  auto engine = make_engine(config);
  std::mt19937 rng(3);
  const std::vector<int32_t> shared = random_prompt(rng, 100);
  std::vector<int32_t> first = shared, second = shared;
  for (int32_t t : random_prompt(rng, 5))
    first.push_back(t);
  for (int32_t t : random_prompt(rng, 7))
    second.push_back(t);

  run_alone(*engine, greedy(first, 6));
  const EngineStats before = engine->stats();
  Completion c = run_alone(*engine, greedy(second, 6));
  const EngineStats after = engine->stats();
  // The 96 tokens of the 12 full blocks of `shared` come from the cache.
  EXPECT_EQ(after.prefix_hit_tokens - before.prefix_hit_tokens, 96);
  EXPECT_EQ(c.usage.cached_tokens, 96);
  // Prefill of the 11 uncached tokens, then 5 decode steps.
  EXPECT_EQ(after.computed_tokens - before.computed_tokens, static_cast<int64_t>(second.size()) - 96 + 5);

  EngineConfig no_cache = config;
  no_cache.enable_prefix_caching = false;
  auto reference = make_engine(no_cache);
  EXPECT_EQ(run_alone(*reference, greedy(second, 6)).choices[0].token_ids, c.choices[0].token_ids);
  EXPECT_EQ(reference->stats().prefix_hit_tokens, 0);
}

TEST_F(EngineTest, PressurePreemptsAndEveryRequestCompletesWithTheSameTokens) {
  std::mt19937 rng(4);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 12; ++i)
    requests.push_back(greedy(random_prompt(rng, 20 + i), 30));
  EngineConfig roomy;
  roomy.kv_block_size = 4;
  auto reference_engine = make_engine(roomy);
  std::vector<Completion> reference = run_concurrently(*reference_engine, requests);
  EXPECT_EQ(reference_engine->stats().num_preemptions, 0);

  EngineConfig tight = roomy;
  tight.kv_num_blocks = 40;  // 160 token slots; 12 sequences need up to 62 each
  tight.enable_prefix_caching = false;
  auto engine = make_engine(tight);
  std::vector<Completion> pressed = run_concurrently(*engine, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(pressed[i].choices.size(), 1u);
    EXPECT_EQ(pressed[i].choices[0].finish_reason, FinishReason::kLength);
    EXPECT_EQ(pressed[i].choices[0].token_ids, reference[i].choices[0].token_ids) << "request " << i;
  }
  const EngineStats stats = engine->stats();
  EXPECT_GT(stats.num_preemptions, 0);
  EXPECT_EQ(stats.kv_used_blocks, 0);
  EXPECT_EQ(stats.requests_finished, 12);
}

TEST_F(EngineTest, CancelFreesEveryBlock) {
  auto engine = make_engine();
  const EngineStats baseline = engine->stats();
  std::mt19937 rng(5);
  EventQueue queue;
  auto id = engine->submit(greedy(random_prompt(rng, 30), 200), slow_sink(queue, 2ms));
  ASSERT_TRUE(id.ok());
  int tokens = 0;
  std::optional<EngineEvent> event;
  while ((event = queue.pop(30s)) && !event->done) {
    tokens += static_cast<int>(event->token_ids.size());
    if (tokens == 3) engine->cancel(*id);
  }
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->finish_reason, FinishReason::kAbort);
  EXPECT_LT(tokens, 200);
  // Stats are published after the step that handled the cancel.
  for (int i = 0; i < 100 && engine->stats().num_pending_requests != 0; ++i)
    std::this_thread::sleep_for(5ms);
  const EngineStats after = engine->stats();
  EXPECT_EQ(after.kv_used_blocks, baseline.kv_used_blocks);
  EXPECT_EQ(after.num_running + after.num_waiting, 0);
  EXPECT_EQ(after.finished_by_reason[static_cast<size_t>(FinishReason::kAbort)], 1);
}

TEST_F(EngineTest, DeadlineEndsQueuedAndRunningRequestsWithTimeout) {
  EngineConfig config;
  config.scheduler.max_num_seqs = 1;
  auto engine = make_engine(config);
  std::mt19937 rng(6);
  GenerationRequest running = greedy(random_prompt(rng, 10), 240);
  running.deadline = SteadyClock::now() + 100ms;
  GenerationRequest queued = greedy(random_prompt(rng, 10), 5);
  queued.deadline = SteadyClock::now() + 50ms;  // waits behind `running` (max_num_seqs 1)
  EventQueue running_events, queued_events;
  ASSERT_TRUE(engine->submit(running, slow_sink(running_events, 2ms)).ok());
  ASSERT_TRUE(engine->submit(queued, queued_events.sink()).ok());
  std::vector<Completion> results(2);
  for (auto [queue, result] : {std::pair{&running_events, &results[0]}, std::pair{&queued_events, &results[1]}}) {
    std::optional<EngineEvent> event;
    while ((event = queue->pop(30s))) {
      accumulate_event(*event, result);
      if (event->done) break;
    }
    ASSERT_TRUE(event.has_value());
  }
  EXPECT_EQ(results[0].choices[0].finish_reason, FinishReason::kTimeout);
  EXPECT_EQ(results[1].choices[0].finish_reason, FinishReason::kTimeout);
  EXPECT_TRUE(results[1].choices[0].token_ids.empty());
  for (int i = 0; i < 100 && engine->stats().num_pending_requests != 0; ++i)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(engine->stats().kv_used_blocks, 0);
}

TEST_F(EngineTest, SeededSamplingIsReproducibleAcrossBatchCompositions) {
  std::mt19937 rng(7);
  GenerationRequest sampled = greedy(random_prompt(rng, 17), 24);
  sampled.sampling.temperature = 0.9f;
  sampled.sampling.top_p = 0.95f;
  sampled.sampling.seed = 1234;
  auto engine = make_engine();
  Completion alone = run_alone(*engine, sampled);
  std::vector<GenerationRequest> mix;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest other = greedy(random_prompt(rng, 9 + i), 10 + i);
    other.sampling.temperature = 1.0f;  // unseeded neighbours draw from their own generators
    mix.push_back(other);
  }
  mix.insert(mix.begin() + 3, sampled);
  auto batched = make_engine();
  std::vector<Completion> together = run_concurrently(*batched, mix);
  EXPECT_EQ(together[3].choices[0].token_ids, alone.choices[0].token_ids);
  GenerationRequest other_seed = sampled;
  other_seed.sampling.seed = 99;
  EXPECT_NE(run_alone(*engine, other_seed).choices[0].token_ids, alone.choices[0].token_ids);
}

TEST_F(EngineTest, NChoicesShareThePromptAndMatchSingleRequests) {
  std::mt19937 rng(8);
  GenerationRequest request = greedy(random_prompt(rng, 21), 12);
  request.sampling.temperature = 1.0f;
  request.sampling.seed = 50;
  request.n = 3;
  auto engine = make_engine();
  const EngineStats before = engine->stats();
  Completion c = run_alone(*engine, request);
  const EngineStats after = engine->stats();
  ASSERT_EQ(c.choices.size(), 3u);
  EXPECT_EQ(c.usage.completion_tokens, 36);
  // The prompt ran once: 21 prompt tokens plus 11 decode steps for each of 3 choices.
  EXPECT_EQ(after.computed_tokens - before.computed_tokens, 21 + 3 * 11);
  for (int32_t i = 0; i < 3; ++i) {
    GenerationRequest single = request;
    single.n = 1;
    single.sampling.seed = 50 + i;
    auto fresh = make_engine();
    EXPECT_EQ(run_alone(*fresh, single).choices[0].token_ids, c.choices[static_cast<size_t>(i)].token_ids)
        << "choice " << i;
  }
  EXPECT_EQ(after.kv_used_blocks, 0);
}

TEST_F(EngineTest, LogprobsCarryTheTopAlternatives) {
  auto engine = make_engine();
  std::mt19937 rng(9);
  GenerationRequest request = greedy(random_prompt(rng, 12), 5);
  request.sampling.logprobs = 3;
  Completion c = run_alone(*engine, request);
  ASSERT_EQ(c.choices[0].logprobs.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    const SampledLogprobs& lp = c.choices[0].logprobs[i];
    EXPECT_EQ(lp.token_id, c.choices[0].token_ids[i]);
    ASSERT_EQ(lp.top.size(), 3u);
    EXPECT_EQ(lp.top[0].token_id, lp.token_id);  // greedy picks the most likely token
    EXPECT_FLOAT_EQ(lp.top[0].logprob, lp.logprob);
    EXPECT_LE(lp.logprob, 0.0f);
    EXPECT_GE(lp.top[0].logprob, lp.top[1].logprob);
  }
}

TEST_F(EngineTest, RejectsBadRequestsWithClearErrors) {
  EngineConfig config;
  config.scheduler.max_model_len = 64;
  config.max_pending_requests = 1;
  auto engine = make_engine(config);
  EventQueue queue;
  auto expect_invalid = [&](GenerationRequest r, const std::string& needle) {
    auto id = engine->submit(std::move(r), queue.sink());
    ASSERT_FALSE(id.ok());
    EXPECT_EQ(id.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(id.status().message().find(needle), std::string::npos) << id.status().message();
  };
  expect_invalid(greedy({}, 4), "empty");
  expect_invalid(greedy(std::vector<int32_t>(64, 5), 4), "context length");
  expect_invalid(greedy({1, 2, 512}, 4), "vocabulary");
  GenerationRequest bad_temp = greedy({1, 2, 3}, 4);
  bad_temp.sampling.temperature = -1.0f;
  expect_invalid(bad_temp, "temperature");
  GenerationRequest stop_without_tokenizer = greedy({1, 2, 3}, 4);
  stop_without_tokenizer.stop_strings = {"x"};
  expect_invalid(stop_without_tokenizer, "stop strings");
  // The queue holds one pending request (kept pending by a slow consumer).
  auto first = engine->submit(greedy({1, 2, 3}, 50), slow_sink(queue, 5ms));
  ASSERT_TRUE(first.ok());
  auto second = engine->submit(greedy({1, 2, 3}, 50), queue.sink());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kResourceExhausted);
  engine->cancel(*first);
  std::optional<EngineEvent> event;  // the queue dies before the engine: wait for the end
  while ((event = queue.pop(30s)) && !event->done) {
  }
  ASSERT_TRUE(event.has_value());
}

TEST_F(EngineTest, BatchWindowGathersABurstIntoOneStep) {
  EngineConfig config;
  config.batch_window = 200ms;
  auto engine = make_engine(config);
  std::mt19937 rng(10);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 8; ++i)
    requests.push_back(greedy(random_prompt(rng, 6), 1));
  std::vector<std::thread> threads;
  std::vector<Completion> results(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back(
        [&, i] { results[static_cast<size_t>(i)] = run_alone(*engine, requests[static_cast<size_t>(i)]); });
  }
  for (auto& t : threads)
    t.join();
  const EngineStats stats = engine->stats();
  EXPECT_EQ(stats.num_steps, 1) << "all 8 one-token requests should run in the first step";
  EXPECT_EQ(stats.batch_size_histogram[3], 1);  // a batch of 5..8 sequences
}

TEST_F(EngineTest, ShutdownAbortsPendingRequests) {
  auto engine = make_engine();
  std::mt19937 rng(11);
  EventQueue queue;
  ASSERT_TRUE(engine->submit(greedy(random_prompt(rng, 10), 240), slow_sink(queue, 2ms)).ok());
  std::this_thread::sleep_for(20ms);
  engine->shutdown();
  std::optional<EngineEvent> event;
  while ((event = queue.pop(10s)) && !event->done) {
  }
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->finish_reason, FinishReason::kAbort);
  EXPECT_FALSE(engine->submit(greedy({1, 2}, 1), queue.sink()).ok());
}

// Stop strings and text on a real trained model with its tokenizer.
TEST(EngineTextTest, StopStringsEndTheTextBeforeTheMatch) {
  BW_TESTDATA_OR_SKIP(path, "models/stories260K.gguf");
  auto ckpt = Checkpoint::open(path.string());
  ASSERT_TRUE(ckpt.ok());
  CpuBackend backend(2);
  WeightLoadOptions load;
  load.weight_dtype = DType::kF32;
  auto model = load_causal_lm(*ckpt, backend, load);
  ASSERT_TRUE(model.ok());
  auto tokenizer = open_tokenizer(path.string());
  ASSERT_TRUE(tokenizer.ok());
  EngineConfig config;
  auto engine = Engine::create(**model, backend, tokenizer->get(), config, make_stderr_logger("engine-test", "warn"));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  GenerationRequest request;
  request.prompt_ids = (*tokenizer)->encode("Once upon a time", true, false);
  request.stop.max_tokens = 64;
  auto full = generate_blocking(**engine, request);
  ASSERT_TRUE(full.ok());
  const std::string text = full->choices[0].text;
  ASSERT_GT(text.size(), 40u) << text;
  // Stop at the second sentence's first word that appears after position 20.
  const size_t at = text.find(' ', 20);
  ASSERT_NE(at, std::string::npos);
  const std::string stop = text.substr(at, 4);
  request.stop_strings = {"never-appears", stop};
  auto stopped = generate_blocking(**engine, request);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->choices[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(stopped->choices[0].stop_string, stop);
  EXPECT_EQ(stopped->choices[0].text, text.substr(0, text.find(stop)));
  EXPECT_LT(stopped->choices[0].token_ids.size(), full->choices[0].token_ids.size());
}

}  // namespace
}  // namespace bw

namespace bw {
namespace {

// The device memory plan: the KV pool takes what gpu_memory_utilization leaves after the
// memory in use and the reserved buffers; too little for one full sequence is a clear error.
TEST(KvPoolSizeTest, DevicePoolTakesWhatTheUtilisationLeaves) {
  auto preset = find_model_preset("deepseek-r1-distill-qwen-1.5b");
  ASSERT_TRUE(preset.ok());
  EngineConfig config;
  config.kv_dtype = DType::kBF16;
  config.kv_block_size = 16;
  config.gpu_memory_utilization = 0.9;
  auto block = KvCacheStorage::bytes_per_block(*preset, 16, DType::kBF16);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(*block, uint64_t{28} * 2 * 16 * 2 * 128 * 2);  // layers x (k, v) x tokens x kv heads x dim x bf16
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  const DeviceMemory device{.free_bytes = 76 * kGiB, .total_bytes = 80 * kGiB};  // 4 GiB of weights in use
  auto blocks = resolve_kv_num_blocks(config, *preset, 4096, &device, kGiB);
  ASSERT_TRUE(blocks.ok()) << blocks.status().to_string();
  // 0.9 x 80 - 4 - 1 = 67 GiB of blocks.
  EXPECT_EQ(static_cast<uint64_t>(*blocks), static_cast<uint64_t>(0.9 * 80 * kGiB - 5 * kGiB) / *block);

  config.gpu_memory_utilization = 0.06;  // 4.8 GiB: 0.8 GiB short of holding anything
  auto none = resolve_kv_num_blocks(config, *preset, 4096, &device, kGiB);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(none.status().message().find("--gpu-memory-utilization"), std::string::npos) << none.status().message();

  config.gpu_memory_utilization = 1.5;
  EXPECT_EQ(resolve_kv_num_blocks(config, *preset, 4096, &device, kGiB).status().code(), StatusCode::kInvalidArgument);
  config.gpu_memory_utilization = 0.9;
  config.kv_num_blocks = 100;  // an explicit size wins
  EXPECT_EQ(*resolve_kv_num_blocks(config, *preset, 4096, &device, kGiB), 100);
}

}  // namespace
}  // namespace bw
