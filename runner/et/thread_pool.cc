#include "runner/et/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TC_PAUSE() _mm_pause()
#else
#define TC_PAUSE() std::this_thread::yield()
#endif

// The wheel ships libexecutorch_threadpool.so (which contains pthreadpool)
// but neither threadpool.h nor pthreadpool.h; these declarations match its
// exported symbols and pthreadpool's documented C API.
struct pthreadpool;

namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
::pthreadpool* get_pthreadpool();
}  // namespace executorch::extension::threadpool

extern "C" {
struct pthreadpool_executor {
  int (*num_threads)(void* executor_context);
  void (*schedule)(void* executor_context, void* context, void (*task)(void* context));
};
size_t pthreadpool_get_threads_count(struct pthreadpool* threadpool);
bool pthreadpool_update_executor(struct pthreadpool* threadpool,
                                 struct pthreadpool_executor* executor, void* executor_context);
}

namespace torchchat {
namespace {

// How long an idle worker spins before it sleeps: longer than any gap
// inside a decode step, short enough to give the CPU back right after one.
constexpr auto kSpin = std::chrono::milliseconds(2);

class SpinningExecutor {
 public:
  explicit SpinningExecutor(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Loop(); });
  }
  // Lives as long as the process: ExecuTorch's pool is a static that may
  // still hold it during exit.
  SpinningExecutor(const SpinningExecutor&) = delete;
  SpinningExecutor& operator=(const SpinningExecutor&) = delete;

  int workers() const { return static_cast<int>(threads_.size()); }

  void Schedule(void* context, void (*task)(void*)) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace_back(context, task);
      pending_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_one();
  }

  static pthreadpool_executor* Interface() {
    static pthreadpool_executor iface{
        [](void* self) { return static_cast<SpinningExecutor*>(self)->workers(); },
        [](void* self, void* context, void (*task)(void*)) {
          static_cast<SpinningExecutor*>(self)->Schedule(context, task);
        }};
    return &iface;
  }

 private:
  using Job = std::pair<void*, void (*)(void*)>;

  bool TryPop(Job* job) {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.empty()) return false;
    *job = queue_.front();
    queue_.pop_front();
    pending_.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }

  void Loop() {
    Job job;
    auto deadline = std::chrono::steady_clock::now() + kSpin;
    for (uint32_t i = 1;; ++i) {
      // A job another worker took first sends this one back to spinning,
      // not to sleep.
      if (pending_.load(std::memory_order_acquire) > 0 && TryPop(&job)) {
        job.second(job.first);
        deadline = std::chrono::steady_clock::now() + kSpin;
        continue;
      }
      if (i % 256 == 0 && std::chrono::steady_clock::now() > deadline) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        deadline = std::chrono::steady_clock::now() + kSpin;  // the next pass takes the job
        continue;
      }
      TC_PAUSE();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::atomic<int> pending_{0};
  std::vector<std::thread> threads_;
};

}  // namespace

size_t ConfigureEtThreadPool(int num_threads) {
  namespace tp = executorch::extension::threadpool;
  if (num_threads > 0)
    tp::get_threadpool()->_unsafe_reset_threadpool(static_cast<uint32_t>(num_threads));
  ::pthreadpool* pool = tp::get_pthreadpool();
  if (pool == nullptr) return 1;
  const size_t threads = pthreadpool_get_threads_count(pool);
  if (threads > 1) {
    // One executor per pool size, never destroyed (see above).
    static std::mutex mu;
    static std::vector<SpinningExecutor*> executors;
    std::lock_guard<std::mutex> lock(mu);
    SpinningExecutor* ex = nullptr;
    for (SpinningExecutor* e : executors)
      if (static_cast<size_t>(e->workers()) == threads - 1) ex = e;
    if (ex == nullptr) {
      ex = new SpinningExecutor(static_cast<int>(threads - 1));
      executors.push_back(ex);
    }
    pthreadpool_update_executor(pool, SpinningExecutor::Interface(), ex);
  }
  return threads;
}

}  // namespace torchchat
