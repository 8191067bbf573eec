#include "tokenizers/tokenizer.h"

#include <cstdio>
#include <cstring>

#include "formats.h"
#include "tokenizers/tiktoken.h"

namespace tokenizers {

Result<std::string> StreamDecoder::Push(int id) {
  auto bytes = tok_->DecodeToken(id, prev_);
  if (!bytes.ok()) return MakeError(bytes.error());
  prev_ = id;
  return utf8_.Push(*bytes);
}

Result<std::string> Tokenizer::Decode(const std::vector<int>& ids) const {
  std::string out;
  int prev = -1;
  for (int id : ids) {
    auto piece = DecodeToken(id, prev);
    if (!piece.ok()) return MakeError(piece.error());
    out += *piece;
    prev = id;
  }
  return out;
}

Result<std::string> ReadFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    return MakeError("cannot open '" + path + "': " + std::strerror(errno));
  }
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err) return MakeError("cannot read '" + path + "'");
  return data;
}

namespace {

bool LooksLikeTiktoken(std::string_view data) {
  const size_t eol = data.find('\n');
  std::string_view line = data.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t sp = line.find(' ');
  if (sp == std::string_view::npos || sp == 0 || sp + 1 >= line.size()) {
    return false;
  }
  // "<base64> <one word>" is enough to call it tiktoken, so that a bad
  // rank gets tiktoken's error rather than a generic one.
  if (line.find(' ', sp + 1) != std::string_view::npos) return false;
  std::string bytes;
  return Base64Decode(line.substr(0, sp), &bytes);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  auto data_r = ReadFile(path);
  if (!data_r.ok()) return MakeError(data_r.error());
  const std::string& data = *data_r;
  if (data.empty()) return MakeError(path + ": empty file, not a tokenizer");
  size_t first = data.find_first_not_of(" \t\r\n");
  std::unique_ptr<Tokenizer> tok;
  std::string kind;
  if (data.size() >= 4 && data.compare(0, 4, "GGUF") == 0) {
    return LoadGgufTokenizer(path);
  }
  if (first != std::string::npos && (data[first] == '{' || data[first] == '[')) {
    auto hf = NewHfTokenizer();
    auto r = LoadHfFromString(hf.get(), data, path);
    if (!r.ok()) return MakeError(path + ": " + r.error());
    return hf;
  }
  if (LooksLikeTiktoken(data)) {
    // The file holds only ranks; its pattern and special tokens come from
    // a sidecar `<file>.json` when there is one, else they are Llama 3's.
    TiktokenOptions options = Llama3TiktokenOptions();
    const std::string sidecar = path + ".json";
    if (std::FILE* f = std::fopen(sidecar.c_str(), "rb")) {
      std::fclose(f);
      auto json = ReadFile(sidecar);
      if (!json.ok()) return MakeError(json.error());
      auto o = ParseTiktokenOptions(*json);
      if (!o.ok()) return MakeError(sidecar + ": " + o.error());
      options = std::move(o).value();
    }
    auto t = std::make_unique<Tiktoken>(std::move(options));
    auto r = t->LoadFromString(data);
    if (!r.ok()) return MakeError(path + ": " + r.error());
    return std::unique_ptr<Tokenizer>(std::move(t));
  }
  // Binary formats: a SentencePiece model proto, else llama2c.
  std::string sp_error;
  if (LooksLikeSentencePiece(data)) {
    auto sp = NewSentencePieceTokenizer();
    auto r = LoadSentencePieceFromString(sp.get(), data);
    if (r.ok()) return sp;
    sp_error = r.error();
  }
  std::string l2_error;
  {
    auto l2 = NewLlama2cTokenizer();
    auto r = LoadLlama2cFromString(l2.get(), data);
    if (r.ok()) return l2;
    l2_error = r.error();
  }
  std::string msg = path +
                    ": not a tokenizer file this library knows (tried "
                    "tokenizer.json, GGUF, tiktoken, SentencePiece";
  if (!sp_error.empty()) msg += " [" + sp_error + "]";
  msg += ", llama2c [" + l2_error + "])";
  return MakeError(msg);
}

}  // namespace tokenizers
