// Python's str, dict and list methods that chat templates call
// (message.content.strip(), tools.items(), ...), and loop.cycle().
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/interpreter.h"
#include "runner/common/jinja/text.h"
#include "runner/common/jinja/value.h"

namespace torchchat::jinja {
namespace {

// str.split; a null or none separator splits on runs of whitespace.
std::vector<std::string> PySplit(const std::string& s, const Value* sep_v,
                                 int64_t maxsplit) {
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

}  // namespace

bool Interp::HasMethod(const Value& obj, const std::string& name) {
  static const char* kStr[] = {
      "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines",
      "startswith", "endswith", "upper", "lower", "title", "capitalize",
      "replace", "find", "rfind", "count", "join", "isdigit", "isalpha",
      "isalnum", "isspace", "isupper", "islower", "format"};
  static const char* kDict[] = {"items", "keys", "values", "get"};
  static const char* kList[] = {"index", "count"};
  auto in = [&](const auto& table) {
    for (const char* n : table) {
      if (name == n) return true;
    }
    return false;
  };
  switch (obj.t) {
    case Value::T::kString: return in(kStr);
    case Value::T::kDict: return in(kDict);
    case Value::T::kList: return in(kList);
    case Value::T::kLoop: return name == "cycle";
    default: return false;
  }
}

Value Interp::CallMethod(const Value& obj, const std::string& name,
                         std::vector<Value>& args, Kwargs& kwargs) {
  auto arg = [&](size_t k, const char* n) { return Arg(args, kwargs, k, n); };
  if (obj.t == Value::T::kLoop) {
    if (args.empty()) Fail("no items for cycling given");
    int64_t i = DictFind(*obj.dict, Value::Str("index0"))->i;
    return args[i % args.size()];
  }
  if (obj.is_dict()) {
    if (name == "get") {
      const Value* key = arg(0, "key");
      if (!key) Fail("get expected at least 1 argument, got 0");
      const Value* v = DictFind(*obj.dict, *key);
      if (v) return *v;
      const Value* def = arg(1, "default");
      return def ? *def : Value::None();
    }
    std::vector<Value> items;
    for (const auto& [k, v] : obj.dict->items) {
      if (name == "keys") items.push_back(k);
      else if (name == "values") items.push_back(v);
      else items.push_back(Value::List({k, v}, /*tuple=*/true));
    }
    return Value::List(std::move(items));
  }
  if (obj.is_list()) {
    const Value* x = arg(0, "value");
    if (!x) Fail(name + "() takes exactly one argument");
    int64_t count = 0;
    for (size_t k = 0; k < obj.list->items.size(); ++k) {
      if (Equal(obj.list->items[k], *x)) {
        if (name == "index") return Value::Int(static_cast<int64_t>(k));
        ++count;
      }
    }
    if (name == "index") Fail(Repr(*x) + " is not in list");
    return Value::Int(count);
  }
  // Strings.
  const std::string& s = obj.s;
  auto str_arg = [&](size_t k, const char* n) -> const std::string* {
    const Value* v = arg(k, n);
    if (!v || v->none()) return nullptr;
    if (!v->is_str()) Fail(name + "() argument must be str");
    return &v->s;
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return Value::Str(PyStrip(s, name != "rstrip", name != "lstrip",
                              str_arg(0, "chars")));
  }
  if (name == "split" || name == "rsplit") {
    int64_t maxsplit = IntArg(arg(1, "maxsplit"), -1, "maxsplit");
    if (name == "rsplit" && maxsplit >= 0) {
      Fail("rsplit with maxsplit is not supported");
    }
    return StrList(PySplit(s, arg(0, "sep"), maxsplit));
  }
  if (name == "splitlines") return StrList(SplitLines(s));
  if (name == "startswith" || name == "endswith") {
    const Value* p = arg(0, "prefix");
    if (!p) Fail(name + "() takes at least 1 argument");
    std::vector<Value> options =
        p->is_list() && p->list->tuple ? p->list->items : std::vector<Value>{*p};
    for (const auto& o : options) {
      if (!o.is_str()) Fail(name + " first arg must be str or a tuple of str");
      bool hit = name == "startswith"
                     ? s.compare(0, o.s.size(), o.s) == 0
                     : s.size() >= o.s.size() &&
                           s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0;
      if (hit) return Value::Bool(true);
    }
    return Value::Bool(false);
  }
  if (name == "upper") return Value::Str(UpperStr(s));
  if (name == "lower") return Value::Str(LowerStr(s));
  if (name == "title") return Value::Str(PyTitle(s));
  if (name == "capitalize") return Value::Str(Capitalize(s));
  if (name == "replace") {
    const std::string* o = str_arg(0, "old");
    const std::string* n = str_arg(1, "new");
    if (!o || !n) Fail("replace() takes at least 2 arguments");
    std::string r = Replace(s, *o, *n, IntArg(arg(2, "count"), -1, "count"));
    CheckSize(r.size());
    return Value::Str(std::move(r));
  }
  if (name == "find" || name == "rfind" || name == "count") {
    const std::string* sub = str_arg(0, "sub");
    if (!sub) Fail(name + "() takes at least 1 argument");
    if (name == "count") {
      if (sub->empty()) return Value::Int(Length(obj) + 1);
      int64_t c = 0;
      for (size_t p = s.find(*sub); p != std::string::npos;
           p = s.find(*sub, p + sub->size())) {
        ++c;
      }
      return Value::Int(c);
    }
    size_t p = name == "find" ? s.find(*sub) : s.rfind(*sub);
    if (p == std::string::npos) return Value::Int(-1);
    return Value::Int(static_cast<int64_t>(Decode(s.substr(0, p)).size()));
  }
  if (name == "join") {
    const Value* seq = arg(0, "iterable");
    if (!seq) Fail("join() takes exactly one argument");
    std::string out;
    bool first = true;
    for (const auto& v : Iterate(*seq)) {
      if (!v.is_str()) Fail("sequence item: expected str instance");
      if (!first) out += s;
      first = false;
      out += v.s;
      CheckSize(out.size());
    }
    return Value::Str(std::move(out));
  }
  if (name == "format") Fail("str.format is not supported");
  std::vector<uint32_t> cps = Decode(s);
  bool all = !cps.empty(), any_cased = false;
  for (uint32_t c : cps) {
    bool digit = c >= '0' && c <= '9';
    bool alpha = c < 0x80 && IsAlpha(static_cast<char>(c));
    if (name == "isdigit") all &= digit;
    else if (name == "isalpha") all &= alpha;
    else if (name == "isalnum") all &= digit || alpha;
    else if (name == "isspace") all &= IsSpace(c);
    else if (name == "isupper") {
      if (UpperCp(c) != c) all = false;
      any_cased |= IsCased(c);
    } else if (name == "islower") {
      if (LowerCp(c) != c) all = false;
      any_cased |= IsCased(c);
    }
  }
  if (name == "isupper" || name == "islower") return Value::Bool(all && any_cased);
  return Value::Bool(all);
}

}  // namespace torchchat::jinja
