// jinja2's built-in filters and tests, as far as chat templates use them,
// with transformers' tojson (no HTML escaping, ensure_ascii off by default).
// Each table below is the only list of names: the parser asks it whether a
// name exists (IsFilter, IsTest) and the interpreter dispatches through it.
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
#include "runner/common/jinja/name_table.h"
#include "runner/common/jinja/text.h"
#include "runner/common/jinja/value.h"

namespace torchchat::jinja {
namespace {

// One filter application. `name` is the name as written: aliases (d and
// default, e and escape...) share an implementation, and some messages quote
// it.
struct FilterCall {
  Interp& interp;
  const std::string& name;
  std::vector<Value>& args;
  Kwargs& kwargs;

  const Value* arg(size_t k, const char* n) const { return Arg(args, kwargs, k, n); }
  bool flag(size_t k, const char* n) const {
    const Value* v = arg(k, n);
    return v && Truthy(*v);
  }
};
using FilterFn = Value (*)(Value in, const FilterCall& c);

// Attribute lookup for map/selectattr/sort: dotted paths, ints as indices.
Value Attribute(const Value& obj, const std::string& path) {
  Value cur = obj;
  size_t b = 0;
  while (true) {
    size_t dot = path.find('.', b);
    std::string part = path.substr(b, dot == std::string::npos ? dot : dot - b);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), IsDigit);
    cur = numeric ? GetItem(cur, Value::Int(std::atoll(part.c_str())))
                  : GetItem(cur, Value::Str(part));
    if (dot == std::string::npos) return cur;
    b = dot + 1;
  }
}

std::vector<Value> SortedItems(std::vector<Value> items, bool reverse, bool case_sensitive,
                               const Value* attribute) {
  auto key = [&](const Value& v) {
    Value k = attribute && !attribute->none() ? Attribute(v, Str(*attribute)) : v;
    if (!case_sensitive && k.is_str()) k.s = LowerStr(k.s);
    return k;
  };
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& v : items) keyed.emplace_back(key(v), std::move(v));
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    return reverse ? Compare(b.first, a.first, "<") < 0 : Compare(a.first, b.first, "<") < 0;
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return out;
}

// ------------------------------------------------------------ on any value

Value Safe(Value in, const FilterCall&) { return in; }

Value Default(Value in, const FilterCall& c) {
  const Value* def = c.arg(0, "default_value");
  if (in.undefined() || (c.flag(1, "boolean") && !Truthy(in))) {
    return def ? *def : Value::Str("");
  }
  return in;
}

Value LengthFilter(Value in, const FilterCall&) { return Value::Int(Length(in)); }

Value String(Value in, const FilterCall&) { return Value::Str(Str(in)); }

Value Trim(Value in, const FilterCall& c) {
  const Value* chars = c.arg(0, "chars");
  std::string cs = chars && !chars->none() ? Str(*chars) : "";
  return Value::Str(PyStrip(Str(in), true, true, chars && !chars->none() ? &cs : nullptr));
}

Value Upper(Value in, const FilterCall&) { return Value::Str(UpperStr(Str(in))); }
Value Lower(Value in, const FilterCall&) { return Value::Str(LowerStr(Str(in))); }
Value CapitalizeFilter(Value in, const FilterCall&) { return Value::Str(Capitalize(Str(in))); }
Value Title(Value in, const FilterCall&) { return Value::Str(JinjaTitle(Str(in))); }
Value Escape(Value in, const FilterCall&) { return Value::Str(HtmlEscape(Str(in))); }

Value ReplaceFilter(Value in, const FilterCall& c) {
  const Value* o = c.arg(0, "old");
  const Value* n = c.arg(1, "new");
  if (!o || !n) Fail("replace needs 'old' and 'new'");
  return Value::Str(Replace(Str(in), Str(*o), Str(*n), IntArg(c.arg(2, "count"), -1, "count")));
}

Value Center(Value in, const FilterCall& c) {
  int64_t width = IntArg(c.arg(0, "width"), 80, "width");
  std::string str = Str(in);
  int64_t len = Length(Value::Str(str));
  if (width <= len) return Value::Str(str);
  c.interp.CheckSize(static_cast<size_t>(width));
  int64_t marg = width - len;
  int64_t left = marg / 2 + (marg & width & 1);  // CPython's str.center
  return Value::Str(std::string(left, ' ') + str + std::string(marg - left, ' '));
}

Value Wordcount(Value in, const FilterCall&) {
  int64_t words = 0;
  bool in_word = false;
  for (uint32_t c : Decode(Str(in))) {
    bool w = (c < 0x80 &&
              (IsAlpha(static_cast<char>(c)) || IsDigit(static_cast<char>(c)) || c == '_')) ||
             (c >= 0x80 && !IsSpace(c));
    if (w && !in_word) ++words;
    in_word = w;
  }
  return Value::Int(words);
}

Value Format(Value in, const FilterCall& c) {
  if (!c.kwargs.empty()) Fail("format: keyword arguments are not supported");
  return Value::Str(PercentFormat(Str(in), Value::List(c.args, /*tuple=*/true)));
}

Value Indent(Value in, const FilterCall& c) {
  const Value* w = c.arg(0, "width");
  std::string pad = w && w->is_str() ? w->s : std::string(IntArg(w, 4, "width"), ' ');
  bool first = c.flag(1, "first");
  bool blank = c.flag(2, "blank");
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

Value Int(Value in, const FilterCall& c) {
  int64_t def = IntArg(c.arg(0, "default"), 0, "default");
  int64_t base = IntArg(c.arg(1, "base"), 10, "base");
  if (in.undefined()) FailUndefined(in);
  if (in.is_int()) return Value::Int(in.as_int());
  if (in.t == Value::T::kFloat) {
    if (!std::isfinite(in.f) || std::fabs(in.f) > 9.2e18) return Value::Int(def);
    return Value::Int(static_cast<int64_t>(in.f));
  }
  if (in.is_str()) {
    std::string s = PyStrip(in.s, true, true);
    std::string digits;
    for (char ch : s) {
      if (ch != '_') digits.push_back(ch);
    }
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

Value Float(Value in, const FilterCall& c) {
  const Value* d = c.arg(0, "default");
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

Value Abs(Value in, const FilterCall&) {
  if (in.t == Value::T::kFloat) return Value::Float(std::fabs(in.f));
  if (in.is_int()) {
    return Value::Int(in.as_int() < 0 ? CheckedMul(in.as_int(), -1) : in.as_int());
  }
  Fail(std::string("bad operand type for abs(): '") + TypeName(in) + "'");
}

Value Round(Value in, const FilterCall& c) {
  int64_t prec = IntArg(c.arg(0, "precision"), 0, "precision");
  std::string method = StrArg(c.arg(1, "method"), "common");
  if (!in.is_num()) Fail("round needs a number");
  // Python's round(int, n) stays an int.
  if (in.is_int() && method == "common" && prec >= 0) return Value::Int(in.as_int());
  double scale = std::pow(10.0, static_cast<double>(prec));
  double x = in.as_float() * scale;
  double r = method == "ceil"    ? std::ceil(x)
             : method == "floor" ? std::floor(x)
                                 : std::nearbyint(x);
  return Value::Float(r / scale);
}

Value Tojson(Value in, const FilterCall& c) {
  JsonStyle st;
  st.ensure_ascii = c.flag(0, "ensure_ascii");
  const Value* indent = c.arg(1, "indent");
  if (indent && !indent->none()) {
    st.indent_set = true;
    st.indent = indent->is_str()
                    ? indent->s
                    : std::string(std::max<int64_t>(0, IntArg(indent, 0, "indent")), ' ');
    st.item_sep = ",";
  }
  const Value* seps = c.arg(2, "separators");
  if (seps && !seps->none()) {
    if (!seps->is_list() || seps->list->items.size() != 2 || !seps->list->items[0].is_str() ||
        !seps->list->items[1].is_str()) {
      Fail("tojson: separators must be a pair of strings");
    }
    st.item_sep = seps->list->items[0].s;
    st.key_sep = seps->list->items[1].s;
  }
  st.sort_keys = c.flag(3, "sort_keys");
  std::string out;
  WriteJson(in, st, &out);
  return Value::Str(std::move(out));
}

Value Attr(Value in, const FilterCall& c) {
  const Value* n = c.arg(0, "name");
  if (!n) Fail("attr needs a name");
  if (in.t == Value::T::kNamespace) return GetAttr(in, Str(*n));
  return Value::Undefined(std::string("'") + TypeName(in) + " object' has no attribute '" +
                          Str(*n) + "'");
}

Value Items(Value in, const FilterCall&) {
  if (in.undefined()) return Value::List();
  if (!in.is_dict()) Fail("Can only get item pairs from a mapping.");
  std::vector<Value> items;
  for (const auto& [k, v] : in.dict->items) items.push_back(Value::List({k, v}, true));
  return Value::List(std::move(items));
}

Value Dictsort(Value in, const FilterCall& c) {
  if (!in.is_dict()) Fail("dictsort: you can only sort by either key or value");
  bool cs = c.flag(0, "case_sensitive");
  std::string by = StrArg(c.arg(1, "by"), "key");
  bool rev = c.flag(2, "reverse");
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

// ------------------------------------------------------------ on sequences
// Each starts by iterating its input, so that a non-iterable one fails the
// same way whichever filter it meets.

Value ListFilter(Value in, const FilterCall&) { return Value::List(Iterate(in)); }

Value Batch(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  int64_t size = IntArg(c.arg(0, "linecount"), 0, "linecount");
  if (size <= 0) Fail("batch size must be positive");
  const Value* fill = c.arg(1, "fill_with");
  std::vector<Value> out;
  for (size_t k = 0; k < items.size(); k += size) {
    std::vector<Value> chunk(items.begin() + k, items.begin() + std::min(items.size(), k + size));
    while (fill && !fill->none() && static_cast<int64_t>(chunk.size()) < size) {
      chunk.push_back(*fill);
    }
    out.push_back(Value::List(std::move(chunk)));
  }
  return Value::List(std::move(out));
}

Value FirstOrLast(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  if (items.empty()) {
    return Value::Undefined("No " + c.name + " item, sequence was empty.");
  }
  return c.name == "first" ? items.front() : items.back();
}

Value Join(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  std::string sep = StrArg(c.arg(0, "d"), "");
  const Value* attr = c.arg(1, "attribute");
  std::string out;
  for (size_t k = 0; k < items.size(); ++k) {
    if (k) out += sep;
    out += Str(attr && !attr->none() ? Attribute(items[k], Str(*attr)) : items[k]);
    c.interp.CheckSize(out.size());
  }
  return Value::Str(std::move(out));
}

Value Reverse(Value in, const FilterCall&) {
  std::vector<Value> items = Iterate(in);
  if (in.is_str()) {
    std::vector<uint32_t> cps = Decode(in.s);
    std::reverse(cps.begin(), cps.end());
    return Value::Str(Encode(cps, 0, cps.size()));
  }
  std::reverse(items.begin(), items.end());
  return Value::List(std::move(items));
}

Value Sort(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  return Value::List(SortedItems(std::move(items), c.flag(0, "reverse"),
                                 c.flag(1, "case_sensitive"), c.arg(2, "attribute")));
}

Value Unique(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  bool cs = c.flag(0, "case_sensitive");
  const Value* attr = c.arg(1, "attribute");
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

Value Sum(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  const Value* attr = c.arg(0, "attribute");
  const Value* start = c.arg(1, "start");
  Value total = start ? *start : Value::Int(0);
  for (auto& v : items) {
    total = c.interp.BinaryOp("+", total, attr && !attr->none() ? Attribute(v, Str(*attr)) : v);
  }
  return total;
}

Value MinOrMax(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  const bool max = c.name == "max";
  if (items.empty()) {
    return Value::Undefined(std::string("No ") + (max ? "largest" : "smallest") +
                            " item, sequence was empty.");
  }
  std::vector<Value> sorted =
      SortedItems(items, max, c.flag(0, "case_sensitive"), c.arg(1, "attribute"));
  return sorted.front();
}

Value Map(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  std::vector<Value> out;
  const Value* attr = nullptr;
  for (const auto& [k, v] : c.kwargs) {
    if (k == "attribute") attr = &v;
  }
  if (attr) {
    const Value* def = nullptr;
    for (const auto& [k, v] : c.kwargs) {
      if (k == "default") def = &v;
    }
    for (auto& v : items) {
      Value x = Attribute(v, Str(*attr));
      out.push_back(x.undefined() && def ? *def : x);
    }
    return Value::List(std::move(out));
  }
  if (c.args.empty() || !c.args[0].is_str()) Fail("map needs a filter name or attribute=");
  std::string filter = c.args[0].s;
  if (!IsFilter(filter)) Fail("no filter named '" + filter + "'");
  std::vector<Value> rest(c.args.begin() + 1, c.args.end());
  Kwargs kw;
  for (auto& v : items) {
    std::vector<Value> a = rest;
    out.push_back(c.interp.Filter(filter, v, a, kw));
  }
  return Value::List(std::move(out));
}

// select, reject, selectattr and rejectattr.
Value SelectOrReject(Value in, const FilterCall& c) {
  std::vector<Value> items = Iterate(in);
  const std::vector<Value>& args = c.args;
  bool by_attr = c.name == "selectattr" || c.name == "rejectattr";
  bool keep_if = c.name == "select" || c.name == "selectattr";
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    if (args.empty()) Fail(c.name + " needs an attribute name");
    attr = Str(args[next++]);
  }
  std::string test;
  if (next < args.size()) test = Str(args[next++]);
  if (!test.empty() && !IsTest(test)) Fail("no test named '" + test + "'");
  std::vector<Value> test_args(args.begin() + next, args.end());
  std::vector<Value> out;
  for (auto& v : items) {
    Value x = by_attr ? Attribute(v, attr) : v;
    bool r = test.empty() ? Truthy(x) : c.interp.ApplyTest(test, x, test_args);
    if (r == keep_if) out.push_back(v);
  }
  return Value::List(std::move(out));
}

constexpr NamedFn<FilterFn> kFilters[] = {
    {"abs", Abs},
    {"attr", Attr},
    {"batch", Batch},
    {"capitalize", CapitalizeFilter},
    {"center", Center},
    {"count", LengthFilter},
    {"d", Default},
    {"default", Default},
    {"dictsort", Dictsort},
    {"e", Escape},
    {"escape", Escape},
    {"first", FirstOrLast},
    {"float", Float},
    {"forceescape", Escape},
    {"format", Format},
    {"indent", Indent},
    {"int", Int},
    {"items", Items},
    {"join", Join},
    {"last", FirstOrLast},
    {"length", LengthFilter},
    {"list", ListFilter},
    {"lower", Lower},
    {"map", Map},
    {"max", MinOrMax},
    {"min", MinOrMax},
    {"reject", SelectOrReject},
    {"rejectattr", SelectOrReject},
    {"replace", ReplaceFilter},
    {"reverse", Reverse},
    {"round", Round},
    {"safe", Safe},
    {"select", SelectOrReject},
    {"selectattr", SelectOrReject},
    {"sort", Sort},
    {"string", String},
    {"sum", Sum},
    {"title", Title},
    {"tojson", Tojson},
    {"trim", Trim},
    {"unique", Unique},
    {"upper", Upper},
    {"wordcount", Wordcount},
};
static_assert(StrictlySorted(kFilters), "kFilters must be sorted by name, without repeats");

// Filters jinja2 3.1 has and this engine does not. Only their names matter:
// the parser lets a template name one, and using it is an error.
constexpr std::string_view kJinjaOnlyFilters[] = {
    "filesizeformat", "groupby",   "pprint", "random",   "slice",  "striptags",
    "truncate",       "urlencode", "urlize", "wordwrap", "xmlattr"};

// ------------------------------------------------------------ tests

struct TestCall {
  Interp& interp;
  const std::string& name;
  const std::vector<Value>& args;
};
using TestFn = bool (*)(const Value& v, const TestCall& c);

// The argument of a test that needs one (`x is divisibleby 3`).
const Value& Operand(const TestCall& c) {
  if (c.args.empty()) Fail("test '" + c.name + "' needs an argument");
  return c.args[0];
}

bool Defined(const Value& v, const TestCall&) { return !v.undefined(); }
bool Undefined(const Value& v, const TestCall&) { return v.undefined(); }
bool None(const Value& v, const TestCall&) { return v.none(); }
bool Boolean(const Value& v, const TestCall&) { return v.t == Value::T::kBool; }
bool True(const Value& v, const TestCall&) { return v.t == Value::T::kBool && v.b; }
bool False(const Value& v, const TestCall&) { return v.t == Value::T::kBool && !v.b; }
bool IsString(const Value& v, const TestCall&) { return v.is_str(); }
bool Number(const Value& v, const TestCall&) { return v.is_num(); }
bool Integer(const Value& v, const TestCall&) { return v.t == Value::T::kInt; }
bool IsFloat(const Value& v, const TestCall&) { return v.t == Value::T::kFloat; }
bool Mapping(const Value& v, const TestCall&) { return v.is_dict(); }
bool Iterable(const Value& v, const TestCall&) {
  return v.undefined() || v.is_str() || v.is_list() || v.is_dict();
}
bool Callable(const Value& v, const TestCall&) {
  return v.t == Value::T::kBuiltin || v.t == Value::T::kMacro;
}
// Nothing is markup-safe here: autoescape is off, as in transformers.
bool Escaped(const Value&, const TestCall&) { return false; }
bool FilterTest(const Value& v, const TestCall&) { return v.is_str() && IsJinjaFilter(v.s); }
bool TestTest(const Value& v, const TestCall&) { return v.is_str() && IsJinjaTest(v.s); }

// `lower` and `upper`: str(v).islower() / isupper().
bool CaseTest(const Value& v, const TestCall& c) {
  std::vector<Value> none;
  Kwargs kw;
  return Truthy(
      c.interp.CallMethod(Value::Str(Str(v)), c.name == "lower" ? "islower" : "isupper", none, kw));
}

bool OddOrEven(const Value& v, const TestCall& c) {
  if (!v.is_int()) Fail("test '" + c.name + "' needs an integer");
  bool odd = (v.as_int() % 2) != 0;
  return c.name == "odd" ? odd : !odd;
}

bool Divisibleby(const Value& v, const TestCall& c) {
  const Value& a = Operand(c);
  if (!v.is_int() || !a.is_int()) Fail("divisibleby needs integers");
  if (a.as_int() == 0) Fail("integer division or modulo by zero");
  return v.as_int() % a.as_int() == 0;
}

bool Eq(const Value& v, const TestCall& c) { return Equal(v, Operand(c)); }
bool Ne(const Value& v, const TestCall& c) { return !Equal(v, Operand(c)); }
bool In(const Value& v, const TestCall& c) { return Contains(Operand(c), v); }

bool Sameas(const Value& v, const TestCall& c) {
  const Value& a = Operand(c);
  if (v.t != a.t) return false;
  if (v.t == Value::T::kNone || v.t == Value::T::kUndefined) return true;
  if (v.t == Value::T::kBool) return v.b == a.b;
  if (v.is_list()) return v.list == a.list;
  if (v.has_items()) return v.dict == a.dict;
  return false;
}

// Ordering tests; a TypeError names the test as the operator.
int CompareOperand(const Value& v, const TestCall& c) {
  const Value& a = Operand(c);
  return Compare(v, a, c.name.c_str());
}
bool Lt(const Value& v, const TestCall& c) { return CompareOperand(v, c) < 0; }
bool Le(const Value& v, const TestCall& c) { return CompareOperand(v, c) <= 0; }
bool Gt(const Value& v, const TestCall& c) { return CompareOperand(v, c) > 0; }
bool Ge(const Value& v, const TestCall& c) { return CompareOperand(v, c) >= 0; }

constexpr NamedFn<TestFn> kTests[] = {
    {"!=", Ne},
    {"<", Lt},
    {"<=", Le},
    {"==", Eq},
    {">", Gt},
    {">=", Ge},
    {"boolean", Boolean},
    {"callable", Callable},
    {"defined", Defined},
    {"divisibleby", Divisibleby},
    {"eq", Eq},
    {"equalto", Eq},
    {"escaped", Escaped},
    {"even", OddOrEven},
    {"false", False},
    {"filter", FilterTest},
    {"float", IsFloat},
    {"ge", Ge},
    {"greaterthan", Gt},
    {"gt", Gt},
    {"in", In},
    {"integer", Integer},
    {"iterable", Iterable},
    {"le", Le},
    {"lessthan", Lt},
    {"lower", CaseTest},
    {"lt", Lt},
    {"mapping", Mapping},
    {"ne", Ne},
    {"none", None},
    {"number", Number},
    {"odd", OddOrEven},
    {"sameas", Sameas},
    {"sequence", Iterable},
    {"string", IsString},
    {"test", TestTest},
    {"true", True},
    {"undefined", Undefined},
    {"upper", CaseTest},
};
static_assert(StrictlySorted(kTests), "kTests must be sorted by name, without repeats");

}  // namespace

bool IsFilter(const std::string& name) { return FindFn(kFilters, name) != nullptr; }

bool IsJinjaFilter(const std::string& name) {
  return IsFilter(name) || std::find(std::begin(kJinjaOnlyFilters), std::end(kJinjaOnlyFilters),
                                     name) != std::end(kJinjaOnlyFilters);
}

bool IsTest(const std::string& name) { return FindFn(kTests, name) != nullptr; }

// This engine has every test jinja2 3.1 has.
bool IsJinjaTest(const std::string& name) { return IsTest(name); }

Value Interp::Filter(const std::string& name, Value in, std::vector<Value>& args, Kwargs& kwargs) {
  FilterFn fn = FindFn(kFilters, name);
  if (!fn) {
    // Reached only from the filter chains of {% filter %} and block
    // {% set %}, which run a name the parser let through (one jinja2 has, or
    // any name inside an if) without checking it first. Iterating first
    // keeps the error that a non-iterable input has always given there.
    Iterate(in);
    Fail("no filter named '" + name + "'");
  }
  return fn(std::move(in), FilterCall{*this, name, args, kwargs});
}

bool Interp::ApplyTest(const std::string& name, const Value& v, const std::vector<Value>& args) {
  TestFn fn = FindFn(kTests, name);
  if (!fn) Fail("no test named '" + name + "'");
  return fn(v, TestCall{*this, name, args});
}

}  // namespace torchchat::jinja
