#include "tokenizers/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

namespace tokenizers {

Rng::Rng(uint64_t seed) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  state_ = z ^ (z >> 31);
  if (state_ == 0) state_ = 0x9E3779B97F4A7C15ull;
}

uint64_t Rng::NextU64() {
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return state_ * 0x2545F4914F6CDD1Dull;
}

float Rng::NextFloat() { return static_cast<float>(NextU64() >> 40) * (1.0f / 16777216.0f); }

Result<void> ValidateSamplerConfig(const SamplerConfig& c) {
  if (!(c.temperature >= 0.0f)) return MakeError("temperature must be >= 0");
  if (c.top_k < 0) return MakeError("top_k must be >= 0");
  if (!(c.top_p > 0.0f && c.top_p <= 1.0f)) return MakeError("top_p must be in (0, 1]");
  if (!(c.min_p >= 0.0f && c.min_p <= 1.0f)) return MakeError("min_p must be in [0, 1]");
  if (!(c.repetition_penalty > 0.0f) || std::isinf(c.repetition_penalty)) {
    return MakeError("repetition_penalty must be > 0");
  }
  return {};
}

Result<int> Sample(const float* logits, size_t n, const SamplerConfig& c, Rng* rng,
                   const int* recent, size_t n_recent) {
  auto ok = ValidateSamplerConfig(c);
  if (!ok.ok()) return MakeError(ok.error());
  if (n == 0) return MakeError("empty logits");
  if (n > (1u << 30)) return MakeError("too many logits");
  if (c.temperature <= 0.0f && (c.repetition_penalty == 1.0f || n_recent == 0)) {
    // Greedy without a penalty needs no copy: one pass finds a NaN and the
    // first largest logit (a server samples a vocabulary per token).
    bool nan = false;
    size_t best = 0;
    for (size_t i = 0; i < n; ++i) {
      const float v = logits[i];
      nan |= std::isnan(v);
      if (v > logits[best]) best = i;
    }
    if (nan) return MakeError("logits contain NaN");
    return static_cast<int>(best);
  }
  std::vector<float> x(logits, logits + n);
  if (c.repetition_penalty != 1.0f && n_recent > 0) {
    const size_t window = std::min(n_recent, kRepetitionWindow);
    std::vector<int> ids(recent + (n_recent - window), recent + n_recent);
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (int id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= n) continue;
      x[id] = x[id] > 0 ? x[id] / c.repetition_penalty : x[id] * c.repetition_penalty;
    }
  }
  for (float v : x) {
    if (std::isnan(v)) return MakeError("logits contain NaN");
  }
  if (c.temperature <= 0.0f) {
    return static_cast<int>(std::max_element(x.begin(), x.end()) - x.begin());
  }
  for (float& v : x) v /= c.temperature;
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](int a, int b) { return x[a] != x[b] ? x[a] > x[b] : a < b; };
  size_t keep = n;
  if (c.top_k > 0 && static_cast<size_t>(c.top_k) < n) {
    keep = c.top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), better);
  } else {
    std::sort(order.begin(), order.end(), better);
  }
  order.resize(keep);
  const double top = x[order[0]];
  if (std::isinf(top) && top < 0) return MakeError("all logits are -inf");
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    p[i] = std::exp(static_cast<double>(x[order[i]]) - top);
    sum += p[i];
  }
  for (double& v : p) v /= sum;
  if (c.top_p < 1.0f) {
    double cum = 0;
    size_t k = 0;
    while (k < keep) {
      cum += p[k++];
      if (cum >= c.top_p) break;
    }
    keep = k;
  }
  if (c.min_p > 0.0f) {
    const double threshold = c.min_p * p[0];
    size_t k = 1;
    while (k < keep && p[k] >= threshold) ++k;
    keep = k;
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += p[i];
  const double u = static_cast<double>(rng->NextFloat()) * total;
  double cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (cum > u) return order[i];
  }
  return order[keep - 1];
}

}  // namespace tokenizers
