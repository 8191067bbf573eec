// Drives LLVMFuzzerTestOneInput with mutations of small valid files of each
// kind (a fixed number, seeded), since gcc has no libFuzzer.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::string Llama2c() {
  std::string out;
  auto put = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  const int32_t max_len = 6;
  put(&max_len, 4);
  for (int i = 0; i < 262; ++i) {
    const std::string piece = i < 3     ? "<s>"
                              : i < 259 ? std::string(1, static_cast<char>(i - 3))
                                        : " ab";
    const float score = -static_cast<float>(i);
    const int32_t len = static_cast<int32_t>(piece.size());
    put(&score, 4);
    put(&len, 4);
    out += piece;
  }
  return out;
}

TEST(FuzzEntry, MutatedFilesNeverCrash) {
  const std::vector<std::string> seeds = {
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithNext"},
             {"type": "ByteLevel"}]},
          "normalizer": {"type": "NFKC"},
          "decoder": {"type": "ByteLevel"},
          "added_tokens": [{"id": 3, "content": "<s>", "special": true, "lstrip": true}]})",
      "YQ== 0\nYg== 1\nYWI= 2\nIA== 3\n",
      std::string("GGUF\x03\x00\x00\x00", 8) + std::string(16, '\0'),
      Llama2c(),
  };
  std::mt19937 rng(1234);
  int runs = 0;
  for (int round = 0; round < 1500; ++round) {
    std::string s = seeds[round % seeds.size()];
    const int edits = 1 + rng() % 4;
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const size_t at = rng() % s.size();
      switch (rng() % 4) {
        case 0:
          s[at] = static_cast<char>(rng());
          break;
        case 1:
          s.erase(at, 1 + rng() % 8);
          break;
        case 2:
          s.insert(at, std::string(1 + rng() % 4, static_cast<char>(rng())));
          break;
        default:
          s.resize(at);
          break;
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    ++runs;
  }
  EXPECT_EQ(runs, 1500);
}

}  // namespace
