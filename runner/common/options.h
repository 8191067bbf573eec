// Command-line options shared by aoti_run and et_run: upstream torchchat's
// short flags plus long forms.
#ifndef RUNNER_COMMON_OPTIONS_H_
#define RUNNER_COMMON_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizers/result.h"

namespace torchchat {

struct RunnerOptions {
  std::string model_path;
  std::string tokenizer_path;       // -z; default: the file beside the model
  std::string prompt;               // -i
  std::string mode = "generate";    // -m generate|chat
  std::string system_prompt;        // -y
  float temperature = 0.0f;         // -t; 0 is greedy
  float top_p = 1.0f;               // -p
  int64_t top_k = 0;                // -k; 0 is off
  float min_p = 0.0f;               // --min-p; 0 is off
  float repetition_penalty = 1.0f;  // --repetition-penalty; 1 is off
  uint64_t seed = 0;                // -s
  bool seed_set = false;
  int64_t max_new_tokens = 128;  // -n
  int64_t num_threads = 0;       // 0: the backend's default
  int64_t warmup = 0;
  std::string stats_json;
  std::string ids_json;             // write prompt and generated ids here
  std::vector<std::string> images;  // --image, repeatable: binary PPM files
};

// Parses argv; the error is one line saying which flag is wrong and why.
// Sampling values are only parsed here: tokenizers::ValidateSamplerConfig is
// the one place that checks their ranges.
tokenizers::Result<RunnerOptions> ParseOptions(int argc, char** argv);
std::string Usage(const std::string& program);

}  // namespace torchchat

#endif  // RUNNER_COMMON_OPTIONS_H_
