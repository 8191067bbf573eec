// How the kernels split work across threads without owning a pool: a runtime
// with its own (at::parallel_for, ExecuTorch's threadpool, SpinPool) supplies
// one.
#pragma once

#include <cstdint>

namespace torchchat::kernels {

// Runs fn(ctx, begin, end) over disjoint ranges covering [0, n); nullptr
// `run` runs everything on the calling thread.
using Q4Task = void (*)(void* ctx, int64_t begin, int64_t end);
struct Q4ParallelFor {
  void (*run)(void* self, int64_t n, int64_t grain, Q4Task fn, void* ctx) = nullptr;
  void* self = nullptr;
};

}  // namespace torchchat::kernels
