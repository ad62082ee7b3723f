#include "common/thread_pool.h"

#include <algorithm>

namespace bw {

namespace {
thread_local bool t_inside_pool_task = false;
}

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(num_threads - 1);
  for (int i = 0; i + 1 < num_threads; ++i)
    workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_)
    t.join();
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  const int64_t max_chunks = std::min<int64_t>(num_threads(), (n + min_chunk - 1) / min_chunk);
  if (max_chunks <= 1 || workers_.empty() || t_inside_pool_task) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  // A few chunks per thread balance uneven work without much scheduling cost.
  const int64_t num_chunks = std::min<int64_t>(n, max_chunks * 4);
  const int64_t chunk = (n + num_chunks - 1) / num_chunks;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_n_ = n;
    job_chunk_ = chunk;
    job_num_chunks_ = (n + chunk - 1) / chunk;
    next_chunk_ = 0;
    chunks_done_ = 0;
    ++generation_;
  }
  work_cv_.notify_all();

  // The caller works too.
  t_inside_pool_task = true;
  for (;;) {
    int64_t c;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (next_chunk_ >= job_num_chunks_) break;
      c = next_chunk_++;
    }
    fn(c * chunk, std::min(n, (c + 1) * chunk));
    std::lock_guard<std::mutex> lock(mutex_);
    ++chunks_done_;
  }
  t_inside_pool_task = false;

  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [&] { return chunks_done_ == job_num_chunks_; });
  job_ = nullptr;
}

void ThreadPool::worker_loop(int /*worker_index*/) {
  t_inside_pool_task = true;
  uint64_t seen_generation = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    work_cv_.wait(lock, [&] {
      return stopping_ || (job_ != nullptr && generation_ != seen_generation && next_chunk_ < job_num_chunks_);
    });
    if (stopping_) return;
    seen_generation = generation_;
    while (job_ != nullptr && next_chunk_ < job_num_chunks_) {
      const int64_t c = next_chunk_++;
      const auto* fn = job_;
      const int64_t begin = c * job_chunk_;
      const int64_t end = std::min(job_n_, (c + 1) * job_chunk_);
      lock.unlock();
      (*fn)(begin, end);
      lock.lock();
      if (++chunks_done_ == job_num_chunks_) done_cv_.notify_all();
    }
  }
}

}  // namespace bw
