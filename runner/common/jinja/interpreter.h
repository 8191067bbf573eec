// Renders a parsed template by walking its tree. Scoping follows jinja2:
// a for loop body gets a fresh scope per iteration, `set` inside a loop
// does not leak out (hence namespace()), macros close over the scope they
// were defined in. Every statement and loop iteration is charged to a step
// budget, and output size and macro depth are bounded, so that a hostile
// template ends with an error instead of hanging or exhausting memory.
//
// Filters, tests and methods live in their own files (filters.cc,
// methods.cc) as name-to-function tables; the tables are both how a call is
// dispatched and what IsFilter()/IsTest() report, so the two cannot drift.
#ifndef RUNNER_COMMON_JINJA_INTERPRETER_H_
#define RUNNER_COMMON_JINJA_INTERPRETER_H_

#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runner/common/jinja/ast.h"
#include "runner/common/jinja/value.h"

namespace torchchat::jinja {

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;

  const Value* Find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr Child(const ScopePtr& parent);

struct Macro {
  const Stmt* def;
  std::shared_ptr<Scope> closure;
};

// Argument `idx` (positional) or `name` (keyword) of a filter or method.
const Value* Arg(const std::vector<Value>& args, const Kwargs& kwargs, size_t idx,
                 const char* name);
// An optional integer argument; none or absent gives `def`.
int64_t IntArg(const Value* v, int64_t def, const char* what);
std::string StrArg(const Value* v, const std::string& def);

struct RenderLimits {
  int64_t max_steps = 0;         // statements and loop iterations
  int64_t max_output_bytes = 0;  // also bounds any one string
  int max_call_depth = 0;        // nested macro calls
};

// The names a template may use with `|` and `is`: those this engine
// implements, and those jinja2 3.1 has (a template may name one of those in
// a branch that never runs; see parser.h).
bool IsFilter(const std::string& name);
bool IsJinjaFilter(const std::string& name);
bool IsTest(const std::string& name);
bool IsJinjaTest(const std::string& name);

// transformers' globals (raise_exception, strftime_now) and jinja2's
// (range, namespace, dict). strftime_now formats `now`, or the current
// time when it is 0.
void AddGlobals(Scope* globals, std::time_t now);

// One render. It installs its step budget as the thread's g_budget for its
// lifetime, so construct it on the thread that renders.
class Interp {
 public:
  explicit Interp(const RenderLimits& limits);
  ~Interp();
  Interp(const Interp&) = delete;
  Interp& operator=(const Interp&) = delete;

  enum class Flow { kNormal, kBreak, kContinue };

  Flow Exec(const Body& body, const ScopePtr& scope, std::string* out);
  Value Eval(const Expr& e, const ScopePtr& scope);

  // What filters, tests and methods need from the running render.
  void Step() { budget_.Step(); }
  void CheckSize(size_t n) const;
  Value BinaryOp(const std::string& op, const Value& l, const Value& r);
  // Defined in filters.cc.
  Value Filter(const std::string& name, Value in, std::vector<Value>& args, Kwargs& kwargs);
  bool ApplyTest(const std::string& name, const Value& v, const std::vector<Value>& args);
  // Defined in methods.cc.
  static bool HasMethod(const Value& obj, const std::string& name);
  Value CallMethod(const Value& obj, const std::string& name, std::vector<Value>& args,
                   Kwargs& kwargs);

 private:
  Flow ExecOne(const Stmt& st, const ScopePtr& scope, std::string* out);
  void Assign(const std::vector<std::string>& targets, const Value& v, Scope* scope);
  Flow ExecFor(const Stmt& st, const ScopePtr& scope, std::string* out);
  Value EvalImpl(const Expr& e, const ScopePtr& scope);
  Value EvalCall(const Expr& e, const ScopePtr& scope);
  Value CallValue(const Value& fn, std::vector<Value>& args, Kwargs& kwargs);
  Value CallMacro(const Macro& m, std::vector<Value>& args, Kwargs& kwargs);
  Value ApplyFilterChain(const Expr& chain, Value in, const ScopePtr& scope);
  Value ApplyFilter(const Expr& e, Value in, const ScopePtr& scope);

  const RenderLimits limits_;
  StepBudget budget_;
  StepBudget* outer_budget_ = nullptr;
  int call_depth_ = 0;
  std::vector<std::weak_ptr<Scope>> macro_scopes_;
};

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_INTERPRETER_H_
