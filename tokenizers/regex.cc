#include "regex.h"

#include "re2/re2.h"
#include "utf8.h"

namespace tokenizers {

bool IsUnicodeSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

namespace {

// Members of Unicode White_Space, written to go inside a character class.
constexpr char kSpaceClass[] =
    "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
constexpr char kWordClass[] = "\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}";

// Rewrites Perl shorthand classes, whose meaning RE2 restricts to ASCII,
// into explicit Unicode classes. Returns false for shorthands we cannot
// express (a negated shorthand inside a class).
bool RewriteShorthands(std::string_view p, std::string* out) {
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      const char* cls = nullptr;
      bool neg = false;
      switch (e) {
        case 's': cls = kSpaceClass; break;
        case 'S': cls = kSpaceClass; neg = true; break;
        case 'w': cls = kWordClass; break;
        case 'W': cls = kWordClass; neg = true; break;
        case 'd': cls = "\\p{Nd}"; break;
        case 'D': cls = "\\p{Nd}"; neg = true; break;
        default: break;
      }
      if (cls) {
        if (in_class) {
          if (neg) return false;
          out->append(cls);
        } else {
          out->append(neg ? "[^" : "[");
          out->append(cls);
          out->push_back(']');
        }
      } else {
        out->push_back(c);
        out->push_back(e);
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out->push_back(c);
      // A ']' or '^]' right after '[' is literal.
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out->push_back('^');
        ++i;
      }
      if (i + 1 < p.size() && p[i + 1] == ']') {
        out->push_back(']');
        ++i;
      }
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out->push_back(c);
  }
  return true;
}

// Decodes the code point starting at `text[i]`; an ill-formed byte counts
// as a one-byte non-space.
char32_t CodePointAt(std::string_view text, size_t i, size_t* len) {
  bool valid;
  *len = NextUtf8Unit(text.substr(i), &valid);
  return valid ? DecodeUtf8(text.substr(i), *len) : 0xFFFD;
}

class Re2Regex : public Regex {
 public:
  Re2Regex(std::unique_ptr<RE2> re, bool give_back, bool newline_alt)
      : re_(std::move(re)), give_back_(give_back), newline_alt_(newline_alt) {}

  void FindAll(std::string_view text, std::vector<Span>* out) const override {
    size_t pos = 0;
    const size_t n = text.size();
    while (pos < n) {
      absl::string_view m;
      if (!re_->Match(text, pos, n, RE2::UNANCHORED, &m, 1)) break;
      size_t s = m.data() - text.data();
      size_t e = s + m.size();
      if (e == s) {
        // Empty match: step over one character and look again.
        size_t len;
        CodePointAt(text, s, &len);
        pos = s + len;
        continue;
      }
      if (give_back_ && e < n) GiveBack(text, s, newline_alt_, &e);
      out->push_back({static_cast<uint32_t>(s), static_cast<uint32_t>(e)});
      pos = e;
    }
  }
  const char* engine() const override { return "re2"; }

 private:
  // Emulates `\s+(?!\S)` for a whitespace-only match of `\s+`: when a
  // non-space follows, the run keeps all but its last character, unless it
  // has only one. In patterns with a `\s*[\r\n]+` alternative before it,
  // a whitespace-only match ending in a line break comes from that
  // alternative (the `\s+` one is only reached for runs without line
  // breaks) and is left alone.
  static void GiveBack(std::string_view text, size_t s, bool newline_alt,
                       size_t* e) {
    size_t len;
    if (IsUnicodeSpace(CodePointAt(text, *e, &len))) return;
    const char last = text[*e - 1];
    if (newline_alt && (last == '\n' || last == '\r')) return;
    size_t i = s, prev = s;
    int count = 0;
    while (i < *e) {
      const char32_t c = CodePointAt(text, i, &len);
      if (!IsUnicodeSpace(c)) return;
      prev = i;
      i += len;
      ++count;
    }
    if (count >= 2) *e = prev;
  }

  std::unique_ptr<RE2> re_;
  bool give_back_;
  bool newline_alt_;
};

}  // namespace

Result<std::unique_ptr<Regex>> CompileRegex(std::string_view pattern) {
  std::string p(pattern);
  bool give_back = false;
  constexpr std::string_view kTail = "\\s+(?!\\S)|\\s+";
  if (p.size() >= kTail.size() &&
      p.compare(p.size() - kTail.size(), kTail.size(), kTail) == 0) {
    p.resize(p.size() - kTail.size());
    p.append("\\s+");
    give_back = true;
  }
  const bool lookaround = p.find("(?=") != std::string::npos ||
                          p.find("(?!") != std::string::npos ||
                          p.find("(?<") != std::string::npos;
  std::string rewritten;
  if (!lookaround && RewriteShorthands(p, &rewritten)) {
    RE2::Options opt;
    opt.set_log_errors(false);
    opt.set_max_mem(64 << 20);
    auto re = std::make_unique<RE2>(rewritten, opt);
    if (re->ok()) {
      return std::unique_ptr<Regex>(
          std::make_unique<Re2Regex>(
              std::move(re), give_back,
              p.find("\\s*[\\r\\n]+") != std::string::npos));
    }
  }
  return CompilePcre2(pattern);
}

}  // namespace tokenizers
