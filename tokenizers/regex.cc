#include "tokenizers/regex.h"

#include "re2/re2.h"
#include "tokenizers/utf8.h"

namespace tokenizers {

bool IsUnicodeSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
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
        case 's':
          cls = kSpaceClass;
          break;
        case 'S':
          cls = kSpaceClass;
          neg = true;
          break;
        case 'w':
          cls = kWordClass;
          break;
        case 'W':
          cls = kWordClass;
          neg = true;
          break;
        case 'd':
          cls = "\\p{Nd}";
          break;
        case 'D':
          cls = "\\p{Nd}";
          neg = true;
          break;
        default:
          break;
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
  static void GiveBack(std::string_view text, size_t s, bool newline_alt, size_t* e) {
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

// ---------------------------------------------------------------------------
// Hand-written scanners for the two patterns nearly every BPE model uses
// (cl100k / Llama 3 and GPT-2). They implement the same leftmost-first
// alternation as the regex, one pass over the text, with no regex engine
// call (and no lock) per piece. Character classes come from a table that
// RE2 itself fills in, so \p{L} and \p{N} mean exactly what they mean in
// the RE2 path; regex_test checks both paths agree.

enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4 };

const std::vector<uint8_t>& CategoryTable() {
  static const std::vector<uint8_t>* table = [] {
    auto* t = new std::vector<uint8_t>(0x110000, 0);
    // Every scalar value once, in order; each run that \p{L}+ (or \p{N}+)
    // matches is a range of the class. A few thousand matches in all.
    std::string all;
    all.reserve(4 * 0x110000);
    for (char32_t c = 1; c < 0x110000; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      AppendUtf8(c, &all);
    }
    auto mark = [&](const char* cls, uint8_t bit) {
      RE2 re(cls);
      absl::string_view input(all), m;
      size_t pos = 0;
      while (pos < all.size() && re.Match(input, pos, all.size(), RE2::UNANCHORED, &m, 1)) {
        const size_t s = m.data() - all.data();
        const size_t e = s + m.size();
        size_t i = s;
        while (i < e) {
          bool valid;
          const size_t n = NextUtf8Unit(std::string_view(all).substr(i), &valid);
          (*t)[DecodeUtf8(std::string_view(all).substr(i), n)] |= bit;
          i += n;
        }
        pos = e > s ? e : s + 1;
      }
    };
    mark("\\p{L}+", kLetter);
    mark("\\p{N}+", kNumber);
    for (char32_t c = 0; c < 0x3001; ++c) {
      if (IsUnicodeSpace(c)) (*t)[c] |= kSpace;
    }
    return t;
  }();
  return *table;
}

// Reads the character at i: its class bits and byte length. An ill-formed
// byte has no class bits and flag `bad`.
struct Char {
  uint8_t cls;
  uint8_t len;
  bool bad;
  char32_t cp;
};

class Scanner {
 public:
  explicit Scanner(std::string_view t) : t_(t), table_(CategoryTable()) {}

  Char At(size_t i) const {
    const auto b = static_cast<unsigned char>(t_[i]);
    if (b < 0x80) return {table_[b], 1, false, b};
    bool valid;
    const size_t n = NextUtf8Unit(t_.substr(i), &valid);
    if (!valid) return {0, static_cast<uint8_t>(n), true, 0xFFFD};
    const char32_t cp = DecodeUtf8(t_.substr(i), n);
    return {table_[cp], static_cast<uint8_t>(n), false, cp};
  }
  size_t size() const { return t_.size(); }

  // End of the run of characters with any of `bits`, from i.
  size_t Run(size_t i, uint8_t bits) const {
    while (i < t_.size()) {
      const Char c = At(i);
      if (c.bad || !(c.cls & bits)) break;
      i += c.len;
    }
    return i;
  }
  // End of a run of "other" characters ([^\s\p{L}\p{N}]), from i.
  size_t OtherRun(size_t i) const {
    while (i < t_.size()) {
      const Char c = At(i);
      if (c.bad || (c.cls & (kLetter | kNumber | kSpace))) break;
      i += c.len;
    }
    return i;
  }
  // Contractions 's 't 're 've 'm 'll 'd at i (t_[i] == '\''); 0 if none.
  size_t Contraction(size_t i, bool ignore_case) const {
    if (i + 1 >= t_.size()) return 0;
    auto lower = [&](size_t k) -> int {
      if (k >= t_.size()) return 0;
      const char c = t_[k];
      if (ignore_case && c >= 'A' && c <= 'Z') return c - 'A' + 'a';
      return c;
    };
    const int a = lower(i + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    // Under (?i), 's' also folds with U+017F LATIN SMALL LETTER LONG S.
    if (ignore_case && t_.compare(i + 1, 2, "\xC5\xBF") == 0) return 3;
    const int b = lower(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
      return 3;
    }
    return 0;
  }
  // The whitespace alternatives: `\s+(?!\S)|\s+` starting at i (which is
  // whitespace); with `newline_alt`, `\s*[\r\n]+` first.
  size_t Whitespace(size_t i, bool newline_alt) const {
    size_t j = i, last_nl_end = 0, last_start = i;
    int count = 0;
    while (j < t_.size()) {
      const Char c = At(j);
      if (c.bad || !(c.cls & kSpace)) break;
      if (c.cp == '\r' || c.cp == '\n') last_nl_end = j + 1;
      last_start = j;
      j += c.len;
      ++count;
    }
    if (newline_alt && last_nl_end) return last_nl_end;
    if (j == t_.size() || count < 2) return j;
    return last_start;
  }

 private:
  std::string_view t_;
  const std::vector<uint8_t>& table_;
};

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
class Cl100kScanner : public Regex {
 public:
  Cl100kScanner() { CategoryTable(); }
  void FindAll(std::string_view text, std::vector<Span>* out) const override {
    Scanner sc(text);
    size_t i = 0;
    const size_t n = text.size();
    while (i < n) {
      const size_t e = MatchAt(sc, text, i);
      out->push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(e)});
      i = e;
    }
  }
  const char* engine() const override { return "scanner"; }

 private:
  static size_t MatchAt(const Scanner& sc, std::string_view t, size_t i) {
    if (t[i] == '\'') {
      if (size_t k = sc.Contraction(i, true)) return i + k;
    }
    const Char c = sc.At(i);
    if (c.bad) {
      // Bytes no alternative matches: one piece per ill-formed unit.
      return i + c.len;
    }
    if (c.cls & kLetter) return sc.Run(i, kLetter);
    if (!(c.cls & kNumber) && c.cp != '\r' && c.cp != '\n' && i + c.len < t.size()) {
      const Char d = sc.At(i + c.len);
      if (!d.bad && (d.cls & kLetter)) return sc.Run(i + c.len, kLetter);
    }
    if (c.cls & kNumber) {
      size_t j = i + c.len;
      for (int k = 1; k < 3 && j < t.size(); ++k) {
        const Char d = sc.At(j);
        if (d.bad || !(d.cls & kNumber)) break;
        j += d.len;
      }
      return j;
    }
    size_t j = i;
    if (c.cp == ' ' && i + 1 < t.size()) {
      const Char d = sc.At(i + 1);
      if (!d.bad && !(d.cls & (kLetter | kNumber | kSpace))) j = i + 1;
    }
    if (j > i || !(c.cls & kSpace)) {
      j = sc.OtherRun(j);
      while (j < t.size() && (t[j] == '\r' || t[j] == '\n')) ++j;
      return j;
    }
    return sc.Whitespace(i, true);
  }
};

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
class Gpt2Scanner : public Regex {
 public:
  Gpt2Scanner() { CategoryTable(); }
  void FindAll(std::string_view text, std::vector<Span>* out) const override {
    Scanner sc(text);
    size_t i = 0;
    while (i < text.size()) {
      const size_t e = MatchAt(sc, text, i);
      out->push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(e)});
      i = e;
    }
  }
  const char* engine() const override { return "scanner"; }

 private:
  static size_t MatchAt(const Scanner& sc, std::string_view t, size_t i) {
    if (t[i] == '\'') {
      if (size_t k = sc.Contraction(i, false)) return i + k;
    }
    Char c = sc.At(i);
    if (c.bad) return i + c.len;
    size_t j = i;
    if (c.cp == ' ' && i + 1 < t.size()) {
      const Char d = sc.At(i + 1);
      if (!d.bad) {
        j = i + 1;
        c = d;
      }
    }
    if (c.cls & kLetter) return sc.Run(j, kLetter);
    if (c.cls & kNumber) return sc.Run(j, kNumber);
    if (!(c.cls & kSpace)) return sc.OtherRun(j);
    return sc.Whitespace(i, false);
  }
};

}  // namespace

constexpr char kCl100kPattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Result<std::unique_ptr<Regex>> CompileRegex(std::string_view pattern) {
  if (pattern == kCl100kPattern) {
    return std::unique_ptr<Regex>(std::make_unique<Cl100kScanner>());
  }
  if (pattern == kGpt2Pattern) {
    return std::unique_ptr<Regex>(std::make_unique<Gpt2Scanner>());
  }
  return CompileRe2(pattern);
}

Result<std::unique_ptr<Regex>> CompileRe2(std::string_view pattern) {
  std::string p(pattern);
  bool give_back = false;
  constexpr std::string_view kTail = "\\s+(?!\\S)|\\s+";
  if (p.size() >= kTail.size() && p.compare(p.size() - kTail.size(), kTail.size(), kTail) == 0) {
    p.resize(p.size() - kTail.size());
    p.append("\\s+");
    give_back = true;
  }
  const bool lookaround = p.find("(?=") != std::string::npos ||
                          p.find("(?!") != std::string::npos || p.find("(?<") != std::string::npos;
  std::string rewritten;
  if (!lookaround && RewriteShorthands(p, &rewritten)) {
    RE2::Options opt;
    opt.set_log_errors(false);
    opt.set_max_mem(64 << 20);
    auto re = std::make_unique<RE2>(rewritten, opt);
    if (re->ok()) {
      return std::unique_ptr<Regex>(std::make_unique<Re2Regex>(
          std::move(re), give_back, p.find("\\s*[\\r\\n]+") != std::string::npos));
    }
  }
  return CompilePcre2(pattern);
}

}  // namespace tokenizers
