// A Jinja2 interpreter for chat templates. Lexer, parser and tree-walking
// evaluator follow jinja2 3.1's semantics where chat templates can observe
// them: the lexer's whitespace rules (including trim_blocks/lstrip_blocks and
// the dropped final newline), Python's str()/repr() of values, jinja2's
// Undefined (renders empty, is falsy and iterable, but using it as an object
// is an error), getattr/getitem falling back to each other, per-iteration
// scopes in for loops, and Python string, list and dict methods.
//
// Supported statements: if/elif/else, for (tuple targets, `if` filter, else,
// loop.*), set (incl. tuple targets, ns.attr and block set), macro, break,
// continue, with, filter blocks, raw, generation. Not supported (parse
// error): include, import, extends, block, call blocks, recursive loops.
// Strings are UTF-8; length, indexing and slicing count code points like
// Python, but upper/lower/title/capitalize only map ASCII letters. Integers
// are 64-bit; overflow is an error instead of Python's big integers.
//
// Internally errors are C++ exceptions (TemplateError); they never leave
// this file: Parse and Render turn them into Results.
#include "runner/common/chat_template.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace torchchat {
namespace {

struct TemplateError {
  std::string message;
  int line = 0;  // 0: not known (a raise_exception message, say)
};

[[noreturn]] void Fail(std::string message, int line = 0) {
  throw TemplateError{std::move(message), line};
}

// ---------------------------------------------------------------- UTF-8

// Code points of `s`; an invalid byte b becomes 0x110000 + b so that it
// round-trips unchanged (like Python's surrogateescape).
std::vector<uint32_t> Decode(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3
              : (c >> 3) == 30 ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f)
                                                                  : (c & 0x07);
    for (int k = 1; ok && k < len; ++k) {
      unsigned char d = s[i + k];
      if ((d & 0xc0) != 0x80) ok = false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
               (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
               (cp >= 0xd800 && cp <= 0xdfff))) {
      ok = false;
    }
    if (!ok) {
      out.push_back(0x110000 + c);
      ++i;
    } else {
      out.push_back(cp);
      i += len;
    }
  }
  return out;
}

void AppendCp(uint32_t cp, std::string* out) {
  if (cp >= 0x110000) {
    out->push_back(static_cast<char>(cp - 0x110000));
  } else if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

std::string Encode(const std::vector<uint32_t>& cps, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) AppendCp(cps[i], &out);
  return out;
}

// Python's str.isspace().
bool IsSpace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 ||
         c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
         c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000;
}

// Python's str.splitlines() separators.
bool IsLineBreak(uint32_t c) {
  return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c ||
         c == 0x1d || c == 0x1e || c == 0x85 || c == 0x2028 || c == 0x2029;
}

std::string PyStrip(std::string_view s, bool left, bool right,
                    const std::string* chars = nullptr) {
  std::vector<uint32_t> cps = Decode(s);
  std::vector<uint32_t> set;
  if (chars) set = Decode(*chars);
  auto strip = [&](uint32_t c) {
    return chars ? std::find(set.begin(), set.end(), c) != set.end()
                 : IsSpace(c);
  };
  size_t b = 0, e = cps.size();
  if (left) while (b < e && strip(cps[b])) ++b;
  if (right) while (e > b && strip(cps[e - 1])) --e;
  return Encode(cps, b, e);
}

bool AllSpace(std::string_view s) {
  for (uint32_t c : Decode(s)) {
    if (!IsSpace(c)) return false;
  }
  return true;
}

// Simple case mapping for ASCII, Latin-1, Latin Extended-A, Greek and
// Cyrillic: what chat content and role names plausibly need. Other scripts
// (and special cases such as German sharp s becoming "SS") are left as is.
uint32_t UpperCp(uint32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if (c >= 0xe0 && c <= 0xfe && c != 0xf7) return c - 32;
  if (c == 0xff) return 0x178;
  if (c == 0xb5) return 0x39c;
  if (c >= 0x100 && c <= 0x17f) {
    if (c == 0x131) return 'I';
    if (c == 0x17f) return 'S';
    bool odd_lower = (c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177);
    bool even_lower = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e);
    if (odd_lower && (c & 1)) return c - 1;
    if (even_lower && !(c & 1)) return c - 1;
    return c;
  }
  if (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) return c - 32;
  if (c == 0x3c2) return 0x3a3;
  if (c >= 0x3ac && c <= 0x3af) {
    static const uint32_t kTonos[] = {0x386, 0x388, 0x389, 0x38a};
    return kTonos[c - 0x3ac];
  }
  if (c == 0x3cc) return 0x38c;
  if (c == 0x3cd || c == 0x3ce) return c - 0x3f;
  if (c >= 0x430 && c <= 0x44f) return c - 32;
  if (c >= 0x450 && c <= 0x45f) return c - 80;
  return c;
}

uint32_t LowerCp(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if (c >= 0xc0 && c <= 0xde && c != 0xd7) return c + 32;
  if (c == 0x178) return 0xff;
  if (c >= 0x100 && c <= 0x17f) {
    if (c == 0x130) return 'i';
    bool even_upper = (c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177);
    bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e);
    if (even_upper && !(c & 1)) return c + 1;
    if (odd_upper && (c & 1)) return c + 1;
    return c;
  }
  if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) return c + 32;
  if (c == 0x386) return 0x3ac;
  if (c >= 0x388 && c <= 0x38a) return c + 37;
  if (c == 0x38c) return 0x3cc;
  if (c == 0x38e || c == 0x38f) return c + 0x3f;
  if (c >= 0x410 && c <= 0x42f) return c + 32;
  if (c >= 0x400 && c <= 0x40f) return c + 80;
  return c;
}

bool IsCased(uint32_t c) { return UpperCp(c) != c || LowerCp(c) != c; }

char AsciiLower(char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// ---------------------------------------------------------------- values

struct Value;
struct Stmt;
struct Scope;
using ValueList = std::vector<Value>;

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
struct Macro;
struct Builtin;

struct Value {
  enum class T { kUndefined, kNone, kBool, kInt, kFloat, kString, kList,
                 kDict, kNamespace, kLoop, kBuiltin, kMacro };
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
  static Value None() { Value v; v.t = T::kNone; return v; }
  static Value Bool(bool x) { Value v; v.t = T::kBool; v.b = x; return v; }
  static Value Int(int64_t x) { Value v; v.t = T::kInt; v.i = x; return v; }
  static Value Float(double x) { Value v; v.t = T::kFloat; v.f = x; return v; }
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

  int depth() const {
    return list ? list->depth : dict ? dict->depth : 0;
  }
  bool undefined() const { return t == T::kUndefined; }
  bool none() const { return t == T::kNone; }
  bool is_str() const { return t == T::kString; }
  bool is_list() const { return t == T::kList; }
  bool is_dict() const { return t == T::kDict; }
  // bool is an int in Python (True + 1 == 2).
  bool is_int() const { return t == T::kInt || t == T::kBool; }
  bool is_num() const { return is_int() || t == T::kFloat; }
  int64_t as_int() const { return t == T::kBool ? (b ? 1 : 0) : i; }
  double as_float() const {
    return t == T::kFloat ? f : static_cast<double>(as_int());
  }
  bool has_items() const {
    return t == T::kDict || t == T::kNamespace || t == T::kLoop;
  }
};

struct Builtin {
  std::string name;
  std::function<Value(std::vector<Value>&,
                      std::vector<std::pair<std::string, Value>>&)> fn;
};

bool Truthy(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined:
    case Value::T::kNone: return false;
    case Value::T::kBool: return v.b;
    case Value::T::kInt: return v.i != 0;
    case Value::T::kFloat: return v.f != 0;
    case Value::T::kString: return !v.s.empty();
    case Value::T::kList: return !v.list->items.empty();
    case Value::T::kDict: return !v.dict->items.empty();
    default: return true;
  }
}

const char* TypeName(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined: return "Undefined";
    case Value::T::kNone: return "NoneType";
    case Value::T::kBool: return "bool";
    case Value::T::kInt: return "int";
    case Value::T::kFloat: return "float";
    case Value::T::kString: return "str";
    case Value::T::kList: return v.list->tuple ? "tuple" : "list";
    case Value::T::kDict: return "dict";
    case Value::T::kNamespace: return "Namespace";
    case Value::T::kLoop: return "LoopContext";
    case Value::T::kBuiltin: return "builtin_function_or_method";
    case Value::T::kMacro: return "Macro";
  }
  return "object";
}

[[noreturn]] void FailUndefined(const Value& v) {
  Fail(v.s.empty() ? std::string("value is undefined") : v.s);
}

// Python's float repr: the shortest digits that round-trip, in fixed
// notation for exponents in [-4, 16), else scientific.
std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  size_t e = s.find('e');
  int exp = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t k = 0; k < e; ++k) {
    if (s[k] != '.') digits.push_back(s[k]);
  }
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(-exp - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
      out += digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return out;
}

std::string StrRepr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (uint32_t c : Decode(s)) {
    if (c == static_cast<uint32_t>(q) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0) ||
               c >= 0x110000) {
      char b[16];
      std::snprintf(b, sizeof b, "\\x%02x", c >= 0x110000 ? c - 0x110000 : c);
      out += b;
    } else {
      AppendCp(c, &out);
    }
  }
  out.push_back(q);
  return out;
}

std::string Repr(const Value& v);

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
      Fail("template exceeded " + std::to_string(max_steps) +
           " steps (runaway loop?)");
    }
  }
};
thread_local StepBudget* g_budget = nullptr;

// Bounds recursion through values and charges it to the step budget.
struct NestGuard {
  static int& Depth() {
    static thread_local int depth = 0;
    return depth;
  }
  NestGuard() {
    if (g_budget) g_budget->Step();
    if (++Depth() > kMaxNesting + 8) {
      --Depth();
      Fail("value nested too deeply");
    }
  }
  ~NestGuard() { --Depth(); }
};

// Python's str(): what {{ value }} prints.
std::string Str(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined: return "";
    case Value::T::kNone: return "None";
    case Value::T::kBool: return v.b ? "True" : "False";
    case Value::T::kInt: return std::to_string(v.i);
    case Value::T::kFloat: return FloatRepr(v.f);
    case Value::T::kString: return v.s;
    default: return Repr(v);
  }
}

std::string Repr(const Value& v) {
  NestGuard guard;
  switch (v.t) {
    case Value::T::kString: return StrRepr(v.s);
    case Value::T::kList: {
      const auto& items = v.list->items;
      std::string out = v.list->tuple ? "(" : "[";
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += ", ";
        out += Repr(items[k]);
        if (g_budget) g_budget->CheckSize(out.size());
      }
      if (v.list->tuple && items.size() == 1) out += ",";
      out += v.list->tuple ? ")" : "]";
      return out;
    }
    case Value::T::kDict:
    case Value::T::kNamespace: {
      std::string out = v.t == Value::T::kNamespace ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, x] : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        out += Repr(k) + ": " + Repr(x);
        if (g_budget) g_budget->CheckSize(out.size());
      }
      return out + (v.t == Value::T::kNamespace ? "}>" : "}");
    }
    case Value::T::kLoop: return "<LoopContext>";
    case Value::T::kBuiltin: return "<built-in function " + v.builtin->name + ">";
    case Value::T::kMacro: return "<Macro>";
    default: return Str(v);
  }
}

bool Equal(const Value& a, const Value& b) {
  NestGuard guard;
  if (a.t == b.t && ((a.list && a.list == b.list) || (a.dict && a.dict == b.dict))) {
    return true;  // as Python's identity shortcut
  }
  if (a.is_num() && b.is_num()) {
    if (a.t == Value::T::kFloat || b.t == Value::T::kFloat) {
      return a.as_float() == b.as_float();
    }
    return a.as_int() == b.as_int();
  }
  if (a.t != b.t) return false;
  switch (a.t) {
    case Value::T::kUndefined:
    case Value::T::kNone: return true;
    case Value::T::kString: return a.s == b.s;
    case Value::T::kList: {
      if (a.list->tuple != b.list->tuple) return false;
      const auto& x = a.list->items;
      const auto& y = b.list->items;
      if (x.size() != y.size()) return false;
      for (size_t k = 0; k < x.size(); ++k) {
        if (!Equal(x[k], y[k])) return false;
      }
      return true;
    }
    case Value::T::kDict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, x] : a.dict->items) {
        bool found = false;
        for (const auto& [k2, y] : b.dict->items) {
          if (Equal(k, k2)) {
            found = Equal(x, y);
            break;
          }
        }
        if (!found) return false;
      }
      return true;
    }
    default: return a.dict == b.dict && a.builtin == b.builtin &&
                    a.macro == b.macro;
  }
}

// Python's <; -1, 0, 1. Mixed types are a TypeError, as in Python.
int Compare(const Value& a, const Value& b, const char* op) {
  NestGuard guard;
  if (a.undefined()) FailUndefined(a);
  if (b.undefined()) FailUndefined(b);
  if (a.is_num() && b.is_num()) {
    if (a.t == Value::T::kFloat || b.t == Value::T::kFloat) {
      double x = a.as_float(), y = b.as_float();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_str() && b.is_str()) {
    // UTF-8 byte order is code point order.
    int c = a.s.compare(b.s);
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list() && b.is_list() && a.list->tuple == b.list->tuple) {
    const auto& x = a.list->items;
    const auto& y = b.list->items;
    for (size_t k = 0; k < x.size() && k < y.size(); ++k) {
      if (!Equal(x[k], y[k])) return Compare(x[k], y[k], op);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  Fail(std::string("'") + op + "' not supported between instances of '" +
       TypeName(a) + "' and '" + TypeName(b) + "'");
}

const Value* DictFind(const DictData& d, const Value& key) {
  for (const auto& [k, v] : d.items) {
    if (Equal(k, key)) return &v;
  }
  return nullptr;
}

void DictSet(DictData* d, const Value& key, Value value) {
  d->depth = std::max(d->depth, 1 + value.depth());
  if (d->depth > kMaxNesting) Fail("value nested too deeply");
  for (auto& [k, v] : d->items) {
    if (Equal(k, key)) {
      v = std::move(value);
      return;
    }
  }
  d->items.emplace_back(key, std::move(value));
}

// Python's iter(): lists, dict keys, string characters; Undefined is empty.
std::vector<Value> Iterate(const Value& v) {
  std::vector<Value> out;
  switch (v.t) {
    case Value::T::kUndefined: return out;
    case Value::T::kList: return v.list->items;
    case Value::T::kDict:
      for (const auto& kv : v.dict->items) out.push_back(kv.first);
      return out;
    case Value::T::kString: {
      std::vector<uint32_t> cps = Decode(v.s);
      for (size_t k = 0; k < cps.size(); ++k) {
        out.push_back(Value::Str(Encode(cps, k, k + 1)));
      }
      return out;
    }
    default:
      Fail(std::string("'") + TypeName(v) + "' object is not iterable");
  }
}

int64_t Length(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined: return 0;
    case Value::T::kString: return static_cast<int64_t>(Decode(v.s).size());
    case Value::T::kList: return static_cast<int64_t>(v.list->items.size());
    case Value::T::kDict: return static_cast<int64_t>(v.dict->items.size());
    default:
      Fail(std::string("object of type '") + TypeName(v) + "' has no len()");
  }
}

// ---------------------------------------------------------------- JSON

// json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...)
// as transformers' tojson filter calls it.
struct JsonStyle {
  bool indent_set = false;
  std::string indent;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

void JsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  for (uint32_t c : Decode(s)) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default: {
        char b[16];
        if (c < 0x20 || (ensure_ascii && c >= 0x7f && c < 0x110000)) {
          if (c >= 0x10000) {
            uint32_t v = c - 0x10000;
            std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xd800 + (v >> 10),
                          0xdc00 + (v & 0x3ff));
          } else {
            std::snprintf(b, sizeof b, "\\u%04x", c);
          }
          *out += b;
        } else {
          AppendCp(c, out);
        }
      }
    }
  }
  out->push_back('"');
}

void JsonDump(const Value& v, const JsonStyle& st, int depth, std::string* out) {
  NestGuard guard;
  if (depth > 200) Fail("tojson: value nested too deeply");
  auto newline = [&](int d) {
    if (!st.indent_set) return;
    out->push_back('\n');
    for (int k = 0; k < d; ++k) *out += st.indent;
  };
  switch (v.t) {
    case Value::T::kNone: *out += "null"; return;
    case Value::T::kBool: *out += v.b ? "true" : "false"; return;
    case Value::T::kInt: *out += std::to_string(v.i); return;
    case Value::T::kFloat:
      if (std::isnan(v.f)) *out += "NaN";
      else if (std::isinf(v.f)) *out += v.f > 0 ? "Infinity" : "-Infinity";
      else *out += FloatRepr(v.f);
      return;
    case Value::T::kString: JsonString(v.s, st.ensure_ascii, out); return;
    case Value::T::kList: {
      const auto& items = v.list->items;
      if (items.empty()) { *out += "[]"; return; }
      out->push_back('[');
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) *out += st.item_sep;
        newline(depth + 1);
        JsonDump(items[k], st, depth + 1, out);
        if (g_budget) g_budget->CheckSize(out->size());
      }
      newline(depth);
      out->push_back(']');
      return;
    }
    case Value::T::kDict: {
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (items.empty()) { *out += "{}"; return; }
      auto key_str = [](const Value& k) -> std::string {
        switch (k.t) {
          case Value::T::kString: return k.s;
          case Value::T::kNone: return "null";
          case Value::T::kBool: return k.b ? "true" : "false";
          case Value::T::kInt: return std::to_string(k.i);
          case Value::T::kFloat: return FloatRepr(k.f);
          default:
            Fail(std::string("tojson: keys must be str, int, float, bool or "
                             "None, not ") + TypeName(k));
        }
      };
      if (st.sort_keys) {
        std::stable_sort(items.begin(), items.end(), [](auto* x, auto* y) {
          return Compare(x->first, y->first, "<") < 0;
        });
      }
      out->push_back('{');
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) *out += st.item_sep;
        newline(depth + 1);
        JsonString(key_str(items[k]->first), st.ensure_ascii, out);
        *out += st.key_sep;
        JsonDump(items[k]->second, st, depth + 1, out);
      }
      newline(depth);
      out->push_back('}');
      return;
    }
    default:
      Fail(std::string("Object of type ") + TypeName(v) +
           " is not JSON serializable");
  }
}

// A JSON reader for RenderJson's variables: numbers without a fraction or
// exponent become ints, as in Python's json module.
class JsonReader {
 public:
  explicit JsonReader(std::string_view text) : t_(text) {}

  Value Document() {
    Value v = Parse(0);
    Ws();
    if (p_ != t_.size()) Error("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void Error(const std::string& msg) const {
    Fail("variables JSON: " + msg + " at byte " + std::to_string(p_));
  }
  void Ws() {
    while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' ||
                              t_[p_] == '\n' || t_[p_] == '\r')) {
      ++p_;
    }
  }
  bool Eat(char c) {
    Ws();
    if (p_ < t_.size() && t_[p_] == c) {
      ++p_;
      return true;
    }
    return false;
  }
  bool Word(const char* w) {
    size_t n = std::strlen(w);
    if (t_.compare(p_, n, w) != 0) return false;
    p_ += n;
    return true;
  }
  uint32_t Hex4() {
    if (p_ + 4 > t_.size()) Error("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char h = t_[p_++];
      if (!std::isxdigit(static_cast<unsigned char>(h))) Error("bad \\u escape");
      v = v * 16 + (IsDigit(h) ? h - '0' : (AsciiLower(h) - 'a' + 10));
    }
    return v;
  }
  std::string String() {
    if (!Eat('"')) Error("expected a string");
    std::string out;
    while (true) {
      if (p_ >= t_.size()) Error("unterminated string");
      char c = t_[p_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) Error("control character in string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (p_ >= t_.size()) Error("unterminated string");
      char e = t_[p_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = Hex4();
          if (cp >= 0xd800 && cp < 0xdc00 && t_.compare(p_, 2, "\\u") == 0) {
            size_t save = p_;
            p_ += 2;
            uint32_t lo = Hex4();
            if (lo >= 0xdc00 && lo < 0xe000) {
              cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else {
              p_ = save;
            }
          }
          // A lone surrogate cannot be UTF-8; it becomes U+FFFD.
          if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
          AppendCp(cp, &out);
          break;
        }
        default: Error("bad escape");
      }
    }
  }
  Value Parse(int depth) {
    if (depth > 200) Error("nested too deeply");
    Ws();
    if (p_ >= t_.size()) Error("unexpected end");
    char c = t_[p_];
    if (c == '"') return Value::Str(String());
    if (c == '{') {
      ++p_;
      Value d = Value::Dict();
      if (Eat('}')) return d;
      do {
        Ws();
        std::string k = String();
        if (!Eat(':')) Error("expected ':'");
        DictSet(d.dict.get(), Value::Str(std::move(k)), Parse(depth + 1));
      } while (Eat(','));
      if (!Eat('}')) Error("expected ',' or '}'");
      return d;
    }
    if (c == '[') {
      ++p_;
      Value l = Value::List();
      if (Eat(']')) return l;
      do {
        l.list->items.push_back(Parse(depth + 1));
      } while (Eat(','));
      if (!Eat(']')) Error("expected ',' or ']'");
      return l;
    }
    if (Word("true")) return Value::Bool(true);
    if (Word("false")) return Value::Bool(false);
    if (Word("null")) return Value::None();
    size_t b = p_;
    if (p_ < t_.size() && t_[p_] == '-') ++p_;
    bool is_float = false;
    while (p_ < t_.size() && (IsDigit(t_[p_]) || t_[p_] == '.' || t_[p_] == 'e' ||
                              t_[p_] == 'E' || t_[p_] == '+' || t_[p_] == '-')) {
      is_float |= !IsDigit(t_[p_]);
      ++p_;
    }
    std::string num(t_.substr(b, p_ - b));
    if (num.empty() || num == "-") Error("unexpected character");
    char* end = nullptr;
    errno = 0;
    if (!is_float) {
      long long v = std::strtoll(num.c_str(), &end, 10);
      if (*end == 0 && errno == 0) return Value::Int(v);
    }
    double d = std::strtod(num.c_str(), &end);
    if (*end != 0) Error("bad number");
    return Value::Float(d);
  }

  std::string_view t_;
  size_t p_ = 0;
};

// ---------------------------------------------------------------- lexer

enum class Tok { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName,
                 kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string value;
  size_t pos;  // byte offset in the normalised source
  int64_t int_value = 0;
  double float_value = 0;
};

class Lexer {
 public:
  Lexer(const std::string& source, const ChatTemplateOptions& opt) : opt_(opt) {
    // jinja2: every newline becomes \n and one trailing newline is dropped
    // (keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t k = 0; k < source.size(); ++k) {
      if (source[k] == '\r') {
        src_.push_back('\n');
        if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
      } else {
        src_.push_back(source[k]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    for (size_t k = 0; k < src_.size(); ++k) {
      if (src_[k] == '\n') line_starts_.push_back(k + 1);
    }
  }

  const std::string& source() const { return src_; }

  void LineCol(size_t pos, int* line, int* col) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    *line = static_cast<int>(it - line_starts_.begin());
    *col = static_cast<int>(pos - *(it - 1)) + 1;
  }

  [[noreturn]] void Error(size_t pos, const std::string& msg) const {
    int line, col;
    LineCol(pos, &line, &col);
    Fail("line " + std::to_string(line) + ", column " + std::to_string(col) +
         ": " + msg);
  }

  std::vector<Token> Run() {
    size_t pos = 0;
    bool line_starting = true;
    const size_t n = src_.size();
    while (pos < n) {
      size_t p = pos;
      char kind = 0;
      for (; p + 1 < n; ++p) {
        if (src_[p] == '{' &&
            (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) {
          kind = src_[p + 1];
          break;
        }
      }
      if (!kind) {
        Emit(Tok::kText, src_.substr(pos), pos);
        break;
      }
      size_t q = p + 2;
      char sign = q < n && (src_[q] == '-' || src_[q] == '+') ? src_[q] : 0;
      if (sign) ++q;
      EmitLeadingText(src_.substr(pos, p - pos), pos, sign, kind != '{',
                      line_starting);
      if (kind == '#') {
        pos = Comment(q, p, &line_starting);
      } else if (kind == '%' && RawBegin(q, &pos)) {
        pos = Raw(pos, &line_starting);
      } else {
        Emit(kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "", p);
        pos = Tag(q, kind == '%', &line_starting);
      }
    }
    Emit(Tok::kEof, "", n);
    return std::move(tokens_);
  }

 private:
  void Emit(Tok t, std::string v, size_t pos) {
    if (t == Tok::kText && v.empty()) return;
    tokens_.push_back(Token{t, std::move(v), pos});
  }

  // The text before a tag, with the tag's whitespace control applied.
  void EmitLeadingText(std::string text, size_t pos, char sign,
                       bool lstrip_kind, bool line_starting) {
    if (sign == '-') {
      text = PyStrip(text, false, true);
    } else if (sign != '+' && opt_.lstrip_blocks && lstrip_kind) {
      size_t l = text.rfind('\n');
      l = l == std::string::npos ? 0 : l + 1;
      if ((l > 0 || line_starting) && l < text.size() &&
          AllSpace(std::string_view(text).substr(l))) {
        text.resize(l);
      }
    }
    Emit(Tok::kText, std::move(text), pos);
  }

  bool IsWs(char c) const {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
  }
  size_t SkipWs(size_t k) const {
    while (k < src_.size() && IsWs(src_[k])) ++k;
    return k;
  }

  size_t Comment(size_t q, size_t start, bool* line_starting) {
    const size_t n = src_.size();
    for (size_t k = q; k + 1 < n; ++k) {
      if (k + 2 < n && (src_[k] == '+' || src_[k] == '-') &&
          src_[k + 1] == '#' && src_[k + 2] == '}') {
        size_t end = k + 3;
        if (src_[k] == '-') end = SkipWs(end);
        *line_starting = src_[end - 1] == '\n';
        return end;
      }
      if (src_[k] == '#' && src_[k + 1] == '}') {
        size_t end = k + 2;
        if (opt_.trim_blocks && end < n && src_[end] == '\n') ++end;
        *line_starting = src_[end - 1] == '\n';
        return end;
      }
    }
    Error(start, "missing end of comment tag");
  }

  bool MatchWord(size_t* k, const char* word) const {
    size_t len = std::strlen(word);
    if (src_.compare(*k, len, word) != 0) return false;
    *k += len;
    return true;
  }

  // {% raw %}: the raw begin tag takes no trim_blocks newline, as in jinja2.
  bool RawBegin(size_t q, size_t* after) {
    size_t k = SkipWs(q);
    if (!MatchWord(&k, "raw")) return false;
    k = SkipWs(k);
    if (src_.compare(k, 3, "-%}") == 0) {
      *after = SkipWs(k + 3);
      return true;
    }
    if (src_.compare(k, 2, "%}") == 0) {
      *after = k + 2;
      return true;
    }
    return false;
  }

  size_t Raw(size_t begin, bool* line_starting) {
    const size_t n = src_.size();
    bool starting = begin > 0 && src_[begin - 1] == '\n';
    for (size_t p = begin; p + 1 < n; ++p) {
      if (src_[p] != '{' || src_[p + 1] != '%') continue;
      size_t k = p + 2;
      char sign = k < n && (src_[k] == '-' || src_[k] == '+') ? src_[k] : 0;
      if (sign) ++k;
      k = SkipWs(k);
      if (!MatchWord(&k, "endraw")) continue;
      k = SkipWs(k);
      size_t end;
      if (src_.compare(k, 3, "+%}") == 0) {
        end = k + 3;
      } else if (src_.compare(k, 3, "-%}") == 0) {
        end = SkipWs(k + 3);
      } else if (src_.compare(k, 2, "%}") == 0) {
        end = k + 2;
        if (opt_.trim_blocks && end < n && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      EmitLeadingText(src_.substr(begin, p - begin), begin, sign, true,
                      starting);
      *line_starting = src_[end - 1] == '\n';
      return end;
    }
    Error(begin, "missing end of raw directive");
  }

  size_t Tag(size_t k, bool block, bool* line_starting) {
    const size_t n = src_.size();
    std::vector<char> balance;
    size_t start = k;
    while (true) {
      if (k >= n) {
        Error(start, block ? "unexpected end of template, expected '%}'"
                           : "unexpected end of template, expected '}}'");
      }
      if (balance.empty()) {
        size_t end = 0;
        if (block) {
          if (src_.compare(k, 3, "+%}") == 0) {
            end = k + 3;
          } else if (src_.compare(k, 3, "-%}") == 0) {
            end = SkipWs(k + 3);
          } else if (src_.compare(k, 2, "%}") == 0) {
            end = k + 2;
            if (opt_.trim_blocks && end < n && src_[end] == '\n') ++end;
          }
        } else {
          if (src_.compare(k, 3, "-}}") == 0) {
            end = SkipWs(k + 3);
          } else if (src_.compare(k, 2, "}}") == 0) {
            end = k + 2;
          }
        }
        if (end) {
          Emit(block ? Tok::kBlockEnd : Tok::kVarEnd, "", k);
          *line_starting = src_[end - 1] == '\n';
          return end;
        }
      }
      char c = src_[k];
      if (IsWs(c)) {
        ++k;
        continue;
      }
      if (IsDigit(c)) {
        k = Number(k);
        continue;
      }
      if (IsAlpha(c) || c == '_') {
        size_t e = k;
        while (e < n && (IsAlpha(src_[e]) || IsDigit(src_[e]) || src_[e] == '_')) {
          ++e;
        }
        Emit(Tok::kName, src_.substr(k, e - k), k);
        k = e;
        continue;
      }
      if (c == '\'' || c == '"') {
        k = String(k);
        continue;
      }
      static const char* kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+",
                                   "-",  "/",  "*",  "%",  "~",  "[",  "]",
                                   "(",  ")",  "{",  "}",  ">",  "<",  "=",
                                   ".",  ":",  "|",  ",",  ";"};
      const char* op = nullptr;
      for (const char* o : kOps) {
        if (src_.compare(k, std::strlen(o), o) == 0) {
          op = o;
          break;
        }
      }
      if (!op) {
        char shown[16];
        if (c > 0x20 && c < 0x7f) {
          std::snprintf(shown, sizeof shown, "'%c'", c);
        } else {
          std::snprintf(shown, sizeof shown, "0x%02x",
                        static_cast<unsigned char>(c));
        }
        Error(k, std::string("unexpected char ") + shown);
      }
      std::string o = op;
      if (o == "(" || o == "[" || o == "{") {
        balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
      } else if (o == ")" || o == "]" || o == "}") {
        if (balance.empty()) Error(k, "unexpected '" + o + "'");
        if (balance.back() != o[0]) {
          Error(k, "unexpected '" + o + "', expected '" +
                       std::string(1, balance.back()) + "'");
        }
        balance.pop_back();
      }
      Emit(Tok::kOp, o, k);
      k += o.size();
    }
  }

  size_t Digits(size_t k) const {
    // Digit runs with single underscores between digits, as Python allows.
    while (k < src_.size() &&
           (IsDigit(src_[k]) ||
            (src_[k] == '_' && k + 1 < src_.size() && IsDigit(src_[k + 1])))) {
      ++k;
    }
    return k;
  }

  size_t Number(size_t k) {
    const size_t n = src_.size();
    size_t start = k;
    if (src_[k] == '0' && k + 1 < n &&
        std::strchr("xXoObB", src_[k + 1]) != nullptr) {
      int base = std::strchr("xX", src_[k + 1]) ? 16
                 : std::strchr("oO", src_[k + 1]) ? 8 : 2;
      size_t e = k + 2;
      std::string digits;
      while (e < n && (std::isxdigit(static_cast<unsigned char>(src_[e])) ||
                       src_[e] == '_')) {
        if (src_[e] != '_') digits.push_back(src_[e]);
        ++e;
      }
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(digits.c_str(), &end, base);
      if (digits.empty() || *end || errno) Error(k, "invalid integer literal");
      Token t{Tok::kInt, src_.substr(k, e - k), k};
      t.int_value = v;
      tokens_.push_back(t);
      return e;
    }
    size_t e = Digits(k);
    bool is_float = false;
    if (e + 1 < n && src_[e] == '.' && IsDigit(src_[e + 1])) {
      e = Digits(e + 1);
      is_float = true;
    }
    if (e < n && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1;
      if (x < n && (src_[x] == '+' || src_[x] == '-')) ++x;
      if (x < n && IsDigit(src_[x])) {
        e = Digits(x);
        is_float = true;
      }
    }
    std::string text;
    for (size_t j = start; j < e; ++j) {
      if (src_[j] != '_') text.push_back(src_[j]);
    }
    Token t{is_float ? Tok::kFloat : Tok::kInt, src_.substr(k, e - k), k};
    if (is_float) {
      t.float_value = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      t.int_value = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) Error(k, "integer literal too large");
    }
    tokens_.push_back(t);
    return e;
  }

  // Python string escapes (jinja2 decodes literals with unicode-escape);
  // unknown escapes keep their backslash.
  size_t String(size_t k) {
    const size_t n = src_.size();
    char q = src_[k];
    std::string out;
    size_t e = k + 1;
    while (true) {
      if (e >= n) Error(k, "unterminated string literal");
      char c = src_[e];
      if (c == q) break;
      if (c != '\\') {
        out.push_back(c);
        ++e;
        continue;
      }
      if (e + 1 >= n) Error(k, "unterminated string literal");
      char x = src_[e + 1];
      e += 2;
      auto hex = [&](int len) {
        if (e + len > n) Error(k, "truncated \\x/\\u escape");
        uint32_t v = 0;
        for (int j = 0; j < len; ++j) {
          char h = src_[e + j];
          if (!std::isxdigit(static_cast<unsigned char>(h))) {
            Error(k, "truncated \\x/\\u escape");
          }
          v = v * 16 + (IsDigit(h) ? h - '0' : (AsciiLower(h) - 'a' + 10));
        }
        e += len;
        if (v > 0x10ffff) Error(k, "illegal Unicode character");
        AppendCp(v, &out);
      };
      switch (x) {
        case '\n': break;  // line continuation
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          if (x >= '0' && x <= '7') {
            uint32_t v = x - '0';
            for (int j = 0; j < 2 && e < n && src_[e] >= '0' && src_[e] <= '7';
                 ++j) {
              v = v * 8 + (src_[e++] - '0');
            }
            AppendCp(v, &out);
          } else {
            out.push_back('\\');
            out.push_back(x);
          }
      }
    }
    Emit(Tok::kString, "", k);
    tokens_.back().value = std::move(out);
    return e + 1;
  }

  const ChatTemplateOptions& opt_;
  std::string src_;
  std::vector<size_t> line_starts_{0};
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------- AST

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class K { kLiteral, kName, kList, kTuple, kDict, kGetAttr, kGetItem,
                 kSlice, kCall, kFilter, kTest, kNeg, kPos, kNot, kBinary,
                 kAnd, kOr, kCompare, kCond };
  K kind;
  int line = 0;
  Value literal;
  std::string name;  // variable, attribute, filter, test or operator
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
  enum class K { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak,
                 kContinue, kWith, kFilterBlock, kBody };
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

struct Macro {
  const Stmt* def;
  std::shared_ptr<Scope> closure;
};

// ---------------------------------------------------------------- parser

bool KnownFilter(const std::string& name);
bool KnownTest(const std::string& name);
bool JinjaFilter(const std::string& name);
bool JinjaTest(const std::string& name);

class Parser {
 public:
  Parser(std::vector<Token> tokens, const Lexer& lexer)
      : toks_(std::move(tokens)), lexer_(lexer) {}

  Body ParseTemplate() {
    std::string end;
    Body body = ParseBody({}, &end);
    if (!hard_unknowns_.empty()) {
      lexer_.Error(hard_unknowns_[0].first, hard_unknowns_[0].second);
    }
    return body;
  }

 private:
  static constexpr int kMaxDepth = 200;

  const Token& Cur() const { return toks_[pos_]; }
  const Token& Peek(size_t ahead = 1) const {
    return toks_[std::min(pos_ + ahead, toks_.size() - 1)];
  }
  void Next() { if (pos_ + 1 < toks_.size()) ++pos_; }
  int Line() const {
    int line, col;
    lexer_.LineCol(Cur().pos, &line, &col);
    return line;
  }
  [[noreturn]] void Error(const std::string& msg) const {
    lexer_.Error(Cur().pos, msg);
  }
  std::string Describe(const Token& t) const {
    switch (t.type) {
      case Tok::kEof: return "end of template";
      case Tok::kBlockEnd: return "end of statement block";
      case Tok::kVarEnd: return "end of print statement";
      case Tok::kName: return "'" + t.value + "'";
      case Tok::kOp: return "'" + t.value + "'";
      case Tok::kString: return "string";
      default: return "token";
    }
  }
  bool IsOp(const char* op) const {
    return Cur().type == Tok::kOp && Cur().value == op;
  }
  bool IsName(const char* name) const {
    return Cur().type == Tok::kName && Cur().value == name;
  }
  void ExpectOp(const char* op) {
    if (!IsOp(op)) {
      Error(std::string("expected '") + op + "', got " + Describe(Cur()));
    }
    Next();
  }
  std::string ExpectName() {
    if (Cur().type != Tok::kName) {
      Error("expected a name, got " + Describe(Cur()));
    }
    std::string n = Cur().value;
    Next();
    return n;
  }
  void ExpectBlockEnd() {
    if (Cur().type != Tok::kBlockEnd) {
      Error("expected end of statement block, got " + Describe(Cur()));
    }
    Next();
  }

  struct DepthGuard {
    explicit DepthGuard(Parser* p) : p(p) {
      if (++p->depth_ > kMaxDepth) p->Error("template nested too deeply");
    }
    ~DepthGuard() { --p->depth_; }
    Parser* p;
  };

  // Statements until a block tag named in `ends` (left unconsumed after its
  // name: *end gets the name) or, when `ends` is empty, the end of input.
  Body ParseBody(const std::vector<std::string>& ends, std::string* end) {
    DepthGuard guard(this);
    Body body;
    while (true) {
      const Token& t = Cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty()) {
          std::string want;
          for (const auto& e : ends) want += (want.empty() ? "'" : " or '") + e + "'";
          Error("unexpected end of template, expected " + want);
        }
        *end = "";
        return body;
      }
      if (t.type == Tok::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::K::kText;
        s->text = t.value;
        body.push_back(std::move(s));
        Next();
      } else if (t.type == Tok::kVarBegin) {
        Next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::K::kOutput;
        s->line = Line();
        s->expr = ParseTuple(true);
        if (Cur().type != Tok::kVarEnd) {
          Error("expected end of print statement, got " + Describe(Cur()));
        }
        Next();
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        Next();
        if (Cur().type != Tok::kName) Error("expected a statement name");
        std::string name = Cur().value;
        if (std::find(ends.begin(), ends.end(), name) != ends.end()) {
          Next();
          *end = name;
          return body;
        }
        body.push_back(ParseStatement());
      } else {
        Error("unexpected " + Describe(t));
      }
    }
  }

  std::unique_ptr<Stmt> ParseStatement() {
    auto s = std::make_unique<Stmt>();
    s->line = Line();
    std::string name = Cur().value;
    Next();
    std::string end;
    if (name == "if") {
      SoftScope soft(this, true);
      s->kind = Stmt::K::kIf;
      s->expr = ParseTuple(false);
      ExpectBlockEnd();
      s->body = ParseBody({"elif", "else", "endif"}, &end);
      Stmt* cur = s.get();
      while (end == "elif") {
        auto e = std::make_unique<Stmt>();
        e->kind = Stmt::K::kIf;
        e->line = Line();
        e->expr = ParseTuple(false);
        ExpectBlockEnd();
        e->body = ParseBody({"elif", "else", "endif"}, &end);
        Stmt* next = e.get();
        cur->else_body.push_back(std::move(e));
        cur = next;
      }
      if (end == "else") {
        ExpectBlockEnd();
        cur->else_body = ParseBody({"endif"}, &end);
      }
      ExpectBlockEnd();
    } else if (name == "for") {
      s->kind = Stmt::K::kFor;
      s->targets = ParseTargets();
      if (!IsName("in")) Error("expected 'in', got " + Describe(Cur()));
      Next();
      s->expr = ParseTuple(false, /*no_cond=*/true);
      SoftScope loop_frame(this, false);
      if (IsName("if")) {
        Next();
        s->cond = ParseExpression();
      }
      if (IsName("recursive")) Error("recursive for loops are not supported");
      ExpectBlockEnd();
      ++loop_depth_;
      s->body = ParseBody({"endfor", "else"}, &end);
      --loop_depth_;
      if (end == "else") {
        ExpectBlockEnd();
        SoftScope outer_frame(this, loop_frame.outer);
        s->else_body = ParseBody({"endfor"}, &end);
      }
      ExpectBlockEnd();
    } else if (name == "set") {
      std::string first = ExpectName();
      if (IsOp(".")) {
        Next();
        s->kind = Stmt::K::kSet;
        s->targets = {first};
        s->attr = ExpectName();
        ExpectOp("=");
        s->expr = ParseTuple(false);
        ExpectBlockEnd();
      } else {
        s->targets = {first};
        while (IsOp(",")) {
          Next();
          if (Cur().type != Tok::kName) break;
          s->targets.push_back(ExpectName());
        }
        if (IsOp("=")) {
          Next();
          s->kind = Stmt::K::kSet;
          s->expr = ParseTuple(false);
          ExpectBlockEnd();
        } else {
          if (s->targets.size() != 1) Error("expected '='");
          SoftScope frame(this, false);
          s->kind = Stmt::K::kSetBlock;
          if (IsOp("|")) s->filter = ParseFilterChain();
          ExpectBlockEnd();
          s->body = ParseBody({"endset"}, &end);
          ExpectBlockEnd();
        }
      }
    } else if (name == "macro") {
      SoftScope frame(this, false);
      s->kind = Stmt::K::kMacro;
      s->text = ExpectName();
      ExpectOp("(");
      while (!IsOp(")")) {
        std::string p = ExpectName();
        ExprPtr def;
        if (IsOp("=")) {
          Next();
          def = ParseExpression();
        }
        s->params.emplace_back(p, std::move(def));
        if (!IsOp(",")) break;
        Next();
      }
      ExpectOp(")");
      ExpectBlockEnd();
      int outer_loops = loop_depth_;
      loop_depth_ = 0;
      s->body = ParseBody({"endmacro"}, &end);
      loop_depth_ = outer_loops;
      if (Cur().type == Tok::kName && Cur().value == s->text) Next();
      ExpectBlockEnd();
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) Error("'" + name + "' outside of a loop");
      s->kind = name == "break" ? Stmt::K::kBreak : Stmt::K::kContinue;
      ExpectBlockEnd();
    } else if (name == "with") {
      SoftScope frame(this, false);
      s->kind = Stmt::K::kWith;
      while (Cur().type == Tok::kName) {
        std::string p = ExpectName();
        ExpectOp("=");
        s->params.emplace_back(p, ParseExpression());
        if (!IsOp(",")) break;
        Next();
      }
      ExpectBlockEnd();
      s->body = ParseBody({"endwith"}, &end);
      ExpectBlockEnd();
    } else if (name == "filter") {
      SoftScope frame(this, false);
      s->kind = Stmt::K::kFilterBlock;
      pos_--;  // ParseFilterChain starts at a '|'; a filter block has none
      s->filter = ParseFilterChain(/*first_without_pipe=*/true);
      ExpectBlockEnd();
      s->body = ParseBody({"endfilter"}, &end);
      ExpectBlockEnd();
    } else if (name == "generation") {
      // transformers' AssistantTracker: only marks spans, renders the body.
      s->kind = Stmt::K::kBody;
      ExpectBlockEnd();
      s->body = ParseBody({"endgeneration"}, &end);
      ExpectBlockEnd();
    } else {
      pos_--;
      Error("unknown or unsupported statement '" + name + "'");
    }
    return s;
  }

  std::vector<std::string> ParseTargets() {
    std::vector<std::string> names;
    bool paren = IsOp("(");
    if (paren) Next();
    names.push_back(ExpectName());
    while (IsOp(",")) {
      Next();
      if (Cur().type != Tok::kName) break;
      names.push_back(ExpectName());
    }
    if (paren) ExpectOp(")");
    if (names.size() == 1 && names[0] == "loop") Error("cannot assign to 'loop'");
    return names;
  }

  ExprPtr Make(Expr::K k) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = Line();
    return e;
  }

  // A filter chain applied to a placeholder (kLiteral undefined), for
  // {% filter %} and {% set x | f %} blocks.
  ExprPtr ParseFilterChain(bool first_without_pipe = false) {
    ExprPtr node = Make(Expr::K::kLiteral);
    bool first = true;
    while (IsOp("|") || (first && first_without_pipe)) {
      if (IsOp("|")) Next();
      if (first && first_without_pipe) Next();  // the word 'filter'
      first = false;
      node = ParseFilter(std::move(node));
    }
    return node;
  }

  // Comma-separated expressions; two or more make a tuple.
  ExprPtr ParseTuple(bool allow_empty_end, bool no_cond = false) {
    (void)allow_empty_end;
    ExprPtr first = no_cond ? ParseOr() : ParseExpression();
    if (!IsOp(",")) return first;
    ExprPtr t = Make(Expr::K::kTuple);
    t->args.push_back(std::move(first));
    while (IsOp(",")) {
      Next();
      if (Cur().type == Tok::kBlockEnd || Cur().type == Tok::kVarEnd ||
          IsName("if")) {
        break;
      }
      t->args.push_back(no_cond ? ParseOr() : ParseExpression());
    }
    return t;
  }

  ExprPtr ParseExpression() {
    DepthGuard guard(this);
    size_t mark = hard_unknowns_.size();
    ExprPtr e = ParseOr();
    while (IsName("if")) {
      // jinja2 compiles a conditional expression in a soft frame, so unknown
      // names anywhere in it only fail when evaluated.
      hard_unknowns_.resize(std::min(mark, hard_unknowns_.size()));
      SoftScope soft(this, true);
      Next();
      ExprPtr c = Make(Expr::K::kCond);
      c->args.push_back(ParseOr());  // condition
      c->args.push_back(std::move(e));
      if (IsName("else")) {
        Next();
        c->args.push_back(ParseExpression());
      }
      e = std::move(c);
    }
    return e;
  }

  ExprPtr ParseOr() {
    ExprPtr l = ParseAnd();
    while (IsName("or")) {
      Next();
      ExprPtr n = Make(Expr::K::kOr);
      n->args.push_back(std::move(l));
      n->args.push_back(ParseAnd());
      l = std::move(n);
    }
    return l;
  }

  ExprPtr ParseAnd() {
    ExprPtr l = ParseNot();
    while (IsName("and")) {
      Next();
      ExprPtr n = Make(Expr::K::kAnd);
      n->args.push_back(std::move(l));
      n->args.push_back(ParseNot());
      l = std::move(n);
    }
    return l;
  }

  ExprPtr ParseNot() {
    DepthGuard guard(this);
    if (IsName("not")) {
      Next();
      ExprPtr n = Make(Expr::K::kNot);
      n->args.push_back(ParseNot());
      return n;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    ExprPtr first = ParseMath1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Cur().type == Tok::kOp &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" ||
           Cur().value == ">" || Cur().value == "<=" || Cur().value == ">=")) {
        op = Cur().value;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && Peek().type == Tok::kName &&
                 Peek().value == "in") {
        op = "not in";
        Next();
        Next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = Make(Expr::K::kCompare);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(ParseMath1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr Binary(const std::string& op, ExprPtr l, ExprPtr r) {
    ExprPtr n = Make(Expr::K::kBinary);
    n->name = op;
    n->args.push_back(std::move(l));
    n->args.push_back(std::move(r));
    return n;
  }

  ExprPtr ParseMath1() {
    ExprPtr l = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      std::string op = Cur().value;
      Next();
      l = Binary(op, std::move(l), ParseConcat());
    }
    return l;
  }

  ExprPtr ParseConcat() {
    ExprPtr l = ParseMath2();
    while (IsOp("~")) {
      Next();
      l = Binary("~", std::move(l), ParseMath2());
    }
    return l;
  }

  ExprPtr ParseMath2() {
    ExprPtr l = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      std::string op = Cur().value;
      Next();
      l = Binary(op, std::move(l), ParsePow());
    }
    return l;
  }

  ExprPtr ParsePow() {
    ExprPtr l = ParseUnary(true);
    while (IsOp("**")) {
      Next();
      l = Binary("**", std::move(l), ParseUnary(true));
    }
    return l;
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      bool neg = IsOp("-");
      Next();
      node = Make(neg ? Expr::K::kNeg : Expr::K::kPos);
      node->args.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    if (t.type == Tok::kName) {
      const std::string& v = t.value;
      ExprPtr n = Make(Expr::K::kLiteral);
      if (v == "true" || v == "True") {
        n->literal = Value::Bool(true);
      } else if (v == "false" || v == "False") {
        n->literal = Value::Bool(false);
      } else if (v == "none" || v == "None") {
        n->literal = Value::None();
      } else {
        n->kind = Expr::K::kName;
        n->name = v;
      }
      Next();
      return n;
    }
    if (t.type == Tok::kString) {
      std::string s;
      ExprPtr n = Make(Expr::K::kLiteral);
      while (Cur().type == Tok::kString) {  // adjacent literals concatenate
        s += Cur().value;
        Next();
      }
      n->literal = Value::Str(std::move(s));
      return n;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      ExprPtr n = Make(Expr::K::kLiteral);
      n->literal = t.type == Tok::kInt ? Value::Int(t.int_value)
                                       : Value::Float(t.float_value);
      Next();
      return n;
    }
    if (IsOp("(")) {
      Next();
      if (IsOp(")")) {
        Next();
        return Make(Expr::K::kTuple);
      }
      ExprPtr first = ParseExpression();
      if (IsOp(")")) {
        Next();
        return first;
      }
      ExprPtr tup = Make(Expr::K::kTuple);
      tup->args.push_back(std::move(first));
      while (IsOp(",")) {
        Next();
        if (IsOp(")")) break;
        tup->args.push_back(ParseExpression());
      }
      ExpectOp(")");
      return tup;
    }
    if (IsOp("[")) {
      Next();
      ExprPtr list = Make(Expr::K::kList);
      while (!IsOp("]")) {
        list->args.push_back(ParseExpression());
        if (!IsOp(",")) break;
        Next();
      }
      ExpectOp("]");
      return list;
    }
    if (IsOp("{")) {
      Next();
      ExprPtr dict = Make(Expr::K::kDict);
      while (!IsOp("}")) {
        dict->args.push_back(ParseExpression());
        ExpectOp(":");
        dict->args.push_back(ParseExpression());
        if (!IsOp(",")) break;
        Next();
      }
      ExpectOp("}");
      return dict;
    }
    Error("unexpected " + Describe(t));
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".")) {
        Next();
        ExprPtr n;
        if (Cur().type == Tok::kName) {
          n = Make(Expr::K::kGetAttr);
          n->name = Cur().value;
        } else if (Cur().type == Tok::kInt) {
          n = Make(Expr::K::kGetItem);
          ExprPtr key = Make(Expr::K::kLiteral);
          key->literal = Value::Int(Cur().int_value);
          n->args.push_back(nullptr);  // the object, set below
          n->args.push_back(std::move(key));
        } else {
          Error("expected name or number after '.'");
        }
        Next();
        if (n->kind == Expr::K::kGetItem) {
          n->args[0] = std::move(node);
        } else {
          n->args.push_back(std::move(node));
        }
        node = std::move(n);
      } else if (IsOp("[")) {
        Next();
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr obj) {
    ExprPtr parts[3];
    bool slice = false;
    int idx = 0;
    while (true) {
      if (IsOp(":")) {
        slice = true;
        if (++idx > 2) Error("invalid slice");
        Next();
        continue;
      }
      if (IsOp("]")) break;
      if (parts[idx]) Error("expected ':' or ']'");
      parts[idx] = ParseExpression();
      if (!slice && IsOp(",")) Error("tuple subscripts are not supported");
    }
    ExpectOp("]");
    if (!slice) {
      if (!parts[0]) Error("expected a subscript");
      ExprPtr n = Make(Expr::K::kGetItem);
      n->args.push_back(std::move(obj));
      n->args.push_back(std::move(parts[0]));
      return n;
    }
    ExprPtr n = Make(Expr::K::kSlice);
    n->args.push_back(std::move(obj));
    for (auto& p : parts) n->args.push_back(std::move(p));
    return n;
  }

  void ParseArgs(Expr* call) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (IsOp("*") || IsOp("**")) Error("*args and **kwargs are not supported");
      if (Cur().type == Tok::kName && Peek().type == Tok::kOp &&
          Peek().value == "=") {
        std::string k = Cur().value;
        Next();
        Next();
        call->kwargs.emplace_back(k, ParseExpression());
      } else {
        if (!call->kwargs.empty()) {
          Error("positional argument after keyword argument");
        }
        call->args.push_back(ParseExpression());
      }
      if (!IsOp(",")) break;
      Next();
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr callee) {
    ExprPtr n = Make(Expr::K::kCall);
    n->args.push_back(std::move(callee));
    ParseArgs(n.get());
    return n;
  }

  std::string DottedName() {
    std::string name = ExpectName();
    while (IsOp(".")) {
      Next();
      name += "." + ExpectName();
    }
    return name;
  }

  ExprPtr ParseFilter(ExprPtr input) {
    ExprPtr n = Make(Expr::K::kFilter);
    size_t pos = Cur().pos;
    n->name = DottedName();
    CheckName(n.get(), pos, "filter", KnownFilter(n->name), JinjaFilter(n->name));
    n->args.push_back(std::move(input));
    if (IsOp("(")) ParseArgs(n.get());
    return n;
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        Next();
        node = ParseFilter(std::move(node));
      } else if (IsName("is")) {
        Next();
        ExprPtr n = Make(Expr::K::kTest);
        if (IsName("not")) {
          n->negated = true;
          Next();
        }
        size_t pos = Cur().pos;
        n->name = DottedName();
        CheckName(n.get(), pos, "test", KnownTest(n->name), JinjaTest(n->name));
        n->args.push_back(std::move(node));
        if (IsOp("(")) {
          ParseArgs(n.get());
        } else if ((Cur().type == Tok::kName || Cur().type == Tok::kString ||
                    Cur().type == Tok::kInt || Cur().type == Tok::kFloat ||
                    IsOp("(") || IsOp("[") || IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and")) {
          if (IsName("is")) Error("you cannot chain multiple tests with is");
          n->args.push_back(ParsePostfix(ParsePrimary()));
        }
        node = std::move(n);
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  // jinja2 rejects an unknown filter or test when it compiles the template,
  // except inside an if statement or conditional expression ("soft" frames),
  // where the error waits until the name is evaluated. Filters and tests
  // that jinja2 has but this engine lacks always wait: a template may use
  // one in a branch that never runs.
  void CheckName(Expr* n, size_t pos, const char* kind, bool ours, bool jinja) {
    if (ours) return;
    if (jinja) {
      n->runtime_error = std::string(kind) + " '" + n->name +
                         "' is not supported by this engine";
      return;
    }
    n->runtime_error = std::string("no ") + kind + " named '" + n->name + "'";
    if (!soft_) hard_unknowns_.emplace_back(pos, n->runtime_error);
  }

  struct SoftScope {
    SoftScope(Parser* p, bool soft) : p(p), outer(p->soft_) { p->soft_ = soft; }
    ~SoftScope() { p->soft_ = outer; }
    Parser* p;
    bool outer;
  };

  std::vector<Token> toks_;
  const Lexer& lexer_;
  size_t pos_ = 0;
  bool soft_ = false;
  std::vector<std::pair<size_t, std::string>> hard_unknowns_;
  int depth_ = 0;
  int loop_depth_ = 0;
  friend struct DepthGuard;
};

// ---------------------------------------------------------------- evaluator

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

ScopePtr Child(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

using Kwargs = std::vector<std::pair<std::string, Value>>;

// Argument `idx` (positional) or `name` (keyword) of a filter or method.
const Value* Arg(const std::vector<Value>& args, const Kwargs& kwargs,
                 size_t idx, const char* name) {
  if (idx < args.size()) return &args[idx];
  for (const auto& [k, v] : kwargs) {
    if (k == name) return &v;
  }
  return nullptr;
}

int64_t IntArg(const Value* v, int64_t def, const char* what) {
  if (!v || v->none()) return def;
  if (!v->is_int()) Fail(std::string(what) + " must be an integer");
  return v->as_int();
}

std::string StrArg(const Value* v, const std::string& def) {
  return v ? Str(*v) : def;
}

int64_t CheckedAdd(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) Fail("integer overflow");
  return r;
}
int64_t CheckedMul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) Fail("integer overflow");
  return r;
}

int64_t FloorDiv(int64_t a, int64_t b) {
  if (b == 0) Fail("integer division or modulo by zero");
  if (a == std::numeric_limits<int64_t>::min() && b == -1) Fail("integer overflow");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// Python slice indices for a sequence of length n.
std::vector<int64_t> SliceIndices(int64_t n, const Value& start,
                                  const Value& stop, const Value& step) {
  int64_t st = step.none() || step.undefined() ? 1 : step.as_int();
  if (st == 0) Fail("slice step cannot be zero");
  auto adjust = [&](const Value& v, int64_t def) -> int64_t {
    if (v.none() || v.undefined()) return def;
    int64_t x = v.as_int();
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t b = adjust(start, st < 0 ? n - 1 : 0);
  int64_t e = adjust(stop, st < 0 ? -1 : n);
  std::vector<int64_t> idx;
  if (st > 0) {
    for (int64_t k = b; k < e; k += st) idx.push_back(k);
  } else {
    for (int64_t k = b; k > e; k += st) idx.push_back(k);
  }
  return idx;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<uint32_t> cps = Decode(s);
  std::vector<std::string> lines;
  size_t b = 0;
  for (size_t k = 0; k < cps.size(); ++k) {
    if (!IsLineBreak(cps[k])) continue;
    lines.push_back(Encode(cps, b, k));
    if (cps[k] == '\r' && k + 1 < cps.size() && cps[k + 1] == '\n') ++k;
    b = k + 1;
  }
  if (b < cps.size()) lines.push_back(Encode(cps, b, cps.size()));
  return lines;
}

std::string Replace(const std::string& s, const std::string& old,
                    const std::string& rep, int64_t count) {
  if (count < 0) count = std::numeric_limits<int64_t>::max();
  std::string out;
  if (old.empty()) {
    std::vector<uint32_t> cps = Decode(s);
    int64_t done = 0;
    for (size_t k = 0; k <= cps.size(); ++k) {
      if (done < count) {
        out += rep;
        ++done;
      }
      if (k < cps.size()) AppendCp(cps[k], &out);
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (done < count) {
    size_t f = s.find(old, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += rep;
    pos = f + old.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

std::string MapCase(const std::string& s, uint32_t (*f)(uint32_t)) {
  std::string out;
  for (uint32_t c : Decode(s)) AppendCp(f(c), &out);
  return out;
}
std::string UpperStr(const std::string& s) {
  std::string out;
  for (uint32_t c : Decode(s)) {
    if (c == 0xdf) out += "SS";  // Python maps sharp s to two letters
    else AppendCp(UpperCp(c), &out);
  }
  return out;
}
std::string LowerStr(const std::string& s) { return MapCase(s, LowerCp); }
std::string Capitalize(const std::string& s) {
  std::vector<uint32_t> cps = Decode(s);
  std::string out;
  for (size_t k = 0; k < cps.size(); ++k) {
    AppendCp(k == 0 ? UpperCp(cps[k]) : LowerCp(cps[k]), &out);
  }
  return out;
}
// Python's str.title(): a cased letter after an uncased one starts a word.
std::string PyTitle(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (uint32_t c : Decode(s)) {
    bool cased = IsCased(c);
    AppendCp(cased ? (prev_cased ? LowerCp(c) : UpperCp(c)) : c, &out);
    prev_cased = cased;
  }
  return out;
}
// jinja2's title filter: words start after whitespace, '-', '(', '{', '[',
// '<'.
std::string JinjaTitle(const std::string& s) {
  std::string out;
  bool start = true;
  for (uint32_t c : Decode(s)) {
    bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' ||
               IsSpace(c);
    if (sep) {
      AppendCp(c, &out);
      start = true;
    } else {
      AppendCp(start ? UpperCp(c) : LowerCp(c), &out);
      start = false;
    }
  }
  return out;
}

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

// Python's `x in container`.
bool Contains(const Value& container, const Value& x) {
  switch (container.t) {
    case Value::T::kUndefined: return false;
    case Value::T::kString:
      if (!x.is_str()) {
        Fail(std::string("'in <string>' requires string as left operand, not ") +
             TypeName(x));
      }
      return container.s.find(x.s) != std::string::npos;
    case Value::T::kList:
      for (const auto& v : container.list->items) {
        if (Equal(v, x)) return true;
      }
      return false;
    case Value::T::kDict:
    case Value::T::kNamespace:
      return DictFind(*container.dict, x) != nullptr;
    default:
      Fail(std::string("argument of type '") + TypeName(container) +
           "' is not iterable");
  }
}

// Whether `target` can be reached from `v` (shared containers visited once).
bool Reaches(const Value& v, const DictData* target) {
  std::vector<const Value*> stack{&v};
  std::vector<const void*> seen;
  while (!stack.empty()) {
    const Value* x = stack.back();
    stack.pop_back();
    const void* id = x->list ? static_cast<const void*>(x->list.get())
                             : static_cast<const void*>(x->dict.get());
    if (!id) continue;
    if (id == target) return true;
    if (std::find(seen.begin(), seen.end(), id) != seen.end()) continue;
    seen.push_back(id);
    if (x->list) {
      for (const Value& y : x->list->items) stack.push_back(&y);
    } else {
      for (const auto& kv : x->dict->items) stack.push_back(&kv.second);
    }
  }
  return false;
}

class Interp {
 public:
  explicit Interp(const ChatTemplateOptions& opt) : opt_(opt) {
    budget_.max_steps = opt.max_steps;
    budget_.max_bytes = opt.max_output_bytes;
    outer_budget_ = g_budget;
    g_budget = &budget_;
  }
  ~Interp() {
    g_budget = outer_budget_;
    // Macros hold their defining scope, which holds them: break the cycles.
    for (auto& w : macro_scopes_) {
      if (auto s = w.lock()) s->vars.clear();
    }
  }

  enum class Flow { kNormal, kBreak, kContinue };

  Flow Exec(const Body& body, const ScopePtr& scope, std::string* out) {
    for (const auto& st : body) {
      Flow f;
      try {
        f = ExecOne(*st, scope, out);
      } catch (TemplateError& e) {
        if (e.line == 0 && st->line > 0) e.line = st->line;
        throw;
      }
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Value Eval(const Expr& e, const ScopePtr& scope) {
    try {
      return EvalImpl(e, scope);
    } catch (TemplateError& err) {
      if (err.line == 0 && e.line > 0) err.line = e.line;
      throw;
    }
  }

  void Step() { budget_.Step(); }

  void CheckSize(size_t n) const {
    if (static_cast<int64_t>(n) > opt_.max_output_bytes) {
      Fail("output exceeds " + std::to_string(opt_.max_output_bytes) + " bytes");
    }
  }

 private:
  Flow ExecOne(const Stmt& st, const ScopePtr& scope, std::string* out) {
    Step();
    switch (st.kind) {
      case Stmt::K::kText:
        *out += st.text;
        CheckSize(out->size());
        return Flow::kNormal;
      case Stmt::K::kOutput:
        *out += Str(Eval(*st.expr, scope));
        CheckSize(out->size());
        return Flow::kNormal;
      case Stmt::K::kIf:
        return Exec(Truthy(Eval(*st.expr, scope)) ? st.body : st.else_body,
                    scope, out);
      case Stmt::K::kFor: return ExecFor(st, scope, out);
      case Stmt::K::kSet: {
        Value v = Eval(*st.expr, scope);
        if (!st.attr.empty()) {
          const Value* ns = scope->Find(st.targets[0]);
          if (!ns || ns->t != Value::T::kNamespace) {
            Fail("cannot assign attribute on non-namespace object");
          }
          if (st.attr[0] == '_') {
            Fail("cannot store underscore-prefixed attribute '" + st.attr +
                 "' on a namespace");
          }
          if (Reaches(v, ns->dict.get())) {
            // Python allows it, but a cycle would outlive the render.
            Fail("cannot store a namespace inside itself");
          }
          DictSet(ns->dict.get(), Value::Str(st.attr), std::move(v));
        } else {
          Assign(st.targets, v, scope.get());
        }
        return Flow::kNormal;
      }
      case Stmt::K::kSetBlock: {
        std::string captured;
        Exec(st.body, scope, &captured);
        Value v = Value::Str(std::move(captured));
        if (st.filter) v = ApplyFilterChain(*st.filter, std::move(v), scope);
        scope->vars[st.targets[0]] = std::move(v);
        return Flow::kNormal;
      }
      case Stmt::K::kMacro: {
        Value m;
        m.t = Value::T::kMacro;
        m.macro = std::make_shared<Macro>(Macro{&st, scope});
        scope->vars[st.text] = std::move(m);
        macro_scopes_.push_back(scope);
        return Flow::kNormal;
      }
      case Stmt::K::kBreak: return Flow::kBreak;
      case Stmt::K::kContinue: return Flow::kContinue;
      case Stmt::K::kWith: {
        ScopePtr inner = Child(scope);
        for (const auto& [name, e] : st.params) {
          inner->vars[name] = Eval(*e, scope);
        }
        return Exec(st.body, inner, out);
      }
      case Stmt::K::kFilterBlock: {
        std::string captured;
        Flow f = Exec(st.body, scope, &captured);
        *out += Str(ApplyFilterChain(*st.filter, Value::Str(captured), scope));
        CheckSize(out->size());
        return f;
      }
      case Stmt::K::kBody: return Exec(st.body, scope, out);
    }
    return Flow::kNormal;
  }

  void Assign(const std::vector<std::string>& targets, const Value& v,
              Scope* scope) {
    if (targets.size() == 1) {
      scope->vars[targets[0]] = v;
      return;
    }
    std::vector<Value> items = Iterate(v);
    if (items.size() != targets.size()) {
      Fail(items.size() > targets.size()
               ? "too many values to unpack (expected " +
                     std::to_string(targets.size()) + ")"
               : "not enough values to unpack (expected " +
                     std::to_string(targets.size()) + ", got " +
                     std::to_string(items.size()) + ")");
    }
    for (size_t k = 0; k < targets.size(); ++k) scope->vars[targets[k]] = items[k];
  }

  Flow ExecFor(const Stmt& st, const ScopePtr& scope, std::string* out) {
    Value seq = Eval(*st.expr, scope);
    std::vector<Value> items = Iterate(seq);
    if (st.cond) {
      std::vector<Value> kept;
      for (auto& item : items) {
        Step();
        ScopePtr s = Child(scope);
        Assign(st.targets, item, s.get());
        if (Truthy(Eval(*st.cond, s))) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      Exec(st.else_body, scope, out);
      return Flow::kNormal;
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      Step();
      ScopePtr s = Child(scope);
      Assign(st.targets, items[k], s.get());
      Value loop = Value::Dict(Value::T::kLoop);
      auto set = [&](const char* key, Value v) {
        loop.dict->items.emplace_back(Value::Str(key), std::move(v));
      };
      set("index", Value::Int(k + 1));
      set("index0", Value::Int(k));
      set("revindex", Value::Int(n - k));
      set("revindex0", Value::Int(n - k - 1));
      set("first", Value::Bool(k == 0));
      set("last", Value::Bool(k == n - 1));
      set("length", Value::Int(n));
      set("depth", Value::Int(1));
      set("depth0", Value::Int(0));
      if (k > 0) set("previtem", items[k - 1]);
      if (k + 1 < n) set("nextitem", items[k + 1]);
      s->vars["loop"] = std::move(loop);
      if (Exec(st.body, s, out) == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  Value EvalImpl(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case Expr::K::kLiteral: return e.literal;
      case Expr::K::kName: {
        const Value* v = scope->Find(e.name);
        return v ? *v : Value::Undefined("'" + e.name + "' is undefined");
      }
      case Expr::K::kList:
      case Expr::K::kTuple: {
        std::vector<Value> items;
        for (const auto& a : e.args) items.push_back(Eval(*a, scope));
        return Value::List(std::move(items), e.kind == Expr::K::kTuple);
      }
      case Expr::K::kDict: {
        Value d = Value::Dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = Eval(*e.args[k], scope);
          if (key.is_list() && !key.list->tuple) Fail("unhashable type: 'list'");
          if (key.is_dict()) Fail("unhashable type: 'dict'");
          DictSet(d.dict.get(), key, Eval(*e.args[k + 1], scope));
        }
        return d;
      }
      case Expr::K::kGetAttr:
        return GetAttr(Eval(*e.args[0], scope), e.name);
      case Expr::K::kGetItem:
        return GetItem(Eval(*e.args[0], scope), Eval(*e.args[1], scope));
      case Expr::K::kSlice: {
        Value obj = Eval(*e.args[0], scope);
        if (obj.undefined()) FailUndefined(obj);
        Value parts[3];
        for (int k = 0; k < 3; ++k) {
          parts[k] = e.args[k + 1] ? Eval(*e.args[k + 1], scope) : Value::None();
          // A non-integer index is a TypeError, which jinja2's getitem turns
          // into an undefined value.
          if (!parts[k].none() && !parts[k].is_int()) {
            return Value::Undefined("invalid slice index");
          }
        }
        if (obj.is_str()) {
          std::vector<uint32_t> cps = Decode(obj.s);
          std::string s;
          for (int64_t k : SliceIndices(static_cast<int64_t>(cps.size()),
                                        parts[0], parts[1], parts[2])) {
            AppendCp(cps[k], &s);
          }
          return Value::Str(std::move(s));
        }
        if (obj.is_list()) {
          std::vector<Value> items;
          for (int64_t k : SliceIndices(
                   static_cast<int64_t>(obj.list->items.size()), parts[0],
                   parts[1], parts[2])) {
            items.push_back(obj.list->items[k]);
          }
          return Value::List(std::move(items), obj.list->tuple);
        }
        return Value::Undefined(std::string("'") + TypeName(obj) +
                                " object' is not subscriptable");
      }
      case Expr::K::kCall: return EvalCall(e, scope);
      case Expr::K::kFilter: {
        Value in = Eval(*e.args[0], scope);
        if (!e.runtime_error.empty()) Fail(e.runtime_error);
        return ApplyFilter(e, std::move(in), scope);
      }
      case Expr::K::kTest: {
        Value in = Eval(*e.args[0], scope);
        if (!e.runtime_error.empty()) Fail(e.runtime_error);
        std::vector<Value> args;
        for (size_t k = 1; k < e.args.size(); ++k) {
          args.push_back(Eval(*e.args[k], scope));
        }
        for (const auto& kv : e.kwargs) args.push_back(Eval(*kv.second, scope));
        bool r = ApplyTest(e.name, in, args);
        return Value::Bool(e.negated ? !r : r);
      }
      case Expr::K::kNeg:
      case Expr::K::kPos: {
        Value v = Eval(*e.args[0], scope);
        if (v.undefined()) FailUndefined(v);
        if (!v.is_num()) {
          Fail(std::string("bad operand type for unary ") +
               (e.kind == Expr::K::kNeg ? "-" : "+") + ": '" + TypeName(v) + "'");
        }
        if (e.kind == Expr::K::kPos) {
          return v.t == Value::T::kFloat ? v : Value::Int(v.as_int());
        }
        if (v.t == Value::T::kFloat) return Value::Float(-v.f);
        return Value::Int(CheckedMul(v.as_int(), -1));
      }
      case Expr::K::kNot: return Value::Bool(!Truthy(Eval(*e.args[0], scope)));
      case Expr::K::kAnd: {
        Value l = Eval(*e.args[0], scope);
        return Truthy(l) ? Eval(*e.args[1], scope) : l;
      }
      case Expr::K::kOr: {
        Value l = Eval(*e.args[0], scope);
        return Truthy(l) ? l : Eval(*e.args[1], scope);
      }
      case Expr::K::kBinary:
        return BinaryOp(e.name, Eval(*e.args[0], scope), Eval(*e.args[1], scope));
      case Expr::K::kCompare: {
        Value l = Eval(*e.args[0], scope);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value r = Eval(*e.args[k + 1], scope);
          const std::string& op = e.ops[k];
          bool ok;
          if (op == "==") ok = Equal(l, r);
          else if (op == "!=") ok = !Equal(l, r);
          else if (op == "in") ok = Contains(r, l);
          else if (op == "not in") ok = !Contains(r, l);
          else {
            int c = Compare(l, r, op.c_str());
            ok = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0
                                                                    : c >= 0;
          }
          if (!ok) return Value::Bool(false);
          l = std::move(r);
        }
        return Value::Bool(true);
      }
      case Expr::K::kCond: {
        if (Truthy(Eval(*e.args[0], scope))) return Eval(*e.args[1], scope);
        if (e.args.size() > 2) return Eval(*e.args[2], scope);
        return Value::Undefined(
            "the inline if-expression on line " + std::to_string(e.line) +
            " evaluated to false and no else section was defined.");
      }
    }
    return Value();
  }

  Value BinaryOp(const std::string& op, const Value& l, const Value& r) {
    if (op == "~") {
      std::string s = Str(l) + Str(r);
      CheckSize(s.size());
      return Value::Str(std::move(s));
    }
    if (l.undefined()) FailUndefined(l);
    if (r.undefined()) FailUndefined(r);
    bool floats = l.t == Value::T::kFloat || r.t == Value::T::kFloat;
    if (l.is_num() && r.is_num()) {
      if (op == "+") {
        return floats ? Value::Float(l.as_float() + r.as_float())
                      : Value::Int(CheckedAdd(l.as_int(), r.as_int()));
      }
      if (op == "-") {
        return floats ? Value::Float(l.as_float() - r.as_float())
                      : Value::Int(CheckedAdd(l.as_int(),
                                              CheckedMul(r.as_int(), -1)));
      }
      if (op == "*") {
        return floats ? Value::Float(l.as_float() * r.as_float())
                      : Value::Int(CheckedMul(l.as_int(), r.as_int()));
      }
      if (op == "/") {
        if (r.as_float() == 0) Fail("division by zero");
        return Value::Float(l.as_float() / r.as_float());
      }
      if (op == "//" || op == "%") {
        if (floats) {
          double a = l.as_float(), b = r.as_float();
          if (b == 0) Fail("float floor division by zero");
          double m = std::fmod(a, b);
          if (m != 0 && ((m < 0) != (b < 0))) m += b;
          if (op == "%") return Value::Float(m);
          return Value::Float(std::floor((a - m) / b + 0.5));
        }
        int64_t q = FloorDiv(l.as_int(), r.as_int());
        if (op == "//") return Value::Int(q);
        return Value::Int(l.as_int() - q * r.as_int());
      }
      if (op == "**") {
        if (!floats && r.as_int() >= 0) {
          int64_t base = l.as_int(), result = 1;
          for (int64_t k = 0; k < r.as_int(); ++k) {
            result = CheckedMul(result, base);
            if (result == 0 || result == 1) break;
          }
          return Value::Int(result);
        }
        return Value::Float(std::pow(l.as_float(), r.as_float()));
      }
    }
    if (op == "+" && l.is_str() && r.is_str()) {
      CheckSize(l.s.size() + r.s.size());
      return Value::Str(l.s + r.s);
    }
    if (op == "+" && l.is_list() && r.is_list() &&
        l.list->tuple == r.list->tuple) {
      std::vector<Value> items = l.list->items;
      items.insert(items.end(), r.list->items.begin(), r.list->items.end());
      return Value::List(std::move(items), l.list->tuple);
    }
    if (op == "*" && ((l.is_int() && (r.is_str() || r.is_list())) ||
                      (r.is_int() && (l.is_str() || l.is_list())))) {
      const Value& seq = l.is_int() ? r : l;
      int64_t times = std::max<int64_t>(0, l.is_int() ? l.as_int() : r.as_int());
      size_t unit = seq.is_str() ? seq.s.size() : seq.list->items.size() * 16;
      if (unit && times > opt_.max_output_bytes / static_cast<int64_t>(unit)) {
        CheckSize(static_cast<size_t>(opt_.max_output_bytes) + 1);
      }
      if (seq.is_str()) {
        std::string s;
        for (int64_t k = 0; k < times; ++k) s += seq.s;
        return Value::Str(std::move(s));
      }
      std::vector<Value> items;
      for (int64_t k = 0; k < times; ++k) {
        items.insert(items.end(), seq.list->items.begin(), seq.list->items.end());
      }
      return Value::List(std::move(items), seq.list->tuple);
    }
    if (op == "%" && l.is_str()) return Value::Str(Format(l.s, r));
    Fail("unsupported operand type(s) for " + op + ": '" + TypeName(l) +
         "' and '" + TypeName(r) + "'");
  }

  // printf-style formatting: %s, %r, %d, %i and %% (what templates use).
  std::string Format(const std::string& fmt, const Value& args) {
    std::vector<Value> list = args.is_list() && args.list->tuple
                                  ? args.list->items
                                  : std::vector<Value>{args};
    std::string out;
    size_t next = 0;
    for (size_t k = 0; k < fmt.size(); ++k) {
      if (fmt[k] != '%') {
        out.push_back(fmt[k]);
        continue;
      }
      if (++k >= fmt.size()) Fail("incomplete format");
      char c = fmt[k];
      if (c == '%') {
        out.push_back('%');
        continue;
      }
      if (next >= list.size()) Fail("not enough arguments for format string");
      const Value& v = list[next++];
      if (c == 's') out += Str(v);
      else if (c == 'r') out += Repr(v);
      else if (c == 'd' || c == 'i') {
        if (!v.is_num()) Fail("%d format: a real number is required");
        out += std::to_string(v.t == Value::T::kFloat
                                  ? static_cast<int64_t>(v.f) : v.as_int());
      } else {
        Fail(std::string("unsupported format character '") + c + "'");
      }
    }
    if (next < list.size()) {
      Fail("not all arguments converted during string formatting");
    }
    return out;
  }

  Value GetAttr(const Value& obj, const std::string& name) {
    if (obj.undefined()) FailUndefined(obj);
    if (obj.has_items()) {
      const Value* v = DictFind(*obj.dict, Value::Str(name));
      if (v) return *v;
      if (obj.t == Value::T::kDict) {
        return Value::Undefined("'dict object' has no attribute '" + name + "'");
      }
    }
    return Value::Undefined(std::string("'") + TypeName(obj) +
                            " object' has no attribute '" + name + "'");
  }

  Value GetItem(const Value& obj, const Value& key) {
    if (obj.undefined()) FailUndefined(obj);
    if ((obj.is_list() || obj.is_str()) && key.is_int()) {
      int64_t n = obj.is_list() ? static_cast<int64_t>(obj.list->items.size())
                                : Length(obj);
      int64_t k = key.as_int();
      if (k < 0) k += n;
      if (k < 0 || k >= n) {
        return Value::Undefined(std::string("'") + TypeName(obj) +
                                " object' has no element " + Str(key));
      }
      if (obj.is_list()) return obj.list->items[k];
      std::vector<uint32_t> cps = Decode(obj.s);
      return Value::Str(Encode(cps, k, k + 1));
    }
    if (obj.has_items()) {
      const Value* v = DictFind(*obj.dict, key);
      if (v) return *v;
    }
    if (key.is_str()) return GetAttr(obj, key.s);
    return Value::Undefined(std::string("'") + TypeName(obj) +
                            " object' has no element " + Repr(key));
  }

  Value EvalCall(const Expr& e, const ScopePtr& scope) {
    const Expr& callee = *e.args[0];
    std::vector<Value> args;
    Kwargs kwargs;
    auto eval_args = [&] {
      for (size_t k = 1; k < e.args.size(); ++k) args.push_back(Eval(*e.args[k], scope));
      for (const auto& [name, x] : e.kwargs) kwargs.emplace_back(name, Eval(*x, scope));
    };
    Value fn;
    if (callee.kind == Expr::K::kGetAttr) {
      Value obj = Eval(*callee.args[0], scope);
      if (obj.undefined()) FailUndefined(obj);
      if (HasMethod(obj, callee.name)) {
        eval_args();
        return CallMethod(obj, callee.name, args, kwargs);
      }
      fn = GetAttr(obj, callee.name);
    } else {
      fn = Eval(callee, scope);
    }
    eval_args();
    return CallValue(fn, args, kwargs);
  }

  Value CallValue(const Value& fn, std::vector<Value>& args, Kwargs& kwargs) {
    if (fn.t == Value::T::kBuiltin) return fn.builtin->fn(args, kwargs);
    if (fn.t == Value::T::kMacro) return CallMacro(*fn.macro, args, kwargs);
    if (fn.undefined()) FailUndefined(fn);
    Fail(std::string("'") + TypeName(fn) + "' object is not callable");
  }

  Value CallMacro(const Macro& m, std::vector<Value>& args, Kwargs& kwargs) {
    const Stmt& def = *m.def;
    if (args.size() > def.params.size()) {
      Fail("macro '" + def.text + "' takes not more than " +
           std::to_string(def.params.size()) + " argument(s)");
    }
    if (++call_depth_ > opt_.max_call_depth) {
      Fail("macro calls nested deeper than " +
           std::to_string(opt_.max_call_depth) + " (runaway recursion?)");
    }
    ScopePtr s = Child(m.closure);
    for (size_t k = 0; k < def.params.size(); ++k) {
      const auto& [name, def_expr] = def.params[k];
      const Value* kw = nullptr;
      for (const auto& [kn, kv] : kwargs) {
        if (kn == name) kw = &kv;
      }
      if (k < args.size()) {
        s->vars[name] = args[k];
      } else if (kw) {
        s->vars[name] = *kw;
      } else if (def_expr) {
        s->vars[name] = Eval(*def_expr, s);
      } else {
        s->vars[name] =
            Value::Undefined("parameter '" + name + "' was not provided");
      }
    }
    for (const auto& [kn, kv] : kwargs) {
      bool known = false;
      for (const auto& p : def.params) known |= p.first == kn;
      if (!known) {
        Fail("macro '" + def.text + "' takes no keyword argument '" + kn + "'");
      }
    }
    std::string out;
    Exec(def.body, s, &out);
    --call_depth_;
    return Value::Str(std::move(out));
  }

  static bool HasMethod(const Value& obj, const std::string& name) {
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

  Value CallMethod(const Value& obj, const std::string& name,
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

  Value ApplyFilterChain(const Expr& chain, Value in, const ScopePtr& scope) {
    if (chain.kind != Expr::K::kFilter) return in;
    Value inner = ApplyFilterChain(*chain.args[0], std::move(in), scope);
    return ApplyFilter(chain, std::move(inner), scope);
  }

  Value ApplyFilter(const Expr& e, Value in, const ScopePtr& scope) {
    std::vector<Value> args;
    Kwargs kwargs;
    for (size_t k = 1; k < e.args.size(); ++k) args.push_back(Eval(*e.args[k], scope));
    for (const auto& [name, x] : e.kwargs) kwargs.emplace_back(name, Eval(*x, scope));
    Value r = Filter(e.name, std::move(in), args, kwargs);
    if (r.is_str()) CheckSize(r.s.size());
    return r;
  }

 public:
  Value Filter(const std::string& name, Value in, std::vector<Value>& args,
               Kwargs& kwargs);
  bool ApplyTest(const std::string& name, const Value& v,
                 const std::vector<Value>& args);

 private:
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

  const ChatTemplateOptions& opt_;
  StepBudget budget_;
  StepBudget* outer_budget_ = nullptr;
  int call_depth_ = 0;
  std::vector<std::weak_ptr<Scope>> macro_scopes_;
};

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

bool JinjaFilter(const std::string& name) {
  for (const char* f : kJinjaOnlyFilters) {
    if (name == f) return true;
  }
  return KnownFilter(name);
}
bool JinjaTest(const std::string& name) { return KnownTest(name); }

bool KnownFilter(const std::string& name) {
  for (const char* f : kFilters) {
    if (name == f) return true;
  }
  return false;
}
bool KnownTest(const std::string& name) {
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
  if (name == "filter") return v.is_str() && JinjaFilter(v.s);
  if (name == "test") return v.is_str() && JinjaTest(v.s);
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
    return Value::Str(Format(Str(in), Value::List(args, /*tuple=*/true)));
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
    JsonDump(in, st, 0, &out);
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
    if (!KnownFilter(filter)) Fail("no filter named '" + filter + "'");
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
    if (!test.empty() && !KnownTest(test)) Fail("no test named '" + test + "'");
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

void AddGlobals(Scope* g, const ChatTemplateOptions& opt) {
  g->vars["raise_exception"] = MakeBuiltin(
      "raise_exception", [](std::vector<Value>& args, Kwargs& kwargs) -> Value {
        const Value* m = Arg(args, kwargs, 0, "message");
        throw TemplateError{m ? Str(*m) : std::string(), -1};
      });
  std::time_t now = opt.now;
  g->vars["strftime_now"] = MakeBuiltin(
      "strftime_now", [now](std::vector<Value>& args, Kwargs& kwargs) -> Value {
        const Value* f = Arg(args, kwargs, 0, "format");
        if (!f || !f->is_str()) Fail("strftime_now() needs a format string");
        return Value::Str(StrftimeNow(f->s, now));
      });
  g->vars["range"] = MakeBuiltin(
      "range", [](std::vector<Value>& args, Kwargs&) -> Value {
        if (args.empty() || args.size() > 3) Fail("range expected 1 to 3 arguments");
        for (const auto& a : args) {
          if (!a.is_int()) {
            Fail(std::string("'") + TypeName(a) +
                 "' object cannot be interpreted as an integer");
          }
        }
        int64_t start = args.size() > 1 ? args[0].as_int() : 0;
        int64_t stop = args.size() > 1 ? args[1].as_int() : args[0].as_int();
        int64_t step = args.size() > 2 ? args[2].as_int() : 1;
        if (step == 0) Fail("range() arg 3 must not be zero");
        std::vector<Value> items;
        for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
          if (static_cast<int64_t>(items.size()) >= kMaxRange) {
            Fail("Range too big. The sandbox blocks ranges larger than "
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
          Fail("cannot store underscore-prefixed attribute '" + k +
               "' on a namespace");
        }
        DictSet(d.dict.get(), Value::Str(k), v);
      }
      return d;
    };
  };
  g->vars["namespace"] = MakeBuiltin("namespace", make_dict(Value::T::kNamespace));
  g->vars["dict"] = MakeBuiltin("dict", make_dict(Value::T::kDict));
}

// One line, even when the message quotes a string from the template.
std::string OneLine(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else out.push_back(c);
  }
  return out;
}

std::string FormatError(const TemplateError& e) {
  if (e.line > 0) return "line " + std::to_string(e.line) + ": " + OneLine(e.message);
  return OneLine(e.message);
}

}  // namespace

struct ChatTemplate::Impl {
  ChatTemplateOptions options;
  Body body;
};

ChatTemplate::ChatTemplate(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

tokenizers::Result<ChatTemplate> ChatTemplate::Parse(
    const std::string& source, const ChatTemplateOptions& options) {
  try {
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    Lexer lexer(source, impl->options);
    Parser parser(lexer.Run(), lexer);
    impl->body = parser.ParseTemplate();
    return ChatTemplate(std::move(impl));
  } catch (const TemplateError& e) {
    return tokenizers::MakeError("chat template: " + OneLine(e.message));
  } catch (const std::exception& e) {
    return tokenizers::MakeError(std::string("chat template: ") + e.what());
  }
}

namespace {

// transformers (_alias_reasoning_fields) copies a message's reasoning, found
// under reasoning_content, thinking or reasoning, to both `thinking` (first
// key) and `reasoning_content`, so templates may read either.
Value AliasReasoning(const Value& messages) {
  std::vector<Value> out;
  for (const Value& m : messages.list->items) {
    const Value* reasoning = nullptr;
    if (m.is_dict()) {
      for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
        const Value* v = DictFind(*m.dict, Value::Str(key));
        if (v && !v->none()) {
          reasoning = v;
          break;
        }
      }
    }
    if (!reasoning) {
      out.push_back(m);
      continue;
    }
    Value d = Value::Dict();
    d.dict->items.emplace_back(Value::Str("thinking"), *reasoning);
    for (const auto& [k, v] : m.dict->items) DictSet(d.dict.get(), k, v);
    DictSet(d.dict.get(), Value::Str("reasoning_content"), *reasoning);
    out.push_back(std::move(d));
  }
  return Value::List(std::move(out));
}

// Runs the template over `vars` (an object) plus transformers' standard
// variables; errors become Results here and only here.
tokenizers::Result<std::string> RenderWith(const ChatTemplate::Impl& impl,
                                           const std::function<void(Scope*)>& fill);

}  // namespace

tokenizers::Result<std::string> ChatTemplate::Render(
    const std::vector<ChatMessage>& messages, bool add_generation_prompt,
    const std::string& bos_token, const std::string& eos_token) const {
  return RenderWith(*impl_, [&](Scope* ctx) {
    std::vector<Value> msgs;
    for (const auto& m : messages) {
      Value d = Value::Dict();
      d.dict->items.emplace_back(Value::Str("role"), Value::Str(m.role));
      d.dict->items.emplace_back(Value::Str("content"), Value::Str(m.content));
      msgs.push_back(std::move(d));
    }
    ctx->vars["messages"] = Value::List(std::move(msgs));
    ctx->vars["add_generation_prompt"] = Value::Bool(add_generation_prompt);
    ctx->vars["bos_token"] = Value::Str(bos_token);
    ctx->vars["eos_token"] = Value::Str(eos_token);
  });
}

tokenizers::Result<std::string> ChatTemplate::RenderJson(
    const std::string& variables_json, bool add_generation_prompt,
    const std::string& bos_token, const std::string& eos_token) const {
  return RenderWith(*impl_, [&](Scope* ctx) {
    Value vars = JsonReader(variables_json).Document();
    if (!vars.is_dict()) Fail("variables JSON: expected an object");
    ctx->vars["bos_token"] = Value::Str(bos_token);
    ctx->vars["eos_token"] = Value::Str(eos_token);
    for (const auto& [k, v] : vars.dict->items) ctx->vars[k.s] = v;
    ctx->vars["add_generation_prompt"] = Value::Bool(add_generation_prompt);
    auto it = ctx->vars.find("messages");
    if (it != ctx->vars.end() && it->second.is_list()) {
      it->second = AliasReasoning(it->second);
    }
  });
}

namespace {

tokenizers::Result<std::string> RenderWith(const ChatTemplate::Impl& impl,
                                           const std::function<void(Scope*)>& fill) {
  try {
    Interp interp(impl.options);
    auto globals = std::make_shared<Scope>();
    AddGlobals(globals.get(), impl.options);
    ScopePtr ctx = Child(globals);
    ctx->vars["tools"] = Value::None();
    ctx->vars["documents"] = Value::None();
    fill(ctx.get());
    std::string out;
    interp.Exec(impl.body, ctx, &out);
    return out;
  } catch (const TemplateError& e) {
    if (e.line < 0) return tokenizers::MakeError(e.message);
    return tokenizers::MakeError("chat template: " + FormatError(e));
  } catch (const std::bad_alloc&) {
    return tokenizers::MakeError("chat template: out of memory while rendering");
  } catch (const std::exception& e) {
    return tokenizers::MakeError(std::string("chat template: ") + e.what());
  }
}

}  // namespace

}  // namespace torchchat
