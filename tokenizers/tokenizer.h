// The tokenizer API shared by every runtime: one abstract Tokenizer, a
// factory that detects the file type, and a streaming decoder.
//
// Nothing here throws or aborts on bad input: every fallible call returns a
// Result with a one-line message.
#ifndef TOKENIZERS_TOKENIZER_H_
#define TOKENIZERS_TOKENIZER_H_

#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/result.h"
#include "tokenizers/utf8.h"

namespace tokenizers {

// Which special tokens `Encode` recognises in the text. Text of a special
// token that is not allowed is encoded as ordinary text (tiktoken's
// `disallowed_special=()`), never rejected.
struct SpecialPolicy {
  enum class Mode { kAll, kNone, kSet };
  Mode mode = Mode::kAll;
  std::set<std::string, std::less<>> allowed;  // used when mode == kSet

  static SpecialPolicy All() { return {}; }
  static SpecialPolicy None() { return {Mode::kNone, {}}; }
  static SpecialPolicy Only(std::set<std::string, std::less<>> s) {
    return {Mode::kSet, std::move(s)};
  }
  bool Allows(std::string_view token) const {
    return mode == Mode::kAll || (mode == Mode::kSet && allowed.find(token) != allowed.end());
  }
};

class Tokenizer;

// Turns ids into text one id at a time. Each Push returns the UTF-8 text the
// new id completes; bytes of an unfinished character wait for later ids, so
// the concatenation of all pushes and the final Flush equals Decode(ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer* tok) : tok_(tok) {}
  Result<std::string> Push(int id);
  std::string Flush() { return utf8_.Flush(); }

 private:
  const Tokenizer* tok_;
  Utf8StreamDecoder utf8_;
  int prev_ = -1;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Reads a tokenizer file. Calling it again replaces the previous state.
  virtual Result<void> Load(const std::string& path) = 0;

  // Text to ids. `bos` prepends bos_id(), `eos` appends the first eos id.
  virtual Result<std::vector<int>> Encode(
      std::string_view text, bool bos = false, bool eos = false,
      const SpecialPolicy& special = SpecialPolicy::All()) const = 0;

  // Ids to bytes. Usually UTF-8; a byte-level model can produce any bytes,
  // so callers that need text replace ill-formed parts (ReplaceInvalidUtf8).
  virtual Result<std::string> Decode(const std::vector<int>& ids) const;

  // The bytes one id contributes to a decoded stream. `prev` is the id
  // before it, or -1 at the start (some decoders strip a leading space
  // there; llama2c strips it after bos).
  virtual Result<std::string> DecodeToken(int id, int prev) const = 0;

  virtual int vocab_size() const = 0;
  virtual int bos_id() const { return bos_id_; }
  virtual const std::vector<int>& eos_ids() const { return eos_ids_; }
  // The vocabulary entry of an id as stored by the model (for byte-level
  // BPE the raw bytes).
  virtual Result<std::string> IdToPiece(int id) const = 0;
  virtual Result<int> PieceToId(std::string_view piece) const = 0;
  // "tiktoken", "hf", "sentencepiece", "llama2c" (a GGUF-built one is "hf").
  virtual std::string type() const = 0;
  // The chat template shipped with the tokenizer, or "".
  const std::string& chat_template() const { return chat_template_; }
  // Whether a prompt without a chat template starts with bos_id(), as
  // transformers decides it: for tokenizer.json, its post-processor (a
  // TemplateProcessing that starts with a special token); for a GGUF, its
  // add_bos_token (which the tokenizer.json we write of it carries as that
  // post-processor); SentencePiece, llama2c and tiktoken vocabularies do.
  // Every runtime uses this one rule, so they all see the same prompt ids.
  bool add_bos() const { return add_bos_ && bos_id() >= 0; }

  StreamDecoder NewStreamDecoder() const { return StreamDecoder(this); }

 protected:
  int bos_id_ = -1;
  std::vector<int> eos_ids_;
  std::string chat_template_;
  bool add_bos_ = true;
};

// Reads `path` and builds the right tokenizer for it: a JSON file is an HF
// tokenizer.json, a GGUF file an embedded tokenizer, then tiktoken text,
// a SentencePiece model proto and finally a llama2c tokenizer.bin.
Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);

// Builds the tokenizer embedded in a GGUF model file.
Result<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::string& path);

// Writes the GGUF file's tokenizer as `out_dir`/tokenizer.json and
// `out_dir`/tokenizer_config.json (bos/eos tokens, add_bos_token,
// chat_template), loadable by HF tokenizers and by LoadTokenizer.
Result<void> WriteTokenizerJson(const std::string& gguf_path, const std::string& out_dir);

// Reads a whole file; errors name the path.
Result<std::string> ReadFile(const std::string& path);

}  // namespace tokenizers

#endif  // TOKENIZERS_TOKENIZER_H_
