// The main() of both runners; each passes the function that loads its
// artifact, so the runners differ only in their LLMModel.
#ifndef RUNNER_COMMON_MAIN_H_
#define RUNNER_COMMON_MAIN_H_

#include <string>

#include "runner/common/model.h"

namespace torchchat {

int RunMain(int argc, char** argv, const std::string& program, const ModelLoader& load_model);

}  // namespace torchchat

#endif  // RUNNER_COMMON_MAIN_H_
