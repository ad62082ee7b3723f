// BW_CUDA_STEP_TIMING=1: how much of a decode step the GPU spends idle, waiting for the host.
//
// A decode step replays a CUDA graph and then samples on the device; the host waits for
// the sampled ids, does the engine's bookkeeping, uploads the next step's inputs and
// replays again. Events on the stream mark each replay's start and each sample's end, so
// per pair of consecutive graph steps: busy = replay start -> ids copied back, period =
// replay start -> next replay start, and period - busy is the time the GPU had nothing to
// do (host work, API calls, graph launch latency). Printed to stderr at exit.
#pragma once

#include <cstdint>

struct CUevent_st;
struct CUstream_st;

namespace bw {

class CudaStepTiming {
 public:
  CudaStepTiming();
  ~CudaStepTiming();  // prints the totals
  CudaStepTiming(const CudaStepTiming&) = delete;
  CudaStepTiming& operator=(const CudaStepTiming&) = delete;

  // Before a graph replay is enqueued on `stream`.
  void on_replay(CUstream_st* stream);
  // After sampling's read-back is enqueued on `stream`, before the host waits for it.
  void on_sample_enqueued(CUstream_st* stream);
  // After the host's wait for the sampled ids returned.
  void on_sample_done();

 private:
  CUevent_st* starts_[2] = {nullptr, nullptr};  // this step's and the previous step's replay
  CUevent_st* end_ = nullptr;
  int current_ = 0;
  bool replayed_ = false;    // a replay since the last sample
  bool prev_graph_ = false;  // the previous step was a replayed graph that sampled
  bool end_recorded_ = false;
  int64_t steps_ = 0;  // pairs of consecutive graph steps measured
  double busy_ms_ = 0.0;
  double period_ms_ = 0.0;
};

}  // namespace bw
