#include "backend/cuda/cuda_step_timing.h"

#include <cuda_runtime_api.h>

#include <cstdio>

namespace bw {

CudaStepTiming::CudaStepTiming() {
  for (Slot& slot : slots_) {
    cudaEventCreate(&slot.start);
    cudaEventCreate(&slot.end);
  }
}

CudaStepTiming::~CudaStepTiming() {
  if (steps_ > 0) {
    const double busy = busy_ms_ * 1e3 / static_cast<double>(steps_);
    const double period = period_ms_ * 1e3 / static_cast<double>(steps_);
    std::fprintf(stderr,
                 "cuda step timing: %lld decode steps; per step %.1f us, GPU busy %.1f us (replay to sampled ids), "
                 "GPU idle %.1f us (%.1f%%)\n",
                 static_cast<long long>(steps_), period, busy, period - busy,
                 period > 0.0 ? 100.0 * (period - busy) / period : 0.0);
  }
  for (Slot& slot : slots_) {
    if (slot.start != nullptr) cudaEventDestroy(slot.start);
    if (slot.end != nullptr) cudaEventDestroy(slot.end);
  }
}

void CudaStepTiming::on_replay(CUstream_st* stream) {
  cudaEventRecord(slots_[head_].start, stream);
  replayed_ = true;
}

void CudaStepTiming::on_sample_enqueued(CUstream_st* stream) {
  Slot& slot = slots_[head_];
  cudaEventRecord(slot.end, stream);
  slot.graph = replayed_;
  replayed_ = false;
  head_ = (head_ + 1) % kSlots;
}

void CudaStepTiming::on_sample_done() {
  if (tail_ == head_) return;  // nothing enqueued
  const Slot& slot = slots_[tail_];
  const Slot& prev = slots_[(tail_ + kSlots - 1) % kSlots];
  if (slot.graph && prev_graph_) {
    float busy = 0.0f, period = 0.0f;
    if (cudaEventElapsedTime(&busy, slot.start, slot.end) == cudaSuccess &&
        cudaEventElapsedTime(&period, prev.start, slot.start) == cudaSuccess) {
      busy_ms_ += busy;
      period_ms_ += period;
      ++steps_;
    }
  }
  cudaGetLastError();  // a failed query is not the backend's error
  prev_graph_ = slot.graph;
  tail_ = (tail_ + 1) % kSlots;
}

}  // namespace bw
