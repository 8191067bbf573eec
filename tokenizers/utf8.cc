#include "tokenizers/utf8.h"

namespace tokenizers {
namespace {

// Sequence length announced by a lead byte, or 0 if `c` cannot start one.
int SequenceLength(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

}  // namespace

size_t CompleteUtf8Prefix(std::string_view s) {
  // Only the last 3 bytes can belong to an unfinished sequence.
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if (IsContinuation(c)) continue;
    const int len = SequenceLength(c);
    if (len <= 1) return n;  // ASCII or invalid lead: nothing to wait for.
    if (static_cast<size_t>(len) > back) {
      // The lead announces more bytes than there are. Wait only if what
      // follows could still be valid (E0/ED/F0/F4 restrict the 2nd byte).
      if (back >= 2) {
        const auto c1 = static_cast<unsigned char>(s[n - back + 1]);
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
            (c == 0xF4 && c1 > 0x8F)) {
          return n;
        }
      }
      return n - back;
    }
    return n;
  }
  return n;
}

size_t NextUtf8Unit(std::string_view s, bool* valid) {
  const auto c = static_cast<unsigned char>(s[0]);
  const int len = SequenceLength(c);
  *valid = false;
  if (len == 0) return 1;
  if (len == 1) {
    *valid = true;
    return 1;
  }
  // The second byte's allowed range depends on the lead (no overlongs, no
  // surrogates, nothing above U+10FFFF).
  unsigned char lo = 0x80, hi = 0xBF;
  if (c == 0xE0) lo = 0xA0;
  if (c == 0xED) hi = 0x9F;
  if (c == 0xF0) lo = 0x90;
  if (c == 0xF4) hi = 0x8F;
  size_t k = 1;
  while (k < static_cast<size_t>(len) && k < s.size()) {
    const auto b = static_cast<unsigned char>(s[k]);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : IsContinuation(b);
    if (!ok) return k;
    ++k;
  }
  if (k == static_cast<size_t>(len)) *valid = true;
  return k;
}

size_t ValidUtf8SequenceLength(std::string_view s) {
  if (s.empty()) return 0;
  bool valid;
  const size_t n = NextUtf8Unit(s, &valid);
  return valid ? n : 0;
}

size_t FindInvalidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = ValidUtf8SequenceLength(s.substr(i));
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string ReplaceInvalidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    // Fast path over ASCII.
    size_t j = i;
    while (j < s.size() && static_cast<unsigned char>(s[j]) < 0x80) ++j;
    out.append(s.data() + i, j - i);
    i = j;
    if (i >= s.size()) break;
    bool valid;
    const size_t n = NextUtf8Unit(s.substr(i), &valid);
    if (valid) {
      out.append(s.data() + i, n);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += n;
  }
  return out;
}

char32_t DecodeUtf8(std::string_view s, size_t len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(char32_t cp, std::string* s) {
  if (cp < 0x80) {
    s->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8StreamDecoder::Push(std::string_view bytes) {
  pending_.append(bytes);
  const size_t complete = CompleteUtf8Prefix(pending_);
  std::string out = pending_.substr(0, complete);
  pending_.erase(0, complete);
  return out;
}

std::string Utf8StreamDecoder::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace tokenizers
