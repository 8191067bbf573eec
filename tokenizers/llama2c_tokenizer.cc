// llama2.c's tokenizer.bin: int32 max_token_length, then for each token a
// float32 score, an int32 byte length and the bytes. Encoding follows
// llama2.c: a dummy-prefix space, one token per code point (bytes + 3 for
// unknown ones), then merging the adjacent pair whose concatenation has the
// highest score, leftmost first.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "formats.h"
#include "tokenizers/bpe.h"

namespace tokenizers {
namespace {

class Llama2cTokenizer : public Tokenizer {
 public:
  Result<void> Load(const std::string& path) override {
    auto data = ReadFile(path);
    if (!data.ok()) return MakeError(data.error());
    auto r = LoadFromString(*data);
    if (!r.ok()) return MakeError(path + ": " + r.error());
    return {};
  }

  Result<void> LoadFromString(std::string_view data) {
    size_t pos = 0;
    auto read = [&](void* dst, size_t n) {
      if (data.size() - pos < n) return false;
      std::memcpy(dst, data.data() + pos, n);
      pos += n;
      return true;
    };
    int32_t max_len;
    if (!read(&max_len, 4)) return MakeError("not a llama2c tokenizer: too short");
    if (max_len <= 0 || max_len > 4096) {
      return MakeError("not a llama2c tokenizer: bad max_token_length " + std::to_string(max_len));
    }
    std::vector<std::string> pieces;
    std::vector<float> scores;
    while (pos < data.size()) {
      float score;
      int32_t len;
      if (!read(&score, 4) || !read(&len, 4)) {
        return MakeError("not a llama2c tokenizer: truncated at token " +
                         std::to_string(pieces.size()));
      }
      if (len < 0 || len > max_len || data.size() - pos < static_cast<size_t>(len) ||
          std::isnan(score)) {
        return MakeError("not a llama2c tokenizer: bad token " + std::to_string(pieces.size()));
      }
      pieces.emplace_back(data.substr(pos, len));
      scores.push_back(score);
      pos += len;
    }
    if (pieces.size() < 3 + 256) {
      return MakeError("not a llama2c tokenizer: only " + std::to_string(pieces.size()) +
                       " tokens");
    }
    pieces_ = std::move(pieces);
    scores_ = std::move(scores);
    lookup_.clear();
    // llama2.c looks pieces up with bsearch over a sorted copy; for a
    // duplicated piece that finds one of them. First wins here.
    for (size_t i = 0; i < pieces_.size(); ++i) lookup_.emplace(pieces_[i], i);
    // Dense ranks of scores, best first: equal scores tie, so the leftmost
    // pair wins, as in llama2.c's strict '>' scan.
    std::vector<float> sorted = scores_;
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    rank_.resize(scores_.size());
    for (size_t i = 0; i < scores_.size(); ++i) {
      rank_[i] = static_cast<int>(
          std::lower_bound(sorted.begin(), sorted.end(), scores_[i], std::greater<float>()) -
          sorted.begin());
    }
    bos_id_ = 1;
    eos_ids_ = {2};
    return {};
  }

  Result<std::vector<int>> Encode(std::string_view text, bool bos, bool eos,
                                  const SpecialPolicy&) const override {
    if (pieces_.empty()) return MakeError("tokenizer not loaded");
    std::vector<int> out;
    if (bos) out.push_back(bos_id_);
    std::vector<Symbol> syms;
    std::string buf;
    auto add = [&](int id) { syms.push_back({0, 0, id, static_cast<int>(syms.size()) - 1, -1}); };
    if (!text.empty()) {
      auto it = lookup_.find(" ");
      if (it != lookup_.end()) add(it->second);
    }
    size_t i = 0;
    while (i < text.size()) {
      // llama2.c groups a byte with the continuation bytes after it (up to
      // 4), whether or not they form a valid sequence.
      size_t n = 1;
      while (i + n < text.size() && n < 4 &&
             (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) {
        ++n;
      }
      auto it = lookup_.find(text.substr(i, n));
      if (it != lookup_.end()) {
        add(it->second);
      } else {
        for (size_t k = 0; k < n; ++k) add(static_cast<unsigned char>(text[i + k]) + 3);
      }
      i += n;
    }
    for (size_t k = 0; k < syms.size(); ++k) {
      // Positions in symbol units: `start` breaks ties leftmost-first and
      // `end` lets MergeSymbols spot stale pairs.
      syms[k].start = static_cast<uint32_t>(k);
      syms[k].end = static_cast<uint32_t>(k + 1);
      syms[k].next = k + 1 < syms.size() ? static_cast<int>(k) + 1 : -1;
    }
    MergeSymbols(&syms, [&](const Symbol& a, const Symbol& b, int* id) {
      buf = pieces_[a.id];
      buf += pieces_[b.id];
      auto it = lookup_.find(buf);
      if (it == lookup_.end()) return -1;
      *id = it->second;
      return rank_[it->second];
    });
    ForEachLive(syms, [&](const Symbol& s) { out.push_back(s.id); });
    if (eos) out.push_back(eos_ids_[0]);
    return out;
  }

  Result<std::string> Decode(const std::vector<int>& ids) const override {
    std::string out;
    int prev = -1;
    for (int id : ids) {
      auto p = DecodeToken(id, prev);
      if (!p.ok()) return MakeError(p.error());
      out += *p;
      prev = id;
    }
    return out;
  }

  // bos/eos print nothing; "<0xXX>" is its byte; the piece after bos
  // loses its leading (dummy-prefix) space, as in llama2.c.
  Result<std::string> DecodeToken(int id, int prev) const override {
    if (id < 0 || id >= vocab_size()) {
      return MakeError("token id " + std::to_string(id) + " out of range");
    }
    if (id == 1 || id == 2) return std::string();
    const std::string& p = pieces_[id];
    unsigned int b;
    char tail;
    if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X%c", &b, &tail) == 2 && tail == '>') {
      return std::string(1, static_cast<char>(b));
    }
    if (prev == 1 && !p.empty() && p[0] == ' ') return p.substr(1);
    return p;
  }

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  Result<std::string> IdToPiece(int id) const override {
    if (id < 0 || id >= vocab_size()) {
      return MakeError("token id " + std::to_string(id) + " out of range");
    }
    return pieces_[id];
  }
  Result<int> PieceToId(std::string_view piece) const override {
    auto it = lookup_.find(piece);
    if (it == lookup_.end()) {
      return MakeError("no token for piece '" + std::string(piece) + "'");
    }
    return it->second;
  }
  std::string type() const override { return "llama2c"; }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int> rank_;
  absl::flat_hash_map<std::string, int> lookup_;
};

}  // namespace

std::unique_ptr<Tokenizer> NewLlama2cTokenizer() { return std::make_unique<Llama2cTokenizer>(); }

Result<void> LoadLlama2cFromString(Tokenizer* l2, std::string_view data) {
  return static_cast<Llama2cTokenizer*>(l2)->LoadFromString(data);
}

}  // namespace tokenizers
