// libFuzzer entry point for every loader and for encode/decode. With clang:
//   clang++ -fsanitize=fuzzer,address ... fuzz_entry.cc -> ./fuzz corpus/
// Under gcc (this repo's toolchain) fuzz_entry_test drives the same entry
// with a fixed number of mutated inputs.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

#include "tokenizers/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
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
  const std::string text(reinterpret_cast<const char*>(data), size < 512 ? size : 512);
  auto ids = (*tok)->Encode(text, false, false, tokenizers::SpecialPolicy::All());
  if (ids.ok()) {
    auto back = (*tok)->Decode(*ids);
    auto stream = (*tok)->NewStreamDecoder();
    for (int id : *ids) (void)stream.Push(id);
    (void)back;
  }
  return 0;
}
