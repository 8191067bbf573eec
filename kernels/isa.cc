#include "kernels/isa.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace torchchat::kernels::isa {
namespace {

#if TC_Q4_X86
bool CpuHasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool CpuHasAvx512() {
  return CpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
bool CpuHasAvx512Vnni() { return CpuHasAvx512() && __builtin_cpu_supports("avx512vnni"); }

TC_TARGET(TC_VNNI) inline float HmaxAvx512(__m512 v) {
  __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}
#endif

Path Auto() {
#if TC_Q4_X86
  if (CpuHasAvx512Vnni()) return Path::kAvx512Vnni;
  if (CpuHasAvx512()) return Path::kAvx512;
  if (CpuHasAvx2()) return Path::kAvx2;
#endif
#if TC_Q4_ARM
  return Path::kNeon;
#endif
  return Path::kScalar;
}

// The path a name picks, if this CPU runs it.
bool ByName(const std::string& s, Path* out) {
  const Path all[] = {Path::kScalar, Path::kAvx2, Path::kAvx512, Path::kAvx512Vnni, Path::kNeon};
  for (Path p : all) {
    if (s != Name(p)) continue;
    bool ok = p == Path::kScalar;
#if TC_Q4_X86
    ok = ok || (p == Path::kAvx2 && CpuHasAvx2()) || (p == Path::kAvx512 && CpuHasAvx512()) ||
         (p == Path::kAvx512Vnni && CpuHasAvx512Vnni());
#endif
#if TC_Q4_ARM
    ok = ok || p == Path::kNeon;
#endif
    if (ok) *out = p;
    return ok;
  }
  return false;
}

// TORCHCHAT_Q4_ISA=avx512 (say) keeps x in fp32 on a VNNI machine: the
// kernels are then exact, and decode ~10-20% slower.
Path Default() {
  Path p = Auto();
  const char* env = std::getenv("TORCHCHAT_Q4_ISA");
  if (env != nullptr) ByName(env, &p);
  return p;
}

// Mutable (Force sets it), so not kName.
Path active = Default();

}  // namespace

Path Active() { return active; }

const char* Name(Path p) {
  switch (p) {
    case Path::kAvx2:
      return "avx2";
    case Path::kAvx512:
      return "avx512";
    case Path::kAvx512Vnni:
      return "avx512vnni";
    case Path::kNeon:
      return "neon";
    case Path::kScalar:
      break;
  }
  return "scalar";
}

bool Force(const char* name) {
  const std::string s = name ? name : "";
  Path p = Default();
  if (!s.empty() && !ByName(s, &p)) return false;
  active = p;
  return true;
}

const tile::MicroFn* Micro(Path p) {
  switch (p) {
#if TC_Q4_X86
    case Path::kAvx2:
      return tile::MicroAvx2();
    case Path::kAvx512:
    case Path::kAvx512Vnni:
      return tile::MicroAvx512();
#endif
#if TC_Q4_ARM
    case Path::kNeon:
      return tile::MicroNeon();
#endif
    default:
      return nullptr;
  }
}

const float* PadToBlocks(const float* x, int64_t m, int64_t k, int64_t kp) {
  if (kp == k) return x;
  thread_local std::vector<float> xpad;
  xpad.assign(size_t(m * kp), 0.f);
  for (int64_t i = 0; i < m; ++i)
    std::memcpy(xpad.data() + i * kp, x + i * k, size_t(k) * sizeof(float));
  return xpad.data();
}

#if TC_Q4_X86
TC_TARGET(TC_VNNI) bool QuantizeX16(const float* x, int64_t nb, int16_t* out, float* sc) {
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
    const float amax = HmaxAvx512(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    if (!(amax <= 3.0e38f) || (amax != 0.f && amax < 1e-30f)) return false;
    const __m512 inv = _mm512_set1_ps(amax == 0.f ? 0.f : 32767.f / amax);
    const __m256i lo = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)));
    const __m256i hi = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + b * 32), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + b * 32 + 16), hi);
    sc[b] = amax / 32767.f;
  }
  return true;
}
#else
bool QuantizeX16(const float*, int64_t, int16_t*, float*) { return false; }
#endif

}  // namespace torchchat::kernels::isa
