// BW_CUDA_STEP_TIMING=1: how much of a decode step the GPU spends idle, waiting for the host.
//
// A decode step replays a CUDA graph and then samples on the device; the host waits for
// the sampled ids, does the engine's bookkeeping, uploads the next step's inputs and
// replays again (with async scheduling it enqueues the next step first, and the GPU's idle
// time is what the overlap did not hide). Events on the stream mark each replay's start
// and each sample's end, so
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
  // One slot per sampled step, filled in launch order and read in the same order when its
  // ids are waited for: with overlapped steps the next replay is enqueued before the
  // previous step's ids are back (at most two outstanding; four slots leave room).
  struct Slot {
    CUevent_st* start = nullptr;  // the replay
    CUevent_st* end = nullptr;    // the ids copied back
    bool graph = false;           // a replayed graph that sampled
  };
  static constexpr int kSlots = 4;
  Slot slots_[kSlots];
  int head_ = 0;             // the step being enqueued
  int tail_ = 0;             // the oldest step not yet waited for
  bool replayed_ = false;    // a replay since the last sample enqueued
  bool prev_graph_ = false;  // the last step waited for was a graph step
  int64_t steps_ = 0;        // pairs of consecutive graph steps measured
  double busy_ms_ = 0.0;
  double period_ms_ = 0.0;
};

}  // namespace bw
