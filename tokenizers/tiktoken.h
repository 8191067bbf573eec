// tiktoken BPE: `.tiktoken` files and Llama 3's tokenizer.model (one
// "base64-token rank" pair per line).
#ifndef TOKENIZERS_TIKTOKEN_H_
#define TOKENIZERS_TIKTOKEN_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "tokenizers/bpe.h"
#include "tokenizers/regex.h"
#include "tokenizers/tokenizer.h"

namespace tokenizers {

// Llama 3's split pattern (tiktoken's cl100k_base pattern).
extern const char kLlama3Pattern[];
// Llama 3's 256 special tokens, in id order from the first id after the
// base vocabulary.
std::vector<std::string> Llama3SpecialTokens();

// What a tiktoken file leaves to its loader: the split pattern and the
// special tokens (tiktoken's `Encoding(pat_str=..., special_tokens=...)`),
// and which special tokens are bos and eos (empty: none).
struct TiktokenOptions {
  std::string pattern;
  // A negative id means the next id after the base vocabulary and the
  // special tokens before it.
  std::vector<std::pair<std::string, int>> special_tokens;
  std::string bos;
  std::vector<std::string> eos;
};

// Llama 3's: its pattern and 256 special tokens; bos <|begin_of_text|>,
// eos <|end_of_text|>, <|eom_id|> and <|eot_id|>.
TiktokenOptions Llama3TiktokenOptions();

// The sidecar JSON beside a tiktoken file (`<file>.json`; LoadTokenizer
// reads it when present), in tiktoken's own terms:
//   {"pat_str": "...", "special_tokens": {"<|endoftext|>": 151643, ...},
//    "bos": null, "eos": ["<|endoftext|>", "<|im_end|>"]}
// special_tokens may also be a list of names (ids follow the base
// vocabulary); eos may be one name. Unknown keys are errors.
Result<TiktokenOptions> ParseTiktokenOptions(std::string_view json);

class Tiktoken : public Tokenizer {
 public:
  // Llama 3 (Llama3TiktokenOptions()).
  Tiktoken();
  explicit Tiktoken(TiktokenOptions options);
  // Custom pattern and special tokens (ids follow the base vocabulary).
  Tiktoken(std::string pattern, std::vector<std::string> special_tokens, std::string bos,
           std::vector<std::string> eos);

  Result<void> Load(const std::string& path) override;
  Result<void> LoadFromString(std::string_view data);

  Result<std::vector<int>> Encode(std::string_view text, bool bos, bool eos,
                                  const SpecialPolicy& special) const override;
  Result<std::string> Decode(const std::vector<int>& ids) const override;
  Result<std::string> DecodeToken(int id, int prev) const override;
  int vocab_size() const override { return static_cast<int>(decoder_.size()); }
  Result<std::string> IdToPiece(int id) const override;
  Result<int> PieceToId(std::string_view piece) const override;
  std::string type() const override { return "tiktoken"; }

  // Ordinary text (no special tokens) to ids, appended to `out`.
  void EncodeOrdinary(std::string_view text, std::vector<int>* out) const;

 private:
  static constexpr size_t kSmallPiece = 24;
  void EncodePiece(std::string_view piece, std::vector<int>* out) const;
  void EncodeSmallPiece(std::string_view piece, std::vector<int>* out) const;

  uint64_t instance_ = 0;
  TiktokenOptions options_;

  std::unique_ptr<Regex> regex_;
  BytesMap encoder_;
  std::vector<std::string> decoder_;  // id -> bytes, specials included
  int byte_ids_[256];
  absl::flat_hash_map<std::string, int> special_ids_;
  SpecialMatcher specials_;
};

// A tiktoken file with these options (a sidecar beside it is not read).
Result<std::unique_ptr<Tokenizer>> LoadTiktoken(const std::string& path,
                                                const TiktokenOptions& options);

// Decodes standard base64; false on malformed input.
bool Base64Decode(std::string_view in, std::string* out);

}  // namespace tokenizers

#endif  // TOKENIZERS_TIKTOKEN_H_
