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
#ifndef RUNNER_COMMON_CHAT_SESSION_H_
#define RUNNER_COMMON_CHAT_SESSION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runner/common/chat_template.h"
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
  Result<std::string> Turn(const std::string& user_text, const GenerationConfig& config,
                           const std::function<void(const std::string&)>& on_text, Stats* stats);

  // Exchanges dropped by the last Turn to fit the context.
  int dropped_last_turn() const { return dropped_; }
  const std::vector<ChatMessage>& messages() const { return messages_; }
  // Back to just the system prompt; the runner's cache is reused as far as
  // it still matches.
  void Reset();

 private:
  ChatSession(TextLLMRunner* runner, const tokenizers::Tokenizer* tokenizer, ChatTemplate tmpl,
              std::string system_prompt);
  Result<std::vector<int64_t>> Render() const;

  TextLLMRunner* runner_;
  const tokenizers::Tokenizer* tokenizer_;
  ChatTemplate template_;
  std::string bos_, eos_;
  std::string system_prompt_;
  std::vector<ChatMessage> messages_;
  int dropped_ = 0;
};

}  // namespace torchchat

#endif  // RUNNER_COMMON_CHAT_SESSION_H_
