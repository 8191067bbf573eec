// LLMModel over an AOTInductor .pt2 package, through libtorch's
// AOTIModelPackageLoader. Nothing here knows about ExecuTorch.
#ifndef RUNNER_AOTI_AOTI_MODEL_H_
#define RUNNER_AOTI_AOTI_MODEL_H_

#include <memory>
#include <string>

#include "runner/common/model.h"

namespace torchchat {

Result<std::unique_ptr<LLMModel>> LoadAotiModel(const std::string& path, int num_threads);

}  // namespace torchchat

#endif  // RUNNER_AOTI_AOTI_MODEL_H_
