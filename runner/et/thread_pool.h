// Worker threads for ExecuTorch's shared thread pool that stay awake between
// the many short parallel regions of a decode step.
//
// ExecuTorch's pthreadpool parks its workers in the kernel after ~10 us
// without work. A decode step of a .pte runs ~300 XNNPACK delegate calls and
// our llama:: kernels, with portable ops and per-call setup in between; a
// third of those gaps exceed 10 us, and each one then costs a futex wake of
// ~20 us on the next call (measured here: ~100 sleeps per token, ~2 ms of a
// 27 ms step). pthreadpool's public pthreadpool_update_executor() lets the
// pool borrow its workers from an executor instead: ours spins for a couple
// of milliseconds before it sleeps, so the gaps within a step cost nothing,
// and the CPU is given back soon after generation stops.
#ifndef RUNNER_ET_THREAD_POOL_H_
#define RUNNER_ET_THREAD_POOL_H_

#include <cstddef>

namespace torchchat {

// Sets ExecuTorch's shared pool (the one XNNPACK and ExecuTorch's
// parallel_for use) to `num_threads` threads including the caller (0 keeps
// its size) and installs the spinning executor. Call before running a
// program; not thread-safe. Returns the pool's thread count.
size_t ConfigureEtThreadPool(int num_threads);

}  // namespace torchchat

#endif  // RUNNER_ET_THREAD_POOL_H_
