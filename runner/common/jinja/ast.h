// The syntax tree the parser builds and the interpreter walks. Nodes are
// plain structs with a kind tag rather than a class hierarchy: the
// interpreter dispatches with one switch per node type, which keeps each
// construct's semantics in one place.
#ifndef RUNNER_COMMON_JINJA_AST_H_
#define RUNNER_COMMON_JINJA_AST_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runner/common/jinja/value.h"

namespace torchchat::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class K {
    kLiteral,
    kName,
    kList,
    kTuple,
    kDict,
    kGetAttr,
    kGetItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kNeg,
    kPos,
    kNot,
    kBinary,
    kAnd,
    kOr,
    kCompare,
    kCond
  };
  K kind;
  int line = 0;
  Value literal;
  std::string name;           // variable, attribute, filter, test or operator
  std::vector<ExprPtr> args;  // operands; kSlice: object, start, stop, step
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare
  bool negated = false;          // kTest: `is not`
  // A filter or test this engine lacks: evaluating it is an error (jinja2
  // too reports some unknown names only when they run; see Parser).
  std::string runtime_error;
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class K {
    kText,
    kOutput,
    kIf,
    kFor,
    kSet,
    kSetBlock,
    kMacro,
    kBreak,
    kContinue,
    kWith,
    kFilterBlock,
    kBody
  };
  K kind;
  int line = 0;
  std::string text;                  // kText; kMacro: its name
  ExprPtr expr;                      // output, condition, iterable, value
  ExprPtr cond;                      // for-loop filter
  std::vector<std::string> targets;  // for / set names
  std::string attr;                  // set ns.attr
  Body body, else_body;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro, with
  ExprPtr filter;  // kFilterBlock / kSetBlock: filters applied to the body
};

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_AST_H_
