// Unicode normalization (NFC, NFD, NFKC, NFKD) and lowercasing for the HF
// normalizers, from tables generated at build time out of Python's
// unicodedata (see gen_unicode_tables.py; ICU is not a dependency).
#ifndef TOKENIZERS_UNICODE_H_
#define TOKENIZERS_UNICODE_H_

#include <string>
#include <string_view>

namespace tokenizers {

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

// Normalizes UTF-8 text. Ill-formed bytes pass through unchanged and block
// composition across them.
std::string Normalize(std::string_view text, NormalForm form);

// Per-character full lowercase mapping (Rust's char::to_lowercase, which
// HF's Lowercase normalizer uses).
std::string Lowercase(std::string_view text);

// The Unicode version of the tables.
const char* UnicodeTablesVersion();

}  // namespace tokenizers

#endif  // TOKENIZERS_UNICODE_H_
