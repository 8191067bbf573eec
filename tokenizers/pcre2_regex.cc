// The PCRE2 fallback for patterns RE2 cannot run (general lookaround).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "pcre2.h"
#include "tokenizers/regex.h"

namespace tokenizers {
namespace {

class Pcre2Regex : public Regex {
 public:
  explicit Pcre2Regex(pcre2_code* code) : code_(code) {}
  ~Pcre2Regex() override { pcre2_code_free(code_); }

  void FindAll(std::string_view text, std::vector<Span>* out) const override {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    if (!md) return;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos <= text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), pos, 0, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t s = ov[0], e = ov[1];
      if (e == s) {
        // Empty match: advance one character.
        pos = s + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) {
          ++pos;
        }
        continue;
      }
      out->push_back({static_cast<uint32_t>(s), static_cast<uint32_t>(e)});
      pos = e;
    }
    pcre2_match_data_free(md);
  }
  const char* engine() const override { return "pcre2"; }

 private:
  pcre2_code* code_;
};

}  // namespace

Result<std::unique_ptr<Regex>> CompilePcre2(std::string_view pattern) {
  int err = 0;
  PCRE2_SIZE off = 0;
  // MATCH_INVALID_UTF lets ill-formed input through (it never matches a
  // character class) instead of failing the whole match.
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    return MakeError("cannot compile regex '" + std::string(pattern) +
                     "': " + reinterpret_cast<char*>(buf) + " at offset " + std::to_string(off));
  }
  // JIT when the library has it; the interpreter otherwise.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<Regex>(std::make_unique<Pcre2Regex>(code));
}

}  // namespace tokenizers
