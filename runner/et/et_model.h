// LLMModel over an ExecuTorch .pte program, through ExecuTorch's Module
// API. Nothing here knows about libtorch.
#ifndef RUNNER_ET_ET_MODEL_H_
#define RUNNER_ET_ET_MODEL_H_

#include <memory>
#include <string>

#include "runner/common/model.h"

namespace torchchat {

Result<std::unique_ptr<LLMModel>> LoadEtModel(const std::string& path, int num_threads);

}  // namespace torchchat

#endif  // RUNNER_ET_ET_MODEL_H_
