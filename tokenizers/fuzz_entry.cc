// libFuzzer entry point for every loader and for encode/decode.
//
// Each input is
//   1. written to a file and given to LoadTokenizer, which tries it as
//      tokenizer.json, GGUF, tiktoken, a SentencePiece model and llama2c;
//      a file that loads is encoded (its first 512 bytes as text), decoded
//      and stream-decoded;
//   2. encoded as text (its first 4 KiB) by each real tokenizer named in
//      $TOKENIZERS_FUZZ_MODELS (colon-separated paths, loaded once in
//      LLVMFuzzerInitialize), then decoded and stream-decoded. A tiktoken
//      vocabulary must decode every input back to its bytes.
//
// Built with -fsanitize=fuzzer,address,undefined under --config=fuzz
// (//tokenizers:fuzz_libfuzzer, run by //tokenizers:fuzz_libfuzzer_test).
// Under gcc, fuzz_entry_test drives step 1 with a fixed number of mutated
// inputs.
#include <unistd.h>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/tokenizer.h"

namespace {

std::vector<std::unique_ptr<tokenizers::Tokenizer>>& Models() {
  static auto* models = new std::vector<std::unique_ptr<tokenizers::Tokenizer>>();
  return *models;
}

// Encodes, decodes and stream-decodes `text`; with `exact`, aborts unless
// decoding gives `text` back.
void RoundTrip(const tokenizers::Tokenizer& tok, std::string_view text, bool exact) {
  auto ids = tok.Encode(text, false, false, tokenizers::SpecialPolicy::All());
  if (!ids.ok()) return;
  auto back = tok.Decode(*ids);
  auto stream = tok.NewStreamDecoder();
  for (int id : *ids) (void)stream.Push(id);
  (void)stream.Flush();
  if (exact && (!back.ok() || *back != text)) {
    std::fprintf(stderr, "%s: decode(encode(x)) != x for %zu bytes\n", tok.type().c_str(),
                 text.size());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("TOKENIZERS_FUZZ_MODELS");
  std::string paths = env ? env : "";
  size_t start = 0;
  while (start < paths.size()) {
    size_t end = paths.find(':', start);
    if (end == std::string::npos) end = paths.size();
    const std::string path = paths.substr(start, end - start);
    start = end + 1;
    if (path.empty()) continue;
    auto tok = tokenizers::LoadTokenizer(path);
    if (!tok.ok()) {
      std::fprintf(stderr, "fuzz_entry: %s\n", tok.error().c_str());
      std::abort();
    }
    std::fprintf(stderr, "fuzz_entry: encoding with %s (%s, %d ids)\n", path.c_str(),
                 (*tok)->type().c_str(), (*tok)->vocab_size());
    Models().push_back(std::move(tok).value());
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  for (const auto& tok : Models()) {
    RoundTrip(*tok, bytes.substr(0, 4096), tok->type() == "tiktoken");
  }
  static const std::string path = [] {
    const char* dir = std::getenv("TEST_TMPDIR");
    return std::string(dir ? dir : "/tmp") + "/fuzz_input." + std::to_string(getpid());
  }();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  auto tok = tokenizers::LoadTokenizer(path);
  if (!tok.ok()) return 0;
  RoundTrip(**tok, bytes.substr(0, 512), false);
  return 0;
}
