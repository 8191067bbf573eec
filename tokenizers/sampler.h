// Token samplers: greedy, temperature, top-k, top-p, min-p and repetition
// penalty, driven by a seeded RNG whose stream is specified below so that
// C++, Python and every runtime draw the same numbers from the same seed.
#ifndef TOKENIZERS_SAMPLER_H_
#define TOKENIZERS_SAMPLER_H_

#include <cstddef>
#include <cstdint>

#include "tokenizers/result.h"

namespace tokenizers {

// The random stream, fixed by this specification:
//   seed expansion: state = splitmix64(seed), i.e.
//       z = seed + 0x9E3779B97F4A7C15
//       z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//       z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//       state = z ^ (z >> 31)          (all arithmetic mod 2^64)
//     and a state of 0 (which xorshift cannot leave) becomes
//     0x9E3779B97F4A7C15.
//   next (xorshift64*):
//       state ^= state >> 12; state ^= state << 25; state ^= state >> 27
//       return state * 0x2545F4914F6CDD1D
//   uniform float in [0, 1): (next() >> 40) * 2^-24, exact in a float.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t NextU64();
  float NextFloat();
  uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

struct SamplerConfig {
  // 0 means greedy: the arg-max (lowest id on ties); no random draw.
  float temperature = 1.0f;
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
};

// How many of the most recent tokens the repetition penalty looks at. One
// number for every caller, so C++ and Python penalize the same tokens: they
// pass their whole history and Sample takes the tail.
inline constexpr size_t kRepetitionWindow = 64;

// Picks the next token. Steps, in order:
//  1. repetition penalty (as in HF/CTRL): for each distinct id among the last
//     kRepetitionWindow entries of `recent`, a positive logit is divided by
//     the penalty, a negative one multiplied;
//  2. temperature <= 0: return the arg-max;
//  3. logits / temperature; candidates sorted by (logit desc, id asc);
//  4. top-k keeps the first k; softmax (in double) over what is left;
//  5. top-p keeps the shortest prefix whose probability sum reaches top_p;
//  6. min-p keeps candidates with p >= min_p * p_max;
//  7. u = rng->NextFloat(); returns the first candidate whose cumulative
//     probability exceeds u * (sum of kept probabilities), else the last.
// Exactly one random number is drawn per non-greedy call.
Result<int> Sample(const float* logits, size_t n, const SamplerConfig& config, Rng* rng,
                   const int* recent = nullptr, size_t n_recent = 0);

// Holds a config and its RNG.
class Sampler {
 public:
  Sampler(SamplerConfig config, uint64_t seed) : config_(config), rng_(seed) {}
  Result<int> Sample(const float* logits, size_t n, const int* recent = nullptr,
                     size_t n_recent = 0) {
    return tokenizers::Sample(logits, n, config_, &rng_, recent, n_recent);
  }
  const SamplerConfig& config() const { return config_; }
  Rng& rng() { return rng_; }

 private:
  SamplerConfig config_;
  Rng rng_;
};

// Checks ranges; Sample calls it too.
Result<void> ValidateSamplerConfig(const SamplerConfig& config);

}  // namespace tokenizers

#endif  // TOKENIZERS_SAMPLER_H_
