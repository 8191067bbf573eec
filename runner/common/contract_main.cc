// Prints what the C++ runners and Python must agree on, as JSON: the Stats
// JSON keys, the stop reasons and the chat answer reserve. //runner:contract_test
// compares it with torchchat.generate's.
#include <cstdio>
#include <string>

#include "runner/common/chat_session.h"
#include "runner/common/stats.h"

int main() {
  std::string reasons;
  for (const char* r : torchchat::kStopReasons)
    reasons += std::string(reasons.empty() ? "" : ", ") + "\"" + r + "\"";
  std::printf("{\"stats\": %s, \"stop_reasons\": [%s], \"chat_answer_reserve\": %lld}\n",
              torchchat::Stats{}.ToJson().c_str(), reasons.c_str(),
              static_cast<long long>(torchchat::kChatAnswerReserve));
  return 0;
}
