// Microbenchmark: Q4Linear vs an fp32 GEMV on SmolLM2-135M's linear shapes,
// measured in the same run. Weights rotate over copies totalling more than
// the last-level cache budget (--mb), so the numbers are memory-bound like a
// real decode step, not L2-resident.
//
//   bazel run -c opt //kernels:q4_bench -- [--threads 2] [--mb 256] [--m 1]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/q4_linear.h"
#include "kernels/q8_linear.h"
#include "kernels/spin_pool.h"

namespace tk = torchchat::kernels;

namespace {

struct Fp32Job {
  const float* w;
  const float* x;
  float* y;
  int64_t k;
};

// A fair fp32 baseline: 4 rows per pass sharing each load of x.
__attribute__((target("avx512f,fma"))) void Fp32Rows(void* ctx, int64_t n0, int64_t n1) {
  const Fp32Job& j = *static_cast<const Fp32Job*>(ctx);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const float* w = j.w + n * j.k;
    for (int64_t k = 0; k < j.k; k += 16) {
      const __m512 xv = _mm512_loadu_ps(j.x + k);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), xv, a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j.k + k), xv, a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 2 * j.k + k), xv, a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 3 * j.k + k), xv, a3);
    }
    j.y[n] = _mm512_reduce_add_ps(a0);
    j.y[n + 1] = _mm512_reduce_add_ps(a1);
    j.y[n + 2] = _mm512_reduce_add_ps(a2);
    j.y[n + 3] = _mm512_reduce_add_ps(a3);
  }
  for (; n < n1; ++n) {
    float s = 0;
    for (int64_t k = 0; k < j.k; ++k) s += j.w[n * j.k + k] * j.x[k];
    j.y[n] = s;
  }
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, m = 1;
  double mb = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--threads")
      threads = std::atoi(argv[i + 1]);
    else if (a == "--mb")
      mb = std::atof(argv[i + 1]);
    else if (a == "--m")
      m = std::atoi(argv[i + 1]);
    else if (a == "--isa") {
      if (!tk::Q4ForceIsa(argv[i + 1])) {
        std::fprintf(stderr, "error: this CPU cannot run isa %s\n", argv[i + 1]);
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: q4_bench [--threads T] [--mb MB] [--m M] [--isa "
                   "avx512vnni|avx512|avx2|neon|scalar]\n");
      return 2;
    }
  }
  const bool fp32_ok = __builtin_cpu_supports("avx512f") && m == 1;
  tk::SpinPool pool(threads);
  const tk::Q4ParallelFor pf = pool.AsParallelFor();
  std::printf("q4 isa %s, threads %d, M %d, rotating over ~%.0f MB of weights per kernel\n",
              tk::Q4Isa(), threads, m, mb);
  std::printf("%-12s %10s %9s %10s %9s %8s\n", "N x K", "q4 us", "q4 GB/s", "fp32 us", "fp32 GB/s",
              "speedup");
  std::mt19937 rng(0);
  const std::pair<int64_t, int64_t> shapes[] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}};
  for (auto [n, k] : shapes) {
    const int64_t nb = tk::Q4NumBlocks(k);
    const double q4_bytes = double(n * nb * 16 + n * nb * 4), f_bytes = double(n * k * 4);
    const int copies_q = std::max(1, int(mb * 1e6 / q4_bytes)),
              copies_f = std::max(1, int(mb * 1e6 / f_bytes));
    std::vector<uint8_t> qs(size_t(copies_q * n * nb * 16));
    std::vector<uint16_t> sc(size_t(copies_q * n * nb * 2));
    for (auto& b : qs) b = uint8_t(rng());
    for (size_t i = 0; i < sc.size(); ++i)
      sc[i] = tk::Fp32ToFp16(0.01f * float(int(rng() % 100) - 50));
    std::vector<float> wf(size_t(copies_f * n * k), 0.5f), x(size_t(m * k), 1.0f), y(size_t(m * n));
    const int iters = std::max(200, copies_q * 3);
    auto run_q4 = [&](int i) {
      const int c = i % copies_q;
      tk::Q4Weight w{qs.data() + size_t(c) * n * nb * 16, sc.data() + size_t(c) * n * nb * 2, n, k};
      tk::Q4Linear(x.data(), m, w, nullptr, y.data(), &pf);
    };
    for (int i = 0; i < copies_q; ++i) run_q4(i);
    double t0 = NowSeconds();
    for (int i = 0; i < iters; ++i) run_q4(i);
    const double q4_t = (NowSeconds() - t0) / iters;
    double f_t = 0;
    if (fp32_ok) {
      const int f_iters = std::max(200, copies_f * 3);
      auto run_f = [&](int i) {
        Fp32Job j{wf.data() + size_t(i % copies_f) * n * k, x.data(), y.data(), k};
        pool.ParallelFor(n, std::max<int64_t>(4, 16384 / k) / 4 * 4, Fp32Rows, &j);
      };
      for (int i = 0; i < copies_f; ++i) run_f(i);
      t0 = NowSeconds();
      for (int i = 0; i < f_iters; ++i) run_f(i);
      f_t = (NowSeconds() - t0) / f_iters;
    }
    char shape[32];
    std::snprintf(shape, sizeof shape, "%ldx%ld", long(n), long(k));
    if (fp32_ok)
      std::printf("%-12s %10.2f %9.2f %10.2f %9.2f %7.2fx\n", shape, q4_t * 1e6,
                  q4_bytes / q4_t / 1e9, f_t * 1e6, f_bytes / f_t / 1e9, f_t / q4_t);
    else
      std::printf("%-12s %10.2f %9.2f %10s %9s %8s\n", shape, q4_t * 1e6, q4_bytes / q4_t / 1e9,
                  "-", "-", "-");
  }
  // The output layer: GGUF's Q8_0, vocab x dim.
  {
    const int64_t n = 49152, k = 576, nb = k / 32;
    const double bytes = double(n * nb * 34);
    const int copies = std::max(1, int(mb * 1e6 / bytes));
    std::vector<int8_t> qs(size_t(copies * n * k));
    std::vector<uint16_t> sc(size_t(copies * n * nb));
    for (auto& b : qs) b = int8_t(rng());
    for (auto& d : sc) d = tk::Fp32ToFp16(0.001f * float(int(rng() % 100) - 50));
    std::vector<float> x(size_t(m * k), 1.0f), y(size_t(m * n));
    auto run_q8 = [&](int i) {
      const int c = i % copies;
      const tk::Q8Weight w{qs.data() + size_t(c) * n * k, sc.data() + size_t(c) * n * nb, n, k};
      tk::Q8Linear(x.data(), m, w, nullptr, y.data(), &pf);
    };
    for (int i = 0; i < copies; ++i) run_q8(i);
    const int iters = std::max(20, copies * 3);
    const double t0 = NowSeconds();
    for (int i = 0; i < iters; ++i) run_q8(i);
    const double t = (NowSeconds() - t0) / iters;
    std::printf("%-12s %10.2f %9.2f   (Q8_0)\n", "49152x576", t * 1e6, bytes / t / 1e9);
  }
  return 0;
}
