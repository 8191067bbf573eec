// HF tokenizer.json: added tokens, normalizers, pre-tokenizers, the BPE
// model and decoders, with tokenizer_config.json for bos/eos and the chat
// template.
//
// Byte-level models (a ByteLevel pre-tokenizer or normalizer) are run on raw
// bytes: the vocabulary is translated out of the GPT-2 byte alphabet once at
// load, so encoding never builds the mapped strings.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "formats.h"
#include "re2/re2.h"
#include "tokenizers/bpe.h"
#include "tokenizers/json.h"
#include "tokenizers/regex.h"
#include "tokenizers/unicode.h"
#include "tokenizers/utf8.h"

namespace tokenizers {
namespace {

// GPT-2's byte <-> printable character table.
struct ByteAlphabet {
  char32_t byte_to_char[256];
  absl::flat_hash_map<char32_t, unsigned char> char_to_byte;
  ByteAlphabet() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_char[b] = printable ? b : 256 + n++;
      char_to_byte[byte_to_char[b]] = static_cast<unsigned char>(b);
    }
  }
};
const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* a = new ByteAlphabet();
  return *a;
}

// A token written in the byte alphabet, as raw bytes; a token with any other
// character keeps its UTF-8 (what HF's ByteLevel decoder does too).
std::string FromByteAlphabet(std::string_view s) {
  std::string out;
  const auto& a = Alphabet();
  size_t i = 0;
  while (i < s.size()) {
    bool valid;
    const size_t n = NextUtf8Unit(s.substr(i), &valid);
    if (!valid) return std::string(s);
    auto it = a.char_to_byte.find(DecodeUtf8(s.substr(i), n));
    if (it == a.char_to_byte.end()) return std::string(s);
    out.push_back(static_cast<char>(it->second));
    i += n;
  }
  return out;
}

std::string ToByteAlphabet(std::string_view s) {
  std::string out;
  for (unsigned char b : s) AppendUtf8(Alphabet().byte_to_char[b], &out);
  return out;
}

// Iterates code points: fn(start, len, cp) with cp = 0xFFFD for bad bytes.
template <typename Fn>
void ForEachChar(std::string_view s, Fn&& fn) {
  size_t i = 0;
  while (i < s.size()) {
    bool valid;
    const size_t n = NextUtf8Unit(s.substr(i), &valid);
    fn(i, n, valid ? DecodeUtf8(s.substr(i), n) : char32_t{0xFFFD});
    i += n;
  }
}

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t f = s.find(from, pos);
    if (f == std::string_view::npos) break;
    out.append(s.data() + pos, f - pos);
    out.append(to);
    pos = f + from.size();
  }
  out.append(s.data() + pos, s.size() - pos);
  return out;
}

// A Split / Replace pattern: {"String": "..."} or {"Regex": "..."}.
Result<std::unique_ptr<Regex>> PatternFrom(const Json* p) {
  if (!p || !p->is_object()) return MakeError("pattern missing");
  if (const Json* s = p->Find("String"); s && s->is_string()) {
    return CompileRegex(RE2::QuoteMeta(s->str()));
  }
  if (const Json* r = p->Find("Regex"); r && r->is_string()) {
    return CompileRegex(r->str());
  }
  return MakeError("pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

Result<std::string> LiteralOrRegexReplace(const Json* p) {
  if (p && p->is_object()) {
    if (const Json* s = p->Find("String"); s && s->is_string()) return s->str();
  }
  return MakeError("only String patterns are supported in Replace");
}

// ---------------------------------------------------------------------------
// Normalizers: string -> string.

using Normalizer = std::function<void(std::string*)>;

Result<Normalizer> MakeNormalizer(const Json& j, bool* byte_level) {
  const std::string type = j.GetString("type");
  if (type == "Sequence") {
    const Json* list = j.Find("normalizers");
    if (!list || !list->is_array()) return MakeError("Sequence normalizer without list");
    std::vector<Normalizer> parts;
    for (const Json& n : list->items()) {
      auto r = MakeNormalizer(n, byte_level);
      if (!r.ok()) return r;
      parts.push_back(std::move(r).value());
    }
    return Normalizer([parts](std::string* s) {
      for (const auto& p : parts) p(s);
    });
  }
  if (type == "Replace") {
    auto from = LiteralOrRegexReplace(j.Find("pattern"));
    if (!from.ok()) return MakeError(from.error());
    const std::string to = j.GetString("content");
    return Normalizer([from = *from, to](std::string* s) { *s = ReplaceAll(*s, from, to); });
  }
  if (type == "Prepend") {
    const std::string pre = j.GetString("prepend");
    return Normalizer([pre](std::string* s) {
      if (!s->empty()) s->insert(0, pre);
    });
  }
  if (type == "Strip") {
    const bool left = j.GetBool("strip_left", true);
    const bool right = j.GetBool("strip_right", true);
    return Normalizer([left, right](std::string* s) {
      size_t b = 0, e = s->size();
      bool seen_non_space = false;
      size_t first_non = s->size(), last_end = 0;
      ForEachChar(*s, [&](size_t st, size_t n, char32_t c) {
        if (!IsUnicodeSpace(c)) {
          if (!seen_non_space) first_non = st;
          seen_non_space = true;
          last_end = st + n;
        }
      });
      if (!seen_non_space) {
        if (left || right) s->clear();
        return;
      }
      if (left) b = first_non;
      if (right) e = last_end;
      *s = s->substr(b, e - b);
    });
  }
  if (type == "ByteLevel") {
    *byte_level = true;
    return Normalizer([](std::string*) {});
  }
  const NormalForm forms[] = {NormalForm::kNfc, NormalForm::kNfd, NormalForm::kNfkc,
                              NormalForm::kNfkd};
  const char* names[] = {"NFC", "NFD", "NFKC", "NFKD"};
  for (int k = 0; k < 4; ++k) {
    if (type == names[k]) {
      const NormalForm f = forms[k];
      return Normalizer([f](std::string* s) { *s = Normalize(*s, f); });
    }
  }
  if (type == "Lowercase") {
    return Normalizer([](std::string* s) { *s = Lowercase(*s); });
  }
  return MakeError("normalizer '" + type + "' is not supported");
}

// ---------------------------------------------------------------------------
// Pre-tokenizers: split pieces into smaller pieces.

struct Piece {
  std::string text;
  bool at_start;  // starts at byte 0 of the input (Metaspace "first")
};

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Result<Behavior> ParseBehavior(const std::string& b) {
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return MakeError("unknown split behavior '" + b + "'");
}

struct Part {
  uint32_t start, end;
  bool match;
};

// HF's split: the text cut into matches and gaps, then combined per
// behavior.
void SplitParts(std::string_view text, const std::vector<Span>& spans, bool invert,
                Behavior behavior, std::vector<Part>* out) {
  std::vector<Part> parts;
  uint32_t pos = 0;
  for (const Span& s : spans) {
    if (s.start > pos) parts.push_back({pos, s.start, invert});
    parts.push_back({s.start, s.end, !invert});
    pos = s.end;
  }
  if (pos < text.size()) {
    parts.push_back({pos, static_cast<uint32_t>(text.size()), invert});
  }
  out->clear();
  switch (behavior) {
    case Behavior::kIsolated:
      *out = std::move(parts);
      break;
    case Behavior::kRemoved:
      for (const Part& p : parts) {
        if (!p.match) out->push_back(p);
      }
      break;
    case Behavior::kMergedWithPrevious: {
      bool prev = false;
      for (const Part& p : parts) {
        if (p.match && !prev && !out->empty()) {
          out->back().end = p.end;
        } else {
          out->push_back(p);
        }
        prev = p.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev = false;
      for (size_t k = parts.size(); k-- > 0;) {
        const Part& p = parts[k];
        if (p.match && !prev && !out->empty()) {
          out->back().start = p.start;
        } else {
          out->push_back(p);
        }
        prev = p.match;
      }
      std::reverse(out->begin(), out->end());
      break;
    }
    case Behavior::kContiguous: {
      bool prev = false;
      for (const Part& p : parts) {
        if (p.match == prev && !out->empty()) {
          out->back().end = p.end;
        } else {
          out->push_back(p);
        }
        prev = p.match;
      }
      break;
    }
  }
}

using PreTokenizer = std::function<void(std::vector<Piece>*)>;

PreTokenizer SplitWith(std::shared_ptr<Regex> re, bool invert, Behavior behavior) {
  return [re, invert, behavior](std::vector<Piece>* pieces) {
    std::vector<Piece> out;
    std::vector<Span> spans;
    std::vector<Part> parts;
    for (Piece& p : *pieces) {
      spans.clear();
      re->FindAll(p.text, &spans);
      SplitParts(p.text, spans, invert, behavior, &parts);
      for (const Part& part : parts) {
        if (part.end == part.start) continue;
        out.push_back(
            {p.text.substr(part.start, part.end - part.start), p.at_start && part.start == 0});
      }
    }
    *pieces = std::move(out);
  };
}

constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Result<PreTokenizer> MakePreTokenizer(const Json& j, bool* byte_level) {
  const std::string type = j.GetString("type");
  if (type == "Sequence") {
    const Json* list = j.Find("pretokenizers");
    if (!list || !list->is_array()) return MakeError("Sequence pre-tokenizer without list");
    std::vector<PreTokenizer> parts;
    for (const Json& n : list->items()) {
      auto r = MakePreTokenizer(n, byte_level);
      if (!r.ok()) return r;
      parts.push_back(std::move(r).value());
    }
    return PreTokenizer([parts](std::vector<Piece>* p) {
      for (const auto& f : parts) f(p);
    });
  }
  if (type == "Split") {
    auto re = PatternFrom(j.Find("pattern"));
    if (!re.ok()) return MakeError("Split: " + re.error());
    auto b = ParseBehavior(j.GetString("behavior", "Isolated"));
    if (!b.ok()) return MakeError(b.error());
    return SplitWith(std::shared_ptr<Regex>(std::move(re).value()), j.GetBool("invert", false), *b);
  }
  if (type == "ByteLevel") {
    *byte_level = true;
    const bool prefix = j.GetBool("add_prefix_space", true);
    PreTokenizer split;
    if (j.GetBool("use_regex", true)) {
      auto re = CompileRegex(kGpt2Pattern);
      if (!re.ok()) return MakeError(re.error());
      split = SplitWith(std::shared_ptr<Regex>(std::move(re).value()), false, Behavior::kIsolated);
    }
    return PreTokenizer([prefix, split](std::vector<Piece>* pieces) {
      if (prefix) {
        for (Piece& p : *pieces) {
          if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
        }
      }
      if (split) split(pieces);
    });
  }
  if (type == "Digits") {
    auto re = CompileRegex("\\p{N}");
    if (!re.ok()) return MakeError(re.error());
    return SplitWith(
        std::shared_ptr<Regex>(std::move(re).value()), false,
        j.GetBool("individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous);
  }
  if (type == "Whitespace") {
    auto re = CompileRegex("\\w+|[^\\w\\s]+");
    if (!re.ok()) return MakeError(re.error());
    return SplitWith(std::shared_ptr<Regex>(std::move(re).value()), true, Behavior::kRemoved);
  }
  if (type == "WhitespaceSplit") {
    auto re = CompileRegex("\\s");
    if (!re.ok()) return MakeError(re.error());
    return SplitWith(std::shared_ptr<Regex>(std::move(re).value()), false, Behavior::kRemoved);
  }
  if (type == "Punctuation") {
    auto re = CompileRegex("[\\p{P}!-/:-@\\[-`{-~]");
    if (!re.ok()) return MakeError(re.error());
    auto b = ParseBehavior(j.GetString("behavior", "Isolated"));
    if (!b.ok()) return MakeError(b.error());
    return SplitWith(std::shared_ptr<Regex>(std::move(re).value()), false, *b);
  }
  if (type == "Metaspace") {
    const std::string repl = j.GetString("replacement", "\xE2\x96\x81");
    std::string scheme = j.GetString("prepend_scheme", "");
    if (scheme.empty()) {
      scheme = j.GetBool("add_prefix_space", true) ? "always" : "never";
    }
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return MakeError("unknown Metaspace prepend_scheme '" + scheme + "'");
    }
    const bool split = j.GetBool("split", true);
    std::shared_ptr<Regex> re;
    if (split) {
      auto r = CompileRegex(RE2::QuoteMeta(repl));
      if (!r.ok()) return MakeError(r.error());
      re = std::move(r).value();
    }
    PreTokenizer splitter =
        split ? SplitWith(re, false, Behavior::kMergedWithNext) : PreTokenizer();
    return PreTokenizer([repl, scheme, splitter](std::vector<Piece>* pieces) {
      for (Piece& p : *pieces) {
        p.text = ReplaceAll(p.text, " ", repl);
        const bool prepend = scheme == "always" || (scheme == "first" && p.at_start);
        if (prepend && p.text.compare(0, repl.size(), repl) != 0) {
          p.text.insert(0, repl);
        }
      }
      if (splitter) splitter(pieces);
    });
  }
  return MakeError("pre-tokenizer '" + type + "' is not supported");
}

// ---------------------------------------------------------------------------
// Decoders: token strings -> token strings (HF's decode_chain).

struct DecodeCtx {
  bool byte_level_vocab;  // vocab already holds raw bytes
  bool streaming;         // one token at a time: keep fallback bytes raw
};
using Decoder = std::function<void(std::vector<std::string>*, bool first, const DecodeCtx&)>;

bool ParseByteToken(std::string_view t, unsigned char* b) {
  // "<0xAB>"
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

// `after_fuse`: an earlier decoder of the same Sequence fused all tokens
// into one, so this one sees the whole text; in a stream that means it
// acts on the first token only.
Result<Decoder> MakeDecoder(const Json& j, bool after_fuse = false) {
  const std::string type = j.GetString("type");
  if (type == "Sequence") {
    const Json* list = j.Find("decoders");
    if (!list || !list->is_array()) return MakeError("Sequence decoder without list");
    std::vector<Decoder> parts;
    bool fused = after_fuse;
    for (const Json& n : list->items()) {
      auto r = MakeDecoder(n, fused);
      if (!r.ok()) return r;
      parts.push_back(std::move(r).value());
      if (n.GetString("type") == "Fuse") fused = true;
    }
    return Decoder([parts](std::vector<std::string>* t, bool first, const DecodeCtx& ctx) {
      for (const auto& p : parts) p(t, first, ctx);
    });
  }
  if (type == "ByteLevel") {
    return Decoder([](std::vector<std::string>* t, bool, const DecodeCtx& ctx) {
      if (ctx.byte_level_vocab) return;
      for (auto& s : *t) s = FromByteAlphabet(s);
    });
  }
  if (type == "Replace") {
    auto from = LiteralOrRegexReplace(j.Find("pattern"));
    if (!from.ok()) return MakeError(from.error());
    const std::string to = j.GetString("content");
    return Decoder([from = *from, to](std::vector<std::string>* t, bool, const DecodeCtx&) {
      for (auto& s : *t) s = ReplaceAll(s, from, to);
    });
  }
  if (type == "ByteFallback") {
    return Decoder([](std::vector<std::string>* t, bool, const DecodeCtx& ctx) {
      std::vector<std::string> out;
      std::string bytes;
      int nbytes = 0;
      auto flush = [&] {
        if (nbytes == 0) return;
        // A run of byte tokens that is not valid UTF-8 becomes one U+FFFD
        // per byte, as in HF; a stream keeps the bytes for later tokens.
        if (ctx.streaming || ReplaceInvalidUtf8(bytes) == bytes) {
          out.push_back(bytes);
        } else {
          for (int k = 0; k < nbytes; ++k) out.push_back("\xEF\xBF\xBD");
        }
        bytes.clear();
        nbytes = 0;
      };
      for (auto& s : *t) {
        unsigned char b;
        if (ParseByteToken(s, &b)) {
          bytes.push_back(static_cast<char>(b));
          ++nbytes;
        } else {
          flush();
          out.push_back(std::move(s));
        }
      }
      flush();
      *t = std::move(out);
    });
  }
  if (type == "Fuse") {
    return Decoder([](std::vector<std::string>* t, bool, const DecodeCtx&) {
      std::string all;
      for (auto& s : *t) all += s;
      t->assign(1, all);
    });
  }
  if (type == "Strip") {
    const std::string content = j.GetString("content", " ");
    int64_t start = 0, stop = 0;
    if (const Json* s = j.Find("start")) s->AsInt64(&start);
    if (const Json* s = j.Find("stop")) s->AsInt64(&stop);
    return Decoder([content, start, stop, after_fuse](std::vector<std::string>* t, bool first,
                                                      const DecodeCtx& ctx) {
      if (content.empty()) return;
      if (after_fuse && ctx.streaming && !first) return;
      for (auto& s : *t) {
        size_t b = 0, e = s.size();
        for (int64_t k = 0;
             k < start && s.compare(b, content.size(), content) == 0 && b + content.size() <= e;
             ++k) {
          b += content.size();
        }
        for (int64_t k = 0; k < stop && e >= b + content.size() &&
                            s.compare(e - content.size(), content.size(), content) == 0;
             ++k) {
          e -= content.size();
        }
        s = s.substr(b, e - b);
      }
    });
  }
  if (type == "Metaspace") {
    const std::string repl = j.GetString("replacement", "\xE2\x96\x81");
    std::string scheme = j.GetString("prepend_scheme", "");
    if (scheme.empty()) {
      scheme = j.GetBool("add_prefix_space", true) ? "always" : "never";
    }
    return Decoder([repl, scheme](std::vector<std::string>* t, bool first, const DecodeCtx&) {
      // As in HF: in the first token every replacement character is
      // dropped (not only a leading one); elsewhere each becomes a space.
      for (size_t i = 0; i < t->size(); ++i) {
        std::string& s = (*t)[i];
        const bool drop = first && i == 0 && scheme != "never";
        s = ReplaceAll(s, repl, drop ? "" : " ");
      }
    });
  }
  return MakeError("decoder '" + type + "' is not supported");
}

// ---------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int id;
  bool special, lstrip, rstrip, single_word;
};

bool IsWordChar(char32_t c) {
  return c == '_' || (c < 0x80 ? std::isalnum(static_cast<int>(c)) != 0 : !IsUnicodeSpace(c));
}

class HfTokenizer : public Tokenizer {
 public:
  Result<void> Load(const std::string& path) override {
    auto data = ReadFile(path);
    if (!data.ok()) return MakeError(data.error());
    auto r = LoadFromString(*data, path);
    if (!r.ok()) return MakeError(path + ": " + r.error());
    return {};
  }

  Result<void> LoadFromString(std::string_view text, const std::string& path) {
    std::string config;
    if (!path.empty()) {
      const size_t slash = path.find_last_of('/');
      const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
      auto c = ReadFile(dir + "/tokenizer_config.json");
      if (c.ok()) config = std::move(c).value();
    }
    return LoadFromStrings(text, config);
  }

  Result<void> LoadFromStrings(std::string_view text, std::string_view config_text);

  Result<std::vector<int>> Encode(std::string_view text, bool bos, bool eos,
                                  const SpecialPolicy& special) const override;
  Result<std::string> Decode(const std::vector<int>& ids) const override;
  Result<std::string> DecodeToken(int id, int prev) const override;
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }
  Result<std::string> IdToPiece(int id) const override {
    if (id < 0 || id >= vocab_size() || !has_id_[id]) {
      return MakeError("token id " + std::to_string(id) + " out of range");
    }
    return id_to_token_[id];
  }
  Result<int> PieceToId(std::string_view piece) const override {
    auto it = added_ids_.find(piece);
    if (it != added_ids_.end()) return it->second;
    auto v = vocab_.find(piece);
    if (v != vocab_.end()) return v->second;
    return MakeError("no token for piece '" + std::string(piece) + "'");
  }
  std::string type() const override { return "hf"; }

 private:
  Result<void> LoadModel(const Json& model);
  void EncodeSegment(std::string_view text, bool at_start, std::vector<int>* out) const;
  void EncodeWord(std::string_view word, std::vector<int>* out) const;
  void EncodeWordUncached(std::string_view word, std::vector<int>* out) const;

  uint64_t instance_ = 0;  // distinguishes loads in the word cache

  bool byte_level_ = false;
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  Decoder decoder_;
  std::vector<AddedToken> added_;
  absl::flat_hash_map<std::string, int> added_ids_;
  SpecialMatcher added_matcher_;

  // BPE model.
  absl::flat_hash_map<std::string, int> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::vector<bool> is_added_;
  absl::flat_hash_map<uint64_t, std::pair<int, int>> merges_;  // -> rank, id
  int byte_ids_[256];
  int unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string prefix_, suffix_;
};

Result<void> HfTokenizer::LoadModel(const Json& model) {
  const std::string type = model.GetString("type", "BPE");
  if (type != "BPE") {
    return MakeError("model type '" + type + "' is not supported (only BPE)");
  }
  const Json* vocab = model.Find("vocab");
  if (!vocab || !vocab->is_object()) return MakeError("model.vocab missing");
  prefix_ = model.GetString("continuing_subword_prefix");
  suffix_ = model.GetString("end_of_word_suffix");
  byte_fallback_ = model.GetBool("byte_fallback", false);
  ignore_merges_ = model.GetBool("ignore_merges", false);
  fuse_unk_ = model.GetBool("fuse_unk", false);
  int max_id = -1;
  vocab_.reserve(vocab->members().size());
  for (const auto& [tok, idj] : vocab->members()) {
    int64_t id;
    if (!idj.AsInt64(&id) || id < 0 || id > (1 << 26)) {
      return MakeError("bad id for vocab entry '" + tok + "'");
    }
    std::string key = byte_level_ ? FromByteAlphabet(tok) : tok;
    vocab_[key] = static_cast<int>(id);
    max_id = std::max<int>(max_id, static_cast<int>(id));
  }
  id_to_token_.assign(max_id + 1, std::string());
  has_id_.assign(max_id + 1, false);
  for (const auto& [k, id] : vocab_) {
    id_to_token_[id] = k;
    has_id_[id] = true;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(std::string(1, static_cast<char>(b)));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  const std::string unk = model.GetString("unk_token");
  if (!unk.empty()) {
    auto it = vocab_.find(unk);
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  const Json* merges = model.Find("merges");
  if (merges && merges->is_array()) {
    merges_.reserve(merges->items().size());
    int rank = 0;
    for (const Json& m : merges->items()) {
      std::string a, b;
      if (m.is_string()) {
        const size_t sp = m.str().find(' ');
        if (sp == std::string::npos) {
          return MakeError("merge '" + m.str() + "' has no space");
        }
        a = m.str().substr(0, sp);
        b = m.str().substr(sp + 1);
      } else if (m.is_array() && m.items().size() == 2 && m.items()[0].is_string() &&
                 m.items()[1].is_string()) {
        a = m.items()[0].str();
        b = m.items()[1].str();
      } else {
        return MakeError("merge #" + std::to_string(rank) + " is malformed");
      }
      std::string merged = a;
      if (!prefix_.empty() && b.compare(0, prefix_.size(), prefix_) == 0) {
        merged += b.substr(prefix_.size());
      } else {
        merged += b;
      }
      if (byte_level_) {
        a = FromByteAlphabet(a);
        b = FromByteAlphabet(b);
        merged = FromByteAlphabet(merged);
      }
      auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(merged);
      if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end()) {
        return MakeError("merge #" + std::to_string(rank) +
                         " uses or makes a token missing from the vocab");
      }
      const uint64_t key =
          (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint32_t>(ib->second);
      merges_.emplace(key, std::make_pair(rank, im->second));
      ++rank;
    }
  }
  return {};
}

bool ContainsType(const Json* j, const char* list_key, const char* type) {
  if (!j || !j->is_object()) return false;
  if (j->GetString("type") == type) return true;
  if (const Json* l = j->Find(list_key); l && l->is_array()) {
    for (const Json& x : l->items()) {
      if (ContainsType(&x, list_key, type)) return true;
    }
  }
  return false;
}

// A config token: "text" or {"content": "text", ...}.
std::string ConfigToken(const Json* j) {
  if (!j) return "";
  if (j->is_string()) return j->str();
  if (j->is_object()) return j->GetString("content");
  return "";
}

Result<void> HfTokenizer::LoadFromStrings(std::string_view text, std::string_view config_text) {
  auto parsed = ParseJson(text);
  if (!parsed.ok()) return MakeError(parsed.error());
  const Json& root = *parsed;
  if (!root.is_object()) return MakeError("tokenizer.json is not an object");
  const Json* model = root.Find("model");
  if (!model || !model->is_object()) {
    return MakeError("not an HF tokenizer.json: no \"model\"");
  }
  *this = HfTokenizer();
  static std::atomic<uint64_t> next_instance{1};
  instance_ = next_instance.fetch_add(1);
  const Json* norm = root.Find("normalizer");
  const Json* pre = root.Find("pre_tokenizer");
  if (norm && !norm->is_null()) {
    auto n = MakeNormalizer(*norm, &byte_level_);
    if (!n.ok()) return MakeError(n.error());
    normalizer_ = std::move(n).value();
  }
  if (pre && !pre->is_null()) {
    auto p = MakePreTokenizer(*pre, &byte_level_);
    if (!p.ok()) return MakeError(p.error());
    pre_tokenizer_ = std::move(p).value();
  }
  if (const Json* dec = root.Find("decoder"); dec && !dec->is_null()) {
    auto d = MakeDecoder(*dec);
    if (!d.ok()) return MakeError(d.error());
    decoder_ = std::move(d).value();
  }
  auto m = LoadModel(*model);
  if (!m.ok()) return m;
  is_added_.assign(id_to_token_.size(), false);
  if (const Json* added = root.Find("added_tokens"); added && added->is_array()) {
    for (const Json& a : added->items()) {
      int64_t id;
      const Json* idj = a.Find("id");
      if (!idj || !idj->AsInt64(&id) || id < 0 || id > (1 << 26)) {
        return MakeError("added token without a valid id");
      }
      AddedToken t{a.GetString("content"),      static_cast<int>(id),
                   a.GetBool("special", false), a.GetBool("lstrip", false),
                   a.GetBool("rstrip", false),  a.GetBool("single_word", false)};
      if (t.content.empty()) return MakeError("added token with empty content");
      if (t.id >= static_cast<int>(id_to_token_.size())) {
        id_to_token_.resize(t.id + 1);
        has_id_.resize(t.id + 1, false);
        is_added_.resize(t.id + 1, false);
      }
      id_to_token_[t.id] = t.content;
      has_id_[t.id] = true;
      is_added_[t.id] = true;
      added_ids_[t.content] = t.id;
      added_matcher_.Add(t.content, static_cast<int>(added_.size()));
      added_.push_back(std::move(t));
    }
  }
  // bos / eos: tokenizer_config.json, else the post-processor's template.
  auto id_of = [&](const std::string& tok) {
    if (tok.empty()) return -1;
    auto r = PieceToId(tok);
    if (r.ok()) return *r;
    if (byte_level_) {
      auto b = PieceToId(FromByteAlphabet(tok));
      if (b.ok()) return *b;
    }
    return -1;
  };
  // Whether a prompt starts with bos is what transformers (5.x, its tokenizers
  // backend) does: tokenizer.json's post-processor decides. A
  // TemplateProcessing whose single sequence starts with a special token adds
  // it; a file without one adds nothing. tokenizer_config.json's
  // add_bos_token does not change that there (parity_test checks both).
  if (!config_text.empty()) {
    auto cfg = ParseJson(config_text);
    if (!cfg.ok()) return MakeError("tokenizer_config.json: " + cfg.error());
    bos_id_ = id_of(ConfigToken(cfg->Find("bos_token")));
    const int eos = id_of(ConfigToken(cfg->Find("eos_token")));
    if (eos >= 0) eos_ids_.push_back(eos);
    if (const Json* ct = cfg->Find("chat_template")) {
      if (ct->is_string()) {
        chat_template_ = ct->str();
      } else if (ct->is_array()) {
        for (const Json& t : ct->items()) {
          if (t.GetString("name") == "default") chat_template_ = t.GetString("template");
        }
      }
    }
  }
  // The special token a TemplateProcessing puts before a single sequence.
  int template_bos = -1;
  std::function<void(const Json*)> scan = [&](const Json* p) {
    if (!p || !p->is_object()) return;
    if (p->GetString("type") == "TemplateProcessing") {
      const Json* single = p->Find("single");
      if (single && single->is_array() && !single->items().empty()) {
        const Json* st = single->items().front().Find("SpecialToken");
        if (st) template_bos = id_of(st->GetString("id"));
      }
    }
    if (const Json* l = p->Find("processors"); l && l->is_array()) {
      for (const Json& x : l->items()) scan(&x);
    }
  };
  scan(root.Find("post_processor"));
  if (bos_id_ < 0) bos_id_ = template_bos;
  add_bos_ = template_bos >= 0;
  return {};
}

void HfTokenizer::EncodeWord(std::string_view word, std::vector<int>* out) const {
  // Words recur, so short ones are looked up in a per-thread direct-mapped
  // cache first (HF keeps a word cache too; results cannot differ).
  constexpr size_t kMaxKey = 24;
  if (word.size() > kMaxKey) {
    EncodeWordUncached(word, out);
    return;
  }
  struct Entry {
    uint64_t owner = 0;
    uint64_t hash = 0;
    uint8_t len = 0;
    uint8_t n_ids = 0;
    char key[kMaxKey];
    int ids[kMaxKey];
  };
  static constexpr size_t kEntries = 4096;
  thread_local std::vector<Entry> cache(kEntries);
  const uint64_t h = BytesMap::Hash(word);
  Entry& e = cache[h & (kEntries - 1)];
  if (e.owner == instance_ && e.hash == h && e.len == word.size() &&
      std::memcmp(e.key, word.data(), word.size()) == 0) {
    out->insert(out->end(), e.ids, e.ids + e.n_ids);
    return;
  }
  const size_t before = out->size();
  EncodeWordUncached(word, out);
  // A word yields at most one id per byte, so the ids always fit.
  e.owner = instance_;
  e.hash = h;
  e.len = static_cast<uint8_t>(word.size());
  e.n_ids = static_cast<uint8_t>(out->size() - before);
  std::memcpy(e.key, word.data(), word.size());
  std::copy(out->begin() + before, out->end(), e.ids);
}

void HfTokenizer::EncodeWordUncached(std::string_view word, std::vector<int>* out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> syms;
  if (byte_level_ && prefix_.empty() && suffix_.empty()) {
    // Every byte is a symbol of its own.
    syms.reserve(word.size());
    // A byte missing from the vocabulary is dropped and its neighbours may
    // merge across the gap, as in HF (which has no unk for byte-level).
    for (size_t i = 0; i < word.size(); ++i) {
      const int id = byte_ids_[static_cast<unsigned char>(word[i])];
      if (id < 0) continue;
      syms.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(i + 1), id,
                      static_cast<int>(syms.size()) - 1, -1});
    }
  } else {
    // One symbol per character (with the subword prefix / word suffix),
    // falling back to <0xXX> byte tokens or unk.
    int pending_unk_start = -1;
    uint32_t pending_unk_end = 0;
    auto flush_unk = [&] {
      if (pending_unk_start < 0) return;
      syms.push_back({static_cast<uint32_t>(pending_unk_start), pending_unk_end, unk_id_, 0, 0});
      pending_unk_start = -1;
    };
    ForEachChar(word, [&](size_t st, size_t n, char32_t) {
      std::string s(word.substr(st, n));
      if (st > 0 && !prefix_.empty()) s = prefix_ + s;
      if (st + n == word.size() && !suffix_.empty()) s += suffix_;
      auto it = vocab_.find(s);
      if (it != vocab_.end()) {
        flush_unk();
        syms.push_back(
            {static_cast<uint32_t>(st), static_cast<uint32_t>(st + n), it->second, 0, 0});
        return;
      }
      if (byte_fallback_) {
        std::vector<int> ids;
        for (size_t k = st; k < st + n; ++k) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "<0x%02X>", static_cast<unsigned char>(word[k]));
          auto b = vocab_.find(buf);
          if (b == vocab_.end()) break;
          ids.push_back(b->second);
        }
        if (ids.size() == n) {
          flush_unk();
          for (size_t k = 0; k < n; ++k) {
            syms.push_back(
                {static_cast<uint32_t>(st + k), static_cast<uint32_t>(st + k + 1), ids[k], 0, 0});
          }
          return;
        }
      }
      if (unk_id_ < 0) return;  // no unk: HF drops the character
      if (pending_unk_start >= 0 && fuse_unk_) {
        pending_unk_end = static_cast<uint32_t>(st + n);
      } else {
        flush_unk();
        pending_unk_start = static_cast<int>(st);
        pending_unk_end = static_cast<uint32_t>(st + n);
      }
    });
    flush_unk();
    for (size_t i = 0; i < syms.size(); ++i) {
      syms[i].prev = static_cast<int>(i) - 1;
    }
  }
  for (size_t i = 0; i < syms.size(); ++i) {
    syms[i].next = i + 1 < syms.size() ? static_cast<int>(i) + 1 : -1;
  }
  MergeSymbols(&syms, [&](const Symbol& a, const Symbol& b, int* id) {
    if (a.id < 0 || b.id < 0) return -1;
    auto it = merges_.find((static_cast<uint64_t>(a.id) << 32) | static_cast<uint32_t>(b.id));
    if (it == merges_.end()) return -1;
    *id = it->second.second;
    return it->second.first;
  });
  ForEachLive(syms, [&](const Symbol& s) {
    if (s.id >= 0) out->push_back(s.id);
  });
}

void HfTokenizer::EncodeSegment(std::string_view text, bool at_start, std::vector<int>* out) const {
  std::vector<Piece> pieces;
  pieces.push_back({std::string(text), at_start});
  if (normalizer_) normalizer_(&pieces[0].text);
  if (pieces[0].text.empty()) return;
  if (pre_tokenizer_) pre_tokenizer_(&pieces);
  for (const Piece& p : pieces) {
    if (!p.text.empty()) EncodeWord(p.text, out);
  }
}

Result<std::vector<int>> HfTokenizer::Encode(std::string_view text, bool bos, bool eos,
                                             const SpecialPolicy& special) const {
  if (vocab_.empty()) return MakeError("tokenizer not loaded");
  std::vector<int> out;
  if (bos) {
    if (bos_id_ < 0) return MakeError("this tokenizer has no bos token");
    out.push_back(bos_id_);
  }
  // Added tokens split the text first; the pieces between are encoded
  // normally. lstrip / rstrip swallow the whitespace beside a token.
  size_t pos = 0;
  auto accept = [&](const std::string&, int k, size_t start) {
    const AddedToken& t = added_[k];
    if (t.special && !special.Allows(t.content)) return false;
    if (t.single_word) {
      const size_t end = start + t.content.size();
      if (start > 0) {
        size_t b = start - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        bool v;
        const size_t n = NextUtf8Unit(text.substr(b), &v);
        if (v && IsWordChar(DecodeUtf8(text.substr(b), n))) return false;
      }
      if (end < text.size()) {
        bool v;
        const size_t n = NextUtf8Unit(text.substr(end), &v);
        if (v && IsWordChar(DecodeUtf8(text.substr(end), n))) return false;
      }
    }
    return true;
  };
  size_t s, len;
  int k;
  while (!added_.empty() && added_matcher_.Find(text, pos, accept, &s, &len, &k)) {
    const AddedToken& t = added_[k];
    size_t seg_end = s, next = s + len;
    // Whole whitespace characters only: a continuation byte such as 0x85
    // or 0xA0 is not a space.
    if (t.lstrip) {
      while (seg_end > pos) {
        size_t b = seg_end - 1;
        while (b > pos && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        bool v;
        const size_t n = NextUtf8Unit(text.substr(b), &v);
        if (!v || b + n != seg_end || !IsUnicodeSpace(DecodeUtf8(text.substr(b), n))) break;
        seg_end = b;
      }
    }
    if (t.rstrip) {
      while (next < text.size()) {
        bool v;
        const size_t n = NextUtf8Unit(text.substr(next), &v);
        if (!v || !IsUnicodeSpace(DecodeUtf8(text.substr(next), n))) break;
        next += n;
      }
    }
    EncodeSegment(text.substr(pos, seg_end - pos), pos == 0, &out);
    out.push_back(t.id);
    pos = next;
  }
  EncodeSegment(text.substr(pos), pos == 0, &out);
  if (eos) {
    if (eos_ids_.empty()) return MakeError("this tokenizer has no eos token");
    out.push_back(eos_ids_[0]);
  }
  return out;
}

Result<std::string> HfTokenizer::Decode(const std::vector<int>& ids) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int id : ids) {
    auto p = IdToPiece(id);
    if (!p.ok()) return MakeError(p.error());
    toks.push_back(std::move(p).value());
  }
  if (decoder_) decoder_(&toks, true, DecodeCtx{byte_level_, false});
  // Without a decoder HF joins the tokens with spaces.
  std::string out;
  for (size_t i = 0; i < toks.size(); ++i) {
    if (!decoder_ && i > 0) out.push_back(' ');
    out += toks[i];
  }
  return out;
}

Result<std::string> HfTokenizer::DecodeToken(int id, int prev) const {
  const bool first = prev < 0;
  auto p = IdToPiece(id);
  if (!p.ok()) return MakeError(p.error());
  std::vector<std::string> toks{std::move(p).value()};
  if (decoder_) decoder_(&toks, first, DecodeCtx{byte_level_, true});
  std::string out = !decoder_ && !first ? " " : "";
  for (auto& t : toks) out += t;
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> NewHfTokenizer() { return std::make_unique<HfTokenizer>(); }

Result<void> LoadHfFromString(Tokenizer* hf, std::string_view json, const std::string& path) {
  return static_cast<HfTokenizer*>(hf)->LoadFromString(json, path);
}

Result<void> LoadHfFromStrings(Tokenizer* hf, std::string_view json, std::string_view config_json) {
  return static_cast<HfTokenizer*>(hf)->LoadFromStrings(json, config_json);
}

bool InByteAlphabet(std::string_view s) {
  const auto& a = Alphabet();
  size_t i = 0;
  while (i < s.size()) {
    bool valid;
    const size_t n = NextUtf8Unit(s.substr(i), &valid);
    if (!valid || a.char_to_byte.find(DecodeUtf8(s.substr(i), n)) == a.char_to_byte.end()) {
      return false;
    }
    i += n;
  }
  return true;
}

std::string GptBytesToAlphabet(std::string_view bytes) { return ToByteAlphabet(bytes); }

}  // namespace tokenizers
