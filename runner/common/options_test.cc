#include "runner/common/options.h"

#include <vector>

#include "gtest/gtest.h"

namespace torchchat {
namespace {

tokenizers::Result<RunnerOptions> Parse(std::vector<const char*> args) {
  args.insert(args.begin(), "et_run");
  return ParseOptions(static_cast<int>(args.size()), const_cast<char**>(args.data()));
}

TEST(Options, UpstreamShortFlags) {
  auto o = Parse({"m.pte", "-i", "hi", "-n", "7", "-t", "0.7", "-p", "0.9", "-k", "40", "-s", "42",
                  "-z", "tok.json"});
  ASSERT_TRUE(o.ok()) << o.error();
  EXPECT_EQ(o->model_path, "m.pte");
  EXPECT_EQ(o->prompt, "hi");
  EXPECT_EQ(o->max_new_tokens, 7);
  EXPECT_FLOAT_EQ(o->temperature, 0.7f);
  EXPECT_FLOAT_EQ(o->top_p, 0.9f);
  EXPECT_EQ(o->top_k, 40);
  EXPECT_EQ(o->seed, 42u);
  EXPECT_TRUE(o->seed_set);
  EXPECT_EQ(o->tokenizer_path, "tok.json");
}

TEST(Options, LongForms) {
  auto o = Parse({"--prompt", "x", "m.pt2", "--num-threads", "2", "--stats-json", "s.json"});
  ASSERT_TRUE(o.ok()) << o.error();
  EXPECT_EQ(o->num_threads, 2);
  EXPECT_EQ(o->stats_json, "s.json");
}

TEST(Options, SamplingRangesAreLeftToTheSampler) {
  // tokenizers::ValidateSamplerConfig is the one place that checks them.
  auto o =
      Parse({"m.pte", "-i", "x", "-p", "1.5", "--min-p", "0.05", "--repetition-penalty", "1.3"});
  ASSERT_TRUE(o.ok()) << o.error();
  EXPECT_FLOAT_EQ(o->top_p, 1.5f);
  EXPECT_FLOAT_EQ(o->min_p, 0.05f);
  EXPECT_FLOAT_EQ(o->repetition_penalty, 1.3f);
}

TEST(Options, ErrorsNameTheFlag) {
  EXPECT_EQ(Parse({"m.pte", "-i", "x", "-n", "many"}).error(),
            "flag -n: 'many' is not a count > 0");
  EXPECT_EQ(Parse({"m.pte", "-i", "x", "-p", "most"}).error(), "flag -p: 'most' is not a number");
  EXPECT_EQ(Parse({"m.pte", "--bogus", "1"}).error(), "unknown flag --bogus");
  EXPECT_EQ(Parse({"m.pte", "-i"}).error(), "flag -i needs a value");
  EXPECT_EQ(Parse({"-i", "x"}).error(), "no model given");
  EXPECT_EQ(Parse({"m.pte"}).error(), "generate mode needs a prompt (-i)");
  EXPECT_EQ(Parse({"m.pte", "-m", "talk"}).error(), "flag -m: 'talk' is not generate or chat");
}

}  // namespace
}  // namespace torchchat
