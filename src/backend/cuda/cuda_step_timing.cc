#include "backend/cuda/cuda_step_timing.h"

#include <cuda_runtime_api.h>

#include <cstdio>

namespace bw {

CudaStepTiming::CudaStepTiming() {
  for (CUevent_st*& e : starts_)
    cudaEventCreate(&e);
  cudaEventCreate(&end_);
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
  for (CUevent_st* e : starts_)
    if (e != nullptr) cudaEventDestroy(e);
  if (end_ != nullptr) cudaEventDestroy(end_);
}

void CudaStepTiming::on_replay(CUstream_st* stream) {
  current_ ^= 1;  // the other slot becomes the previous step's start
  cudaEventRecord(starts_[current_], stream);
  replayed_ = true;
}

void CudaStepTiming::on_sample_enqueued(CUstream_st* stream) {
  cudaEventRecord(end_, stream);
  end_recorded_ = true;
}

void CudaStepTiming::on_sample_done() {
  const bool graph_step = replayed_ && end_recorded_;
  if (graph_step && prev_graph_) {
    float busy = 0.0f, period = 0.0f;
    if (cudaEventElapsedTime(&busy, starts_[current_], end_) == cudaSuccess &&
        cudaEventElapsedTime(&period, starts_[current_ ^ 1], starts_[current_]) == cudaSuccess) {
      busy_ms_ += busy;
      period_ms_ += period;
      ++steps_;
    }
  }
  cudaGetLastError();  // a failed query is not the backend's error
  prev_graph_ = graph_step;
  replayed_ = end_recorded_ = false;
}

}  // namespace bw
