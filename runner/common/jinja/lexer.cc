#include "runner/common/jinja/lexer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "runner/common/jinja/error.h"
#include "runner/common/jinja/text.h"

namespace torchchat::jinja {

Lexer::Lexer(const std::string& source, const LexerOptions& opt) : opt_(opt) {
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

void Lexer::LineCol(size_t pos, int* line, int* col) const {
  auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
  *line = static_cast<int>(it - line_starts_.begin());
  *col = static_cast<int>(pos - *(it - 1)) + 1;
}

void Lexer::Error(size_t pos, const std::string& msg) const {
  int line, col;
  LineCol(pos, &line, &col);
  Fail("line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + msg);
}

std::vector<Token> Lexer::Run() {
  size_t pos = 0;
  bool line_starting = true;
  const size_t n = src_.size();
  while (pos < n) {
    size_t p = pos;
    char kind = 0;
    for (; p + 1 < n; ++p) {
      if (src_[p] == '{' && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) {
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
    EmitLeadingText(src_.substr(pos, p - pos), pos, sign, kind != '{', line_starting);
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

void Lexer::Emit(Tok t, std::string v, size_t pos) {
  if (t == Tok::kText && v.empty()) return;
  tokens_.push_back(Token{t, std::move(v), pos});
}

// The text before a tag, with the tag's whitespace control applied.
void Lexer::EmitLeadingText(std::string text, size_t pos, char sign, bool lstrip_kind,
                            bool line_starting) {
  if (sign == '-') {
    text = PyStrip(text, false, true);
  } else if (sign != '+' && opt_.lstrip_blocks && lstrip_kind) {
    size_t l = text.rfind('\n');
    l = l == std::string::npos ? 0 : l + 1;
    if ((l > 0 || line_starting) && l < text.size() && AllSpace(std::string_view(text).substr(l))) {
      text.resize(l);
    }
  }
  Emit(Tok::kText, std::move(text), pos);
}

bool Lexer::IsWs(char c) const {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

size_t Lexer::SkipWs(size_t k) const {
  while (k < src_.size() && IsWs(src_[k])) ++k;
  return k;
}

size_t Lexer::Comment(size_t q, size_t start, bool* line_starting) {
  const size_t n = src_.size();
  for (size_t k = q; k + 1 < n; ++k) {
    if (k + 2 < n && (src_[k] == '+' || src_[k] == '-') && src_[k + 1] == '#' &&
        src_[k + 2] == '}') {
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

bool Lexer::MatchWord(size_t* k, const char* word) const {
  size_t len = std::strlen(word);
  if (src_.compare(*k, len, word) != 0) return false;
  *k += len;
  return true;
}

// {% raw %}: the raw begin tag takes no trim_blocks newline, as in jinja2.
bool Lexer::RawBegin(size_t q, size_t* after) {
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

size_t Lexer::Raw(size_t begin, bool* line_starting) {
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
    EmitLeadingText(src_.substr(begin, p - begin), begin, sign, true, starting);
    *line_starting = src_[end - 1] == '\n';
    return end;
  }
  Error(begin, "missing end of raw directive");
}

size_t Lexer::Tag(size_t k, bool block, bool* line_starting) {
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
    static const char* kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                 "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                 ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
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
        std::snprintf(shown, sizeof shown, "0x%02x", static_cast<unsigned char>(c));
      }
      Error(k, std::string("unexpected char ") + shown);
    }
    std::string o = op;
    if (o == "(" || o == "[" || o == "{") {
      balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
    } else if (o == ")" || o == "]" || o == "}") {
      if (balance.empty()) Error(k, "unexpected '" + o + "'");
      if (balance.back() != o[0]) {
        Error(k, "unexpected '" + o + "', expected '" + std::string(1, balance.back()) + "'");
      }
      balance.pop_back();
    }
    Emit(Tok::kOp, o, k);
    k += o.size();
  }
}

size_t Lexer::Digits(size_t k) const {
  // Digit runs with single underscores between digits, as Python allows.
  while (k < src_.size() &&
         (IsDigit(src_[k]) || (src_[k] == '_' && k + 1 < src_.size() && IsDigit(src_[k + 1])))) {
    ++k;
  }
  return k;
}

size_t Lexer::Number(size_t k) {
  const size_t n = src_.size();
  size_t start = k;
  if (src_[k] == '0' && k + 1 < n && std::strchr("xXoObB", src_[k + 1]) != nullptr) {
    int base = std::strchr("xX", src_[k + 1]) ? 16 : std::strchr("oO", src_[k + 1]) ? 8 : 2;
    size_t e = k + 2;
    std::string digits;
    while (e < n && (std::isxdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) {
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
size_t Lexer::String(size_t k) {
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
      case '\n':
        break;  // line continuation
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case 'a':
        out.push_back('\a');
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
      case 'v':
        out.push_back('\v');
        break;
      case 'x':
        hex(2);
        break;
      case 'u':
        hex(4);
        break;
      case 'U':
        hex(8);
        break;
      default:
        if (x >= '0' && x <= '7') {
          uint32_t v = x - '0';
          for (int j = 0; j < 2 && e < n && src_[e] >= '0' && src_[e] <= '7'; ++j) {
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
}  // namespace torchchat::jinja
