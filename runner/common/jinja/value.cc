#include "runner/common/jinja/value.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "runner/common/jinja/text.h"

namespace torchchat::jinja {

thread_local StepBudget* g_budget = nullptr;

namespace {

int& NestDepth() {
  static thread_local int depth = 0;
  return depth;
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
    } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0) || c >= kRawByte) {
      char b[16];
      std::snprintf(b, sizeof b, "\\x%02x", c >= kRawByte ? c - kRawByte : c);
      out += b;
    } else {
      AppendCp(c, &out);
    }
  }
  out.push_back(q);
  return out;
}

}  // namespace

NestGuard::NestGuard() {
  if (g_budget) g_budget->Step();
  if (++NestDepth() > kMaxNesting + 8) {
    --NestDepth();
    Fail("value nested too deeply");
  }
}

NestGuard::~NestGuard() { --NestDepth(); }

bool Truthy(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined:
    case Value::T::kNone:
      return false;
    case Value::T::kBool:
      return v.b;
    case Value::T::kInt:
      return v.i != 0;
    case Value::T::kFloat:
      return v.f != 0;
    case Value::T::kString:
      return !v.s.empty();
    case Value::T::kList:
      return !v.list->items.empty();
    case Value::T::kDict:
      return !v.dict->items.empty();
    default:
      return true;
  }
}

const char* TypeName(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined:
      return "Undefined";
    case Value::T::kNone:
      return "NoneType";
    case Value::T::kBool:
      return "bool";
    case Value::T::kInt:
      return "int";
    case Value::T::kFloat:
      return "float";
    case Value::T::kString:
      return "str";
    case Value::T::kList:
      return v.list->tuple ? "tuple" : "list";
    case Value::T::kDict:
      return "dict";
    case Value::T::kNamespace:
      return "Namespace";
    case Value::T::kLoop:
      return "LoopContext";
    case Value::T::kBuiltin:
      return "builtin_function_or_method";
    case Value::T::kMacro:
      return "Macro";
  }
  return "object";
}

[[noreturn]] void FailUndefined(const Value& v) {
  Fail(v.s.empty() ? std::string("value is undefined") : v.s);
}

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

std::string Str(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined:
      return "";
    case Value::T::kNone:
      return "None";
    case Value::T::kBool:
      return v.b ? "True" : "False";
    case Value::T::kInt:
      return std::to_string(v.i);
    case Value::T::kFloat:
      return FloatRepr(v.f);
    case Value::T::kString:
      return v.s;
    default:
      return Repr(v);
  }
}

std::string Repr(const Value& v) {
  NestGuard guard;
  switch (v.t) {
    case Value::T::kString:
      return StrRepr(v.s);
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
    case Value::T::kLoop:
      return "<LoopContext>";
    case Value::T::kBuiltin:
      return "<built-in function " + v.builtin->name + ">";
    case Value::T::kMacro:
      return "<Macro>";
    default:
      return Str(v);
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
    case Value::T::kNone:
      return true;
    case Value::T::kString:
      return a.s == b.s;
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
    default:
      return a.dict == b.dict && a.builtin == b.builtin && a.macro == b.macro;
  }
}

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
  Fail(std::string("'") + op + "' not supported between instances of '" + TypeName(a) + "' and '" +
       TypeName(b) + "'");
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

std::vector<Value> Iterate(const Value& v) {
  std::vector<Value> out;
  switch (v.t) {
    case Value::T::kUndefined:
      return out;
    case Value::T::kList:
      return v.list->items;
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
    case Value::T::kUndefined:
      return 0;
    case Value::T::kString:
      return static_cast<int64_t>(Decode(v.s).size());
    case Value::T::kList:
      return static_cast<int64_t>(v.list->items.size());
    case Value::T::kDict:
      return static_cast<int64_t>(v.dict->items.size());
    default:
      Fail(std::string("object of type '") + TypeName(v) + "' has no len()");
  }
}

bool Contains(const Value& container, const Value& x) {
  switch (container.t) {
    case Value::T::kUndefined:
      return false;
    case Value::T::kString:
      if (!x.is_str()) {
        Fail(std::string("'in <string>' requires string as left operand, not ") + TypeName(x));
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
      Fail(std::string("argument of type '") + TypeName(container) + "' is not iterable");
  }
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
  return Value::Undefined(std::string("'") + TypeName(obj) + " object' has no attribute '" + name +
                          "'");
}

Value GetItem(const Value& obj, const Value& key) {
  if (obj.undefined()) FailUndefined(obj);
  if ((obj.is_list() || obj.is_str()) && key.is_int()) {
    int64_t n = obj.is_list() ? static_cast<int64_t>(obj.list->items.size()) : Length(obj);
    int64_t k = key.as_int();
    if (k < 0) k += n;
    if (k < 0 || k >= n) {
      return Value::Undefined(std::string("'") + TypeName(obj) + " object' has no element " +
                              Str(key));
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
  return Value::Undefined(std::string("'") + TypeName(obj) + " object' has no element " +
                          Repr(key));
}

std::string PercentFormat(const std::string& fmt, const Value& args) {
  std::vector<Value> list =
      args.is_list() && args.list->tuple ? args.list->items : std::vector<Value>{args};
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
    if (c == 's')
      out += Str(v);
    else if (c == 'r')
      out += Repr(v);
    else if (c == 'd' || c == 'i') {
      if (!v.is_num()) Fail("%d format: a real number is required");
      out += std::to_string(v.t == Value::T::kFloat ? static_cast<int64_t>(v.f) : v.as_int());
    } else {
      Fail(std::string("unsupported format character '") + c + "'");
    }
  }
  if (next < list.size()) {
    Fail("not all arguments converted during string formatting");
  }
  return out;
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

}  // namespace torchchat::jinja
