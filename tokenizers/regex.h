// Pre-tokenizer regexes (the patterns tiktoken and HF tokenizers split text
// with), run in linear time.
//
// RE2 runs every pattern it can. The one lookahead those patterns use,
// `\s+(?!\S)|\s+` at the end (GPT-2, cl100k / Llama 3, Qwen2), is done on
// top of RE2 the way tiktoken's own fast path does it: match `\s+`, then give
// back the last whitespace character when a non-space follows. Any other
// lookaround goes to PCRE2 (linked with alwayslink so it cannot be dropped).
#ifndef TOKENIZERS_REGEX_H_
#define TOKENIZERS_REGEX_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/result.h"

namespace tokenizers {

struct Span {
  uint32_t start;
  uint32_t end;
};

class Regex {
 public:
  virtual ~Regex() = default;
  // Appends the non-empty, non-overlapping matches of the pattern in `text`
  // (leftmost-first, like Python's re.finditer / Rust's find_iter).
  virtual void FindAll(std::string_view text, std::vector<Span>* out) const = 0;
  // "scanner", "re2" or "pcre2", for tests and diagnostics.
  virtual const char* engine() const = 0;
};

// Compiles `pattern` with Unicode semantics matching the reference
// implementations: `\s` is Unicode White_Space, `\d` is \p{Nd}, `\w` is
// letters, marks, digits and connector punctuation.
Result<std::unique_ptr<Regex>> CompileRegex(std::string_view pattern);

// The general path of CompileRegex without the hand-written scanners (RE2,
// or PCRE2 when RE2 cannot run the pattern); tests compare the two.
Result<std::unique_ptr<Regex>> CompileRe2(std::string_view pattern);

// PCRE2 directly (tests use it to cross-check the RE2 rewrite).
Result<std::unique_ptr<Regex>> CompilePcre2(std::string_view pattern);

// Whether the code point is Unicode White_Space.
bool IsUnicodeSpace(char32_t c);

}  // namespace tokenizers

#endif  // TOKENIZERS_REGEX_H_
