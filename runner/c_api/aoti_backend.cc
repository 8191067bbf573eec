#include "runner/aoti/aoti_model.h"
#include "runner/c_api/backend.h"

namespace torchchat::c_api {

const char* BackendName() { return "aoti"; }

// libtorch writes no INFO lines, and its warnings follow TORCH_CPP_LOG_LEVEL.
void RouteRuntimeLog() {}

Result<std::unique_ptr<LLMModel>> LoadBackendModel(const std::string& path, int num_threads) {
  return LoadAotiModel(path, num_threads);
}

}  // namespace torchchat::c_api
