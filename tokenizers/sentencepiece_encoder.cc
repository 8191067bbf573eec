#include "tokenizers/sentencepiece_encoder.h"

#include <cstdio>
#include <string>
#include <utility>

#include "model_factory.h"
#include "model_interface.h"
#include "normalizer.h"

namespace tokenizers {

Result<std::unique_ptr<SentencePieceEncoder>> SentencePieceEncoder::Create(
    sentencepiece::SentencePieceProcessor* sp) {
  const sentencepiece::ModelProto& proto = sp->model_proto();
  auto model = sentencepiece::ModelFactory::Create(proto);
  if (!model) return MakeError("SentencePiece model type not supported");
  if (!model->status().ok()) return MakeError(model->status().ToString());
  auto normalizer = std::make_unique<sentencepiece::normalizer::Normalizer>(proto.normalizer_spec(),
                                                                            proto.trainer_spec());
  if (!normalizer->status().ok()) return MakeError(normalizer->status().ToString());
  // User-defined symbols pass through normalization untouched.
  normalizer->SetPrefixMatcher(model->prefix_matcher());

  std::unique_ptr<SentencePieceEncoder> enc(new SentencePieceEncoder);
  enc->model_ = model.get();
  enc->normalizer_ = normalizer.get();
  enc->kinds_.resize(static_cast<size_t>(proto.pieces_size()), kNormal);
  for (int id = 0; id < proto.pieces_size(); ++id) {
    if (model->IsUnknown(id)) enc->kinds_[id] = kUnknown;
    if (model->IsControl(id)) enc->kinds_[id] = kControl;
  }
  enc->byte_fallback_ = model->ByteFallbackEnabled();
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof(piece), "<0x%02X>", b);
    enc->byte_ids_[b] = model->PieceToId(piece);
  }
  sp->SetModel(std::move(model));
  sp->SetNormalizer(std::move(normalizer));
  return enc;
}

Result<void> SentencePieceEncoder::Encode(std::string_view text, std::vector<int>* ids) const {
  std::string normalized;
  std::vector<size_t> norm_to_orig;  // unused, but Normalize requires it
  const auto status = normalizer_->Normalize(text, &normalized, &norm_to_orig);
  if (!status.ok()) return MakeError("encode failed: " + status.ToString());
  const auto pieces = model_->Encode(normalized);
  ids->reserve(ids->size() + pieces.size());
  size_t consumed = 0;
  bool prev_unknown = false;
  for (const auto& [piece, id] : pieces) {
    if (piece.empty() || id < 0 || static_cast<size_t>(id) >= kinds_.size()) {
      return MakeError("encode failed: the model returned an invalid piece");
    }
    const Kind kind = kinds_[id];
    const bool unknown = kind == kUnknown;
    if (kind == kControl) {
      // A control piece matches no input, so it consumes nothing.
      ids->push_back(id);
    } else {
      if (piece.size() > normalized.size() - consumed) {
        return MakeError("encode failed: pieces overrun the normalized text");
      }
      consumed += piece.size();
      if (unknown && byte_fallback_) {
        for (const char b : piece) ids->push_back(byte_ids_[static_cast<unsigned char>(b)]);
      } else if (!(unknown && prev_unknown)) {
        // A run of unknown pieces is one unknown token, as in libsentencepiece.
        ids->push_back(id);
      }
    }
    prev_unknown = unknown;
  }
  if (consumed != normalized.size()) {
    return MakeError("encode failed: pieces do not cover the normalized text");
  }
  return {};
}

}  // namespace tokenizers
