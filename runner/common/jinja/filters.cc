// jinja2's built-in filters and tests, as far as chat templates use them,
// with transformers' tojson (no HTML escaping, ensure_ascii off by default).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/interpreter.h"
#include "runner/common/jinja/json.h"
#include "runner/common/jinja/text.h"
#include "runner/common/jinja/value.h"

namespace torchchat::jinja {
namespace {

// Attribute lookup for map/selectattr/sort: dotted paths, ints as indices.
Value Attribute(const Value& obj, const std::string& path) {
  Value cur = obj;
  size_t b = 0;
  while (true) {
    size_t dot = path.find('.', b);
    std::string part = path.substr(b, dot == std::string::npos ? dot : dot - b);
    bool numeric = !part.empty() &&
                   std::all_of(part.begin(), part.end(), IsDigit);
    cur = numeric ? GetItem(cur, Value::Int(std::atoll(part.c_str())))
                  : GetItem(cur, Value::Str(part));
    if (dot == std::string::npos) return cur;
    b = dot + 1;
  }
}

std::vector<Value> SortedItems(std::vector<Value> items, bool reverse,
                               bool case_sensitive, const Value* attribute) {
  auto key = [&](const Value& v) {
    Value k = attribute && !attribute->none() ? Attribute(v, Str(*attribute)) : v;
    if (!case_sensitive && k.is_str()) k.s = LowerStr(k.s);
    return k;
  };
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& v : items) keyed.emplace_back(key(v), std::move(v));
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    return reverse ? Compare(b.first, a.first, "<") < 0
                   : Compare(a.first, b.first, "<") < 0;
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return out;
}

const char* const kFilters[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "first", "float", "forceescape", "format", "indent", "int",
    "items", "join", "last", "length", "list", "lower", "map", "max", "min",
    "reject", "rejectattr", "replace", "reverse", "round", "safe", "select",
    "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique",
    "upper", "wordcount"};
const char* const kTests[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==",
    "escaped", "even", "false", "filter", "float", "ge", ">=", "gt", "greaterthan", ">",
    "in", "integer", "iterable", "le", "<=", "lower", "lt", "lessthan", "<",
    "mapping", "ne", "!=", "none", "number", "odd", "sameas", "sequence",
    "string", "test", "true", "undefined", "upper"};

// Everything jinja2 3.1 itself provides.
const char* const kJinjaOnlyFilters[] = {
    "filesizeformat", "groupby", "pprint", "random", "slice", "striptags",
    "truncate", "urlencode", "urlize", "wordwrap", "xmlattr"};

}  // namespace

bool IsJinjaFilter(const std::string& name) {
  for (const char* f : kJinjaOnlyFilters) {
    if (name == f) return true;
  }
  return IsFilter(name);
}
bool IsJinjaTest(const std::string& name) { return IsTest(name); }

bool IsFilter(const std::string& name) {
  for (const char* f : kFilters) {
    if (name == f) return true;
  }
  return false;
}
bool IsTest(const std::string& name) {
  for (const char* t : kTests) {
    if (name == t) return true;
  }
  return false;
}

bool Interp::ApplyTest(const std::string& name, const Value& v,
                       const std::vector<Value>& args) {
  auto need = [&](size_t n) {
    if (args.size() < n) Fail("test '" + name + "' needs an argument");
  };
  using T = Value::T;
  if (name == "defined") return !v.undefined();
  if (name == "undefined") return v.undefined();
  if (name == "none") return v.none();
  if (name == "boolean") return v.t == T::kBool;
  if (name == "true") return v.t == T::kBool && v.b;
  if (name == "false") return v.t == T::kBool && !v.b;
  if (name == "string") return v.is_str();
  if (name == "number") return v.is_num();
  if (name == "integer") return v.t == T::kInt;
  if (name == "float") return v.t == T::kFloat;
  if (name == "mapping") return v.is_dict();
  if (name == "iterable" || name == "sequence") {
    return v.undefined() || v.is_str() || v.is_list() || v.is_dict();
  }
  if (name == "callable") return v.t == T::kBuiltin || v.t == T::kMacro;
  if (name == "escaped") return false;
  if (name == "filter") return v.is_str() && IsJinjaFilter(v.s);
  if (name == "test") return v.is_str() && IsJinjaTest(v.s);
  if (name == "lower" || name == "upper") {
    std::string s = Str(v);
    std::vector<Value> none;
    Kwargs kw;
    return Truthy(CallMethod(Value::Str(s), name == "lower" ? "islower" : "isupper",
                             none, kw));
  }
  if (name == "odd" || name == "even") {
    if (!v.is_int()) Fail("test '" + name + "' needs an integer");
    bool odd = (v.as_int() % 2) != 0;
    return name == "odd" ? odd : !odd;
  }
  need(1);
  const Value& a = args[0];
  if (name == "divisibleby") {
    if (!v.is_int() || !a.is_int()) Fail("divisibleby needs integers");
    if (a.as_int() == 0) Fail("integer division or modulo by zero");
    return v.as_int() % a.as_int() == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return Equal(v, a);
  if (name == "ne" || name == "!=") return !Equal(v, a);
  if (name == "in") return Contains(a, v);
  if (name == "sameas") {
    if (v.t != a.t) return false;
    if (v.t == T::kNone || v.t == T::kUndefined) return true;
    if (v.t == T::kBool) return v.b == a.b;
    if (v.is_list()) return v.list == a.list;
    if (v.has_items()) return v.dict == a.dict;
    return false;
  }
  int c = Compare(v, a, name.c_str());
  if (name == "lt" || name == "lessthan" || name == "<") return c < 0;
  if (name == "le" || name == "<=") return c <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return c > 0;
  return c >= 0;  // ge, >=
}

Value Interp::Filter(const std::string& name, Value in,
                     std::vector<Value>& args, Kwargs& kwargs) {
  auto arg = [&](size_t k, const char* n) { return Arg(args, kwargs, k, n); };
  auto bool_arg = [&](size_t k, const char* n) {
    const Value* v = arg(k, n);
    return v && Truthy(*v);
  };
  using T = Value::T;
  if (name == "safe") return in;
  if (name == "default" || name == "d") {
    const Value* def = arg(0, "default_value");
    if (in.undefined() || (bool_arg(1, "boolean") && !Truthy(in))) {
      return def ? *def : Value::Str("");
    }
    return in;
  }
  if (name == "length" || name == "count") return Value::Int(Length(in));
  if (name == "string") return Value::Str(Str(in));
  if (name == "trim") {
    const Value* chars = arg(0, "chars");
    std::string cs = chars && !chars->none() ? Str(*chars) : "";
    return Value::Str(PyStrip(Str(in), true, true,
                              chars && !chars->none() ? &cs : nullptr));
  }
  if (name == "upper") return Value::Str(UpperStr(Str(in)));
  if (name == "lower") return Value::Str(LowerStr(Str(in)));
  if (name == "capitalize") return Value::Str(Capitalize(Str(in)));
  if (name == "title") return Value::Str(JinjaTitle(Str(in)));
  if (name == "escape" || name == "e" || name == "forceescape") {
    return Value::Str(HtmlEscape(Str(in)));
  }
  if (name == "replace") {
    const Value* o = arg(0, "old");
    const Value* n = arg(1, "new");
    if (!o || !n) Fail("replace needs 'old' and 'new'");
    return Value::Str(Replace(Str(in), Str(*o), Str(*n),
                              IntArg(arg(2, "count"), -1, "count")));
  }
  if (name == "center") {
    int64_t width = IntArg(arg(0, "width"), 80, "width");
    std::string str = Str(in);
    int64_t len = Length(Value::Str(str));
    if (width <= len) return Value::Str(str);
    CheckSize(static_cast<size_t>(width));
    int64_t marg = width - len;
    int64_t left = marg / 2 + (marg & width & 1);  // CPython's str.center
    return Value::Str(std::string(left, ' ') + str + std::string(marg - left, ' '));
  }
  if (name == "wordcount") {
    int64_t words = 0;
    bool in_word = false;
    for (uint32_t c : Decode(Str(in))) {
      bool w = (c < 0x80 && (IsAlpha(static_cast<char>(c)) ||
                             IsDigit(static_cast<char>(c)) || c == '_')) ||
               (c >= 0x80 && !IsSpace(c));
      if (w && !in_word) ++words;
      in_word = w;
    }
    return Value::Int(words);
  }
  if (name == "format") {
    if (!kwargs.empty()) Fail("format: keyword arguments are not supported");
    return Value::Str(PercentFormat(Str(in), Value::List(args, /*tuple=*/true)));
  }
  if (name == "indent") {
    const Value* w = arg(0, "width");
    std::string pad = w && w->is_str() ? w->s
                                       : std::string(IntArg(w, 4, "width"), ' ');
    bool first = bool_arg(1, "first");
    bool blank = bool_arg(2, "blank");
    std::vector<std::string> lines = SplitLines(Str(in) + "\n");
    std::string rv;
    if (blank) {
      for (size_t k = 0; k < lines.size(); ++k) {
        if (k) rv += "\n" + pad;
        rv += lines[k];
      }
    } else {
      rv = lines.empty() ? "" : lines[0];
      for (size_t k = 1; k < lines.size(); ++k) {
        rv += "\n";
        if (!lines[k].empty()) rv += pad;
        rv += lines[k];
      }
    }
    if (first) rv = pad + rv;
    return Value::Str(std::move(rv));
  }
  if (name == "int") {
    int64_t def = IntArg(arg(0, "default"), 0, "default");
    int64_t base = IntArg(arg(1, "base"), 10, "base");
    if (in.undefined()) FailUndefined(in);
    if (in.is_int()) return Value::Int(in.as_int());
    if (in.t == T::kFloat) {
      if (!std::isfinite(in.f) || std::fabs(in.f) > 9.2e18) return Value::Int(def);
      return Value::Int(static_cast<int64_t>(in.f));
    }
    if (in.is_str()) {
      std::string s = PyStrip(in.s, true, true);
      std::string digits;
      for (char c : s) if (c != '_') digits.push_back(c);
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(digits.c_str(), &end, static_cast<int>(base));
      if (!digits.empty() && *end == 0 && errno == 0) return Value::Int(v);
      if (base == 10) {
        double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == 0 && std::isfinite(d) && std::fabs(d) < 9.2e18) {
          return Value::Int(static_cast<int64_t>(d));
        }
      }
    }
    return Value::Int(def);
  }
  if (name == "float") {
    const Value* d = arg(0, "default");
    Value def = d ? *d : Value::Float(0.0);
    if (in.undefined()) FailUndefined(in);
    if (in.is_num()) return Value::Float(in.as_float());
    if (in.is_str()) {
      std::string s = PyStrip(in.s, true, true);
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      if (!s.empty() && *end == 0) return Value::Float(v);
    }
    return def;
  }
  if (name == "abs") {
    if (in.t == T::kFloat) return Value::Float(std::fabs(in.f));
    if (in.is_int()) return Value::Int(in.as_int() < 0 ? CheckedMul(in.as_int(), -1)
                                                       : in.as_int());
    Fail(std::string("bad operand type for abs(): '") + TypeName(in) + "'");
  }
  if (name == "round") {
    int64_t prec = IntArg(arg(0, "precision"), 0, "precision");
    std::string method = StrArg(arg(1, "method"), "common");
    if (!in.is_num()) Fail("round needs a number");
    // Python's round(int, n) stays an int.
    if (in.is_int() && method == "common" && prec >= 0) return Value::Int(in.as_int());
    double scale = std::pow(10.0, static_cast<double>(prec));
    double x = in.as_float() * scale;
    double r = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x)
                                                                   : std::nearbyint(x);
    return Value::Float(r / scale);
  }
  if (name == "tojson") {
    JsonStyle st;
    st.ensure_ascii = bool_arg(0, "ensure_ascii");
    const Value* indent = arg(1, "indent");
    if (indent && !indent->none()) {
      st.indent_set = true;
      st.indent = indent->is_str() ? indent->s
                                   : std::string(std::max<int64_t>(
                                                     0, IntArg(indent, 0, "indent")),
                                                 ' ');
      st.item_sep = ",";
    }
    const Value* seps = arg(2, "separators");
    if (seps && !seps->none()) {
      if (!seps->is_list() || seps->list->items.size() != 2 ||
          !seps->list->items[0].is_str() || !seps->list->items[1].is_str()) {
        Fail("tojson: separators must be a pair of strings");
      }
      st.item_sep = seps->list->items[0].s;
      st.key_sep = seps->list->items[1].s;
    }
    st.sort_keys = bool_arg(3, "sort_keys");
    std::string out;
    WriteJson(in, st, &out);
    return Value::Str(std::move(out));
  }
  if (name == "attr") {
    const Value* n = arg(0, "name");
    if (!n) Fail("attr needs a name");
    if (in.t == T::kNamespace) return GetAttr(in, Str(*n));
    return Value::Undefined(std::string("'") + TypeName(in) +
                            " object' has no attribute '" + Str(*n) + "'");
  }
  if (name == "items") {
    if (in.undefined()) return Value::List();
    if (!in.is_dict()) Fail("Can only get item pairs from a mapping.");
    std::vector<Value> items;
    for (const auto& [k, v] : in.dict->items) items.push_back(Value::List({k, v}, true));
    return Value::List(std::move(items));
  }
  if (name == "dictsort") {
    if (!in.is_dict()) Fail("dictsort: you can only sort by either key or value");
    bool cs = bool_arg(0, "case_sensitive");
    std::string by = StrArg(arg(1, "by"), "key");
    bool rev = bool_arg(2, "reverse");
    std::vector<std::pair<Value, Value>> items = in.dict->items;
    int pos = by == "value" ? 1 : 0;
    if (by != "key" && by != "value") Fail("You can only sort by either 'key' or 'value'");
    std::stable_sort(items.begin(), items.end(), [&](const auto& a, const auto& b) {
      Value x = pos ? a.second : a.first, y = pos ? b.second : b.first;
      if (!cs && x.is_str()) x.s = LowerStr(x.s);
      if (!cs && y.is_str()) y.s = LowerStr(y.s);
      return rev ? Compare(y, x, "<") < 0 : Compare(x, y, "<") < 0;
    });
    std::vector<Value> out;
    for (auto& kv : items) out.push_back(Value::List({kv.first, kv.second}, true));
    return Value::List(std::move(out));
  }
  // Filters over sequences.
  std::vector<Value> items = Iterate(in);
  if (name == "list") return Value::List(std::move(items));
  if (name == "batch") {
    int64_t size = IntArg(arg(0, "linecount"), 0, "linecount");
    if (size <= 0) Fail("batch size must be positive");
    const Value* fill = arg(1, "fill_with");
    std::vector<Value> out;
    for (size_t k = 0; k < items.size(); k += size) {
      std::vector<Value> chunk(items.begin() + k,
                               items.begin() + std::min(items.size(), k + size));
      while (fill && !fill->none() && static_cast<int64_t>(chunk.size()) < size) {
        chunk.push_back(*fill);
      }
      out.push_back(Value::List(std::move(chunk)));
    }
    return Value::List(std::move(out));
  }
  if (name == "first" || name == "last") {
    if (items.empty()) {
      return Value::Undefined(std::string("No ") + name +
                              " item, sequence was empty.");
    }
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    std::string sep = StrArg(arg(0, "d"), "");
    const Value* attr = arg(1, "attribute");
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) out += sep;
      out += Str(attr && !attr->none() ? Attribute(items[k], Str(*attr)) : items[k]);
      CheckSize(out.size());
    }
    return Value::Str(std::move(out));
  }
  if (name == "reverse") {
    if (in.is_str()) {
      std::vector<uint32_t> cps = Decode(in.s);
      std::reverse(cps.begin(), cps.end());
      return Value::Str(Encode(cps, 0, cps.size()));
    }
    std::reverse(items.begin(), items.end());
    return Value::List(std::move(items));
  }
  if (name == "sort") {
    return Value::List(SortedItems(std::move(items), bool_arg(0, "reverse"),
                                   bool_arg(1, "case_sensitive"),
                                   arg(2, "attribute")));
  }
  if (name == "unique") {
    bool cs = bool_arg(0, "case_sensitive");
    const Value* attr = arg(1, "attribute");
    std::vector<Value> out, seen;
    for (auto& v : items) {
      Value key = attr && !attr->none() ? Attribute(v, Str(*attr)) : v;
      if (!cs && key.is_str()) key.s = LowerStr(key.s);
      bool dup = false;
      for (const auto& s : seen) dup |= Equal(s, key);
      if (!dup) {
        seen.push_back(key);
        out.push_back(v);
      }
    }
    return Value::List(std::move(out));
  }
  if (name == "sum") {
    const Value* attr = arg(0, "attribute");
    const Value* start = arg(1, "start");
    Value total = start ? *start : Value::Int(0);
    for (auto& v : items) {
      total = BinaryOp("+", total, attr && !attr->none() ? Attribute(v, Str(*attr)) : v);
    }
    return total;
  }
  if (name == "min" || name == "max") {
    if (items.empty()) {
      return Value::Undefined(std::string("No ") +
                              (name == "min" ? "smallest" : "largest") +
                              " item, sequence was empty.");
    }
    std::vector<Value> sorted = SortedItems(items, name == "max",
                                            bool_arg(0, "case_sensitive"),
                                            arg(1, "attribute"));
    return sorted.front();
  }
  if (name == "map") {
    std::vector<Value> out;
    const Value* attr = nullptr;
    for (const auto& [k, v] : kwargs) {
      if (k == "attribute") attr = &v;
    }
    if (attr) {
      const Value* def = nullptr;
      for (const auto& [k, v] : kwargs) {
        if (k == "default") def = &v;
      }
      for (auto& v : items) {
        Value x = Attribute(v, Str(*attr));
        out.push_back(x.undefined() && def ? *def : x);
      }
      return Value::List(std::move(out));
    }
    if (args.empty() || !args[0].is_str()) Fail("map needs a filter name or attribute=");
    std::string filter = args[0].s;
    if (!IsFilter(filter)) Fail("no filter named '" + filter + "'");
    std::vector<Value> rest(args.begin() + 1, args.end());
    Kwargs kw;
    for (auto& v : items) {
      std::vector<Value> a = rest;
      out.push_back(Filter(filter, v, a, kw));
    }
    return Value::List(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" ||
      name == "rejectattr") {
    bool by_attr = name == "selectattr" || name == "rejectattr";
    bool keep_if = name == "select" || name == "selectattr";
    size_t next = 0;
    std::string attr;
    if (by_attr) {
      if (args.empty()) Fail(name + " needs an attribute name");
      attr = Str(args[next++]);
    }
    std::string test;
    if (next < args.size()) test = Str(args[next++]);
    if (!test.empty() && !IsTest(test)) Fail("no test named '" + test + "'");
    std::vector<Value> test_args(args.begin() + next, args.end());
    std::vector<Value> out;
    for (auto& v : items) {
      Value x = by_attr ? Attribute(v, attr) : v;
      bool r = test.empty() ? Truthy(x) : ApplyTest(test, x, test_args);
      if (r == keep_if) out.push_back(v);
    }
    return Value::List(std::move(out));
  }
  Fail("no filter named '" + name + "'");
}

}  // namespace torchchat::jinja
