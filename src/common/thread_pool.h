// A persistent pool of worker threads for data-parallel loops (CPU kernels, dequantisation).
//
// Workers are started once and sleep between jobs, so a decode step does not pay for
// thread creation. `parallel_for` splits [0, n) into contiguous chunks, runs them on the
// workers and the calling thread, and returns when all are done. One parallel_for runs at a
// time per pool (calls from several threads are serialised); a parallel_for issued from
// inside a task runs inline on that worker, so nesting never deadlocks.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace bw {

class ThreadPool {
 public:
  // num_threads counts the calling thread: 1 means everything runs inline.
  // 0 picks the number of hardware threads.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) over disjoint chunks covering [0, n). `min_chunk` is the
  // smallest chunk worth a thread (to keep tiny loops inline).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk = 1);

 private:
  void worker_loop(int worker_index);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // serialises parallel_for callers

  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  // Guarded by mutex_.
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_chunk_ = 0;
  int64_t job_num_chunks_ = 0;
  int64_t next_chunk_ = 0;
  int64_t chunks_done_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

}  // namespace bw
