#include "runner/et/thread_pool.h"

#include <executorch/runtime/kernel/thread_parallel_interface.h>
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

namespace torchchat {
namespace {

// Every index exactly once, whether the workers are spinning (short gaps)
// or asleep (gaps past the spin window), over pool sizes set and reset.
TEST(EtThreadPool, ParallelForCoversEveryIndexOnceAcrossGaps) {
  std::mt19937 rng(1);
  for (int threads : {3, 2, 3, 1}) {
    ASSERT_EQ(ConfigureEtThreadPool(threads), size_t(threads));
    constexpr int64_t kN = 5000;
    std::vector<std::atomic<int>> hits(kN);
    for (int round = 0; round < 60; ++round) {
      for (auto& h : hits) h.store(0);
      const int64_t grain = 1 + rng() % 64;
      ASSERT_TRUE(executorch::extension::parallel_for(0, kN, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      }));
      for (int64_t i = 0; i < kN; ++i)
        ASSERT_EQ(hits[i].load(), 1) << "index " << i << " round " << round;
      const int gap_us = round % 10 == 9 ? 3000 : int(rng() % 200);
      std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
    }
  }
}

TEST(EtThreadPool, WorkSpreadsOverThreads) {
  ASSERT_EQ(ConfigureEtThreadPool(3), 3u);
  std::mutex mu;
  std::set<std::thread::id> ids;
  ASSERT_TRUE(executorch::extension::parallel_for(0, 3000, 1, [&](int64_t b, int64_t e) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(10 * (e - b));
    while (std::chrono::steady_clock::now() < until) {
    }
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  }));
  EXPECT_GT(ids.size(), 1u);
}

// The point of the executor: ExecuTorch's own workers go to sleep ~10 us
// after a parallel region, so each of these regions, 100 us apart, would
// cost a voluntary context switch (measured: ~1 per region). Ours spin
// through such gaps. Busy-waiting keeps this thread from blocking itself.
TEST(EtThreadPool, WorkersStayAwakeBetweenCloseParallelRegions) {
  ASSERT_EQ(ConfigureEtThreadPool(2), 2u);
  auto spin_for = [](std::chrono::microseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
    }
  };
  std::atomic<int64_t> sum{0};
  auto region = [&] {
    ASSERT_TRUE(executorch::extension::parallel_for(0, 64, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum.fetch_add(i);
    }));
  };
  region();  // workers start
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  constexpr int kRegions = 200;
  for (int i = 0; i < kRegions; ++i) {
    region();
    spin_for(std::chrono::microseconds(100));
  }
  getrusage(RUSAGE_SELF, &after);
  EXPECT_EQ(sum.load(), int64_t(kRegions + 1) * (63 * 64 / 2));
  EXPECT_LT(after.ru_nvcsw - before.ru_nvcsw, kRegions / 4);
}

}  // namespace
}  // namespace torchchat
