// Python str semantics over UTF-8 bytes. Templates index, slice, strip and
// case-map strings as Python does, by code point, so the engine decodes to
// code points for those operations and stores plain UTF-8 everywhere else.
// Invalid bytes must survive a round trip (jinja2 would never see them, but
// a C++ caller can pass any bytes), hence the surrogateescape-like encoding.
#ifndef RUNNER_COMMON_JINJA_TEXT_H_
#define RUNNER_COMMON_JINJA_TEXT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace torchchat::jinja {

// Decode() turns an invalid byte b into kRawByte + b, outside Unicode's
// range, and AppendCp() turns it back into that byte.
constexpr uint32_t kRawByte = 0x110000;

std::vector<uint32_t> Decode(std::string_view s);
void AppendCp(uint32_t cp, std::string* out);
// Code points [begin, end) of `cps`, encoded.
std::string Encode(const std::vector<uint32_t>& cps, size_t begin, size_t end);

inline char AsciiLower(char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
inline bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Python's str.isspace().
bool IsSpace(uint32_t c);
// Python's str.splitlines() separators.
bool IsLineBreak(uint32_t c);
bool AllSpace(std::string_view s);

// Simple case mapping for ASCII, Latin-1, Latin Extended-A, Greek and
// Cyrillic: what chat content and role names plausibly need. Other scripts
// (and special cases such as German sharp s becoming "SS") are left as is.
uint32_t UpperCp(uint32_t c);
uint32_t LowerCp(uint32_t c);
bool IsCased(uint32_t c);

// str.strip/lstrip/rstrip; `chars` null strips whitespace.
std::string PyStrip(std::string_view s, bool left, bool right, const std::string* chars = nullptr);
std::string UpperStr(const std::string& s);
std::string LowerStr(const std::string& s);
std::string Capitalize(const std::string& s);
// Python's str.title(): a cased letter after an uncased one starts a word.
std::string PyTitle(const std::string& s);
// jinja2's title filter: words start after whitespace, '-', '(', '{', '[',
// '<'.
std::string JinjaTitle(const std::string& s);
std::vector<std::string> SplitLines(const std::string& s);
// str.replace; a negative count replaces every occurrence.
std::string Replace(const std::string& s, const std::string& old, const std::string& rep,
                    int64_t count);
// markupsafe's escape().
std::string HtmlEscape(const std::string& s);

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_TEXT_H_
