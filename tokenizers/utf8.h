// UTF-8 helpers shared by the tokenizers and the streaming decoder.
#ifndef TOKENIZERS_UTF8_H_
#define TOKENIZERS_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace tokenizers {

// Length of the longest prefix of `s` that does not end inside a UTF-8
// sequence which later bytes could still complete. Invalid bytes count as
// complete (they can never become valid), so the result only ever holds back
// at most 3 bytes of a well-formed, truncated sequence.
size_t CompleteUtf8Prefix(std::string_view s);

// Length of the well-formed UTF-8 sequence at the start of `s`, or 0 if
// `s` is empty or starts with an ill-formed sequence.
size_t ValidUtf8SequenceLength(std::string_view s);

// Number of bytes that make up the next "character" of `s` (non-empty):
// a well-formed sequence, or else the maximal ill-formed subpart, which is
// what Python's errors="replace" and Rust's from_utf8_lossy each turn into
// one U+FFFD.
size_t NextUtf8Unit(std::string_view s, bool* valid);

// Offset of the first byte of `s` that is not part of well-formed UTF-8, or
// std::string_view::npos when all of `s` is well-formed.
size_t FindInvalidUtf8(std::string_view s);

// `s` with every ill-formed subpart replaced by U+FFFD.
std::string ReplaceInvalidUtf8(std::string_view s);

// Decodes the code point of a well-formed sequence of length `len`.
char32_t DecodeUtf8(std::string_view s, size_t len);

// Appends the UTF-8 encoding of `cp`.
void AppendUtf8(char32_t cp, std::string* out);

// Turns token bytes into text one token at a time, never emitting half a
// character: bytes of an unfinished character wait for the next token.
class Utf8StreamDecoder {
 public:
  // Appends `bytes` and returns whatever text is now complete.
  std::string Push(std::string_view bytes);
  // Returns the held-back bytes (an unfinished sequence at the end of the
  // stream), leaving the decoder empty.
  std::string Flush();

 private:
  std::string pending_;
};

}  // namespace tokenizers

#endif  // TOKENIZERS_UTF8_H_
