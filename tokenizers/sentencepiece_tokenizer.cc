// SentencePiece models (BPE and unigram), through libsentencepiece.
#include <memory>
#include <string>

#include "formats.h"
#include "sentencepiece_processor.h"

namespace tokenizers {
namespace {

bool ParseByteToken(std::string_view t, unsigned char* b) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int h = hex(t[3]), l = hex(t[4]);
  if (h < 0 || l < 0) return false;
  *b = static_cast<unsigned char>(h * 16 + l);
  return true;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  Result<void> Load(const std::string& path) override {
    auto data = ReadFile(path);
    if (!data.ok()) return MakeError(data.error());
    auto r = LoadFromString(*data);
    if (!r.ok()) return MakeError(path + ": " + r.error());
    return {};
  }
  Result<void> LoadFromString(std::string_view data) {
    auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = sp->LoadFromSerializedProto(data);
    if (!status.ok()) {
      return MakeError("not a SentencePiece model: " + status.ToString());
    }
    if (sp->GetPieceSize() <= 0) return MakeError("SentencePiece model has no pieces");
    sp_ = std::move(sp);
    bos_id_ = sp_->bos_id();
    eos_ids_.clear();
    if (sp_->eos_id() >= 0) eos_ids_.push_back(sp_->eos_id());
    return {};
  }

  Result<std::vector<int>> Encode(std::string_view text, bool bos, bool eos,
                                  const SpecialPolicy&) const override {
    if (!sp_) return MakeError("tokenizer not loaded");
    std::vector<int> ids;
    if (bos) {
      if (bos_id_ < 0) return MakeError("this tokenizer has no bos token");
      ids.push_back(bos_id_);
    }
    std::vector<int> body;
    const auto status = sp_->Encode(text, &body);
    if (!status.ok()) return MakeError("encode failed: " + status.ToString());
    ids.insert(ids.end(), body.begin(), body.end());
    if (eos) {
      if (eos_ids_.empty()) return MakeError("this tokenizer has no eos token");
      ids.push_back(eos_ids_[0]);
    }
    return ids;
  }

  Result<std::string> Decode(const std::vector<int>& ids) const override {
    if (!sp_) return MakeError("tokenizer not loaded");
    for (int id : ids) {
      if (id < 0 || id >= vocab_size()) {
        return MakeError("token id " + std::to_string(id) + " out of range");
      }
    }
    std::string out;
    const auto status = sp_->Decode(ids, &out);
    if (!status.ok()) return MakeError("decode failed: " + status.ToString());
    return out;
  }

  // One piece as a stream sees it: control tokens vanish, byte pieces are
  // their byte, "▁" is a space, and the dummy prefix space of the first
  // piece is dropped.
  Result<std::string> DecodeToken(int id, int prev) const override {
    const bool first = prev < 0;
    if (!sp_) return MakeError("tokenizer not loaded");
    if (id < 0 || id >= vocab_size()) {
      return MakeError("token id " + std::to_string(id) + " out of range");
    }
    if (sp_->IsControl(id)) return std::string();
    const std::string piece = sp_->IdToPiece(id);
    unsigned char b;
    if (sp_->IsByte(id) && ParseByteToken(piece, &b)) {
      return std::string(1, static_cast<char>(b));
    }
    if (sp_->IsUnknown(id)) return std::string(" \xE2\x81\x87 ");
    std::string out;
    size_t pos = 0;
    while (pos < piece.size()) {
      const size_t f = piece.find("\xE2\x96\x81", pos);
      if (f == std::string::npos) {
        out.append(piece, pos, std::string::npos);
        break;
      }
      out.append(piece, pos, f - pos);
      out.push_back(' ');
      pos = f + 3;
    }
    if (first && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  int vocab_size() const override { return sp_ ? sp_->GetPieceSize() : 0; }
  Result<std::string> IdToPiece(int id) const override {
    if (!sp_ || id < 0 || id >= vocab_size()) {
      return MakeError("token id " + std::to_string(id) + " out of range");
    }
    return sp_->IdToPiece(id);
  }
  Result<int> PieceToId(std::string_view piece) const override {
    if (!sp_) return MakeError("tokenizer not loaded");
    const int id = sp_->PieceToId(piece);
    if (id == sp_->unk_id() && piece != sp_->IdToPiece(id)) {
      return MakeError("no token for piece '" + std::string(piece) + "'");
    }
    return id;
  }
  std::string type() const override { return "sentencepiece"; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> NewSentencePieceTokenizer() {
  return std::make_unique<SentencePieceTokenizer>();
}

// A ModelProto starts with its repeated `pieces` field (1, length-delimited)
// or, for an empty-vocab proto, another field; tag 0x0A is the usual start.
bool LooksLikeSentencePiece(std::string_view data) {
  return !data.empty() && (data[0] == 0x0A || data[0] == 0x12);
}

Result<void> LoadSentencePieceFromString(Tokenizer* sp, std::string_view data) {
  return static_cast<SentencePieceTokenizer*>(sp)->LoadFromString(data);
}

}  // namespace tokenizers
