// IEEE half precision to and from float, without F16C (portable scalar code;
// the SIMD paths use the CPU's own conversions).
#pragma once

#include <cstdint>

namespace torchchat::kernels {

// Exact for fp16 -> fp32; fp32 -> fp16 rounds to nearest even.
float Fp16ToFp32(uint16_t h);
uint16_t Fp32ToFp16(float f);

}  // namespace torchchat::kernels
