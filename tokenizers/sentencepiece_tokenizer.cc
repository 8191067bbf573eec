// SentencePiece models (BPE and unigram), through libsentencepiece.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "formats.h"
#include "sentencepiece_processor.h"
#include "tokenizers/sentencepiece_encoder.h"

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

// libsentencepiece (0.2.1, and its HEAD as of 2026) trusts the Darts trie a
// model carries in its normalizer's precompiled_charsmap: a crafted root or
// node offset steers Encode's lookups outside the array, and more than 32
// nested rules overrun a fixed result buffer (upstream issue #1269). Our
// fuzzer found such a model. So the trie is checked here, before
// sentencepiece sees it: every lookup Encode can make stays in the array,
// and no path holds more than kMaxPrefixResults rules.
constexpr int kMaxPrefixResults = 32;  // sentencepiece's kMaxTrieResultsSize

// Protobuf wire format, just enough to find NormalizerSpec.precompiled_charsmap.
bool ReadVarint(std::string_view* s, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && !s->empty(); shift += 7) {
    const auto b = static_cast<uint8_t>(s->front());
    s->remove_prefix(1);
    *v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// The payload of the last length-delimited `field` in `msg` ("" if none), as
// protobuf reads a singular field; false if `msg` is not well-formed.
bool LastBytesField(std::string_view msg, uint64_t field, std::string_view* out) {
  *out = {};
  while (!msg.empty()) {
    uint64_t tag, n;
    if (!ReadVarint(&msg, &tag)) return false;
    switch (tag & 7) {
      case 0:
        if (!ReadVarint(&msg, &n)) return false;
        break;
      case 1:
      case 5: {
        const size_t width = (tag & 7) == 1 ? 8 : 4;
        if (msg.size() < width) return false;
        msg.remove_prefix(width);
        break;
      }
      case 2:
        if (!ReadVarint(&msg, &n) || n > msg.size()) return false;
        if ((tag >> 3) == field) *out = msg.substr(0, n);
        msg.remove_prefix(n);
        break;
      default:
        return false;
    }
  }
  return true;
}

// darts-clone's unit layout (darts.h, DoubleArrayUnit).
uint32_t UnitLabel(uint32_t u) { return u & ((1u << 31) | 0xFF); }
bool UnitHasLeaf(uint32_t u) { return (u >> 8) & 1; }
uint32_t UnitOffset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

// Empty if `charsmap` ([u32 trie bytes][trie][normalized text]) is safe for
// sentencepiece's normalizer, else what is wrong.
std::string CheckCharsmap(std::string_view charsmap) {
  if (charsmap.empty()) return "";
  if (charsmap.size() < 4) return "a truncated precompiled_charsmap";
  uint32_t trie_bytes;
  std::memcpy(&trie_bytes, charsmap.data(), 4);
  if (trie_bytes == 0 || trie_bytes % 4 != 0 || trie_bytes > charsmap.size() - 4) {
    return "a precompiled_charsmap whose trie size is wrong";
  }
  const size_t n = trie_bytes / 4;
  auto unit = [&](size_t i) {
    uint32_t u;
    std::memcpy(&u, charsmap.data() + 4 + 4 * i, 4);
    return u;
  };
  // Encode reads unit[base ^ c] for any byte c after each node it reaches,
  // and a leaf's value at unit[base]. darts-clone shares suffixes (the trie
  // is a DAG), so each node is checked once, and rules[] keeps the most
  // rules on any path below a node. state: 0 unseen, 1 on the path, 2 done.
  std::vector<uint8_t> state(n, 0);
  std::vector<int> rules(n, 0);
  struct Frame {
    size_t node;
    uint32_t next;  // the next byte to try below `node`
  };
  std::vector<Frame> path = {{0, 0}};
  state[0] = 1;
  const std::string outside = "a precompiled_charsmap trie that points outside itself";
  while (!path.empty()) {
    Frame& f = path.back();
    const size_t base = f.node ^ UnitOffset(unit(f.node));
    if ((base | 0xFF) >= n) return outside;
    bool descended = false;
    while (f.next < 256) {
      const uint32_t c = f.next++;
      const size_t child = base ^ c;
      const uint32_t u = unit(child);
      if (UnitLabel(u) != c) continue;
      if (UnitHasLeaf(u) && (child ^ UnitOffset(u)) >= n) return outside;
      if (state[child] == 1) return "a precompiled_charsmap trie with a cycle";
      if (state[child] == 2) {
        rules[f.node] = std::max(rules[f.node], rules[child] + (UnitHasLeaf(u) ? 1 : 0));
      } else {
        state[child] = 1;
        descended = true;
        path.push_back({child, 0});  // invalidates f
        break;
      }
    }
    if (descended) continue;
    const size_t done = path.back().node;
    state[done] = 2;
    path.pop_back();
    if (!path.empty()) {
      const size_t parent = path.back().node;
      const int leaf = UnitHasLeaf(unit(done)) ? 1 : 0;
      rules[parent] = std::max(rules[parent], rules[done] + leaf);
    }
  }
  if (rules[0] > kMaxPrefixResults) {
    return "a precompiled_charsmap with more than 32 nested rules";
  }
  return "";
}

// ModelProto fields 3 and 5 (normalizer_spec, denormalizer_spec); field 2 of
// NormalizerSpec is precompiled_charsmap.
std::string CheckNormalizers(std::string_view model) {
  for (uint64_t field : {3, 5}) {
    std::string_view spec, charsmap;
    if (!LastBytesField(model, field, &spec) || !LastBytesField(spec, 2, &charsmap)) {
      return "a malformed normalizer spec";
    }
    if (std::string why = CheckCharsmap(charsmap); !why.empty()) return why;
  }
  return "";
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
    if (std::string why = CheckNormalizers(data); !why.empty()) {
      return MakeError("unsafe SentencePiece model: " + why);
    }
    if (sp->GetPieceSize() <= 0) return MakeError("SentencePiece model has no pieces");
    auto encoder = SentencePieceEncoder::Create(sp.get());
    if (!encoder.ok()) return MakeError("bad SentencePiece model: " + encoder.error());
    encoder_ = std::move(*encoder);
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
    if (auto r = encoder_->Encode(text, &ids); !r.ok()) return MakeError(r.error());
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
  std::unique_ptr<SentencePieceEncoder> encoder_;  // uses sp_'s model
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
