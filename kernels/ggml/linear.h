// y = x @ W^T with W in any common GGUF format, read in place from the file's
// bytes (formats.h): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
// Q6_K, IQ4_NL, IQ4_XS, F16 and BF16 (and F32).
//
// Block formats (on the SIMD paths) with int8 x (the default): x is
// rounded to int8 (scale max|x| / 127) per block of 32 for the 32-element
// formats (as llama.cpp's Q8_0 activations) and per 256 for the
// 256-element ones (the K-quants and IQ4_XS, as llama.cpp's Q8_K): an
// error of at most 1/254 of that block's largest value per element. Each
// group of 32 codes is an exact integer dot product (vpmaddubsw, or
// vpdpbusd), scaled in fp32; Q4_K, Q5_K and Q6_K apply their integer
// sub-block scales in int32 too and scale once per 256 (kquants_x86.h; so
// does IQ4_XS on AVX2). On AVX-512 VNNI the formats with one scale per 32
// and no min (Q4_0, Q5_0, Q8_0, IQ4_NL, IQ4_XS) take each block's exact
// integer dot and add them in block order, one FMA each (blocks32_vnni.h).
// The offsets m * sum(x') use the rounded x's sums, so the product is
// w . x' exactly. Below 32 rows of x (decode, a speculative draft's check,
// a server step's decode rows) the rows kernels take four rows of x per
// weight row; from 32 (prefill) a GEMM takes 4 (AVX2) or 8 (AVX-512) rows
// of x per weight row (blocks32_vnni.h: 16 weight rows against 4 rows of x)
// with each row's sums in decode's order, so a row's result is the same
// bits at any m. Q3_K has no GEMM: from 32 rows its
// weights are dequantized a few rows at a time to fp32 and multiplied by
// the fp32 micro-kernels (tile_gemm.h), exact up to the order of the sums.
// DecodeX "int16" rounds x to int16 below 32 rows instead (scale
// max|x| / 32767, vpmaddwd or vpdpwssd): 2^-16 of the block's largest
// value, for checks against a dequantized model; from 32 rows it runs the
// exact tiles, as does Prefill "tiles". A row that cannot be rounded (not
// finite) runs alone through the fp32 tiles.
// Float formats (F16/BF16/F32): fp32 rows below 8 rows of x, fp32 tiles
// above, summing in the same lanes and order.
// So a row's result is the same bits in any call (int8 x, every block
// format but Q3_K, and the float formats) or any call of fewer than 32 rows
// (int16 x, Q3_K), however the weight rows are split across threads
// (formats_test).
// The scalar path (any CPU, and LinearIsa "scalar") keeps x in fp32 always.
#pragma once

#include <cstdint>

#include "kernels/parallel_for.h"

namespace torchchat::kernels::ggml {

// Elements per block, or 0 for a type these kernels do not run.
int64_t BlockElems(int type);
// Bytes of one row of k elements; -1 for an unsupported type or a k that is
// not a whole number of blocks.
int64_t RowBytes(int type, int64_t k);
const char* TypeName(int type);

// y[m, n] = x[m, k] @ W^T (+ bias[n]), W: n rows of RowBytes(type, k) bytes.
// Returns nullptr, or a static message naming what is wrong (the type, k).
const char* Linear(const float* x, int64_t m, const uint8_t* w, int type, int64_t n, int64_t k,
                   const float* bias, float* y, const Q4ParallelFor* pf = nullptr);

// Rows `rows[i]` (i < count) of W, dequantized: out[count, k]. For the
// embedding table and for tests. Same error convention as Linear.
const char* DequantizeRows(const uint8_t* w, int type, int64_t k, const int64_t* rows,
                           int64_t count, float* out);

// The path Linear takes: "avx512vnni" (int8 dots with vpdpbusd/vpdpwssd,
// fp32 tiles with AVX-512), "avx2" (x86-64 with AVX2, FMA and F16C) or "scalar", the
// best this CPU runs; TORCHCHAT_GGML_ISA names another. ForceIsa is for
// tests and benchmarks ("" = the default); false if this CPU cannot run it.
const char* Isa();
bool ForceIsa(const char* isa);

// Decode's x precision, "int8" (the default) or "int16"; TORCHCHAT_GGML_X
// names the other. ForceDecodeX("") restores the default; false for a name
// it does not know.
const char* DecodeX();
bool ForceDecodeX(const char* x);

// Prefill's path for the formats with an int8 GEMM: "int8" (the default:
// x rounded as decode rounds it, the same bits per row as decode) or
// "tiles" (exact fp32); TORCHCHAT_GGML_PREFILL names the other. For
// benchmarks and tests; ForcePrefill("") restores the default.
const char* Prefill();
bool ForcePrefill(const char* path);

}  // namespace torchchat::kernels::ggml
