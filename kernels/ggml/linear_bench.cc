// Microbenchmark: one decode matvec (M rows of x, default 1) on an 8B's and
// a 1B's largest K-quant shapes, in GB/s of weight bytes against a read-only
// bandwidth (a sum over 1 GiB) measured in the same run, on the same threads.
// Weights rotate over copies totalling --mb, so every call reads memory as a
// decode step does; an --mb below a shape's size (--mb 1 --threads 1) times
// the kernels in cache instead, a compute rate that memory traffic from
// other processes does not disturb.
//
//   tools/bazel run //kernels/ggml:linear_bench -- [--threads 2] [--mb 512]
//       [--m 1] [--isa avx2|avx512vnni] [--x int8|int16] [--reps 5]
//
// --gemm instead times prefill: m = 256 rows of x (--m to change) against
// a 1B's ffn gate/up shape (8192 x 2048) in every block format, in GMAC/s,
// on both prefill paths in the same run (the int8 GEMM where the format has
// one, and the fp32 tiles), each the median of --reps.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/ggml/formats.h"
#include "kernels/ggml/linear.h"
#include "kernels/spin_pool.h"

namespace tk = torchchat::kernels;
namespace gg = torchchat::kernels::ggml;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct SumJob {
  const float* a;
  double* out;  // per thread range start / (1 << 20), padded
};

__attribute__((target("avx2"))) void SumRange(void* ctx, int64_t b, int64_t e) {
  const SumJob& j = *static_cast<const SumJob*>(ctx);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (int64_t i = b * 4096; i < e * 4096; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_load_ps(j.a + i));
    s1 = _mm256_add_ps(s1, _mm256_load_ps(j.a + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_load_ps(j.a + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_load_ps(j.a + i + 24));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  j.out[b / 4096 * 8] += t[0];
}

// GB/s of a sum over 1 GiB on the pool's threads (best of 5).
double ReadBandwidth(tk::SpinPool& pool) {
  const int64_t floats = int64_t(1) << 28, pages = floats / 4096;
  float* a = static_cast<float*>(std::aligned_alloc(64, size_t(floats) * 4));
  for (int64_t i = 0; i < floats; ++i) a[i] = 1.f;
  std::vector<double> out(size_t(pages / 4096 * 8 + 8));
  SumJob j{a, out.data()};
  double best = 1e9;
  for (int r = 0; r < 6; ++r) {
    const double t0 = Now();
    pool.ParallelFor(pages, 4096, SumRange, &j);
    if (r > 0) best = std::min(best, Now() - t0);
  }
  std::free(a);
  return double(floats) * 4 / best / 1e9;
}

struct Shape {
  int type;
  int64_t n, k;
  const char* what;
};

// Random blocks, then every fp16 field small: scales at the format's
// offsets would otherwise be random fp16 (inf, nan), which changes no
// timing but keeps outputs readable.
std::vector<uint8_t> Weights(int type, int64_t bytes, std::mt19937& rng) {
  std::vector<uint8_t> w(static_cast<size_t>(bytes));
  uint32_t* p = reinterpret_cast<uint32_t*>(w.data());
  for (size_t i = 0; i < w.size() / 4; ++i) p[i] = rng() & 0x3B3B3B3Bu;
  (void)type;
  return w;
}

// Prefill: GMAC/s of m rows of x on each prefill path, per block format.
void Gemm(tk::SpinPool& pool, int m, int reps) {
  const tk::Q4ParallelFor pf = pool.AsParallelFor();
  const int types[] = {gg::kQ4_K, gg::kQ5_K, gg::kQ6_K, gg::kQ4_0, gg::kQ4_1,   gg::kQ5_0,
                       gg::kQ5_1, gg::kQ8_0, gg::kQ2_K, gg::kQ3_K, gg::kIQ4_NL, gg::kIQ4_XS};
  const int64_t n = 8192, k = 2048;
  std::printf("prefill GEMM: ggml isa %s, M %d, N x K %ldx%ld, GMAC/s (median of %d, min-max)\n",
              gg::Isa(), m, long(n), long(k), reps);
  std::printf("%-7s %18s %18s %8s\n", "type", "int8", "tiles", "ratio");
  std::mt19937 rng(0);
  std::normal_distribution<float> g;
  std::vector<float> x(size_t(m * k)), y(size_t(m * n));
  for (auto& v : x) v = g(rng);
  for (int type : types) {
    const auto w = Weights(type, gg::RowBytes(type, k) * n, rng);
    double med[2];
    char range[2][32];
    for (int p = 0; p < 2; ++p) {
      gg::ForcePrefill(p == 0 ? "int8" : "tiles");
      auto run = [&] { gg::Linear(x.data(), m, w.data(), type, n, k, nullptr, y.data(), &pf); };
      run();
      std::vector<double> r;
      for (int i = 0; i < reps; ++i) {
        const double t0 = Now();
        run();
        r.push_back(double(m) * double(n) * double(k) / (Now() - t0) / 1e9);
      }
      std::sort(r.begin(), r.end());
      med[p] = r[r.size() / 2];
      std::snprintf(range[p], sizeof range[p], "%.1f (%.1f-%.1f)", med[p], r.front(), r.back());
    }
    gg::ForcePrefill("");
    std::printf("%-7s %18s %18s %7.2fx\n", gg::TypeName(type), range[0], range[1], med[0] / med[1]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, m = 0, reps = 5;
  double mb = 512;
  bool gemm = false;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--gemm") {
      gemm = true;
      --i;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "error: %s needs a value\n", argv[i]);
      return 2;
    }
    if (a == "--threads") {
      threads = std::atoi(argv[i + 1]);
    } else if (a == "--mb") {
      mb = std::atof(argv[i + 1]);
    } else if (a == "--m") {
      m = std::atoi(argv[i + 1]);
    } else if (a == "--reps") {
      reps = std::atoi(argv[i + 1]);
    } else if (a == "--isa") {
      if (!gg::ForceIsa(argv[i + 1])) {
        std::fprintf(stderr, "error: this CPU cannot run isa %s\n", argv[i + 1]);
        return 2;
      }
    } else if (a == "--x") {
      if (!gg::ForceDecodeX(argv[i + 1])) {
        std::fprintf(stderr, "error: --x int8|int16\n");
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: linear_bench [--gemm] [--threads T] [--mb MB] [--m M] [--reps R] "
                   "[--isa avx2|avx512vnni|scalar] [--x int8|int16]\n");
      return 2;
    }
  }
  tk::SpinPool pool(threads);
  if (gemm) {
    Gemm(pool, m > 0 ? m : 256, reps);
    return 0;
  }
  if (m <= 0) m = 1;
  const tk::Q4ParallelFor pf = pool.AsParallelFor();
  const double bw = ReadBandwidth(pool);
  std::printf("ggml isa %s, x %s, threads %d, M %d, weights rotating over ~%.0f MB\n", gg::Isa(),
              gg::DecodeX(), threads, m, mb);
  std::printf("read bandwidth (sum over 1 GiB, best of 5): %.1f GB/s\n", bw);
  std::printf("%-7s %-14s %-22s %9s %8s %8s %8s\n", "type", "N x K", "what", "us/call", "GB/s",
              "min-max", "of read");
  const Shape shapes[] = {
      {gg::kQ4_K, 14336, 4096, "8B ffn gate/up"},
      {gg::kQ4_K, 4096, 14336, "8B ffn down (Q4_K)"},
      {gg::kQ6_K, 4096, 14336, "8B ffn down (Q6_K)"},
      {gg::kQ4_K, 4096, 4096, "8B attn q/o"},
      {gg::kQ6_K, 128256, 4096, "8B output"},
      {gg::kQ4_K, 8192, 2048, "1B ffn gate/up"},
      {gg::kQ6_K, 128256, 2048, "1B tied output"},
      {gg::kQ5_K, 14336, 4096, "Q5_K"},
      {gg::kIQ4_XS, 14336, 4096, "IQ4_XS"},
      {gg::kQ4_0, 14336, 4096, "Q4_0"},
      {gg::kQ8_0, 14336, 4096, "Q8_0"},
  };
  std::mt19937 rng(0);
  std::normal_distribution<float> g;
  for (Shape s : shapes) {
    // --mb below a shape's size keeps its first rows only, in cache: the
    // kernels' compute rate rather than memory's.
    s.n = std::max<int64_t>(16,
                            std::min<int64_t>(s.n, int64_t(mb * 1e6) / gg::RowBytes(s.type, s.k)));
    const int64_t row = gg::RowBytes(s.type, s.k), bytes = row * s.n;
    const int copies = std::max(1, int(mb * 1e6 / double(bytes)));
    const auto w = Weights(s.type, bytes * copies, rng);
    std::vector<float> x(size_t(m * s.k)), y(size_t(m * s.n));
    for (auto& v : x) v = g(rng);
    auto run = [&](int i) {
      gg::Linear(x.data(), m, w.data() + size_t(i % copies) * size_t(bytes), s.type, s.n, s.k,
                 nullptr, y.data(), &pf);
    };
    for (int i = 0; i < copies; ++i) run(i);
    // Each rep reads ~1 GB of weights (at least one pass over the copies).
    const int iters = std::max(copies, int(1e9 / double(bytes)));
    std::vector<double> gbs;
    int call = 0;
    for (int r = 0; r < reps; ++r) {
      const double t0 = Now();
      for (int i = 0; i < iters; ++i) run(call++);
      gbs.push_back(double(bytes) * iters / (Now() - t0) / 1e9);
    }
    std::sort(gbs.begin(), gbs.end());
    const double med = gbs[gbs.size() / 2];
    char shape[32];
    std::snprintf(shape, sizeof shape, "%ldx%ld", long(s.n), long(s.k));
    char range[32];
    std::snprintf(range, sizeof range, "%.1f-%.1f", gbs.front(), gbs.back());
    std::printf("%-7s %-14s %-22s %9.1f %8.1f %8s %8.2f\n", gg::TypeName(s.type), shape, s.what,
                double(bytes) / med / 1e3, med, range, med / bw);
  }
  return 0;
}
