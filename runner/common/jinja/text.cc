#include "runner/common/jinja/text.h"

#include <algorithm>
#include <limits>

#include "tokenizers/utf8.h"

namespace torchchat::jinja {

std::vector<uint32_t> Decode(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const std::string_view rest = s.substr(i);
    const size_t len = tokenizers::ValidUtf8SequenceLength(rest);
    if (len == 0) {
      // One byte at a time, unlike U+FFFD replacement's maximal subparts:
      // each byte has to come back out of AppendCp unchanged.
      out.push_back(kRawByte + static_cast<unsigned char>(s[i]));
      ++i;
    } else {
      out.push_back(tokenizers::DecodeUtf8(rest, len));
      i += len;
    }
  }
  return out;
}

void AppendCp(uint32_t cp, std::string* out) {
  if (cp >= kRawByte) {
    out->push_back(static_cast<char>(cp - kRawByte));
  } else {
    tokenizers::AppendUtf8(cp, out);
  }
}

std::string Encode(const std::vector<uint32_t>& cps, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) AppendCp(cps[i], &out);
  return out;
}

bool IsSpace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

bool IsLineBreak(uint32_t c) {
  return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

std::string PyStrip(std::string_view s, bool left, bool right, const std::string* chars) {
  std::vector<uint32_t> cps = Decode(s);
  std::vector<uint32_t> set;
  if (chars) set = Decode(*chars);
  auto strip = [&](uint32_t c) {
    return chars ? std::find(set.begin(), set.end(), c) != set.end() : IsSpace(c);
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip(cps[b])) ++b;
  if (right)
    while (e > b && strip(cps[e - 1])) --e;
  return Encode(cps, b, e);
}

bool AllSpace(std::string_view s) {
  for (uint32_t c : Decode(s)) {
    if (!IsSpace(c)) return false;
  }
  return true;
}

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

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
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

std::string Replace(const std::string& s, const std::string& old, const std::string& rep,
                    int64_t count) {
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

namespace {

std::string MapCase(const std::string& s, uint32_t (*f)(uint32_t)) {
  std::string out;
  for (uint32_t c : Decode(s)) AppendCp(f(c), &out);
  return out;
}

}  // namespace

std::string UpperStr(const std::string& s) {
  std::string out;
  for (uint32_t c : Decode(s)) {
    if (c == 0xdf)
      out += "SS";  // Python maps sharp s to two letters
    else
      AppendCp(UpperCp(c), &out);
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
std::string JinjaTitle(const std::string& s) {
  std::string out;
  bool start = true;
  for (uint32_t c : Decode(s)) {
    bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || IsSpace(c);
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

}  // namespace torchchat::jinja
