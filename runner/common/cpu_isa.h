// Whether this CPU can run code compiled for an AOTInductor ISA string such
// as "AVX512 AVX512_VNNI AMX_TILE" (a .pt2's AOTI_CPU_ISA). Running a model
// compiled for a missing ISA would die on SIGILL mid-inference; checking
// first turns that into a one-line error.
#ifndef RUNNER_COMMON_CPU_ISA_H_
#define RUNNER_COMMON_CPU_ISA_H_

#include <string>

namespace torchchat {

// The ISA names in `isa` (space-separated) that this CPU lacks, joined by
// spaces; empty when it has them all. Unknown names count as missing.
std::string MissingCpuIsa(const std::string& isa);

}  // namespace torchchat

#endif  // RUNNER_COMMON_CPU_ISA_H_
