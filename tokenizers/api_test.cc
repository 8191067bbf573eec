// The C++ API end to end on small files written here: loading with type
// detection, encode / decode / streaming, special-token policies, errors
// as values, and the sampler's pinned random stream.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tokenizers/sampler.h"
#include "tokenizers/tiktoken.h"
#include "tokenizers/tokenizer.h"

namespace tokenizers {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

std::string Write(const std::string& name, const std::string& data) {
  const std::string path = TempPath(name);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(data.data(), 1, data.size(), f);
  std::fclose(f);
  return path;
}

// A byte-level BPE over the bytes of "ab", "é" and " ".
constexpr char kTinyJson[] = R"({
  "added_tokens": [{"id": 9, "content": "<eos>", "special": true},
                   {"id": 10, "content": "<bos>", "special": true}],
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE",
            "vocab": {"a": 0, "b": 1, "Ġ": 2, "Ã": 3, "©": 4, "ab": 5,
                      "Ġab": 6, "Ã©": 7},
            "merges": ["a b", "Ġ ab", "Ã ©"]}
})";

TEST(Api, LoadsHfJsonWithConfig) {
  const std::string dir = TempPath("hf");
  std::system(("mkdir -p " + dir).c_str());
  Write("hf/tokenizer.json", kTinyJson);
  Write("hf/tokenizer_config.json",
        R"({"bos_token": "<bos>", "eos_token": {"content": "<eos>"},
            "chat_template": "{{ messages }}"})");
  auto tok = LoadTokenizer(dir + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.error();
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.type(), "hf");
  EXPECT_EQ(t.bos_id(), 10);
  EXPECT_EQ(t.eos_ids(), std::vector<int>{9});
  EXPECT_EQ(t.chat_template(), "{{ messages }}");
  auto ids = t.Encode("ab ab\xC3\xA9<eos>", true, false, SpecialPolicy::All());
  ASSERT_TRUE(ids.ok()) << ids.error();
  EXPECT_EQ(*ids, (std::vector<int>{10, 5, 6, 7, 9}));
  auto plain = t.Encode("<eos>", false, false, SpecialPolicy::None());
  ASSERT_TRUE(plain.ok());
  EXPECT_NE(*plain, std::vector<int>{9});
  auto text = t.Decode({5, 6, 7});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "ab ab\xC3\xA9");
  // Streaming holds back the first byte of "é" until the second arrives.
  auto ids2 = t.Encode("\xC3\xA9", false, false, SpecialPolicy::All());
  ASSERT_TRUE(ids2.ok());
  StreamDecoder s = t.NewStreamDecoder();
  EXPECT_EQ(*s.Push(3), "");
  EXPECT_EQ(*s.Push(4), "\xC3\xA9");
  EXPECT_EQ(s.Flush(), "");
  EXPECT_FALSE(s.Push(99).ok());
  EXPECT_EQ(*t.PieceToId("ab"), 5);
  EXPECT_FALSE(t.IdToPiece(-1).ok());
}

TEST(Api, CustomTiktoken) {
  // Bytes a, b, space, and "ab"; one special token.
  const std::string path = Write("t.tiktoken", "YQ== 0\nYg== 1\nIA== 2\nYWI= 3\n");
  Tiktoken t(R"(\S+|\s+)", {"<|end|>"}, "", {"<|end|>"});
  ASSERT_TRUE(t.Load(path).ok());
  EXPECT_EQ(t.vocab_size(), 5);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.eos_ids(), std::vector<int>{4});
  EXPECT_EQ(*t.Encode("ab ba<|end|>", false, true, SpecialPolicy::All()),
            (std::vector<int>{3, 2, 1, 0, 4, 4}));
  EXPECT_FALSE(t.Encode("x", true, false, SpecialPolicy::All()).ok());  // no bos
  auto none = t.Encode("<|end|>", false, false, SpecialPolicy::Only({"<|x|>"}));
  EXPECT_TRUE(none.ok());
}

TEST(Api, ErrorsAreValues) {
  auto missing = LoadTokenizer(TempPath("does-not-exist"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().find("cannot open"), std::string::npos);
  auto junk = LoadTokenizer(Write("junk.bin", std::string("\x01\x02\x03\x04garbage", 11)));
  ASSERT_FALSE(junk.ok());
  EXPECT_NE(junk.error().find("not a tokenizer file"), std::string::npos);
  auto gguf = LoadGgufTokenizer(Write("x.gguf", "GGUF\x03"));
  ASSERT_FALSE(gguf.ok());
  EXPECT_NE(gguf.error().find("GGUF"), std::string::npos);
  EXPECT_FALSE(WriteTokenizerJson(TempPath("x.gguf"), TempPath("")).ok());
}

TEST(Sampler, PinnedStreamAndGreedy) {
  Rng r(42);
  EXPECT_EQ(r.NextU64(), 0x31b0ece7c4f697a2ull);
  EXPECT_EQ(r.NextU64(), 0x9008a3b1cb686f03ull);
  EXPECT_EQ(r.NextU64(), 0x7c7173abd97be16full);
  const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f};
  Sampler greedy({0.0f}, 1);
  EXPECT_EQ(*greedy.Sample(logits.data(), logits.size()), 1);
  Sampler a({0.8f, 3, 0.9f, 0.0f, 1.1f}, 5), b({0.8f, 3, 0.9f, 0.0f, 1.1f}, 5);
  for (int i = 0; i < 100; ++i) {
    const int recent[] = {1};
    EXPECT_EQ(*a.Sample(logits.data(), logits.size(), recent, 1),
              *b.Sample(logits.data(), logits.size(), recent, 1));
  }
  EXPECT_FALSE(Sample(logits.data(), 0, SamplerConfig{}, &r).ok());
  SamplerConfig bad;
  bad.top_p = 0;
  EXPECT_FALSE(Sample(logits.data(), logits.size(), bad, &r).ok());
}

}  // namespace
}  // namespace tokenizers
