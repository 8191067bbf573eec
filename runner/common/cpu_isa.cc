#include "runner/common/cpu_isa.h"

#include <cpuid.h>

#include <sstream>

namespace torchchat {
namespace {

// AMX needs both the CPUID bit and the kernel's consent to use the tile
// state (XCR0 bits 17-18); checking CPUID alone is not enough.
bool HasAmxTile() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24))) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo & (3u << 17)) == (3u << 17);
}

bool Has(const std::string& name) {
  __builtin_cpu_init();
  if (name == "DEFAULT" || name == "NONE" || name.empty()) return true;
  if (name == "AVX2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "AVX512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  if (name == "AVX512_VNNI") return __builtin_cpu_supports("avx512vnni");
  if (name == "AVX512_BF16") {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
  }
  if (name == "AMX_TILE") return HasAmxTile();
  return false;
}

}  // namespace

std::string MissingCpuIsa(const std::string& isa) {
  std::istringstream in(isa);
  std::string name, missing;
  while (in >> name) {
    if (!Has(name)) missing += (missing.empty() ? "" : " ") + name;
  }
  return missing;
}

}  // namespace torchchat
