#include "runner/common/jinja/json.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/text.h"

namespace torchchat::jinja {
namespace {

void JsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  for (uint32_t c : Decode(s)) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default: {
        char b[16];
        if (c < 0x20 || (ensure_ascii && c >= 0x7f && c < kRawByte)) {
          if (c >= 0x10000) {
            uint32_t v = c - 0x10000;
            std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
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
    case Value::T::kNone:
      *out += "null";
      return;
    case Value::T::kBool:
      *out += v.b ? "true" : "false";
      return;
    case Value::T::kInt:
      *out += std::to_string(v.i);
      return;
    case Value::T::kFloat:
      if (std::isnan(v.f))
        *out += "NaN";
      else if (std::isinf(v.f))
        *out += v.f > 0 ? "Infinity" : "-Infinity";
      else
        *out += FloatRepr(v.f);
      return;
    case Value::T::kString:
      JsonString(v.s, st.ensure_ascii, out);
      return;
    case Value::T::kList: {
      const auto& items = v.list->items;
      if (items.empty()) {
        *out += "[]";
        return;
      }
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
      if (items.empty()) {
        *out += "{}";
        return;
      }
      auto key_str = [](const Value& k) -> std::string {
        switch (k.t) {
          case Value::T::kString:
            return k.s;
          case Value::T::kNone:
            return "null";
          case Value::T::kBool:
            return k.b ? "true" : "false";
          case Value::T::kInt:
            return std::to_string(k.i);
          case Value::T::kFloat:
            return FloatRepr(k.f);
          default:
            Fail(std::string("tojson: keys must be str, int, float, bool or "
                             "None, not ") +
                 TypeName(k));
        }
      };
      if (st.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](auto* x, auto* y) { return Compare(x->first, y->first, "<") < 0; });
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
      Fail(std::string("Object of type ") + TypeName(v) + " is not JSON serializable");
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
    while (p_ < t_.size() &&
           (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r')) {
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
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
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
        default:
          Error("bad escape");
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
    while (p_ < t_.size() && (IsDigit(t_[p_]) || t_[p_] == '.' || t_[p_] == 'e' || t_[p_] == 'E' ||
                              t_[p_] == '+' || t_[p_] == '-')) {
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

}  // namespace

Value ReadJson(std::string_view text) { return JsonReader(text).Document(); }

void WriteJson(const Value& v, const JsonStyle& style, std::string* out) {
  JsonDump(v, style, 0, out);
}

}  // namespace torchchat::jinja
