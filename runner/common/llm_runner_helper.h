// What every front end of the loop (et_run, aoti_run, the C API) does before
// and around TextLLMRunner: load the artifact and the tokenizer that goes
// with it, and build the shared sampler. Named after ExecuTorch's
// extension/llm/runner/llm_runner_helper.h, which plays the same role.
#ifndef RUNNER_COMMON_LLM_RUNNER_HELPER_H_
#define RUNNER_COMMON_LLM_RUNNER_HELPER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "runner/common/model.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/sampler.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {

// `tokenizer_path` if given, else the file the artifact names, else
// tokenizer.json / tokenizer.model / tokenizer.bin beside the artifact; ""
// when there is none.
std::string FindTokenizer(const std::string& model_path, const std::string& tokenizer_path,
                          const ModelMetadata& md);

struct LoadedLLM {
  std::unique_ptr<LLMModel> model;
  std::unique_ptr<tokenizers::Tokenizer> tokenizer;
};

// Loads the artifact with `load_model` and its tokenizer (FindTokenizer's
// rule), and checks that they belong together.
Result<LoadedLLM> LoadLLM(const ModelLoader& load_model, const std::string& model_path,
                          const std::string& tokenizer_path, int num_threads);

// The shared sampler over the repetition window: with the same seed, Python
// and every C++ front end draw the same tokens. The config must have passed
// tokenizers::ValidateSamplerConfig.
SampleFn MakeSampleFn(const tokenizers::SamplerConfig& config, uint64_t seed);

}  // namespace torchchat

#endif  // RUNNER_COMMON_LLM_RUNNER_HELPER_H_
