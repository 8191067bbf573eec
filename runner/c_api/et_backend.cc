#include <cstddef>
#include <mutex>
#include <string>

#include "executorch/runtime/platform/platform.h"
#include "runner/c_api/backend.h"
#include "runner/et/et_model.h"

namespace torchchat::c_api {
namespace {

torchchat_log_level LevelOf(et_pal_log_level_t level) {
  switch (level) {
    case kDebug:
      return TORCHCHAT_LOG_DEBUG;
    case kInfo:
      return TORCHCHAT_LOG_INFO;
    default:
      return TORCHCHAT_LOG_ERROR;
  }
}

// ExecuTorch's default PAL prints every line to stderr; an embedding
// application's stderr is not ours to write.
void EmitEtLog(et_timestamp_t /*timestamp*/, et_pal_log_level_t level, const char* filename,
               const char* /*function*/, size_t line, const char* message, size_t length) {
  std::string text = filename ? filename : "?";
  if (const size_t slash = text.rfind('/'); slash != std::string::npos) text.erase(0, slash + 1);
  text += ":" + std::to_string(line) + "] ";
  text.append(message, length);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  EmitLog(LevelOf(level), text);
}

}  // namespace

const char* BackendName() { return "executorch"; }

void RouteRuntimeLog() {
  static std::once_flag once;
  std::call_once(once, [] {
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(EmitEtLog, __FILE__));
  });
}

Result<std::unique_ptr<LLMModel>> LoadBackendModel(const std::string& path, int num_threads) {
  return LoadEtModel(path, num_threads);
}

}  // namespace torchchat::c_api
