// The one thing that differs between libtorchchat_et.so and
// libtorchchat_aoti.so: which artifact they load. c_api.cc calls these; each
// library links exactly one backend file that defines them.
#ifndef RUNNER_C_API_BACKEND_H_
#define RUNNER_C_API_BACKEND_H_

#include <memory>
#include <string>

#include "runner/c_api/torchchat.h"
#include "runner/common/model.h"

namespace torchchat::c_api {

// "executorch" or "aoti" (torchchat_backend()).
const char* BackendName();

Result<std::unique_ptr<LLMModel>> LoadBackendModel(const std::string& path, int num_threads);

// Points the backend's runtime log at EmitLog, once per process; called
// before anything that could log.
void RouteRuntimeLog();

// Where a runtime's log line goes: nowhere, stderr or the application's
// callback, as torchchat_set_log says (c_api.cc).
void EmitLog(torchchat_log_level level, const std::string& line);

}  // namespace torchchat::c_api

#endif  // RUNNER_C_API_BACKEND_H_
