// Splits a template into tokens the way jinja2 3.1's lexer does, including
// its whitespace control: trim_blocks, lstrip_blocks, the '-' and '+'
// modifiers, {% raw %}, and the dropped final newline. Templates are
// sensitive to every one of these, since chat formats hinge on exact
// newlines.
#ifndef RUNNER_COMMON_JINJA_LEXER_H_
#define RUNNER_COMMON_JINJA_LEXER_H_

#include <cstdint>
#include <string>
#include <vector>

namespace torchchat::jinja {

enum class Tok {
  kText,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type;
  std::string value;  // kString: the decoded literal
  size_t pos;         // byte offset in the normalised source
  int64_t int_value = 0;
  double float_value = 0;
};

struct LexerOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
};

class Lexer {
 public:
  Lexer(const std::string& source, const LexerOptions& opt);

  // The whole template, ending with a kEof token.
  std::vector<Token> Run();

  // Where a token's `pos` is, for error messages; both count from 1.
  void LineCol(size_t pos, int* line, int* col) const;
  // Fails with "line L, column C: msg".
  [[noreturn]] void Error(size_t pos, const std::string& msg) const;

 private:
  void Emit(Tok t, std::string v, size_t pos);
  void EmitLeadingText(std::string text, size_t pos, char sign, bool lstrip_kind,
                       bool line_starting);
  bool IsWs(char c) const;
  size_t SkipWs(size_t k) const;
  size_t Comment(size_t q, size_t start, bool* line_starting);
  bool MatchWord(size_t* k, const char* word) const;
  bool RawBegin(size_t q, size_t* after);
  size_t Raw(size_t begin, bool* line_starting);
  size_t Tag(size_t k, bool block, bool* line_starting);
  size_t Digits(size_t k) const;
  size_t Number(size_t k);
  size_t String(size_t k);

  const LexerOptions opt_;
  std::string src_;
  std::vector<size_t> line_starts_{0};
  std::vector<Token> tokens_;
};

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_LEXER_H_
