#include "runner/aoti/aoti_model.h"
#include "runner/c_api/backend.h"

namespace torchchat::c_api {

const char* BackendName() { return "aoti"; }

Result<std::unique_ptr<LLMModel>> LoadBackendModel(const std::string& path, int num_threads) {
  return LoadAotiModel(path, num_threads);
}

}  // namespace torchchat::c_api
