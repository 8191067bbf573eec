#include "utf8.h"

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
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) ||
            (c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F)) {
          return n;
        }
      }
      return n - back;
    }
    return n;
  }
  return n;
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
