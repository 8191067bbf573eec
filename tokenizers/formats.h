// Constructors for the concrete tokenizers, so that the loader can pick one
// without every header.
#ifndef TOKENIZERS_FORMATS_H_
#define TOKENIZERS_FORMATS_H_

#include <memory>
#include <string>
#include <string_view>

#include "tokenizers/tokenizer.h"

namespace tokenizers {

std::unique_ptr<Tokenizer> NewHfTokenizer();
// `path` locates a tokenizer_config.json next to the file ("" for none).
Result<void> LoadHfFromString(Tokenizer* hf, std::string_view json, const std::string& path);
// As above, with the tokenizer_config.json text given directly.
Result<void> LoadHfFromStrings(Tokenizer* hf, std::string_view json, std::string_view config_json);

std::unique_ptr<Tokenizer> NewSentencePieceTokenizer();
bool LooksLikeSentencePiece(std::string_view data);
Result<void> LoadSentencePieceFromString(Tokenizer* sp, std::string_view data);

std::unique_ptr<Tokenizer> NewLlama2cTokenizer();
Result<void> LoadLlama2cFromString(Tokenizer* l2, std::string_view data);

}  // namespace tokenizers

#endif  // TOKENIZERS_FORMATS_H_
