#include "tokenizers/utf8.h"

#include <string>

#include "gtest/gtest.h"
#include "tokenizers/result.h"

namespace tokenizers {
namespace {

TEST(CompleteUtf8Prefix, HoldsBackOnlyUnfinishedSequences) {
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  const std::string euro = "\xE2\x82\xAC";  // €
  EXPECT_EQ(CompleteUtf8Prefix(euro), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro.substr(0, 2)), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro.substr(0, 1)), 1u);
  const std::string emoji = "\xF0\x9F\x98\x80";  // 😀
  EXPECT_EQ(CompleteUtf8Prefix(emoji.substr(0, 3)), 0u);
  // Bytes that can never become valid are passed through, not held.
  EXPECT_EQ(CompleteUtf8Prefix("a\xFF"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("a\x80"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("\xE0\x80"), 2u);  // overlong lead pair
  EXPECT_EQ(CompleteUtf8Prefix("\xED\xA0"), 2u);  // surrogate range
}

TEST(Utf8StreamDecoder, ByteByByteEqualsWhole) {
  const std::string text = "h\xC3\xA9llo \xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB \xE4\xB8\xAD";
  Utf8StreamDecoder d;
  std::string out;
  for (char c : text) {
    const std::string piece = d.Push(std::string(1, c));
    EXPECT_EQ(CompleteUtf8Prefix(piece), piece.size());
    out += piece;
  }
  out += d.Flush();
  EXPECT_EQ(out, text);
}

TEST(Utf8StreamDecoder, FlushReturnsTruncatedTail) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.Push("a\xE2\x82"), "a");
  EXPECT_EQ(d.Flush(), "\xE2\x82");
  EXPECT_EQ(d.Flush(), "");
}

TEST(Result, CarriesValueOrError) {
  Result<int> good = 3;
  Result<int> bad = MakeError("bad thing");
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 3);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.error(), "bad thing");
  Result<void> done;
  EXPECT_TRUE(done.ok());
}

}  // namespace
}  // namespace tokenizers
