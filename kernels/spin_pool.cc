#include "kernels/spin_pool.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#define TC_PAUSE() _mm_pause()
#else
#define TC_PAUSE() std::this_thread::yield()
#endif

namespace torchchat::kernels {
namespace {
// ~0.5-1 ms of spinning before sleeping: covers the gap between the GEMVs of
// one decode step without burning a core between steps.
constexpr int kSpins = 10000;

void RangeOf(int64_t n, int parts, int index, int64_t* b, int64_t* e) {
  *b = n * index / parts;
  *e = n * (index + 1) / parts;
}
}  // namespace

SpinPool::SpinPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this, i] { Worker(i); });
}

SpinPool::~SpinPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void SpinPool::Worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g;
    int spins = 0;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpins) {
        TC_PAUSE();
      } else {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load() != seen; });
      }
    }
    seen = g;
    if (stop_.load()) return;
    if (index < parts_) {
      int64_t b, e;
      RangeOf(n_, parts_, index, &b, &e);
      fn_(ctx_, b, e);
    }
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void SpinPool::ParallelFor(int64_t n, int64_t grain, Q4Task fn, void* ctx) {
  const int parts =
      int(std::min<int64_t>(threads(), std::max<int64_t>(1, n / std::max<int64_t>(1, grain))));
  if (parts <= 1 || workers_.empty()) {
    fn(ctx, 0, n);
    return;
  }
  fn_ = fn;
  ctx_ = ctx;
  n_ = n;
  parts_ = parts;
  pending_.store(int(workers_.size()), std::memory_order_relaxed);
  {
    // Under the mutex so a worker about to sleep cannot miss the wake-up.
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  int64_t b, e;
  RangeOf(n, parts, 0, &b, &e);
  fn(ctx, b, e);
  while (pending_.load(std::memory_order_acquire) != 0) TC_PAUSE();
}

Q4ParallelFor SpinPool::AsParallelFor() {
  Q4ParallelFor pf;
  pf.self = this;
  pf.run = [](void* self, int64_t n, int64_t grain, Q4Task fn, void* ctx) {
    static_cast<SpinPool*>(self)->ParallelFor(n, grain, fn, ctx);
  };
  return pf;
}

}  // namespace torchchat::kernels
