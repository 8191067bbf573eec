// Text to ids through libsentencepiece's normalizer and model, without the
// SentencePieceText proto that SentencePieceProcessor::Encode builds.
#ifndef TOKENIZERS_SENTENCEPIECE_ENCODER_H_
#define TOKENIZERS_SENTENCEPIECE_ENCODER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "sentencepiece_processor.h"
#include "tokenizers/result.h"

namespace sentencepiece {
class ModelInterface;
namespace normalizer {
class Normalizer;
}  // namespace normalizer
}  // namespace sentencepiece

namespace tokenizers {

// SentencePieceProcessor::Encode(text, &ids) fills a proto with a piece and
// a surface string per token, then copies the ids out and frees it all:
// on long text that bookkeeping costs about three times the segmentation
// itself. This encoder gives the same ids as that call (unknown runs merged,
// byte fallback, control pieces) straight from the model's result.
class SentencePieceEncoder {
 public:
  // Rebuilds `sp`'s model and normalizer from its proto, as its Load does,
  // and hands them back to `sp`, so that both share one copy. `sp` must be
  // loaded and must outlive the encoder.
  static Result<std::unique_ptr<SentencePieceEncoder>> Create(
      sentencepiece::SentencePieceProcessor* sp);

  // Appends the ids of `text` to `ids`. Thread-safe.
  Result<void> Encode(std::string_view text, std::vector<int>* ids) const;

 private:
  enum Kind : uint8_t { kNormal, kUnknown, kControl };

  SentencePieceEncoder() = default;

  const sentencepiece::ModelInterface* model_ = nullptr;
  const sentencepiece::normalizer::Normalizer* normalizer_ = nullptr;
  std::vector<Kind> kinds_;  // by id
  bool byte_fallback_ = false;
  std::array<int, 256> byte_ids_{};  // <0xXX> piece ids, for byte fallback
};

}  // namespace tokenizers

#endif  // TOKENIZERS_SENTENCEPIECE_ENCODER_H_
