// The tokenizer embedded in a GGUF file (tokenizer.ggml.*), turned into an
// HF tokenizer.json the way transformers converts it, so that one code path
// (the HF loader) runs it and WriteTokenizerJson writes the same thing out.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "formats.h"
#include "tokenizers/json.h"
#include "tokenizers/tokenizer.h"

namespace tokenizers {

// From hf_tokenizer.cc.
std::string GptBytesToAlphabet(std::string_view bytes);
bool InByteAlphabet(std::string_view s);

namespace {

// GGUF value types.
enum : uint32_t {
  kU8 = 0,
  kI8,
  kU16,
  kI16,
  kU32,
  kI32,
  kF32,
  kBool,
  kString,
  kArray,
  kU64,
  kI64,
  kF64
};

struct Value {
  uint32_t type = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  uint32_t elem_type = 0;
  std::vector<std::string> strs;  // string arrays
  std::vector<int64_t> ints;      // integer / bool arrays
  std::vector<double> floats;     // float arrays
};

// Sequential reader over a FILE with bounds checks against the file size:
// a truncated or lying file yields an error, never a huge allocation.
class Reader {
 public:
  Reader(std::FILE* f, uint64_t size) : f_(f), size_(size) {}
  bool Bytes(void* dst, uint64_t n) {
    if (n > size_ - pos_) return Fail("truncated file");
    if (n && std::fread(dst, 1, n, f_) != n) return Fail("read error");
    pos_ += n;
    return true;
  }
  template <typename T>
  bool Pod(T* v) {
    return Bytes(v, sizeof(T));
  }
  bool Str(std::string* s) {
    uint64_t n;
    if (!Pod(&n)) return false;
    if (n > size_ - pos_) return Fail("string length beyond end of file");
    s->resize(n);
    return Bytes(s->data(), n);
  }
  bool Skip(uint64_t n) {
    if (n > size_ - pos_) return Fail("truncated file");
    if (std::fseek(f_, static_cast<long>(n), SEEK_CUR) != 0) return Fail("seek error");
    pos_ += n;
    return true;
  }
  bool Fail(const char* m) {
    if (err_.empty()) err_ = m;
    return false;
  }
  const std::string& error() const { return err_; }
  uint64_t remaining() const { return size_ - pos_; }

 private:
  std::FILE* f_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string err_;
};

// A float field read as an int: converting NaN or a value outside int64's
// range is undefined behaviour (the fuzzer found one), so those become 0.
int64_t ToInt64(double v) {
  return std::isfinite(v) && v > -9.2e18 && v < 9.2e18 ? static_cast<int64_t>(v) : 0;
}

int ScalarSize(uint32_t t) {
  switch (t) {
    case kU8:
    case kI8:
    case kBool:
      return 1;
    case kU16:
    case kI16:
      return 2;
    case kU32:
    case kI32:
    case kF32:
      return 4;
    case kU64:
    case kI64:
    case kF64:
      return 8;
    default:
      return 0;
  }
}

bool ReadScalar(Reader* r, uint32_t t, int64_t* i, double* f) {
  switch (t) {
    case kU8: {
      uint8_t v;
      if (!r->Pod(&v)) return false;
      *i = v;
      break;
    }
    case kI8: {
      int8_t v;
      if (!r->Pod(&v)) return false;
      *i = v;
      break;
    }
    case kBool: {
      uint8_t v;
      if (!r->Pod(&v)) return false;
      *i = v != 0;
      break;
    }
    case kU16: {
      uint16_t v;
      if (!r->Pod(&v)) return false;
      *i = v;
      break;
    }
    case kI16: {
      int16_t v;
      if (!r->Pod(&v)) return false;
      *i = v;
      break;
    }
    case kU32: {
      uint32_t v;
      if (!r->Pod(&v)) return false;
      *i = v;
      break;
    }
    case kI32: {
      int32_t v;
      if (!r->Pod(&v)) return false;
      *i = v;
      break;
    }
    case kU64: {
      uint64_t v;
      if (!r->Pod(&v)) return false;
      *i = static_cast<int64_t>(v);
      break;
    }
    case kI64: {
      int64_t v;
      if (!r->Pod(&v)) return false;
      *i = v;
      break;
    }
    case kF32: {
      float v;
      if (!r->Pod(&v)) return false;
      *f = v;
      *i = ToInt64(v);
      return true;
    }
    case kF64: {
      double v;
      if (!r->Pod(&v)) return false;
      *f = v;
      *i = ToInt64(v);
      return true;
    }
    default:
      return r->Fail("unknown value type");
  }
  *f = static_cast<double>(*i);
  return true;
}

// Reads the key/value section; only tokenizer.* and general.architecture
// values are kept (others, like large float arrays, are skipped).
Result<std::map<std::string, Value>> ReadMetadata(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return MakeError("cannot open '" + path + "': " + std::strerror(errno));
  std::fseek(f, 0, SEEK_END);
  const long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  Reader r(f, size < 0 ? 0 : static_cast<uint64_t>(size));
  std::map<std::string, Value> kv;
  auto fail = [&](std::string m) -> Result<std::map<std::string, Value>> {
    std::fclose(f);
    return MakeError(path + ": bad GGUF file: " + m);
  };
  char magic[4];
  uint32_t version;
  uint64_t n_tensors, n_kv;
  if (!r.Bytes(magic, 4) || std::memcmp(magic, "GGUF", 4) != 0) {
    return fail("not a GGUF file");
  }
  if (!r.Pod(&version) || !r.Pod(&n_tensors) || !r.Pod(&n_kv)) {
    return fail("truncated GGUF header");
  }
  if (version < 2 || version > 3) {
    return fail("unsupported GGUF version " + std::to_string(version));
  }
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    uint32_t type;
    if (!r.Str(&key) || !r.Pod(&type)) return fail("truncated metadata: " + r.error());
    const bool keep = key.compare(0, 10, "tokenizer.") == 0 || key == "general.architecture";
    Value v;
    v.type = type;
    if (type == kString) {
      if (!r.Str(&v.s)) return fail("bad value for " + key + ": " + r.error());
    } else if (type == kArray) {
      uint64_t n;
      if (!r.Pod(&v.elem_type) || !r.Pod(&n)) return fail("truncated array " + key);
      if (v.elem_type == kString) {
        for (uint64_t i = 0; i < n; ++i) {
          std::string s;
          if (!r.Str(&s)) return fail("bad array " + key + ": " + r.error());
          if (keep) v.strs.push_back(std::move(s));
        }
      } else {
        const int sz = ScalarSize(v.elem_type);
        if (sz == 0) return fail("unsupported array type in " + key);
        if (n > r.remaining() / sz) return fail("array " + key + " runs past end of file");
        if (!keep) {
          if (!r.Skip(n * sz)) return fail(r.error());
        } else {
          for (uint64_t i = 0; i < n; ++i) {
            int64_t iv;
            double fv;
            if (!ReadScalar(&r, v.elem_type, &iv, &fv)) return fail(r.error());
            v.ints.push_back(iv);
            v.floats.push_back(fv);
          }
        }
      }
    } else {
      if (!ReadScalar(&r, type, &v.i, &v.f)) {
        return fail("bad value for " + key + ": " + r.error());
      }
    }
    if (keep) kv[key] = std::move(v);
  }
  std::fclose(f);
  return kv;
}

constexpr char kLlama3Split[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2Split[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct Converted {
  std::string tokenizer_json;
  std::string config_json;
};

Json AddedTokenJson(int id, const std::string& content, bool special) {
  Json t = Json::Object();
  t.Set("id", Json::Number(id));
  t.Set("content", Json::String(content));
  t.Set("single_word", Json::Bool(false));
  t.Set("lstrip", Json::Bool(false));
  t.Set("rstrip", Json::Bool(false));
  t.Set("normalized", Json::Bool(false));
  t.Set("special", Json::Bool(special));
  return t;
}

using Metadata = std::map<std::string, Value>;

// Code-point boundaries of a UTF-8 string (Python's str indices).
// tokenizer.json's post-processor for a GGUF vocabulary: a TemplateProcessing
// that puts bos before a sequence when the GGUF says prompts take one. It is
// what decides bos for transformers and for our loader alike, so a written
// tokenizer.json starts prompts as the GGUF does.
Json BosPostProcessor(const std::string& bos, bool add_bos, const Value* bos_id) {
  Json post = Json::Object();
  post.Set("type", Json::String("TemplateProcessing"));
  auto seq = [](const char* id, int type_id) {
    Json s = Json::Object();
    Json inner = Json::Object();
    inner.Set("id", Json::String(id));
    inner.Set("type_id", Json::Number(type_id));
    s.Set("Sequence", std::move(inner));
    return s;
  };
  auto special = [](const std::string& tok, int type_id) {
    Json s = Json::Object();
    Json inner = Json::Object();
    inner.Set("id", Json::String(tok));
    inner.Set("type_id", Json::Number(type_id));
    s.Set("SpecialToken", std::move(inner));
    return s;
  };
  Json single = Json::Array(), pair = Json::Array();
  const bool with_bos = add_bos && !bos.empty() && bos_id != nullptr;
  if (with_bos) single.Push(special(bos, 0));
  single.Push(seq("A", 0));
  if (with_bos) pair.Push(special(bos, 0));
  pair.Push(seq("A", 0));
  if (with_bos) pair.Push(special(bos, 1));
  pair.Push(seq("B", 1));
  post.Set("single", std::move(single));
  post.Set("pair", std::move(pair));
  Json specials = Json::Object();
  if (with_bos) {
    Json e = Json::Object();
    e.Set("id", Json::String(bos));
    Json ids = Json::Array();
    ids.Push(Json::Number(bos_id->i));
    e.Set("ids", std::move(ids));
    Json ts = Json::Array();
    ts.Push(Json::String(bos));
    e.Set("tokens", std::move(ts));
    specials.Set(bos, std::move(e));
  }
  post.Set("special_tokens", std::move(specials));
  return post;
}

std::vector<size_t> CharStarts(const std::string& s) {
  std::vector<size_t> b;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) b.push_back(i);
  }
  return b;
}

// transformers' generate_merges: every split of a token into two tokens of
// the vocabulary is a merge, ordered by the token's score (best first),
// then by the lengths of the halves, stably.
std::vector<std::pair<std::string, std::string>> GenerateMerges(
    const std::vector<std::string>& toks, const std::vector<double>& scores) {
  std::map<std::string, int> vocab;  // last index wins, as in a dict
  for (size_t i = 0; i < toks.size(); ++i) vocab[toks[i]] = static_cast<int>(i);
  // dict(zip(tokens, scores)): first position, last value.
  std::vector<std::string> order;
  std::map<std::string, double> score_of;
  for (size_t i = 0; i < toks.size(); ++i) {
    if (score_of.find(toks[i]) == score_of.end()) order.push_back(toks[i]);
    score_of[toks[i]] = i < scores.size() ? scores[i] : 0.0;
  }
  struct M {
    std::string l, r;
    double score;
    size_t len_l, len_r;
  };
  std::vector<M> merges;
  for (const std::string& t : order) {
    const std::vector<size_t> starts = CharStarts(t);
    std::vector<M> local;
    for (size_t k = 1; k < starts.size(); ++k) {
      std::string l = t.substr(0, starts[k]), r = t.substr(starts[k]);
      if (vocab.count(l) && vocab.count(r)) {
        local.push_back({l, r, score_of[t], k, starts.size() - k});
      }
    }
    std::stable_sort(local.begin(), local.end(), [&](const M& a, const M& b) {
      const int al = vocab[a.l], bl = vocab[b.l];
      return al != bl ? al < bl : vocab[a.r] < vocab[b.r];
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const M& a, const M& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.len_l != b.len_l) return a.len_l > b.len_l;
    return a.len_r > b.len_r;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (auto& m : merges) out.emplace_back(std::move(m.l), std::move(m.r));
  return out;
}

Json Str(const char* s) { return Json::String(s); }

// A SentencePiece vocabulary in GGUF ("llama"), built the way transformers'
// LlamaTokenizer does: BPE with byte fallback over "▁"-spelled tokens, a
// Metaspace pre-tokenizer and the matching decoders.
Result<Converted> ConvertLlama(const std::string& path, const Metadata& kv) {
  auto get = [&](const char* k) -> const Value* {
    auto it = kv.find(k);
    return it == kv.end() ? nullptr : &it->second;
  };
  const Value* tokens = get("tokenizer.ggml.tokens");
  if (!tokens || tokens->strs.empty()) {
    return MakeError(path + ": GGUF tokenizer has no tokens");
  }
  const auto& toks = tokens->strs;
  const Value* merges_v = get("tokenizer.ggml.merges");
  const Value* scores_v = get("tokenizer.ggml.scores");
  std::vector<std::pair<std::string, std::string>> merges;
  if (merges_v && !merges_v->strs.empty()) {
    for (const std::string& m : merges_v->strs) {
      const size_t sp = m.find(' ');
      if (sp == std::string::npos) return MakeError(path + ": malformed merge '" + m + "'");
      merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
  } else {
    if (!scores_v || scores_v->floats.size() != toks.size()) {
      return MakeError(path + ": GGUF llama tokenizer has neither merges nor scores");
    }
    merges = GenerateMerges(toks, scores_v->floats);
  }
  Json vocab = Json::Object();
  {
    std::map<std::string, int> last;
    for (size_t i = 0; i < toks.size(); ++i) last[toks[i]] = static_cast<int>(i);
    for (size_t i = 0; i < toks.size(); ++i) {
      auto it = last.find(toks[i]);
      if (it == last.end()) continue;  // duplicate already written
      vocab.Set(toks[i], Json::Number(it->second));
      last.erase(it);
    }
  }
  Json merge_list = Json::Array();
  for (auto& [l, r] : merges) {
    Json pair = Json::Array();
    pair.Push(Json::String(l));
    pair.Push(Json::String(r));
    merge_list.Push(std::move(pair));
  }
  auto token_at = [&](const char* key) -> std::string {
    const Value* v = get(key);
    if (!v || v->i < 0 || static_cast<size_t>(v->i) >= toks.size()) return "";
    return toks[v->i];
  };
  const std::string unk = token_at("tokenizer.ggml.unknown_token_id");
  const std::string bos = token_at("tokenizer.ggml.bos_token_id");
  const std::string eos = token_at("tokenizer.ggml.eos_token_id");
  bool add_prefix = true;
  if (const Value* v = get("tokenizer.ggml.add_space_prefix")) add_prefix = v->i != 0;
  bool add_bos = true;  // llama.cpp's default for SentencePiece vocabularies
  if (const Value* v = get("tokenizer.ggml.add_bos_token")) add_bos = v->i != 0;

  // Added tokens: unk/bos/eos (the wrapper's special tokens), then control
  // tokens, then user-defined ones (not special), each once.
  Json added = Json::Array();
  std::map<std::string, bool> seen;
  const Value* types = get("tokenizer.ggml.token_type");
  auto id_of = [&](const std::string& t) {
    for (size_t i = toks.size(); i-- > 0;) {
      if (toks[i] == t) return static_cast<int>(i);
    }
    return -1;
  };
  for (const std::string& t : {unk, bos, eos}) {
    if (t.empty() || seen[t]) continue;
    seen[t] = true;
    added.Push(AddedTokenJson(id_of(t), t, true));
  }
  for (int want : {3, 4}) {
    if (!types) break;
    for (size_t i = 0; i < toks.size() && i < types->ints.size(); ++i) {
      if (types->ints[i] != want || seen[toks[i]]) continue;
      seen[toks[i]] = true;
      added.Push(AddedTokenJson(static_cast<int>(i), toks[i], want == 3));
    }
  }

  Json pre = Json::Object();
  pre.Set("type", Str("Metaspace"));
  pre.Set("replacement", Str("\xE2\x96\x81"));
  pre.Set("prepend_scheme", Str(add_prefix ? "first" : "never"));
  pre.Set("split", Json::Bool(false));

  Json decoders = Json::Array();
  {
    Json r = Json::Object();
    r.Set("type", Str("Replace"));
    Json pat = Json::Object();
    pat.Set("String", Str("\xE2\x96\x81"));
    r.Set("pattern", std::move(pat));
    r.Set("content", Str(" "));
    decoders.Push(std::move(r));
    Json bf = Json::Object();
    bf.Set("type", Str("ByteFallback"));
    decoders.Push(std::move(bf));
    Json fuse = Json::Object();
    fuse.Set("type", Str("Fuse"));
    decoders.Push(std::move(fuse));
    if (add_prefix) {
      Json strip = Json::Object();
      strip.Set("type", Str("Strip"));
      strip.Set("content", Str(" "));
      strip.Set("start", Json::Number(1));
      strip.Set("stop", Json::Number(0));
      decoders.Push(std::move(strip));
    }
  }
  Json decoder = Json::Object();
  decoder.Set("type", Str("Sequence"));
  decoder.Set("decoders", std::move(decoders));

  Json model_j = Json::Object();
  model_j.Set("type", Str("BPE"));
  model_j.Set("dropout", Json());
  model_j.Set("unk_token", Json());
  model_j.Set("continuing_subword_prefix", Json());
  model_j.Set("end_of_word_suffix", Json());
  model_j.Set("fuse_unk", Json::Bool(true));
  model_j.Set("byte_fallback", Json::Bool(true));
  model_j.Set("ignore_merges", Json::Bool(false));
  model_j.Set("vocab", std::move(vocab));
  model_j.Set("merges", std::move(merge_list));

  Json root = Json::Object();
  root.Set("version", Str("1.0"));
  root.Set("truncation", Json());
  root.Set("padding", Json());
  root.Set("added_tokens", std::move(added));
  root.Set("normalizer", Json());
  root.Set("pre_tokenizer", std::move(pre));
  root.Set("post_processor", BosPostProcessor(bos, add_bos, get("tokenizer.ggml.bos_token_id")));
  root.Set("decoder", std::move(decoder));
  root.Set("model", std::move(model_j));

  Json cfg = Json::Object();
  cfg.Set("tokenizer_class", Str("LlamaTokenizer"));
  if (!bos.empty()) cfg.Set("bos_token", Json::String(bos));
  if (!eos.empty()) cfg.Set("eos_token", Json::String(eos));
  if (!unk.empty()) cfg.Set("unk_token", Json::String(unk));
  cfg.Set("add_bos_token", Json::Bool(add_bos));
  cfg.Set("add_prefix_space", Json::Bool(add_prefix));
  if (const Value* ct = get("tokenizer.chat_template"); ct && ct->type == kString) {
    cfg.Set("chat_template", Json::String(ct->s));
  }
  return Converted{root.Dump(), cfg.Dump()};
}

Result<Converted> Convert(const std::string& path) {
  auto kv_r = ReadMetadata(path);
  if (!kv_r.ok()) return MakeError(kv_r.error());
  const auto& kv = *kv_r;
  auto get = [&](const char* k) -> const Value* {
    auto it = kv.find(k);
    return it == kv.end() ? nullptr : &it->second;
  };
  const Value* model = get("tokenizer.ggml.model");
  if (!model || model->type != kString) {
    return MakeError(path + ": GGUF file has no tokenizer (tokenizer.ggml.model)");
  }
  if (model->s == "llama") return ConvertLlama(path, kv);
  if (model->s != "gpt2") {
    return MakeError(path + ": GGUF tokenizer model '" + model->s +
                     "' is not supported (gpt2 and llama are)");
  }
  const Value* tokens = get("tokenizer.ggml.tokens");
  const Value* merges = get("tokenizer.ggml.merges");
  if (!tokens || tokens->strs.empty()) {
    return MakeError(path + ": GGUF tokenizer has no tokens");
  }
  if (!merges) return MakeError(path + ": GGUF gpt2 tokenizer has no merges");
  const Value* types = get("tokenizer.ggml.token_type");
  const auto& toks = tokens->strs;
  // Tokens outside the byte alphabet are respelled into it, as
  // transformers does.
  Json vocab = Json::Object();
  for (size_t i = 0; i < toks.size(); ++i) {
    const std::string& t = toks[i];
    vocab.Set(InByteAlphabet(t) ? t : GptBytesToAlphabet(t), Json::Number(static_cast<double>(i)));
  }
  Json merge_list = Json::Array();
  for (const std::string& m : merges->strs) {
    const size_t sp = m.find(' ');
    if (sp == std::string::npos) return MakeError(path + ": malformed merge '" + m + "'");
    Json pair = Json::Array();
    pair.Push(Json::String(m.substr(0, sp)));
    pair.Push(Json::String(m.substr(sp + 1)));
    merge_list.Push(std::move(pair));
  }
  Json added = Json::Array();
  if (types) {
    for (size_t i = 0; i < toks.size() && i < types->ints.size(); ++i) {
      // A control token spelled outside the byte alphabet is a mislabel
      // that transformers skips.
      if (types->ints[i] == 3 && InByteAlphabet(toks[i]))
        added.Push(AddedTokenJson(static_cast<int>(i), toks[i], true));
    }
    for (size_t i = 0; i < toks.size() && i < types->ints.size(); ++i) {
      if (types->ints[i] == 4) added.Push(AddedTokenJson(static_cast<int>(i), toks[i], false));
    }
  }
  bool add_prefix = false;
  if (const Value* v = get("tokenizer.ggml.add_space_prefix")) add_prefix = v->i != 0;
  const Value* pre = get("tokenizer.ggml.pre");
  std::string split;
  if (pre && pre->type == kString) {
    const std::string& p = pre->s;
    if (p == "llama3" || p == "llama-v3" || p == "llama-bpe" || p == "falcon3" || p == "dbrx" ||
        p == "smaug-bpe") {
      split = kLlama3Split;
    } else if (p == "qwen2" || p == "deepseek-r1-qwen") {
      split = kQwen2Split;
    }
  }
  auto byte_level = [](bool prefix, bool regex) {
    Json b = Json::Object();
    b.Set("type", Json::String("ByteLevel"));
    b.Set("add_prefix_space", Json::Bool(prefix));
    b.Set("trim_offsets", Json::Bool(true));
    b.Set("use_regex", Json::Bool(regex));
    return b;
  };
  Json pre_tok;
  if (split.empty()) {
    pre_tok = byte_level(add_prefix, true);
  } else {
    pre_tok = Json::Object();
    pre_tok.Set("type", Json::String("Sequence"));
    Json list = Json::Array();
    Json s = Json::Object();
    s.Set("type", Json::String("Split"));
    Json pat = Json::Object();
    pat.Set("Regex", Json::String(split));
    s.Set("pattern", std::move(pat));
    s.Set("behavior", Json::String("Isolated"));
    s.Set("invert", Json::Bool(false));
    list.Push(std::move(s));
    list.Push(byte_level(false, false));
    pre_tok.Set("pretokenizers", std::move(list));
  }
  auto token_at = [&](const char* key) -> std::string {
    const Value* v = get(key);
    if (!v || v->i < 0 || static_cast<size_t>(v->i) >= toks.size()) return "";
    return toks[v->i];
  };
  const std::string bos = token_at("tokenizer.ggml.bos_token_id");
  const std::string eos = token_at("tokenizer.ggml.eos_token_id");
  bool add_bos = false;
  if (const Value* v = get("tokenizer.ggml.add_bos_token")) add_bos = v->i != 0;

  Json post = BosPostProcessor(bos, add_bos, get("tokenizer.ggml.bos_token_id"));

  Json model_j = Json::Object();
  model_j.Set("type", Json::String("BPE"));
  model_j.Set("dropout", Json());
  model_j.Set("unk_token", Json());
  model_j.Set("continuing_subword_prefix", Json());
  model_j.Set("end_of_word_suffix", Json());
  model_j.Set("fuse_unk", Json::Bool(false));
  model_j.Set("byte_fallback", Json::Bool(false));
  model_j.Set("ignore_merges", Json::Bool(false));
  model_j.Set("vocab", std::move(vocab));
  model_j.Set("merges", std::move(merge_list));

  Json root = Json::Object();
  root.Set("version", Json::String("1.0"));
  root.Set("truncation", Json());
  root.Set("padding", Json());
  root.Set("added_tokens", std::move(added));
  root.Set("normalizer", Json());
  root.Set("pre_tokenizer", std::move(pre_tok));
  root.Set("post_processor", std::move(post));
  root.Set("decoder", byte_level(true, true));
  root.Set("model", std::move(model_j));

  Json cfg = Json::Object();
  cfg.Set("tokenizer_class", Json::String("PreTrainedTokenizerFast"));
  if (!bos.empty()) cfg.Set("bos_token", Json::String(bos));
  if (!eos.empty()) cfg.Set("eos_token", Json::String(eos));
  cfg.Set("add_bos_token", Json::Bool(add_bos));
  if (const Value* ct = get("tokenizer.chat_template"); ct && ct->type == kString) {
    cfg.Set("chat_template", Json::String(ct->s));
  }
  return Converted{root.Dump(), cfg.Dump()};
}

Result<void> WriteAtomically(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return MakeError("cannot write '" + tmp + "': " + std::strerror(errno));
  const bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return MakeError("cannot write '" + path + "'");
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::string& path) {
  auto c = Convert(path);
  if (!c.ok()) return MakeError(c.error());
  auto hf = NewHfTokenizer();
  auto r = LoadHfFromStrings(hf.get(), c->tokenizer_json, c->config_json);
  if (!r.ok()) return MakeError(path + ": " + r.error());
  return hf;
}

Result<void> WriteTokenizerJson(const std::string& gguf_path, const std::string& out_dir) {
  auto c = Convert(gguf_path);
  if (!c.ok()) return MakeError(c.error());
  auto r = WriteAtomically(out_dir + "/tokenizer.json", c->tokenizer_json);
  if (!r.ok()) return r;
  return WriteAtomically(out_dir + "/tokenizer_config.json", c->config_json);
}

}  // namespace tokenizers
