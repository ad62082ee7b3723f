// DecodeGraphs on a real CUDA backend: decode steps replayed from CUDA graphs give the
// logits of the same steps run eagerly, for batches that pad (3 -> 4, 6 -> 8, 13 -> 16) and
// contexts that cross block-table widths, with the graphs recorded at each shape's first
// step or all at start-up (capture_all: recorded from padding rows; the eager prefill
// steps in between must not make them stale). Skips without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "backend/backend_factory.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"
#include "runner/batch_inputs.h"
#include "runner/decode_graphs.h"
#include "runner/kv_cache_storage.h"
#include "runner/model_runner.h"
#include "support/test_support.h"
#include "support/tiny_model.h"

namespace bw {
namespace {

constexpr int32_t kBlock = 16;

class DecodeGraphsGpuTest : public ::testing::TestWithParam<bool> {};

TEST_P(DecodeGraphsGpuTest, ReplaysMatchEagerSteps) {
  const bool at_start = GetParam();
  auto backend_or = create_backend("cuda", 0, DType::kF32);
  if (!backend_or.ok()) GTEST_SKIP() << "no CUDA device: " << backend_or.status().to_string();
  Backend& backend = **backend_or;
  ASSERT_TRUE(backend.supports_graphs());

  test::TempDir dir;
  auto path = test::write_tiny_model(dir, "tiny-llama", 5);
  ASSERT_TRUE(path.ok()) << path.status().to_string();
  auto ckpt = Checkpoint::open(*path);
  ASSERT_TRUE(ckpt.ok());
  WeightLoadOptions load;
  load.weight_dtype = DType::kF32;
  auto model = load_causal_lm(*ckpt, backend, load);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const int64_t vocab = (*model)->config().vocab_size;
  auto kv = KvCacheStorage::create(backend, (*model)->config(), 1024, kBlock, DType::kF32);
  ASSERT_TRUE(kv.ok());
  // As Engine::create: the workspace is sized for the largest step (the prefill of all 13
  // prompts at once) before any graph is recorded.
  ASSERT_TRUE((*model)->reserve(2048, 16).ok());
  DecodeGraphs graphs(**model, backend, kBlock, 16, 512);
  int64_t recorded = 0;
  if (at_start) {
    auto n = graphs.capture_all(kv->layers());
    ASSERT_TRUE(n.ok()) << n.status().to_string();
    recorded = *n;
    EXPECT_EQ(recorded, 5 * 3);  // sizes 1, 2, 4, 8, 16; widths 8, 16, 32 (512 tokens)
  }
  BatchInputs inputs;
  auto logits_buf = backend.allocate(static_cast<size_t>(16 * vocab) * sizeof(float));
  ASSERT_TRUE(logits_buf.ok());

  std::mt19937 rng(9);
  std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(vocab - 1));
  int32_t next_block = 0;
  for (int32_t batch : {3, 6, 13}) {
    // Prefill `batch` fresh sequences of different lengths eagerly, then decode.
    std::vector<ScheduledSequence> seqs;
    for (int32_t i = 0; i < batch; ++i) {
      ScheduledSequence s;
      s.request_id = i;
      s.start_pos = 0;
      s.token_ids.resize(static_cast<size_t>(7 + 23 * i));
      for (auto& id : s.token_ids)
        id = token(rng);
      const int32_t blocks = (static_cast<int32_t>(s.token_ids.size()) + 40 + kBlock - 1) / kBlock;
      for (int32_t b = 0; b < blocks; ++b)
        s.block_table.push_back(next_block + blocks - 1 - b);  // non-contiguous order
      next_block += blocks;
      s.sample = true;
      seqs.push_back(std::move(s));
    }
    ASSERT_TRUE(inputs.build(backend, seqs, kBlock).ok());
    TensorView prefill_logits = logits_buf->view(DType::kF32, {batch, vocab});
    ASSERT_TRUE((*model)->forward(inputs.input(), kv->layers(), prefill_logits).ok());
    for (auto& s : seqs) {
      s.start_pos = static_cast<int32_t>(s.token_ids.size());
      s.token_ids = {token(rng)};
    }
    for (int step = 0; step < 40; ++step) {
      // Eager first (writes this step's K/V), then the graph (writes the same values again).
      ASSERT_TRUE(inputs.build(backend, seqs, kBlock).ok());
      TensorView eager_view = logits_buf->view(DType::kF32, {batch, vocab});
      ASSERT_TRUE((*model)->forward(inputs.input(), kv->layers(), eager_view).ok());
      std::vector<float> eager, replayed;
      ASSERT_TRUE(read_logits(backend, eager_view, &eager).ok());
      auto graph_view = graphs.run(seqs, kv->layers());
      ASSERT_TRUE(graph_view.ok()) << graph_view.status().to_string();
      ASSERT_TRUE(read_logits(backend, *graph_view, &replayed).ok());
      ASSERT_EQ(eager.size(), replayed.size());
      float scale = 0.0f, diff = 0.0f;
      for (size_t i = 0; i < eager.size(); ++i) {
        scale = std::max(scale, std::fabs(eager[i]));
        diff = std::max(diff, std::fabs(eager[i] - replayed[i]));
      }
      ASSERT_GT(scale, 0.0f);
      ASSERT_LE(diff / scale, 1e-4f) << "batch " << batch << " step " << step;
      for (auto& s : seqs) {
        s.start_pos += 1;
        s.token_ids = {token(rng)};
      }
    }
  }
  EXPECT_TRUE(graphs.disabled().ok()) << graphs.disabled().to_string();
  if (at_start) {
    EXPECT_EQ(graphs.num_captures(), recorded) << "a step recorded its graph again";
    EXPECT_EQ(graphs.num_replays(), 3 * 40);
  } else {
    EXPECT_GE(graphs.num_captures(), 3);
    EXPECT_GE(graphs.num_replays(), 100);
  }
}

INSTANTIATE_TEST_SUITE_P(Recording, DecodeGraphsGpuTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "AtStart" : "AtFirstStep");
                         });

}  // namespace
}  // namespace bw
