// Proves the Debian-sourced SentencePiece builds and rejects a bad model
// with a status rather than a crash.
#include "gtest/gtest.h"
#include "sentencepiece_processor.h"

TEST(SentencePiece, RejectsGarbageModel) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.LoadFromSerializedProto("not a model proto");
  EXPECT_FALSE(status.ok());
}
