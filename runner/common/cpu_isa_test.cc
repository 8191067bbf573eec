#include "runner/common/cpu_isa.h"

#include "gtest/gtest.h"

namespace torchchat {
namespace {

TEST(CpuIsa, BaselineIsAlwaysPresent) {
  EXPECT_EQ(MissingCpuIsa(""), "");
  EXPECT_EQ(MissingCpuIsa("DEFAULT"), "");
}

TEST(CpuIsa, UnknownIsaIsReportedMissing) {
  EXPECT_EQ(MissingCpuIsa("AVX9000"), "AVX9000");
  EXPECT_EQ(MissingCpuIsa("DEFAULT AVX9000 NEON"), "AVX9000 NEON");
}

TEST(CpuIsa, AgreesWithTheCompilerProbe) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  EXPECT_EQ(MissingCpuIsa("AVX2").empty(), avx2);
}

}  // namespace
}  // namespace torchchat
