#include "tokenizers/unicode.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tokenizers/utf8.h"

namespace tokenizers {
namespace {

struct DecompEntry {
  char32_t cp;
  uint8_t compat;
  uint32_t offset;
  uint8_t len;
};
struct LowerEntry {
  char32_t cp;
  uint32_t offset;
  uint8_t len;
};
struct CccEntry {
  char32_t cp;
  uint8_t ccc;
};
struct ComposeEntry {
  char32_t a, b, c;
};

#include "tokenizers/unicode_tables.inc"

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;
// Ill-formed bytes ride along as code points above U+10FFFF.
constexpr char32_t kRawByte = 0x110000;

int Ccc(char32_t c) {
  if (c < 0x300) return 0;
  const auto* end = kCcc + sizeof(kCcc) / sizeof(kCcc[0]);
  const auto* it =
      std::lower_bound(kCcc, end, c, [](const CccEntry& e, char32_t v) { return e.cp < v; });
  return it != end && it->cp == c ? it->ccc : 0;
}

void Decompose(char32_t c, bool compat, std::vector<char32_t>* out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const int s = c - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out->push_back(kTBase + s % kTCount);
    return;
  }
  if (c < 0xA0 || c >= kRawByte) {
    out->push_back(c);
    return;
  }
  const auto* end = kDecomp + sizeof(kDecomp) / sizeof(kDecomp[0]);
  auto it =
      std::lower_bound(kDecomp, end, c, [](const DecompEntry& e, char32_t v) { return e.cp < v; });
  const DecompEntry* canonical = nullptr;
  const DecompEntry* compatible = nullptr;
  for (; it != end && it->cp == c; ++it) {
    (it->compat ? compatible : canonical) = it;
  }
  const DecompEntry* use = compat && compatible ? compatible : canonical;
  if (!use) {
    out->push_back(c);
    return;
  }
  out->insert(out->end(), kPool + use->offset, kPool + use->offset + use->len);
}

char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto* end = kCompose + sizeof(kCompose) / sizeof(kCompose[0]);
  const auto* it = std::lower_bound(kCompose, end, std::make_pair(a, b),
                                    [](const ComposeEntry& e, std::pair<char32_t, char32_t> v) {
                                      return e.a != v.first ? e.a < v.first : e.b < v.second;
                                    });
  return it != end && it->a == a && it->b == b ? it->c : 0;
}

std::vector<char32_t> ToCodePoints(std::string_view s) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    bool valid;
    const size_t n = NextUtf8Unit(s.substr(i), &valid);
    if (valid) {
      cps.push_back(DecodeUtf8(s.substr(i), n));
    } else {
      for (size_t k = 0; k < n; ++k) {
        cps.push_back(kRawByte + static_cast<unsigned char>(s[i + k]));
      }
    }
    i += n;
  }
  return cps;
}

std::string FromCodePoints(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) {
    if (c >= kRawByte) {
      out.push_back(static_cast<char>(c - kRawByte));
    } else {
      AppendUtf8(c, &out);
    }
  }
  return out;
}

bool IsAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

}  // namespace

const char* UnicodeTablesVersion() { return kUnicodeVersion; }

std::string Normalize(std::string_view text, NormalForm form) {
  if (IsAscii(text)) return std::string(text);  // ASCII is in every form
  const bool compat = form == NormalForm::kNfkc || form == NormalForm::kNfkd;
  std::vector<char32_t> d;
  d.reserve(text.size());
  for (char32_t c : ToCodePoints(text)) Decompose(c, compat, &d);
  // Canonical ordering: a stable sort of each run of non-starters by ccc.
  for (size_t i = 0; i < d.size();) {
    if (Ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && Ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return Ccc(a) < Ccc(b); });
    i = j;
  }
  if (form == NormalForm::kNfd || form == NormalForm::kNfkd) return FromCodePoints(d);
  // Canonical composition.
  std::vector<char32_t> out;
  out.reserve(d.size());
  long starter = -1;
  int last_cc = -1;  // ccc of the last character after the starter; -1: none
  for (char32_t c : d) {
    const int cc = Ccc(c);
    if (starter >= 0 && c < kRawByte && (last_cc == -1 || (last_cc != 0 && last_cc < cc))) {
      if (const char32_t comp = Compose(out[starter], c)) {
        out[starter] = comp;
        continue;
      }
    }
    if (cc == 0) {
      starter = c < kRawByte ? static_cast<long>(out.size()) : -1;
      last_cc = -1;
    } else {
      last_cc = cc;
    }
    out.push_back(c);
  }
  return FromCodePoints(out);
}

std::string Lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto* end = kLower + sizeof(kLower) / sizeof(kLower[0]);
  size_t i = 0;
  while (i < text.size()) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b < 0x80) {
      out.push_back(b >= 'A' && b <= 'Z' ? static_cast<char>(b + 32) : static_cast<char>(b));
      ++i;
      continue;
    }
    bool valid;
    const size_t n = NextUtf8Unit(text.substr(i), &valid);
    if (!valid) {
      out.append(text.data() + i, n);
      i += n;
      continue;
    }
    const char32_t c = DecodeUtf8(text.substr(i), n);
    const auto* it =
        std::lower_bound(kLower, end, c, [](const LowerEntry& e, char32_t v) { return e.cp < v; });
    if (it != end && it->cp == c) {
      for (uint8_t k = 0; k < it->len; ++k) AppendUtf8(kPool[it->offset + k], &out);
    } else {
      out.append(text.data() + i, n);
    }
    i += n;
  }
  return out;
}

}  // namespace tokenizers
