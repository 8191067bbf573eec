// The globals a chat template can call. transformers adds raise_exception
// and strftime_now to jinja2's own (range, namespace, dict); templates
// commonly use all five.
#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/interpreter.h"
#include "runner/common/jinja/value.h"

namespace torchchat::jinja {
namespace {

std::string StrftimeNow(const std::string& fmt, std::time_t pinned) {
  std::time_t t = pinned ? pinned : std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  if (fmt.empty()) return "";
  for (size_t cap = 256; cap <= (1u << 20); cap *= 4) {
    std::string buf(cap, '\0');
    size_t n = std::strftime(&buf[0], cap, fmt.c_str(), &tm);
    if (n > 0) return buf.substr(0, n);
  }
  return "";
}

Value MakeBuiltin(std::string name, decltype(Builtin::fn) fn) {
  Value v;
  v.t = Value::T::kBuiltin;
  v.builtin = std::make_shared<Builtin>(Builtin{std::move(name), std::move(fn)});
  return v;
}

// jinja2's sandbox refuses ranges longer than this.
constexpr int64_t kMaxRange = 100000;

}  // namespace

void AddGlobals(Scope* g, std::time_t now) {
  g->vars["raise_exception"] =
      MakeBuiltin("raise_exception", [](std::vector<Value>& args, Kwargs& kwargs) -> Value {
        const Value* m = Arg(args, kwargs, 0, "message");
        throw TemplateError{m ? Str(*m) : std::string(), -1};
      });
  g->vars["strftime_now"] =
      MakeBuiltin("strftime_now", [now](std::vector<Value>& args, Kwargs& kwargs) -> Value {
        const Value* f = Arg(args, kwargs, 0, "format");
        if (!f || !f->is_str()) Fail("strftime_now() needs a format string");
        return Value::Str(StrftimeNow(f->s, now));
      });
  g->vars["range"] = MakeBuiltin("range", [](std::vector<Value>& args, Kwargs&) -> Value {
    if (args.empty() || args.size() > 3) Fail("range expected 1 to 3 arguments");
    for (const auto& a : args) {
      if (!a.is_int()) {
        Fail(std::string("'") + TypeName(a) + "' object cannot be interpreted as an integer");
      }
    }
    int64_t start = args.size() > 1 ? args[0].as_int() : 0;
    int64_t stop = args.size() > 1 ? args[1].as_int() : args[0].as_int();
    int64_t step = args.size() > 2 ? args[2].as_int() : 1;
    if (step == 0) Fail("range() arg 3 must not be zero");
    std::vector<Value> items;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (static_cast<int64_t>(items.size()) >= kMaxRange) {
        Fail(
            "Range too big. The sandbox blocks ranges larger than "
            "MAX_RANGE (100000).");
      }
      items.push_back(Value::Int(k));
    }
    return Value::List(std::move(items));
  });
  auto make_dict = [](Value::T kind) {
    return [kind](std::vector<Value>& args, Kwargs& kwargs) -> Value {
      Value d = Value::Dict(kind);
      if (args.size() > 1) Fail("expected at most 1 positional argument");
      if (!args.empty()) {
        if (!args[0].has_items()) Fail("expected a mapping");
        d.dict->items = args[0].dict->items;
      }
      for (auto& [k, v] : kwargs) {
        if (kind == Value::T::kNamespace && !k.empty() && k[0] == '_') {
          Fail("cannot store underscore-prefixed attribute '" + k + "' on a namespace");
        }
        DictSet(d.dict.get(), Value::Str(k), v);
      }
      return d;
    };
  };
  g->vars["namespace"] = MakeBuiltin("namespace", make_dict(Value::T::kNamespace));
  g->vars["dict"] = MakeBuiltin("dict", make_dict(Value::T::kDict));
}

}  // namespace torchchat::jinja
