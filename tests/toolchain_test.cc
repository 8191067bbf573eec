// Proves the C++ toolchain and the Debian-sourced abseil/re2/googletest
// modules build and link together.
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "re2/re2.h"

TEST(Toolchain, Re2AndAbseil) {
  std::string word;
  ASSERT_TRUE(RE2::PartialMatch("hello torchchat", R"((\w+)$)", &word));
  EXPECT_EQ(absl::StrCat(word, "!"), "torchchat!");
}
