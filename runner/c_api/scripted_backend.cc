// A backend for :c_api_test: "scripted:<max_seq_len>" loads a ScriptedModel
// that cycles a b c d (never eos), so the C API's handles, errors and
// buffers run under the sanitizers without ExecuTorch or libtorch.
#include <memory>
#include <string>

#include "runner/c_api/backend.h"
#include "runner/common/scripted_model.h"

namespace torchchat::c_api {

const char* BackendName() { return "scripted"; }

void RouteRuntimeLog() {}

Result<std::unique_ptr<LLMModel>> LoadBackendModel(const std::string& path, int num_threads) {
  (void)num_threads;
  const std::string prefix = "scripted:";
  if (path.rfind(prefix, 0) != 0) return tokenizers::MakeError("cannot load " + path);
  const int64_t max_seq_len = std::stoll(path.substr(prefix.size()));
  // A runtime's chatter, for the log tests.
  EmitLog(TORCHCHAT_LOG_INFO, "scripted_backend.cc] loaded " + path);
  using testing_util::kA, testing_util::kB, testing_util::kC, testing_util::kD;
  return std::unique_ptr<LLMModel>(std::make_unique<testing_util::ScriptedModel>(
      std::vector<int64_t>{kA, kB, kC, kD}, max_seq_len, max_seq_len));
}

}  // namespace torchchat::c_api
