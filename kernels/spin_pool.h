// A small fork-join pool for Q4Linear when no runtime pool is at hand (the
// benchmark, C++ callers without torch/ExecuTorch). Workers spin briefly
// before sleeping: a decode GEMV lasts microseconds, so waking a sleeping
// thread through a condition variable would cost as much as the work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/parallel_for.h"

namespace torchchat::kernels {

class SpinPool {
 public:
  explicit SpinPool(int threads);
  ~SpinPool();
  SpinPool(const SpinPool&) = delete;
  SpinPool& operator=(const SpinPool&) = delete;

  int threads() const { return int(workers_.size()) + 1; }
  // Splits [0, n) into at most threads() contiguous ranges of >= grain items.
  void ParallelFor(int64_t n, int64_t grain, Q4Task fn, void* ctx);
  Q4ParallelFor AsParallelFor();

 private:
  void Worker(int index);

  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  // The current job, published by generation_.
  Q4Task fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;
};

}  // namespace torchchat::kernels
