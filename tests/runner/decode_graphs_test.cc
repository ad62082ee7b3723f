// DecodeGraphs on the CPU: a recording backend stands in for CUDA graphs (capture records
// the ops with their arguments instead of running them; replay runs the list again), so
// the padding, the fixed input layout, replays and recaptures are checked in CI. The GPU
// test (tests/golden/golden_gpu_test.cc) runs the same path on real CUDA graphs.
#include "runner/decode_graphs.h"

#include <gtest/gtest.h>

#include <functional>
#include <optional>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "model/checkpoint.h"
#include "runner/kv_cache_storage.h"
#include "support/recording_backend.h"
#include "support/test_support.h"
#include "support/tiny_model.h"

namespace bw {
namespace {

using test::RecordingBackend;

class DecodeGraphsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    auto path = test::write_tiny_model(*dir_, "tiny-llama", 11);
    ASSERT_TRUE(path.ok()) << path.status().to_string();
    path_ = new std::string(*path);
  }
  static void TearDownTestSuite() {
    delete path_;
    delete dir_;
  }

  struct Generated {
    std::vector<std::vector<int32_t>> tokens;
    int64_t graphs_at_start = 0;  // recorded by Engine::create
    int64_t captures = 0, replays = 0;
  };

  // Greedy tokens of `prompts` (max_tokens[i] each), all submitted at once.
  static Generated generate(Backend& backend, int32_t max_graph_batch, const std::vector<std::vector<int32_t>>& prompts,
                            const std::vector<int32_t>& max_tokens, bool lazy_graph_capture = false) {
    Generated out;
    auto model = load_model(backend);
    EXPECT_TRUE(model.ok()) << model.status().to_string();
    EngineConfig config;
    config.scheduler.max_model_len = 256;
    config.scheduler.max_num_seqs = 32;
    config.max_graph_batch = max_graph_batch;
    config.lazy_graph_capture = lazy_graph_capture;
    config.kv_num_blocks = 256;
    auto engine = Engine::create(**model, backend, nullptr, config, make_stderr_logger("graphs-test", "warn"));
    EXPECT_TRUE(engine.ok()) << engine.status().to_string();
    const DecodeGraphs* graphs = (*engine)->runner_for_testing()->decode_graphs();
    if (graphs != nullptr) out.graphs_at_start = graphs->num_captures();
    std::vector<std::unique_ptr<EventQueue>> queues;
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerationRequest r;
      r.prompt_ids = prompts[i];
      r.stop.max_tokens = max_tokens[i];
      r.stop.ignore_eos = true;
      queues.push_back(std::make_unique<EventQueue>());
      EXPECT_TRUE((*engine)->submit(std::move(r), queues.back()->sink()).ok());
    }
    for (auto& q : queues) {
      Completion c;
      for (;;) {
        auto event = q->pop(std::chrono::seconds(60));
        EXPECT_TRUE(event.has_value()) << "timed out";
        if (!event) break;
        EXPECT_TRUE(event->error.ok()) << event->error.to_string();
        accumulate_event(*event, &c);
        if (event->done) break;
      }
      out.tokens.push_back(c.choices.empty() ? std::vector<int32_t>{} : c.choices[0].token_ids);
    }
    if (graphs != nullptr) {
      out.captures = graphs->num_captures();
      out.replays = graphs->num_replays();
    }
    return out;
  }

  static Generated graphed_run_matches_eager(bool lazy_graph_capture, int64_t* backend_captures);

  // The suite's model and a KV cache of 8 blocks of 16 on `backend`.
  struct ModelAndCache {
    std::unique_ptr<CausalLM> model;
    std::optional<KvCacheStorage> kv;
  };
  static void load_with_cache(Backend& backend, ModelAndCache* out) {
    auto model = load_model(backend);
    ASSERT_TRUE(model.ok()) << model.status().to_string();
    auto kv = KvCacheStorage::create(backend, (*model)->config(), 8, 16, DType::kF32);
    ASSERT_TRUE(kv.ok()) << kv.status().to_string();
    out->model = std::move(*model);
    out->kv.emplace(std::move(*kv));
  }

  // The suite's model (f32 weights) on `backend`.
  static Result<std::unique_ptr<CausalLM>> load_model(Backend& backend) {
    ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open(*path_));
    WeightLoadOptions load;
    load.weight_dtype = DType::kF32;
    return load_causal_lm(ckpt, backend, load);
  }

  static test::TempDir* dir_;
  static std::string* path_;
};

test::TempDir* DecodeGraphsTest::dir_ = nullptr;
std::string* DecodeGraphsTest::path_ = nullptr;

// 13 greedy sequences finishing at different steps: batches of 13, 12, ... 1 pad to 16, 8,
// 4, 2, 1; contexts grow past 8 blocks of 16 so the block-table width changes too.
void make_staggered_prompts(std::vector<std::vector<int32_t>>* prompts, std::vector<int32_t>* max_tokens) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> token(3, 511);
  for (int i = 0; i < 13; ++i) {
    std::vector<int32_t> p(static_cast<size_t>(5 + 9 * i));
    for (auto& id : p)
      id = token(rng);
    prompts->push_back(std::move(p));
    max_tokens->push_back(6 + 11 * i);
  }
}

// The staggered prompts, greedy, run eagerly and with graphs on a recording backend
// (recorded at start-up, or lazily at each shape's first step): the same tokens. Returns
// the graphed run's counters and, in *backend_captures, the backend's count.
DecodeGraphsTest::Generated DecodeGraphsTest::graphed_run_matches_eager(bool lazy_graph_capture,
                                                                        int64_t* backend_captures) {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> max_tokens;
  make_staggered_prompts(&prompts, &max_tokens);
  CpuBackend eager_cpu(2);
  const Generated eager = generate(eager_cpu, 0, prompts, max_tokens);
  CpuBackend cpu(2);
  RecordingBackend recording(cpu);
  const Generated graphed = generate(recording, 32, prompts, max_tokens, lazy_graph_capture);
  EXPECT_EQ(eager.tokens.size(), graphed.tokens.size());
  for (size_t i = 0; i < eager.tokens.size() && i < graphed.tokens.size(); ++i) {
    EXPECT_EQ(eager.tokens[i].size(), static_cast<size_t>(max_tokens[i]));
    EXPECT_EQ(eager.tokens[i], graphed.tokens[i]) << "sequence " << i;
  }
  EXPECT_GT(recording.recorded_ops, 0);
  *backend_captures = recording.captures;
  return graphed;
}

// Graphs recorded at start-up (from padding rows only) and replayed with every step's
// real inputs give the eager steps' tokens, and no step records a graph.
TEST_F(DecodeGraphsTest, GraphsRecordedAtStartReplayEagerSteps) {
  int64_t backend_captures = 0;
  const Generated graphed = graphed_run_matches_eager(/*lazy_graph_capture=*/false, &backend_captures);
  // Sizes 1, 2, 4, 8, 16, 24, 32 at widths 8 and 16 (256 tokens = 16 blocks of 16).
  EXPECT_EQ(graphed.graphs_at_start, 14);
  EXPECT_EQ(graphed.captures, 14) << "a step recorded a graph of its own";
  EXPECT_EQ(backend_captures, 14);
  EXPECT_GT(graphed.replays, 50);
}

// --lazy-graph-capture: each shape is recorded at its first step instead, same tokens.
TEST_F(DecodeGraphsTest, LazyGraphsReplayEagerStepsAcrossPaddedSizes) {
  int64_t backend_captures = 0;
  const Generated graphed = graphed_run_matches_eager(/*lazy_graph_capture=*/true, &backend_captures);
  EXPECT_EQ(graphed.graphs_at_start, 0);
  EXPECT_GE(graphed.captures, 5);  // sizes 16, 8, 4, 2, 1 at least, and wider tables
  EXPECT_LT(graphed.captures, 14);
  EXPECT_EQ(backend_captures, graphed.captures);
  EXPECT_GT(graphed.replays, 50);
}

TEST_F(DecodeGraphsTest, PaddedSizesAndAcceptance) {
  CpuBackend cpu(1);
  RecordingBackend recording(cpu);
  auto model = load_model(recording);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  DecodeGraphs graphs(**model, recording, 16, 40, 256);
  EXPECT_EQ(graphs.padded_size(1), 1);
  EXPECT_EQ(graphs.padded_size(3), 4);
  EXPECT_EQ(graphs.padded_size(17), 24);
  EXPECT_EQ(graphs.padded_size(33), 48);
  EXPECT_EQ(graphs.padded_size(48), 48);
  EXPECT_EQ(graphs.padded_size(49), 0);

  ScheduledSequence decode{.request_id = 1, .start_pos = 20, .token_ids = {5}, .block_table = {0, 1}, .sample = true};
  std::vector<ScheduledSequence> batch{decode};
  EXPECT_TRUE(graphs.accepts(batch));
  ScheduledSequence prefill = decode;
  prefill.token_ids = {5, 6};
  batch.push_back(prefill);
  EXPECT_FALSE(graphs.accepts(batch)) << "a prefill chunk runs eagerly";
  ScheduledSequence too_long = decode;
  too_long.start_pos = 300;  // beyond max_model_len 256 (rounded to 16 blocks of 16)
  too_long.block_table.assign(20, 0);
  EXPECT_FALSE(graphs.accepts(std::vector<ScheduledSequence>{too_long}));
  EXPECT_FALSE(graphs.accepts(std::vector<ScheduledSequence>(49, decode)));
}

TEST_F(DecodeGraphsTest, AMovedWorkspaceIsRecapturedNotReplayed) {
  CpuBackend cpu(1);
  RecordingBackend recording(cpu);
  ModelAndCache m;
  ASSERT_NO_FATAL_FAILURE(load_with_cache(recording, &m));
  DecodeGraphs graphs(*m.model, recording, 16, 4, 128);
  ScheduledSequence seq{.request_id = 1, .start_pos = 0, .token_ids = {7}, .block_table = {3}, .sample = true};
  std::vector<ScheduledSequence> batch{seq};
  ASSERT_TRUE(graphs.run(batch, m.kv->layers()).ok());
  EXPECT_EQ(graphs.num_captures(), 1);
  batch[0].start_pos = 1;
  ASSERT_TRUE(graphs.run(batch, m.kv->layers()).ok());
  EXPECT_EQ(graphs.num_replays(), 1);
  ASSERT_TRUE(m.model->reserve(64, 64).ok());  // the workspace moves
  batch[0].start_pos = 2;
  ASSERT_TRUE(graphs.run(batch, m.kv->layers()).ok());
  EXPECT_EQ(graphs.num_captures(), 2);
  EXPECT_EQ(graphs.num_replays(), 1);
}

// capture_all() records every (size, width) once; steps of any of them then replay, and a
// moved workspace still sends a step back to recording its graph.
TEST_F(DecodeGraphsTest, CaptureAllRecordsEveryShapeOnce) {
  CpuBackend cpu(1);
  RecordingBackend recording(cpu);
  ModelAndCache m;
  ASSERT_NO_FATAL_FAILURE(load_with_cache(recording, &m));
  DecodeGraphs graphs(*m.model, recording, 16, 20, 300);  // sizes 1-24, 19 blocks: widths 8, 16, 32
  auto recorded = graphs.capture_all(m.kv->layers());
  ASSERT_TRUE(recorded.ok()) << recorded.status().to_string();
  EXPECT_EQ(*recorded, 6 * 3);
  EXPECT_EQ(DecodeGraphs::num_shapes(16, 20, 300), 6 * 3);
  EXPECT_EQ(DecodeGraphs::num_shapes(16, 256, 131072), 21 * 11);  // 1, 2, 4, ..., 32, 48, ..., 256; widths 8-8192
  EXPECT_EQ(DecodeGraphs::num_shapes(16, 0, 4096), 0);
  EXPECT_EQ(graphs.num_graphs(), 18);
  EXPECT_EQ(graphs.num_captures(), 18);
  EXPECT_EQ(graphs.max_width(), 32);
  ScheduledSequence seq{.request_id = 1, .start_pos = 0, .token_ids = {7}, .block_table = {3}, .sample = true};
  for (int32_t b : {1, 3, 20}) {
    for (int32_t pos : {0, 200}) {
      std::vector<ScheduledSequence> batch(static_cast<size_t>(b), seq);
      for (ScheduledSequence& s : batch) {
        s.start_pos = pos;
        s.block_table.assign(static_cast<size_t>(pos / 16 + 1), 3);
      }
      ASSERT_TRUE(graphs.run(batch, m.kv->layers()).ok());
    }
  }
  EXPECT_EQ(graphs.num_captures(), 18);
  EXPECT_EQ(graphs.num_replays(), 6);
  ASSERT_TRUE(m.model->reserve(64, 64).ok());  // the workspace moves
  ASSERT_TRUE(graphs.run(std::vector<ScheduledSequence>{seq}, m.kv->layers()).ok());
  EXPECT_EQ(graphs.num_captures(), 19);
  EXPECT_EQ(graphs.num_replays(), 6);
}

// Graphs off (a backend without them): nothing to record.
TEST_F(DecodeGraphsTest, CaptureAllWithoutGraphsRecordsNothing) {
  CpuBackend cpu(1);
  ModelAndCache m;
  ASSERT_NO_FATAL_FAILURE(load_with_cache(cpu, &m));
  DecodeGraphs graphs(*m.model, cpu, 16, 8, 64);
  auto recorded = graphs.capture_all(m.kv->layers());
  ASSERT_TRUE(recorded.ok()) << recorded.status().to_string();
  EXPECT_EQ(*recorded, 0);
  EXPECT_EQ(graphs.num_graphs(), 0);
}

}  // namespace
}  // namespace bw
