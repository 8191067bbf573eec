#include "tokenizers/tiktoken.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstring>

#include "tokenizers/json.h"

namespace tokenizers {

const char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::vector<std::string> Llama3SpecialTokens() {
  std::vector<std::string> t = {
      "<|begin_of_text|>",
      "<|end_of_text|>",
      "<|reserved_special_token_0|>",
      "<|reserved_special_token_1|>",
      "<|finetune_right_pad_id|>",
      "<|step_id|>",
      "<|start_header_id|>",
      "<|end_header_id|>",
      "<|eom_id|>",
      "<|eot_id|>",
      "<|python_tag|>",
      "<|image|>",
  };
  const int basic = static_cast<int>(t.size());
  for (int i = 0; i < 256 - basic; ++i) {
    t.push_back("<|reserved_special_token_" + std::to_string(2 + i) + "|>");
  }
  return t;
}

bool Base64Decode(std::string_view in, std::string* out) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  out->clear();
  if (in.size() % 4 != 0 || in.empty()) return false;
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + k];
      if (c == '=') {
        // Padding only at the very end, and at most two.
        if (i + 4 != in.size() || k < 2) return false;
        v[k] = 0;
        ++pad;
      } else {
        if (pad) return false;
        v[k] = val(c);
        if (v[k] < 0) return false;
      }
    }
    const uint32_t w = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out->push_back(static_cast<char>(w >> 16));
    if (pad < 2) out->push_back(static_cast<char>((w >> 8) & 0xFF));
    if (pad < 1) out->push_back(static_cast<char>(w & 0xFF));
  }
  return true;
}

TiktokenOptions Llama3TiktokenOptions() {
  TiktokenOptions o;
  o.pattern = kLlama3Pattern;
  for (auto& name : Llama3SpecialTokens()) o.special_tokens.emplace_back(std::move(name), -1);
  o.bos = "<|begin_of_text|>";
  o.eos = {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"};
  return o;
}

Result<TiktokenOptions> ParseTiktokenOptions(std::string_view json) {
  auto doc = ParseJson(json);
  if (!doc.ok()) return MakeError("tiktoken options: " + doc.error());
  if (!doc->is_object()) return MakeError("tiktoken options: expected a JSON object");
  TiktokenOptions o;
  bool has_pattern = false;
  for (const auto& [key, v] : doc->members()) {
    if (key == "pat_str") {
      if (!v.is_string()) return MakeError("tiktoken options: pat_str must be a string");
      o.pattern = v.str();
      has_pattern = true;
    } else if (key == "special_tokens") {
      if (v.is_object()) {
        for (const auto& [name, id] : v.members()) {
          int64_t i = -1;
          if (!id.AsInt64(&i) || i < 0 || i > (1 << 24)) {
            return MakeError("tiktoken options: special token '" + name +
                             "' needs an id from 0 to 16777216");
          }
          o.special_tokens.emplace_back(name, static_cast<int>(i));
        }
      } else if (v.is_array()) {
        for (const auto& name : v.items()) {
          if (!name.is_string()) {
            return MakeError("tiktoken options: special_tokens must hold strings");
          }
          o.special_tokens.emplace_back(name.str(), -1);
        }
      } else {
        return MakeError("tiktoken options: special_tokens must be an object or a list");
      }
    } else if (key == "bos") {
      if (!v.is_null() && !v.is_string()) {
        return MakeError("tiktoken options: bos must be a string or null");
      }
      o.bos = v.is_string() ? v.str() : "";
    } else if (key == "eos") {
      if (v.is_string()) {
        o.eos = {v.str()};
      } else if (v.is_array()) {
        for (const auto& e : v.items()) {
          if (!e.is_string()) return MakeError("tiktoken options: eos must hold strings");
          o.eos.push_back(e.str());
        }
      } else if (!v.is_null()) {
        return MakeError("tiktoken options: eos must be a string or a list");
      }
    } else {
      return MakeError("tiktoken options: unknown key '" + key +
                       "' (expected pat_str, special_tokens, bos, eos)");
    }
  }
  if (!has_pattern) return MakeError("tiktoken options: pat_str is missing");
  return o;
}

Tiktoken::Tiktoken() : Tiktoken(Llama3TiktokenOptions()) {}

Tiktoken::Tiktoken(TiktokenOptions options) : options_(std::move(options)) {}

Tiktoken::Tiktoken(std::string pattern, std::vector<std::string> special_tokens, std::string bos,
                   std::vector<std::string> eos) {
  options_.pattern = std::move(pattern);
  for (auto& name : special_tokens) options_.special_tokens.emplace_back(std::move(name), -1);
  options_.bos = std::move(bos);
  options_.eos = std::move(eos);
}

Result<std::unique_ptr<Tokenizer>> LoadTiktoken(const std::string& path,
                                                const TiktokenOptions& options) {
  auto t = std::make_unique<Tiktoken>(options);
  auto r = t->Load(path);
  if (!r.ok()) return MakeError(r.error());
  return std::unique_ptr<Tokenizer>(std::move(t));
}

Result<void> Tiktoken::Load(const std::string& path) {
  auto data = ReadFile(path);
  if (!data.ok()) return MakeError(data.error());
  auto r = LoadFromString(*data);
  if (!r.ok()) return MakeError(path + ": " + r.error());
  return {};
}

Result<void> Tiktoken::LoadFromString(std::string_view data) {
  // A fresh id per load: cached merges of an earlier vocabulary (or of a
  // destroyed tokenizer at the same address) never match.
  static std::atomic<uint64_t> next_instance{1};
  instance_ = next_instance.fetch_add(1);
  auto re = CompileRegex(options_.pattern);
  if (!re.ok()) return MakeError(re.error());
  regex_ = std::move(re).value();
  encoder_ = BytesMap();
  encoder_.Reserve(data.size() / 10);
  decoder_.clear();
  special_ids_.clear();
  specials_ = SpecialMatcher();
  std::vector<std::pair<std::string, int>> entries;
  size_t pos = 0;
  int line_no = 0;
  int max_rank = -1;
  std::string bytes;
  while (pos < data.size()) {
    size_t eol = data.find('\n', pos);
    if (eol == std::string_view::npos) eol = data.size();
    std::string_view line = data.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    int rank = -1;
    if (sp == std::string_view::npos || !Base64Decode(line.substr(0, sp), &bytes)) {
      return MakeError("not a tiktoken file: line " + std::to_string(line_no) +
                       " is not 'base64-token rank'");
    }
    const std::string_view num = line.substr(sp + 1);
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), rank);
    if (ec != std::errc() || p != num.data() + num.size() || rank < 0 || rank > (1 << 24)) {
      return MakeError("not a tiktoken file: bad rank on line " + std::to_string(line_no));
    }
    if (!encoder_.Insert(bytes, rank)) {
      return MakeError("duplicate token on line " + std::to_string(line_no));
    }
    max_rank = std::max(max_rank, rank);
  }
  if (encoder_.size() == 0) return MakeError("no tokens in tiktoken file");
  decoder_.assign(max_rank + 1, std::string());
  std::vector<bool> seen(max_rank + 1, false);
  std::string dup;
  encoder_.ForEach([&](std::string_view b, int r) {
    if (seen[r]) dup = "duplicate rank " + std::to_string(r);
    seen[r] = true;
    decoder_[r] = std::string(b);
  });
  if (!dup.empty()) return MakeError(dup);
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = encoder_.Find(std::string(1, static_cast<char>(b)));
  }
  // Special tokens without an id follow the base vocabulary (Llama 3:
  // 128000..128255), each after the one before.
  const int base = static_cast<int>(encoder_.size());
  decoder_.resize(std::max<size_t>(decoder_.size(), base));
  std::vector<bool> is_special;
  int next = base;
  for (const auto& [name, given] : options_.special_tokens) {
    const int id = given >= 0 ? given : next;
    next = std::max(next, id + 1);
    if (name.empty()) return MakeError("a special token is empty");
    if (id < static_cast<int>(seen.size()) && seen[id]) {
      return MakeError("special token '" + name + "' has id " + std::to_string(id) +
                       ", a base token's");
    }
    if (static_cast<int>(decoder_.size()) <= id) decoder_.resize(id + 1);
    is_special.resize(decoder_.size(), false);
    if (is_special[id] || !special_ids_.emplace(name, id).second) {
      return MakeError("special token '" + name + "' or its id " + std::to_string(id) +
                       " is given twice");
    }
    is_special[id] = true;
    decoder_[id] = name;
    specials_.Add(name, id);
  }
  auto special = [&](const std::string& name) {
    auto it = special_ids_.find(name);
    return it == special_ids_.end() ? -1 : it->second;
  };
  bos_id_ = -1;
  if (!options_.bos.empty()) {
    bos_id_ = special(options_.bos);
    if (bos_id_ < 0) return MakeError("bos '" + options_.bos + "' is not a special token");
  }
  eos_ids_.clear();
  for (const auto& e : options_.eos) {
    const int id = special(e);
    if (id < 0) return MakeError("eos '" + e + "' is not a special token");
    eos_ids_.push_back(id);
  }
  return {};
}

void Tiktoken::EncodePiece(std::string_view piece, std::vector<int>* out) const {
  const int whole = encoder_.Find(piece);
  if (whole >= 0) {
    out->push_back(whole);
    return;
  }
  if (piece.size() <= kSmallPiece) {
    // Words that need merging recur (identifiers, inflections), so their
    // results are kept in a small per-thread direct-mapped cache.
    struct Entry {
      uint64_t owner = 0;
      uint64_t hash = 0;
      uint8_t len = 0;
      uint8_t n_ids = 0;
      char key[kSmallPiece];
      int ids[kSmallPiece];
    };
    static constexpr size_t kEntries = 2048;
    thread_local std::vector<Entry> cache(kEntries);
    const uint64_t h = BytesMap::Hash(piece);
    Entry& e = cache[h & (kEntries - 1)];
    if (e.owner == instance_ && e.hash == h && e.len == piece.size() &&
        std::memcmp(e.key, piece.data(), piece.size()) == 0) {
      out->insert(out->end(), e.ids, e.ids + e.n_ids);
      return;
    }
    const size_t before = out->size();
    EncodeSmallPiece(piece, out);
    e.owner = instance_;
    e.hash = h;
    e.len = static_cast<uint8_t>(piece.size());
    e.n_ids = static_cast<uint8_t>(out->size() - before);
    std::memcpy(e.key, piece.data(), piece.size());
    std::copy(out->begin() + before, out->end(), e.ids);
    return;
  }
  std::vector<Symbol> syms(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) {
    syms[i] = {static_cast<uint32_t>(i), static_cast<uint32_t>(i + 1),
               byte_ids_[static_cast<unsigned char>(piece[i])], static_cast<int>(i) - 1,
               i + 1 < piece.size() ? static_cast<int>(i) + 1 : -1};
  }
  MergeSymbols(&syms, [&](const Symbol& a, const Symbol& b, int* id) {
    const int r = encoder_.Find(piece.substr(a.start, b.end - a.start));
    *id = r;
    return r;
  });
  // A byte missing from the vocabulary (only in a custom file) is dropped
  // rather than emitted as an invalid id.
  ForEachLive(syms, [&](const Symbol& s) {
    if (s.id >= 0) out->push_back(s.id);
  });
}

// Short pieces: tiktoken's own loop (find the lowest-rank pair, merge,
// update its two neighbours) on a small array beats a heap.
void Tiktoken::EncodeSmallPiece(std::string_view piece, std::vector<int>* out) const {
  constexpr int kNone = 0x7FFFFFFF;
  struct Part {
    uint32_t start;
    int rank;  // rank of merging this part with the next
  };
  Part parts[kSmallPiece + 1];
  const int n = static_cast<int>(piece.size());
  auto rank_of = [&](int i, int count) {
    // Rank of the bytes from parts[i] to parts[i + 2] (exclusive).
    if (i + 2 >= count + 1) return kNone;
    const int r = encoder_.Find(piece.substr(parts[i].start, parts[i + 2].start - parts[i].start));
    return r < 0 ? kNone : r;
  };
  int count = n;  // parts[0..count) are live; parts[count] is the end marker
  for (int i = 0; i <= n; ++i) parts[i] = {static_cast<uint32_t>(i), kNone};
  for (int i = 0; i + 1 < count; ++i) parts[i].rank = rank_of(i, count);
  while (count > 1) {
    int best = kNone, at = -1;
    for (int i = 0; i + 1 < count; ++i) {
      if (parts[i].rank < best) {
        best = parts[i].rank;
        at = i;
      }
    }
    if (at < 0) break;
    for (int i = at + 1; i < count; ++i) parts[i] = parts[i + 1];
    --count;
    parts[at].rank = rank_of(at, count);
    if (at > 0) parts[at - 1].rank = rank_of(at - 1, count);
  }
  for (int i = 0; i < count; ++i) {
    const int id = encoder_.Find(piece.substr(parts[i].start, parts[i + 1].start - parts[i].start));
    if (id >= 0) out->push_back(id);
  }
}

void Tiktoken::EncodeOrdinary(std::string_view text, std::vector<int>* out) const {
  std::vector<Span> spans;
  regex_->FindAll(text, &spans);
  uint32_t pos = 0;
  for (const Span& s : spans) {
    // Bytes no alternative matched (only ill-formed UTF-8) are kept.
    if (s.start > pos) EncodePiece(text.substr(pos, s.start - pos), out);
    EncodePiece(text.substr(s.start, s.end - s.start), out);
    pos = s.end;
  }
  if (pos < text.size()) EncodePiece(text.substr(pos), out);
}

Result<std::vector<int>> Tiktoken::Encode(std::string_view text, bool bos, bool eos,
                                          const SpecialPolicy& special) const {
  if (!regex_) return MakeError("tokenizer not loaded");
  std::vector<int> out;
  out.reserve(text.size() / 3 + 2);
  if (bos) {
    if (bos_id_ < 0) return MakeError("this tokenizer has no bos token");
    out.push_back(bos_id_);
  }
  size_t pos = 0;
  if (special.mode != SpecialPolicy::Mode::kNone && !specials_.empty()) {
    size_t s, len;
    int id;
    auto accept = [&](const std::string& t, int, size_t) { return special.Allows(t); };
    while (specials_.Find(text, pos, accept, &s, &len, &id)) {
      EncodeOrdinary(text.substr(pos, s - pos), &out);
      out.push_back(id);
      pos = s + len;
    }
  }
  EncodeOrdinary(text.substr(pos), &out);
  if (eos) {
    if (eos_ids_.empty()) return MakeError("this tokenizer has no eos token");
    out.push_back(eos_ids_[0]);
  }
  return out;
}

Result<std::string> Tiktoken::Decode(const std::vector<int>& ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int id : ids) {
    if (id < 0 || id >= static_cast<int>(decoder_.size())) {
      return MakeError("token id " + std::to_string(id) + " out of range [0, " +
                       std::to_string(decoder_.size()) + ")");
    }
    out += decoder_[id];
  }
  return out;
}

Result<std::string> Tiktoken::DecodeToken(int id, int) const { return IdToPiece(id); }

Result<std::string> Tiktoken::IdToPiece(int id) const {
  if (id < 0 || id >= static_cast<int>(decoder_.size())) {
    return MakeError("token id " + std::to_string(id) + " out of range [0, " +
                     std::to_string(decoder_.size()) + ")");
  }
  return decoder_[id];
}

Result<int> Tiktoken::PieceToId(std::string_view piece) const {
  const int id = encoder_.Find(piece);
  if (id >= 0) return id;
  auto s = special_ids_.find(piece);
  if (s != special_ids_.end()) return s->second;
  return MakeError("no token for piece '" + std::string(piece) + "'");
}

}  // namespace tokenizers
