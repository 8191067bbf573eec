// Unit tests of the pieces under the tokenizers: the hand-written split
// scanners against RE2 and PCRE2, the heap merge against a plain quadratic
// merge, the vocabulary map, JSON and UTF-8 helpers.
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tokenizers/bpe.h"
#include "tokenizers/json.h"
#include "tokenizers/regex.h"
#include "tokenizers/utf8.h"

namespace tokenizers {
namespace {

constexpr char kCl100k[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kGpt2[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Text made of the characters the patterns treat differently.
std::string RandomText(std::mt19937* rng, int len) {
  static const std::vector<std::string> kAtoms = {
      "a",
      "Z",
      "s",
      "S",
      "t",
      "re",
      "VE",
      "ll",
      "d",
      "m",
      "'",
      "\xC5\xBF",  // ſ
      "1",
      "42",
      "\xD9\xA3",  // ٣
      " ",
      "  ",
      "\t",
      "\n",
      "\r\n",
      "\r",
      "\v",
      "\f",
      "\xC2\xA0",
      "\xE3\x80\x80",
      "\xE2\x80\xA8",
      "\xC2\x85",  // NBSP, ideographic, LS, NEL
      ".",
      ",",
      "!",
      "(",
      "-",
      "_",
      "\"",
      "$",
      "\xE6\x97\xA5",
      "\xED\x95\x9C",                  // CJK, Hangul
      "e\xCC\x81",                     // combining acute
      "\xF0\x9F\x91\xA8\xE2\x80\x8D",  // emoji + ZWJ
      "\xD7\xA9",                      // Hebrew
  };
  std::uniform_int_distribution<size_t> pick(0, kAtoms.size() - 1);
  std::string s;
  for (int i = 0; i < len; ++i) s += kAtoms[pick(*rng)];
  return s;
}

std::vector<std::string> Pieces(const Regex& re, const std::string& text) {
  std::vector<Span> spans;
  re.FindAll(text, &spans);
  std::vector<std::string> out;
  for (const Span& s : spans) out.push_back(text.substr(s.start, s.end - s.start));
  return out;
}

TEST(Regex, ScannersMatchRe2AndPcre2) {
  for (const char* pattern : {kCl100k, kGpt2}) {
    auto scanner = CompileRegex(pattern);
    auto re2 = CompileRe2(pattern);
    auto pcre2 = CompilePcre2(pattern);
    ASSERT_TRUE(scanner.ok() && re2.ok() && pcre2.ok());
    EXPECT_STREQ((*scanner)->engine(), "scanner");
    EXPECT_STREQ((*re2)->engine(), "re2");
    std::mt19937 rng(7);
    for (int i = 0; i < 3000; ++i) {
      const std::string t = RandomText(&rng, 1 + i % 40);
      const auto want = Pieces(**pcre2, t);
      ASSERT_EQ(Pieces(**scanner, t), want) << pattern << " on '" << t << "'";
      ASSERT_EQ(Pieces(**re2, t), want) << pattern << " on '" << t << "'";
    }
  }
}

TEST(Regex, IllFormedBytesAreKeptOut) {
  auto re = CompileRegex(kCl100k);
  ASSERT_TRUE(re.ok());
  const std::string t = "ab\xFF\xFE cd\xC3";
  std::string joined;
  for (const auto& p : Pieces(**re, t)) joined += p;
  EXPECT_EQ(joined, t);
}

TEST(Regex, BadPatternIsAnError) {
  auto re = CompileRegex("(unclosed");
  ASSERT_FALSE(re.ok());
  EXPECT_NE(re.error().find("unclosed"), std::string::npos);
}

// Reference merge: rescan for the lowest-rank pair after every merge.
std::vector<std::string> NaiveMerge(const std::string& s, const std::map<std::string, int>& ranks) {
  std::vector<std::string> parts;
  for (char c : s) parts.emplace_back(1, c);
  while (true) {
    int best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = ranks.find(parts[i] + parts[i + 1]);
      if (it != ranks.end() && (best < 0 || it->second < best)) {
        best = it->second;
        at = i;
      }
    }
    if (best < 0) return parts;
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + at + 1);
  }
}

TEST(Bpe, HeapMergeEqualsQuadraticMerge) {
  std::mt19937 rng(3);
  for (int round = 0; round < 200; ++round) {
    std::map<std::string, int> ranks;
    std::uniform_int_distribution<int> letter(0, 2), len(2, 4);
    for (int k = 0; k < 30; ++k) {
      std::string tok;
      for (int i = len(rng); i > 0; --i) tok.push_back("abc"[letter(rng)]);
      ranks.emplace(tok, static_cast<int>(ranks.size()));
    }
    std::string s;
    for (int i = 0; i < 60; ++i) s.push_back("abc"[letter(rng)]);
    std::vector<Symbol> syms(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      syms[i] = {static_cast<uint32_t>(i), static_cast<uint32_t>(i + 1), 0, static_cast<int>(i) - 1,
                 i + 1 < s.size() ? static_cast<int>(i) + 1 : -1};
    }
    MergeSymbols(&syms, [&](const Symbol& a, const Symbol& b, int* id) {
      auto it = ranks.find(s.substr(a.start, b.end - a.start));
      if (it == ranks.end()) return -1;
      *id = it->second;
      return it->second;
    });
    std::vector<std::string> got;
    ForEachLive(syms, [&](const Symbol& x) { got.push_back(s.substr(x.start, x.end - x.start)); });
    ASSERT_EQ(got, NaiveMerge(s, ranks)) << s;
  }
}

TEST(Bpe, BytesMapAgreesWithStdMap) {
  BytesMap m;
  std::map<std::string, int> ref;
  std::mt19937 rng(11);
  for (int i = 0; i < 20000; ++i) {
    std::string k(rng() % 40, '\0');
    for (char& c : k) c = static_cast<char>(rng() % 4);
    const bool fresh = ref.emplace(k, i).second;
    EXPECT_EQ(m.Insert(k, i), fresh);
  }
  EXPECT_EQ(m.size(), ref.size());
  for (const auto& [k, v] : ref) EXPECT_EQ(m.Find(k), v);
  EXPECT_EQ(m.Find("not there at all, much longer than any key"), -1);
}

TEST(Json, ParsesAndWrites) {
  auto j = ParseJson(R"( {"a": [1, -2.5e3, true, null], "b": "x\"\u00e9\ud83d\ude00\n"} )");
  ASSERT_TRUE(j.ok()) << j.error();
  EXPECT_EQ(j->Find("a")->items().size(), 4u);
  EXPECT_EQ(j->Find("a")->items()[1].number(), -2500);
  EXPECT_EQ(j->GetString("b"), "x\"\xC3\xA9\xF0\x9F\x98\x80\n");
  auto again = ParseJson(j->Dump());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->Dump(), j->Dump());
}

TEST(Json, RejectsBadInputWithOffsets) {
  for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "\"\\x\"", "tru", "[1] 2", "\"a\nb\""}) {
    auto j = ParseJson(bad);
    ASSERT_FALSE(j.ok()) << bad;
    EXPECT_NE(j.error().find("invalid JSON at byte"), std::string::npos);
  }
  EXPECT_FALSE(ParseJson(std::string(100000, '[')).ok());
  // Lone surrogates become U+FFFD rather than invalid UTF-8.
  EXPECT_EQ(ParseJson("\"\\ud800\"")->str(), "\xEF\xBF\xBD");
}

TEST(Utf8, ReplacesMaximalSubparts) {
  // As Python's errors="replace": one U+FFFD per maximal ill-formed subpart.
  EXPECT_EQ(ReplaceInvalidUtf8("a\xE2\x82"
                               "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(ReplaceInvalidUtf8("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(ReplaceInvalidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(ReplaceInvalidUtf8("ok \xC3\xA9"), "ok \xC3\xA9");
}

}  // namespace
}  // namespace tokenizers
