// ChatSession: multi-turn chat over one TextLLMRunner, keeping the KV cache
// between turns. The counterpart of the chat loop in ExecuTorch's llama
// runner and of torchchat.generate.ChatSession in Python, with one policy:
//
//  - Each turn renders the whole conversation with the model's chat template
//    and tokenizes all of it (tokenizing only the new part would add a
//    SentencePiece vocabulary's leading space). The runner keeps the prefix
//    its KV cache shares with it and prefills the rest: the new turn and the
//    template's glue, as long as the reply re-tokenizes to the ids that
//    were sampled (llama.cpp's server reuses its cache the same way).
//  - When the conversation plus room for an answer no longer fits the
//    context, the oldest exchange (a user turn and its reply) is dropped,
//    never the system prompt or the new question. The prefix then changes,
//    so that turn is prefilled from the system prompt on.
//  - A question that does not fit even alone is an error, and the
//    conversation is left as it was.
//  - Images (a program with a vision encoder) go with a user turn, before
//    its text, as content parts the template places; each marker the
//    template writes is expanded to the image's soft tokens, as
//    torchchat.generate.ChatSession does. Every turn sends the earlier
//    turns' images again; the runner keeps their cache, since they are the
//    same pixels at the same place.
#ifndef RUNNER_COMMON_CHAT_SESSION_H_
#define RUNNER_COMMON_CHAT_SESSION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runner/common/chat_template.h"
#include "runner/common/image.h"
#include "runner/common/stats.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {

// Room a turn keeps for its answer: min(max_new_tokens, this).
inline constexpr int64_t kChatAnswerReserve = 16;

class ChatSession {
 public:
  // `template_source` is the Jinja chat template (the tokenizer's, usually).
  // Neither pointer is owned; both must outlive the session.
  static Result<ChatSession> Create(TextLLMRunner* runner, const tokenizers::Tokenizer* tokenizer,
                                    const std::string& template_source,
                                    const std::string& system_prompt = "");

  // One exchange: returns the reply's text (also streamed to on_text).
  // `images` go with the question; `names` name them in errors.
  Result<std::string> Turn(const std::string& user_text, const GenerationConfig& config,
                           const std::function<void(const std::string&)>& on_text, Stats* stats,
                           const std::vector<RgbImage>& images = {},
                           const std::vector<std::string>& names = {});

  // The ids the last successful Turn sampled, a final stop id included.
  const std::vector<int64_t>& last_generated() const { return generated_; }

  // Why the last Turn failed: kInput for the caller's message or images
  // (an image of the wrong size, images the template has no place for),
  // kModel for the chat template, else the loop's reason.
  Failure last_failure() const { return failure_; }
  // Exchanges dropped by the last Turn to fit the context.
  int dropped_last_turn() const { return dropped_; }
  const std::vector<ChatMessage>& messages() const { return messages_; }
  // Back to just the system prompt; the runner's cache is reused as far as
  // it still matches.
  void Reset();

 private:
  ChatSession(TextLLMRunner* runner, const tokenizers::Tokenizer* tokenizer, ChatTemplate tmpl,
              std::string system_prompt);
  struct Rendered {
    std::vector<int64_t> ids;
    std::vector<PromptImage> images;
  };
  // On failure `why` says whose it is (last_failure()).
  Result<Rendered> Render(Failure* why) const;
  void Drop(size_t first, size_t n);

  TextLLMRunner* runner_;
  const tokenizers::Tokenizer* tokenizer_;
  ChatTemplate template_;
  std::string bos_, eos_;
  std::string system_prompt_;
  std::vector<ChatMessage> messages_;
  // Each message's images (TileImage), in order.
  std::vector<std::vector<ImageTiles>> pixels_;
  std::vector<int64_t> generated_;
  Failure failure_ = Failure::kNone;
  int dropped_ = 0;
};

}  // namespace torchchat

#endif  // RUNNER_COMMON_CHAT_SESSION_H_
