// How the engine reports a bad template: every stage throws TemplateError,
// and only ChatTemplate (runner/common/chat_template.cc) catches it, turning
// it into a Result. Exceptions keep the deeply recursive parser and
// evaluator free of error plumbing; none ever crosses the public API.
#ifndef RUNNER_COMMON_JINJA_ERROR_H_
#define RUNNER_COMMON_JINJA_ERROR_H_

#include <string>
#include <utility>

namespace torchchat::jinja {

struct TemplateError {
  std::string message;
  // 0: not known yet (the statement or expression being run fills it in);
  // -1: a raise_exception() message, which is reported verbatim.
  int line = 0;
};

[[noreturn]] inline void Fail(std::string message, int line = 0) {
  throw TemplateError{std::move(message), line};
}

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_ERROR_H_
