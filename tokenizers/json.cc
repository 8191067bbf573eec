#include "tokenizers/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "tokenizers/utf8.h"

namespace tokenizers {

Json Json::Bool(bool b) {
  Json j;
  j.type_ = Type::kBool;
  j.b_ = b;
  return j;
}
Json Json::Number(double d) {
  Json j;
  j.type_ = Type::kNumber;
  j.num_ = d;
  return j;
}
Json Json::String(std::string s) {
  Json j;
  j.type_ = Type::kString;
  j.str_ = std::move(s);
  return j;
}
Json Json::Array() {
  Json j;
  j.type_ = Type::kArray;
  return j;
}
Json Json::Object() {
  Json j;
  j.type_ = Type::kObject;
  return j;
}

bool Json::AsInt64(int64_t* out) const {
  if (type_ != Type::kNumber) return false;
  if (!(num_ >= -9.0e15 && num_ <= 9.0e15)) return false;
  if (std::floor(num_) != num_) return false;
  *out = static_cast<int64_t>(num_);
  return true;
}

const Json* Json::Find(std::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  for (const auto& m : members_) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

std::string Json::GetString(std::string_view key, std::string def) const {
  const Json* j = Find(key);
  return j && j->is_string() ? j->str() : def;
}

bool Json::GetBool(std::string_view key, bool def) const {
  const Json* j = Find(key);
  return j && j->is_bool() ? j->bool_value() : def;
}

namespace {

constexpr int kMaxDepth = 200;

class Parser {
 public:
  explicit Parser(std::string_view t) : t_(t) {}

  Result<Json> Run() {
    Json v;
    if (!Value(&v, 0)) return MakeError(err_);
    Ws();
    if (p_ != t_.size()) {
      Fail("trailing characters after the JSON value");
      return MakeError(err_);
    }
    return v;
  }

 private:
  bool Fail(const char* what) {
    if (err_.empty()) {
      err_ = std::string("invalid JSON at byte ") + std::to_string(p_) + ": " + what;
    }
    return false;
  }
  void Ws() {
    while (p_ < t_.size() &&
           (t_[p_] == ' ' || t_[p_] == '\n' || t_[p_] == '\r' || t_[p_] == '\t')) {
      ++p_;
    }
  }
  bool Lit(std::string_view w) {
    if (t_.substr(p_, w.size()) != w) return Fail("unexpected token");
    p_ += w.size();
    return true;
  }
  bool Value(Json* out, int depth) {
    if (depth > kMaxDepth) return Fail("nesting too deep");
    Ws();
    if (p_ >= t_.size()) return Fail("unexpected end of input");
    const char c = t_[p_];
    switch (c) {
      case '{':
        return ObjectV(out, depth);
      case '[':
        return ArrayV(out, depth);
      case '"': {
        std::string s;
        if (!Str(&s)) return false;
        *out = Json::String(std::move(s));
        return true;
      }
      case 't':
        if (!Lit("true")) return false;
        *out = Json::Bool(true);
        return true;
      case 'f':
        if (!Lit("false")) return false;
        *out = Json::Bool(false);
        return true;
      case 'n':
        if (!Lit("null")) return false;
        *out = Json();
        return true;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return Num(out);
        return Fail("unexpected character");
    }
  }
  bool Num(Json* out) {
    const size_t start = p_;
    if (t_[p_] == '-') ++p_;
    auto digits = [&] {
      const size_t s = p_;
      while (p_ < t_.size() && t_[p_] >= '0' && t_[p_] <= '9') ++p_;
      return p_ > s;
    };
    if (!digits()) return Fail("bad number");
    if (p_ < t_.size() && t_[p_] == '.') {
      ++p_;
      if (!digits()) return Fail("bad number");
    }
    if (p_ < t_.size() && (t_[p_] == 'e' || t_[p_] == 'E')) {
      ++p_;
      if (p_ < t_.size() && (t_[p_] == '+' || t_[p_] == '-')) ++p_;
      if (!digits()) return Fail("bad number");
    }
    const std::string s(t_.substr(start, p_ - start));
    *out = Json::Number(std::strtod(s.c_str(), nullptr));
    return true;
  }
  bool Hex4(uint32_t* v) {
    if (p_ + 4 > t_.size()) return Fail("truncated \\u escape");
    *v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = t_[p_++];
      *v <<= 4;
      if (c >= '0' && c <= '9')
        *v |= c - '0';
      else if (c >= 'a' && c <= 'f')
        *v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        *v |= c - 'A' + 10;
      else
        return Fail("bad \\u escape");
    }
    return true;
  }
  bool Str(std::string* s) {
    ++p_;  // opening quote
    while (true) {
      // Copy the run up to the next quote or backslash in one go: vocab
      // files are mostly plain strings.
      size_t q = p_;
      while (q < t_.size() && t_[q] != '"' && t_[q] != '\\') {
        if (static_cast<unsigned char>(t_[q]) < 0x20) {
          p_ = q;
          return Fail("control character in string");
        }
        ++q;
      }
      s->append(t_.data() + p_, q - p_);
      p_ = q;
      if (p_ >= t_.size()) return Fail("unterminated string");
      if (t_[p_] == '"') {
        ++p_;
        return true;
      }
      ++p_;  // backslash
      if (p_ >= t_.size()) return Fail("unterminated string");
      const char e = t_[p_++];
      switch (e) {
        case '"':
          s->push_back('"');
          break;
        case '\\':
          s->push_back('\\');
          break;
        case '/':
          s->push_back('/');
          break;
        case 'b':
          s->push_back('\b');
          break;
        case 'f':
          s->push_back('\f');
          break;
        case 'n':
          s->push_back('\n');
          break;
        case 'r':
          s->push_back('\r');
          break;
        case 't':
          s->push_back('\t');
          break;
        case 'u': {
          uint32_t cp = 0;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            // A high surrogate must be followed by a low one; a lone one
            // becomes U+FFFD, as Python's json does not allow it in UTF-8.
            uint32_t lo = 0;
            if (p_ + 6 <= t_.size() && t_[p_] == '\\' && t_[p_ + 1] == 'u') {
              const size_t save = p_;
              p_ += 2;
              if (!Hex4(&lo)) return false;
              if (lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              } else {
                p_ = save;
                cp = 0xFFFD;
              }
            } else {
              cp = 0xFFFD;
            }
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            cp = 0xFFFD;
          }
          AppendUtf8(cp, s);
          break;
        }
        default:
          return Fail("bad escape");
      }
    }
  }
  bool ArrayV(Json* out, int depth) {
    ++p_;
    *out = Json::Array();
    Ws();
    if (p_ < t_.size() && t_[p_] == ']') {
      ++p_;
      return true;
    }
    while (true) {
      Json v;
      if (!Value(&v, depth + 1)) return false;
      out->Push(std::move(v));
      Ws();
      if (p_ >= t_.size()) return Fail("unterminated array");
      if (t_[p_] == ',') {
        ++p_;
        continue;
      }
      if (t_[p_] == ']') {
        ++p_;
        return true;
      }
      return Fail("expected ',' or ']'");
    }
  }
  bool ObjectV(Json* out, int depth) {
    ++p_;
    *out = Json::Object();
    Ws();
    if (p_ < t_.size() && t_[p_] == '}') {
      ++p_;
      return true;
    }
    while (true) {
      Ws();
      if (p_ >= t_.size() || t_[p_] != '"') return Fail("expected a key");
      std::string key;
      if (!Str(&key)) return false;
      Ws();
      if (p_ >= t_.size() || t_[p_] != ':') return Fail("expected ':'");
      ++p_;
      Json v;
      if (!Value(&v, depth + 1)) return false;
      out->Set(std::move(key), std::move(v));
      Ws();
      if (p_ >= t_.size()) return Fail("unterminated object");
      if (t_[p_] == ',') {
        ++p_;
        continue;
      }
      if (t_[p_] == '}') {
        ++p_;
        return true;
      }
      return Fail("expected ',' or '}'");
    }
  }

  std::string_view t_;
  size_t p_ = 0;
  std::string err_;
};

}  // namespace

Result<Json> ParseJson(std::string_view text) { return Parser(text).Run(); }

void WriteJsonString(std::string_view s, std::string* out) {
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      // Copy a valid sequence; replace an invalid byte by U+FFFD.
      const size_t n = ValidUtf8SequenceLength(s.substr(i));
      if (n == 0) {
        out->append("\\ufffd");
        ++i;
      } else {
        out->append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out->append(buf);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out->push_back('"');
}

void Json::Write(std::string* out) const {
  switch (type_) {
    case Type::kNull:
      out->append("null");
      break;
    case Type::kBool:
      out->append(b_ ? "true" : "false");
      break;
    case Type::kNumber: {
      int64_t i;
      char buf[32];
      if (AsInt64(&i)) {
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(i));
      } else {
        std::snprintf(buf, sizeof buf, "%.17g", num_);
      }
      out->append(buf);
      break;
    }
    case Type::kString:
      WriteJsonString(str_, out);
      break;
    case Type::kArray:
      out->push_back('[');
      for (size_t k = 0; k < items_.size(); ++k) {
        if (k) out->push_back(',');
        items_[k].Write(out);
      }
      out->push_back(']');
      break;
    case Type::kObject:
      out->push_back('{');
      for (size_t k = 0; k < members_.size(); ++k) {
        if (k) out->push_back(',');
        WriteJsonString(members_[k].first, out);
        out->push_back(':');
        members_[k].second.Write(out);
      }
      out->push_back('}');
      break;
  }
}

}  // namespace tokenizers
