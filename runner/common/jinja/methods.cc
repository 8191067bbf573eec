// Python's str, dict and list methods that chat templates call
// (message.content.strip(), tools.items(), ...), and loop.cycle(). jinja2
// exposes the real Python methods; this engine has the subset below, one
// table per type, which is also what decides whether `x.name(...)` is a
// method call or a call of an attribute.
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/interpreter.h"
#include "runner/common/jinja/name_table.h"
#include "runner/common/jinja/text.h"
#include "runner/common/jinja/value.h"

namespace torchchat::jinja {
namespace {

// str.split; a null or none separator splits on runs of whitespace.
std::vector<std::string> PySplit(const std::string& s, const Value* sep_v, int64_t maxsplit) {
  std::vector<std::string> parts;
  if (maxsplit < 0) maxsplit = std::numeric_limits<int64_t>::max();
  if (!sep_v || sep_v->none()) {
    std::vector<uint32_t> cps = Decode(s);
    size_t k = 0;
    int64_t splits = 0;
    while (true) {
      while (k < cps.size() && IsSpace(cps[k])) ++k;
      if (k >= cps.size()) break;
      if (splits >= maxsplit) {
        size_t e = cps.size();
        while (e > k && IsSpace(cps[e - 1])) --e;
        parts.push_back(Encode(cps, k, e));
        break;
      }
      size_t b = k;
      while (k < cps.size() && !IsSpace(cps[k])) ++k;
      parts.push_back(Encode(cps, b, k));
      ++splits;
    }
    return parts;
  }
  if (!sep_v->is_str()) Fail("split: separator must be a string or None");
  const std::string& sep = sep_v->s;
  if (sep.empty()) Fail("empty separator");
  size_t pos = 0;
  int64_t splits = 0;
  while (splits < maxsplit) {
    size_t f = s.find(sep, pos);
    if (f == std::string::npos) break;
    parts.push_back(s.substr(pos, f - pos));
    pos = f + sep.size();
    ++splits;
  }
  parts.push_back(s.substr(pos));
  return parts;
}

Value StrList(const std::vector<std::string>& parts) {
  std::vector<Value> items;
  for (const auto& p : parts) items.push_back(Value::Str(p));
  return Value::List(std::move(items));
}

// One method call; `name` as written, for methods sharing an
// implementation and for messages.
struct MethodCall {
  Interp& interp;
  const std::string& name;
  std::vector<Value>& args;
  Kwargs& kwargs;

  const Value* arg(size_t k, const char* n) const { return Arg(args, kwargs, k, n); }
  // An optional str argument; none or absent gives null.
  const std::string* str_arg(size_t k, const char* n) const {
    const Value* v = arg(k, n);
    if (!v || v->none()) return nullptr;
    if (!v->is_str()) Fail(name + "() argument must be str");
    return &v->s;
  }
};
using MethodFn = Value (*)(const Value& obj, const MethodCall& c);

// ------------------------------------------------------------ loop

Value Cycle(const Value& loop, const MethodCall& c) {
  if (c.args.empty()) Fail("no items for cycling given");
  int64_t i = DictFind(*loop.dict, Value::Str("index0"))->i;
  return c.args[i % c.args.size()];
}

constexpr NamedFn<MethodFn> kLoopMethods[] = {
    {"cycle", Cycle},
};

// ------------------------------------------------------------ dict

Value Get(const Value& obj, const MethodCall& c) {
  const Value* key = c.arg(0, "key");
  if (!key) Fail("get expected at least 1 argument, got 0");
  const Value* v = DictFind(*obj.dict, *key);
  if (v) return *v;
  const Value* def = c.arg(1, "default");
  return def ? *def : Value::None();
}

Value Keys(const Value& obj, const MethodCall&) {
  std::vector<Value> items;
  for (const auto& kv : obj.dict->items) items.push_back(kv.first);
  return Value::List(std::move(items));
}

Value Values(const Value& obj, const MethodCall&) {
  std::vector<Value> items;
  for (const auto& kv : obj.dict->items) items.push_back(kv.second);
  return Value::List(std::move(items));
}

Value DictItems(const Value& obj, const MethodCall&) {
  std::vector<Value> items;
  for (const auto& [k, v] : obj.dict->items) {
    items.push_back(Value::List({k, v}, /*tuple=*/true));
  }
  return Value::List(std::move(items));
}

constexpr NamedFn<MethodFn> kDictMethods[] = {
    {"get", Get},
    {"items", DictItems},
    {"keys", Keys},
    {"values", Values},
};

// ------------------------------------------------------------ list

// list.index and list.count.
Value IndexOrCount(const Value& obj, const MethodCall& c) {
  const Value* x = c.arg(0, "value");
  if (!x) Fail(c.name + "() takes exactly one argument");
  const bool index = c.name == "index";
  int64_t count = 0;
  for (size_t k = 0; k < obj.list->items.size(); ++k) {
    if (Equal(obj.list->items[k], *x)) {
      if (index) return Value::Int(static_cast<int64_t>(k));
      ++count;
    }
  }
  if (index) Fail(Repr(*x) + " is not in list");
  return Value::Int(count);
}

constexpr NamedFn<MethodFn> kListMethods[] = {
    {"count", IndexOrCount},
    {"index", IndexOrCount},
};

// ------------------------------------------------------------ str

// strip, lstrip and rstrip.
Value Strip(const Value& obj, const MethodCall& c) {
  return Value::Str(PyStrip(obj.s, c.name != "rstrip", c.name != "lstrip", c.str_arg(0, "chars")));
}

// split and rsplit, which differ only with a maxsplit.
Value Split(const Value& obj, const MethodCall& c) {
  int64_t maxsplit = IntArg(c.arg(1, "maxsplit"), -1, "maxsplit");
  if (c.name == "rsplit" && maxsplit >= 0) Fail("rsplit with maxsplit is not supported");
  return StrList(PySplit(obj.s, c.arg(0, "sep"), maxsplit));
}

Value Splitlines(const Value& obj, const MethodCall&) { return StrList(SplitLines(obj.s)); }

// startswith and endswith; the argument may be a tuple of candidates.
Value StartsOrEndsWith(const Value& obj, const MethodCall& c) {
  const std::string& s = obj.s;
  const Value* p = c.arg(0, "prefix");
  if (!p) Fail(c.name + "() takes at least 1 argument");
  std::vector<Value> options =
      p->is_list() && p->list->tuple ? p->list->items : std::vector<Value>{*p};
  for (const auto& o : options) {
    if (!o.is_str()) Fail(c.name + " first arg must be str or a tuple of str");
    bool hit = c.name == "startswith" ? s.compare(0, o.s.size(), o.s) == 0
                                      : s.size() >= o.s.size() &&
                                            s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0;
    if (hit) return Value::Bool(true);
  }
  return Value::Bool(false);
}

Value Upper(const Value& obj, const MethodCall&) { return Value::Str(UpperStr(obj.s)); }
Value Lower(const Value& obj, const MethodCall&) { return Value::Str(LowerStr(obj.s)); }
Value Title(const Value& obj, const MethodCall&) { return Value::Str(PyTitle(obj.s)); }
Value CapitalizeMethod(const Value& obj, const MethodCall&) {
  return Value::Str(Capitalize(obj.s));
}

Value ReplaceMethod(const Value& obj, const MethodCall& c) {
  const std::string* o = c.str_arg(0, "old");
  const std::string* n = c.str_arg(1, "new");
  if (!o || !n) Fail("replace() takes at least 2 arguments");
  std::string r = Replace(obj.s, *o, *n, IntArg(c.arg(2, "count"), -1, "count"));
  c.interp.CheckSize(r.size());
  return Value::Str(std::move(r));
}

// find, rfind and count; positions count code points, as in Python.
Value FindOrCount(const Value& obj, const MethodCall& c) {
  const std::string& s = obj.s;
  const std::string* sub = c.str_arg(0, "sub");
  if (!sub) Fail(c.name + "() takes at least 1 argument");
  if (c.name == "count") {
    if (sub->empty()) return Value::Int(Length(obj) + 1);
    int64_t n = 0;
    for (size_t p = s.find(*sub); p != std::string::npos; p = s.find(*sub, p + sub->size())) {
      ++n;
    }
    return Value::Int(n);
  }
  size_t p = c.name == "find" ? s.find(*sub) : s.rfind(*sub);
  if (p == std::string::npos) return Value::Int(-1);
  return Value::Int(static_cast<int64_t>(Decode(s.substr(0, p)).size()));
}

Value JoinMethod(const Value& obj, const MethodCall& c) {
  const Value* seq = c.arg(0, "iterable");
  if (!seq) Fail("join() takes exactly one argument");
  std::string out;
  bool first = true;
  for (const auto& v : Iterate(*seq)) {
    if (!v.is_str()) Fail("sequence item: expected str instance");
    if (!first) out += obj.s;
    first = false;
    out += v.s;
    c.interp.CheckSize(out.size());
  }
  return Value::Str(std::move(out));
}

// Listed so that a template calling it learns why it fails.
Value FormatMethod(const Value&, const MethodCall&) { Fail("str.format is not supported"); }

// isdigit, isalpha, isalnum, isspace, isupper and islower.
Value CharClass(const Value& obj, const MethodCall& c) {
  const std::string& name = c.name;
  std::vector<uint32_t> cps = Decode(obj.s);
  bool all = !cps.empty(), any_cased = false;
  for (uint32_t ch : cps) {
    bool digit = ch >= '0' && ch <= '9';
    bool alpha = ch < 0x80 && IsAlpha(static_cast<char>(ch));
    if (name == "isdigit") {
      all &= digit;
    } else if (name == "isalpha") {
      all &= alpha;
    } else if (name == "isalnum") {
      all &= digit || alpha;
    } else if (name == "isspace") {
      all &= IsSpace(ch);
    } else if (name == "isupper") {
      if (UpperCp(ch) != ch) all = false;
      any_cased |= IsCased(ch);
    } else if (name == "islower") {
      if (LowerCp(ch) != ch) all = false;
      any_cased |= IsCased(ch);
    }
  }
  if (name == "isupper" || name == "islower") return Value::Bool(all && any_cased);
  return Value::Bool(all);
}

constexpr NamedFn<MethodFn> kStrMethods[] = {
    {"capitalize", CapitalizeMethod},
    {"count", FindOrCount},
    {"endswith", StartsOrEndsWith},
    {"find", FindOrCount},
    {"format", FormatMethod},
    {"isalnum", CharClass},
    {"isalpha", CharClass},
    {"isdigit", CharClass},
    {"islower", CharClass},
    {"isspace", CharClass},
    {"isupper", CharClass},
    {"join", JoinMethod},
    {"lower", Lower},
    {"lstrip", Strip},
    {"replace", ReplaceMethod},
    {"rfind", FindOrCount},
    {"rsplit", Split},
    {"rstrip", Strip},
    {"split", Split},
    {"splitlines", Splitlines},
    {"startswith", StartsOrEndsWith},
    {"strip", Strip},
    {"title", Title},
    {"upper", Upper},
};

static_assert(StrictlySorted(kLoopMethods) && StrictlySorted(kDictMethods) &&
                  StrictlySorted(kListMethods) && StrictlySorted(kStrMethods),
              "method tables must be sorted by name, without repeats");

MethodFn FindMethod(const Value& obj, const std::string& name) {
  switch (obj.t) {
    case Value::T::kString:
      return FindFn(kStrMethods, name);
    case Value::T::kDict:
      return FindFn(kDictMethods, name);
    case Value::T::kList:
      return FindFn(kListMethods, name);
    case Value::T::kLoop:
      return FindFn(kLoopMethods, name);
    default:
      return nullptr;
  }
}

}  // namespace

bool Interp::HasMethod(const Value& obj, const std::string& name) {
  return FindMethod(obj, name) != nullptr;
}

Value Interp::CallMethod(const Value& obj, const std::string& name, std::vector<Value>& args,
                         Kwargs& kwargs) {
  MethodFn fn = FindMethod(obj, name);
  if (!fn) {
    Fail(std::string("'") + TypeName(obj) + "' object has no method '" + name + "'");
  }
  return fn(obj, MethodCall{*this, name, args, kwargs});
}

}  // namespace torchchat::jinja
