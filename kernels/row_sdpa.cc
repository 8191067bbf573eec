// torchchat::row_sdpa: attention over a KV cache whose every query row is
// computed alone, so that a row's bits do not depend on how many rows are
// in the call (nor on the threads).
//
//   row_sdpa(Tensor q, Tensor k, Tensor v, Tensor mask, Tensor? slots,
//            float scale, float softcap, int max_rows) -> Tensor
//
// q: float32 [1, H, T, D]; k, v: float32 [S, KVH, L, D] (the cache, H a
// multiple of KVH: grouped-query heads); mask: bool [T, L], true where row t
// may attend to cache position j (causal, windowed, images: the model's own
// mask rows); slots: int64 [T], the cache row of each query row (none: row
// 0). softcap 0 means none. Returns float32 [1, H, T, D].
//
// Why: torch's SDPA sums a batch of query rows in another order than one
// row, and the GGUF kernels' int8 activations round that 1-ulp difference
// into other logits, so a speculative draft verified in one forward would
// not keep plain decoding's ids (torchchat/README.md). Here each (row, head)
// is one task: scores in key order, a max, exp, their sum in 16 lanes by key
// index, and the weighted values summed in key order; the path depends on
// the CPU only. Runs of rows of one slot longer than max_rows (a prefill
// chunk) go to torch's SDPA over that slot's filled cache instead, which is
// faster there and what eager computed before; their logits are never a
// speculative check's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace torchchat::kernels {
namespace {

struct Task {
  const float* q;       // [D]
  const float* k;       // row 0 of this head's kv group; rows `kstride` apart
  const float* v;       // likewise, `vstride`
  const int32_t* keys;  // allowed cache positions, ascending
  int64_t n;            // how many
  float* out;           // [D]
};

struct Shape {
  int64_t d, kstride, vstride;
  float scale, softcap;
};

float Capped(float s, float cap) { return cap > 0.f ? std::tanh(s / cap) * cap : s; }

// The portable path: plain loops in a fixed order.
void RowGeneric(const Task& t, const Shape& s, float* scores) {
  float m = -INFINITY;
  for (int64_t i = 0; i < t.n; ++i) {
    const float* kr = t.k + t.keys[i] * s.kstride;
    float dot = 0.f;
    for (int64_t d = 0; d < s.d; ++d) dot += t.q[d] * kr[d];
    scores[i] = Capped(dot * s.scale, s.softcap);
    m = std::max(m, scores[i]);
  }
  float sum = 0.f;
  for (int64_t i = 0; i < t.n; ++i) {
    scores[i] = std::exp(scores[i] - m);
    sum += scores[i];
  }
  for (int64_t d = 0; d < s.d; ++d) t.out[d] = 0.f;
  for (int64_t i = 0; i < t.n; ++i) {
    const float* vr = t.v + t.keys[i] * s.vstride;
    for (int64_t d = 0; d < s.d; ++d) t.out[d] += scores[i] * vr[d];
  }
  const float inv = 1.f / sum;
  for (int64_t d = 0; d < s.d; ++d) t.out[d] *= inv;
}

#define AVX512 __attribute__((target("avx512f,fma")))

AVX512 __mmask16 Tail(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

// The 16 lanes' sum in a fixed tree (the intrinsic's GCC 12 header warns).
AVX512 float Sum16(__m512 x) {
  alignas(64) float l[16];
  _mm512_store_ps(l, x);
  for (int w = 8; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) l[i] += l[i + w];
  return l[0];
}

// exp(x) for x <= 0 (scores minus their max): Cephes' expf. Below -87 it
// stays exp(-87) (1.6e-38), nothing beside the max's 1.
AVX512 __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 g = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  g = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), g);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(g, g), _mm512_add_ps(g, _mm512_set1_ps(1.f)));
  const __m512i e =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

// Sixteen vectors of partial sums into one vector of their sums: each sum
// a fixed tree of its own vector's lanes (nothing of the others'), lane l
// holding vector ReduceOrder()[l]'s.
AVX512 __m512 Reduce16(const __m512* v) {
  __m512 w[8], u[4], c[2];
  for (int i = 0; i < 8; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44),
                         _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88),
                         _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(u[i], u[i + 2], 0x44),
                         _mm512_shuffle_ps(u[i], u[i + 2], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xDD));
}

// The permutation that puts Reduce16's sums back in their vectors' order.
AVX512 __m512i ComputeOrder() {
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm512_set1_ps(float(i));
  alignas(64) float lane[16];
  _mm512_store_ps(lane, Reduce16(v));
  alignas(64) int32_t at[16];
  for (int l = 0; l < 16; ++l) at[int(lane[l]) / 16] = l;
  return _mm512_load_si512(at);
}

AVX512 __m512i ReduceOrder() {
  static const __m512i order = ComputeOrder();
  return order;
}

// The rows of one slot's span for one head (`tasks`, all of one kv group),
// key blocks outer so that a block of K or V read for one row serves the
// next from L1. Each row's own operations, in their order, are those of
// the row alone: sixteen keys' dots (d ascending from zero), one
// transposing reduction, the exps summed in 16 lanes, the values summed in
// key order.
AVX512 void RowsAvx512(const Task* tasks, int64_t n_rows, const Shape& s, float* scratch,
                       int64_t stride) {
  const __m512 scale = _mm512_set1_ps(s.scale);
  const __m512i order = ReduceOrder();
  int64_t most = 0;
  for (int64_t r = 0; r < n_rows; ++r) most = std::max(most, tasks[r].n);
  for (int64_t i0 = 0; i0 < most; i0 += 16) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const Task& t = tasks[r];
      if (t.n <= i0) continue;
      const int64_t nb = std::min<int64_t>(16, t.n - i0);
      const float* kr[16];
      for (int b = 0; b < 16; ++b)
        kr[b] = t.k + t.keys[i0 + std::min<int64_t>(b, nb - 1)] * s.kstride;
      __m512 v[16];
      for (int b = 0; b < 16; ++b) v[b] = _mm512_setzero_ps();
      for (int64_t d = 0; d < s.d; d += 16) {
        const __mmask16 k = Tail(s.d - d);
        const __m512 qd = _mm512_maskz_loadu_ps(k, t.q + d);
#pragma GCC unroll 16
        for (int b = 0; b < 16; ++b)
          v[b] = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(k, kr[b] + d), v[b]);
      }
      const __m512 sc = _mm512_mul_ps(_mm512_permutexvar_ps(order, Reduce16(v)), scale);
      _mm512_mask_storeu_ps(scratch + r * stride + i0, Tail(nb), sc);
    }
  }
  std::vector<float> inv(n_rows);
  for (int64_t r = 0; r < n_rows; ++r) {
    const Task& t = tasks[r];
    float* scores = scratch + r * stride;
    float m = -INFINITY;
    for (int64_t i = 0; i < t.n; ++i) {
      scores[i] = Capped(scores[i], s.softcap);
      m = std::max(m, scores[i]);
    }
    const __m512 mv = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < t.n; i += 16) {
      const __mmask16 k = Tail(t.n - i);
      const __m512 p =
          _mm512_maskz_mov_ps(k, Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, scores + i), mv)));
      _mm512_mask_storeu_ps(scores + i, k, p);
      sum = _mm512_add_ps(sum, p);
    }
    inv[r] = 1.f / Sum16(sum);
    std::fill(t.out, t.out + s.d, 0.f);
  }
  for (int64_t i0 = 0; i0 < most; i0 += 16) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const Task& t = tasks[r];
      if (t.n <= i0) continue;
      const int64_t i1 = std::min<int64_t>(t.n, i0 + 16);
      const float* scores = scratch + r * stride;
      for (int64_t d0 = 0; d0 < s.d; d0 += 64) {
        const int64_t chunks = std::min<int64_t>(4, (s.d - d0 + 15) / 16);
        __m512 acc[4];
        for (int64_t c = 0; c < chunks; ++c)
          acc[c] = _mm512_maskz_loadu_ps(Tail(s.d - d0 - 16 * c), t.out + d0 + 16 * c);
        for (int64_t i = i0; i < i1; ++i) {
          const __m512 p = _mm512_set1_ps(scores[i]);
          const float* vr = t.v + t.keys[i] * s.vstride + d0;
          for (int64_t c = 0; c < chunks; ++c)
            acc[c] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(Tail(s.d - d0 - 16 * c), vr + 16 * c),
                                     acc[c]);
        }
        for (int64_t c = 0; c < chunks; ++c)
          _mm512_mask_storeu_ps(t.out + d0 + 16 * c, Tail(s.d - d0 - 16 * c), acc[c]);
      }
    }
  }
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t d = 0; d < s.d; ++d) tasks[r].out[d] *= inv[r];
}

// The positions a mask row allows, 64 bytes at a time.
__attribute__((target("avx512f,avx512bw"))) void AllowedBw(const bool* m, int64_t n,
                                                           std::vector<int32_t>& out) {
  for (int64_t j = 0; j < n; j += 64) {
    const __mmask64 tail = n - j >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - j)) - 1;
    const __m512i x = _mm512_maskz_loadu_epi8(tail, m + j);
    for (uint64_t bits = _mm512_test_epi8_mask(x, x); bits; bits &= bits - 1)
      out.push_back(int32_t(j + __builtin_ctzll(bits)));
  }
}

void Allowed(const bool* m, int64_t n, std::vector<int32_t>& out) {
  static const bool bw = __builtin_cpu_supports("avx512bw");
  if (bw) return AllowedBw(m, n, out);
  for (int64_t j = 0; j < n; ++j)
    if (m[j]) out.push_back(int32_t(j));
}

bool HasAvx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return yes;
}

// Torch's SDPA (with the score cap written out, as torchchat.attention.attend
// does) over rows [a, a + n) of one slot and that slot's cache up to `end`.
at::Tensor Bulk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& mask, int64_t slot, int64_t a, int64_t n, int64_t end,
                double scale, double softcap) {
  const at::Tensor qs = q.narrow(2, a, n);
  const at::Tensor ks = k.narrow(0, slot, 1).narrow(2, 0, end);
  const at::Tensor vs = v.narrow(0, slot, 1).narrow(2, 0, end);
  const at::Tensor ms = mask.narrow(0, a, n).narrow(1, 0, end);
  if (softcap <= 0)
    return at::scaled_dot_product_attention(qs, ks, vs, ms, 0.0, false, scale, true);
  const int64_t kv = k.size(1);
  const at::Tensor qg = qs.unflatten(1, {kv, q.size(1) / kv});
  at::Tensor sc = at::matmul(qg, ks.unsqueeze(2).transpose(-1, -2)) * scale;
  sc = at::tanh(sc / softcap) * softcap;
  sc = at::where(ms, sc, at::full_like(sc, -INFINITY));
  const at::Tensor p = at::softmax(sc, -1);
  return at::matmul(p, vs.unsqueeze(2)).flatten(1, 2);
}

at::Tensor RowSdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& mask, const c10::optional<at::Tensor>& slots_opt, double scale,
                   double softcap, int64_t max_rows) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "row_sdpa: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat,
              "row_sdpa: q, k and v must be float32");
  TORCH_CHECK(q.dim() == 4 && q.size(0) == 1, "row_sdpa: q must be [1, H, T, D], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.size(3) == q.size(3),
              "row_sdpa: k and v must be [S, KVH, L, D] with q's D, got ", k.sizes(), " and ",
              v.sizes());
  const int64_t heads = q.size(1), rows = q.size(2), dim = q.size(3);
  const int64_t kv = k.size(1), length = k.size(2);
  TORCH_CHECK(max_rows >= 0, "row_sdpa: max_rows must not be negative, got ", max_rows);
  TORCH_CHECK(kv > 0 && heads % kv == 0, "row_sdpa: ", heads, " query heads over ", kv,
              " kv heads");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(0) == rows &&
                  mask.size(1) == length,
              "row_sdpa: mask must be bool [", rows, ", ", length, "], got ", mask.scalar_type(),
              " ", mask.sizes());
  at::Tensor slots = slots_opt.has_value() && slots_opt->defined()
                         ? slots_opt->to(at::kLong).contiguous()
                         : at::zeros({rows}, at::kLong);
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == rows, "row_sdpa: slots must be [", rows, "]");
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < rows; ++t)
    TORCH_CHECK(slot[t] >= 0 && slot[t] < k.size(0), "row_sdpa: slot ", slot[t],
                " out of range [0, ", k.size(0), ")");

  const at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous();
  const at::Tensor kc = k.stride(3) == 1 ? k : k.contiguous();
  const at::Tensor vc = v.stride(3) == 1 ? v : v.contiguous();
  const at::Tensor mc = mask.contiguous();
  at::Tensor out = at::empty({1, heads, rows, dim}, q.options());

  // Each row's allowed positions, in order.
  std::vector<std::vector<int32_t>> keys(rows);
  const bool* mp = mc.data_ptr<bool>();
  size_t most = 0;
  for (int64_t t = 0; t < rows; ++t) {
    Allowed(mp + t * length, length, keys[t]);
    most = std::max(most, keys[t].size());
  }

  std::vector<std::pair<int64_t, int64_t>> alone;  // spans of rows computed one by one
  for (int64_t a = 0; a < rows;) {
    int64_t b = a + 1;
    while (b < rows && slot[b] == slot[a]) ++b;
    if (b - a <= max_rows) {
      alone.emplace_back(a, b);
    } else {
      int64_t end = 1;
      for (int64_t t = a; t < b; ++t)
        if (!keys[t].empty()) end = std::max<int64_t>(end, keys[t].back() + 1);
      out.narrow(2, a, b - a).copy_(Bulk(qc, kc, vc, mc, slot[a], a, b - a, end, scale, softcap));
    }
    a = b;
  }

  const Shape shape{dim, kc.stride(2), vc.stride(2), float(scale), float(softcap)};
  const float *qp = qc.data_ptr<float>(), *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = heads / kv, n_tasks = int64_t(alone.size()) * heads;
  const int64_t stride = int64_t(most) + 16;
  const bool avx512 = HasAvx512();
  // One task per span and head: threads split rows and heads, never a sum.
  at::parallel_for(0, n_tasks, 1, [&](int64_t begin, int64_t stop) {
    std::vector<float> scratch(stride * max_rows);
    std::vector<Task> tasks;
    for (int64_t i = begin; i < stop; ++i) {
      const auto [a, b] = alone[i / heads];
      const int64_t h = i % heads, g = h / group;
      tasks.clear();
      for (int64_t t = a; t < b; ++t) {
        float* o = op + (h * rows + t) * dim;
        if (keys[t].empty()) {
          std::fill(o, o + dim, 0.f);
          continue;
        }
        tasks.push_back(Task{qp + h * qc.stride(1) + t * qc.stride(2),
                             kp + slot[t] * kc.stride(0) + g * kc.stride(1),
                             vp + slot[t] * vc.stride(0) + g * vc.stride(1), keys[t].data(),
                             int64_t(keys[t].size()), o});
      }
      if (avx512) {
        RowsAvx512(tasks.data(), int64_t(tasks.size()), shape, scratch.data(), stride);
      } else {
        for (const Task& task : tasks) RowGeneric(task, shape, scratch.data());
      }
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(torchchat, m) {
  m.def(
      "row_sdpa(Tensor q, Tensor k, Tensor v, Tensor mask, Tensor? slots, float scale, "
      "float softcap, int max_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchchat, CPU, m) { m.impl("row_sdpa", &RowSdpa); }

}  // namespace
}  // namespace torchchat::kernels
