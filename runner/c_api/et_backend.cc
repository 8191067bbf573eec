#include "runner/c_api/backend.h"
#include "runner/et/et_model.h"

namespace torchchat::c_api {

const char* BackendName() { return "executorch"; }

Result<std::unique_ptr<LLMModel>> LoadBackendModel(const std::string& path, int num_threads) {
  return LoadEtModel(path, num_threads);
}

}  // namespace torchchat::c_api
