// The values a template computes with, modelled on the Python objects jinja2
// hands around: what they print as (str and repr), how they compare, and
// jinja2's Undefined, which renders empty, is falsy and iterable, but is an
// error when used as an object.
//
// Strings are UTF-8; length, indexing and slicing count code points like
// Python (see text.h). Integers are 64-bit; overflow is an error instead of
// Python's big integers.
#ifndef RUNNER_COMMON_JINJA_VALUE_H_
#define RUNNER_COMMON_JINJA_VALUE_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runner/common/jinja/error.h"

namespace torchchat::jinja {

struct Value;

// Containers record how deeply they nest, so that a template cannot build a
// structure deep enough to overflow the stack when printed or destroyed.
constexpr int kMaxNesting = 256;

struct ListData {
  std::vector<Value> items;
  bool tuple = false;
  int depth = 1;
};
struct DictData {
  std::vector<std::pair<Value, Value>> items;
  int depth = 1;
};
// A macro defined by the template; see interpreter.h.
struct Macro;
struct Builtin;

struct Value {
  enum class T {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kLoop,
    kBuiltin,
    kMacro
  };
  T t = T::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // the string; for kUndefined, why it is undefined
  std::shared_ptr<ListData> list;
  std::shared_ptr<DictData> dict;  // dicts, namespaces and loop objects
  std::shared_ptr<const Builtin> builtin;
  std::shared_ptr<const Macro> macro;

  static Value Undefined(std::string hint) {
    Value v;
    v.s = std::move(hint);
    return v;
  }
  static Value None() {
    Value v;
    v.t = T::kNone;
    return v;
  }
  static Value Bool(bool x) {
    Value v;
    v.t = T::kBool;
    v.b = x;
    return v;
  }
  static Value Int(int64_t x) {
    Value v;
    v.t = T::kInt;
    v.i = x;
    return v;
  }
  static Value Float(double x) {
    Value v;
    v.t = T::kFloat;
    v.f = x;
    return v;
  }
  static Value Str(std::string x) {
    Value v;
    v.t = T::kString;
    v.s = std::move(x);
    return v;
  }
  static Value List(std::vector<Value> items = {}, bool tuple = false) {
    Value v;
    v.t = T::kList;
    v.list = std::make_shared<ListData>();
    v.list->items = std::move(items);
    v.list->tuple = tuple;
    for (const Value& x : v.list->items) {
      v.list->depth = std::max(v.list->depth, 1 + x.depth());
    }
    if (v.list->depth > kMaxNesting) Fail("value nested too deeply");
    return v;
  }
  static Value Dict(T kind = T::kDict) {
    Value v;
    v.t = kind;
    v.dict = std::make_shared<DictData>();
    return v;
  }

  int depth() const { return list ? list->depth : dict ? dict->depth : 0; }
  bool undefined() const { return t == T::kUndefined; }
  bool none() const { return t == T::kNone; }
  bool is_str() const { return t == T::kString; }
  bool is_list() const { return t == T::kList; }
  bool is_dict() const { return t == T::kDict; }
  // bool is an int in Python (True + 1 == 2).
  bool is_int() const { return t == T::kInt || t == T::kBool; }
  bool is_num() const { return is_int() || t == T::kFloat; }
  int64_t as_int() const { return t == T::kBool ? (b ? 1 : 0) : i; }
  double as_float() const { return t == T::kFloat ? f : static_cast<double>(as_int()); }
  bool has_items() const { return t == T::kDict || t == T::kNamespace || t == T::kLoop; }
};

// Keyword arguments of a call, in the order written.
using Kwargs = std::vector<std::pair<std::string, Value>>;

// A function the environment provides (range, namespace, raise_exception...).
struct Builtin {
  std::string name;
  std::function<Value(std::vector<Value>&, Kwargs&)> fn;
};

bool Truthy(const Value& v);
// Python's type(v).__name__, for error messages.
const char* TypeName(const Value& v);
[[noreturn]] void FailUndefined(const Value& v);

// Python's float repr: the shortest digits that round-trip, in fixed
// notation for exponents in [-4, 16), else scientific.
std::string FloatRepr(double d);
// Python's str(): what {{ value }} prints.
std::string Str(const Value& v);
std::string Repr(const Value& v);

bool Equal(const Value& a, const Value& b);
// Python's <; -1, 0, 1. Mixed types are a TypeError, as in Python; `op` is
// the operator named in that error.
int Compare(const Value& a, const Value& b, const char* op);
// Python's `x in container`.
bool Contains(const Value& container, const Value& x);

// Dicts keep insertion order and compare keys with Equal, as Python does;
// they are small enough in templates that a linear search is fine.
const Value* DictFind(const DictData& d, const Value& key);
void DictSet(DictData* d, const Value& key, Value value);

// Python's iter(): lists, dict keys, string characters; Undefined is empty.
std::vector<Value> Iterate(const Value& v);
// Python's len().
int64_t Length(const Value& v);

// jinja2's getattr and getitem, each falling back to the other; a missing
// attribute or element is an Undefined that says why.
Value GetAttr(const Value& obj, const std::string& name);
Value GetItem(const Value& obj, const Value& key);

// str % args: %s, %r, %d, %i and %% (what templates use).
std::string PercentFormat(const std::string& fmt, const Value& args);

// 64-bit arithmetic that fails where Python would move to big integers.
int64_t CheckedAdd(int64_t a, int64_t b);
int64_t CheckedMul(int64_t a, int64_t b);
// Python's //, which rounds towards negative infinity.
int64_t FloorDiv(int64_t a, int64_t b);

// The running render's step budget, which recursive work on values (repr,
// comparison, JSON) also draws on: values can share sub-values, so their
// unfolded size can be exponential in the work that built them.
struct StepBudget {
  int64_t steps = 0;
  int64_t max_steps = 0;
  int64_t max_bytes = 0;
  void CheckSize(size_t n) const {
    if (static_cast<int64_t>(n) > max_bytes) {
      Fail("output exceeds " + std::to_string(max_bytes) + " bytes");
    }
  }
  void Step() {
    if (++steps > max_steps) {
      Fail("template exceeded " + std::to_string(max_steps) + " steps (runaway loop?)");
    }
  }
};
// Set by the interpreter for the length of a render; null outside one.
extern thread_local StepBudget* g_budget;

// Bounds recursion through values and charges it to the step budget.
class NestGuard {
 public:
  NestGuard();
  ~NestGuard();
  NestGuard(const NestGuard&) = delete;
  NestGuard& operator=(const NestGuard&) = delete;
};

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_VALUE_H_
