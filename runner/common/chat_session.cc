#include "runner/common/chat_session.h"

#include <algorithm>
#include <string>
#include <utility>

#include "tokenizers/utf8.h"

namespace torchchat {

using tokenizers::MakeError;

namespace {

std::string Piece(const tokenizers::Tokenizer& tok, int64_t id) {
  if (id < 0) return "";
  auto p = tok.IdToPiece(static_cast<int>(id));
  return p.ok() ? *p : "";
}

}  // namespace

Result<ChatSession> ChatSession::Create(TextLLMRunner* runner,
                                        const tokenizers::Tokenizer* tokenizer,
                                        const std::string& template_source,
                                        const std::string& system_prompt) {
  if (template_source.empty()) {
    return MakeError(
        "the tokenizer has no chat template (tokenizer_config.json); "
        "use -m generate");
  }
  auto tmpl = ChatTemplate::Parse(template_source);
  if (!tmpl.ok()) return MakeError("bad chat template: " + tmpl.error());
  return ChatSession(runner, tokenizer, std::move(tmpl).value(), system_prompt);
}

ChatSession::ChatSession(TextLLMRunner* runner, const tokenizers::Tokenizer* tokenizer,
                         ChatTemplate tmpl, std::string system_prompt)
    : runner_(runner),
      tokenizer_(tokenizer),
      template_(std::move(tmpl)),
      bos_(Piece(*tokenizer, tokenizer->bos_id())),
      eos_(tokenizer->eos_ids().empty() ? "" : Piece(*tokenizer, tokenizer->eos_ids()[0])),
      system_prompt_(std::move(system_prompt)) {
  Reset();
}

void ChatSession::Reset() {
  messages_.clear();
  if (!system_prompt_.empty()) messages_.push_back({"system", system_prompt_});
  dropped_ = 0;
}

Result<std::vector<int64_t>> ChatSession::Render() const {
  auto text = template_.Render(messages_, /*add_generation_prompt=*/true, bos_, eos_);
  if (!text.ok()) return MakeError("chat template: " + text.error());
  // The template writes bos_token itself where it wants one.
  auto ids = tokenizer_->Encode(*text, /*bos=*/false);
  if (!ids.ok()) return MakeError("cannot encode the conversation: " + ids.error());
  return std::vector<int64_t>(ids->begin(), ids->end());
}

Result<std::string> ChatSession::Turn(const std::string& user_text, const GenerationConfig& config,
                                      const std::function<void(const std::string&)>& on_text,
                                      Stats* stats) {
  if (const size_t bad = tokenizers::FindInvalidUtf8(user_text); bad != std::string::npos) {
    return MakeError("the message is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  const std::vector<ChatMessage> before = messages_;
  messages_.push_back({"user", user_text});
  dropped_ = 0;
  const size_t first_turn = system_prompt_.empty() ? 0 : 1;
  const int64_t room = runner_->max_seq_len() - std::min(config.max_new_tokens, kChatAnswerReserve);
  auto ids = Render();
  while (ids.ok() && static_cast<int64_t>(ids->size()) > room &&
         messages_.size() > first_turn + 1) {
    // An exchange is a user turn and its reply; the oldest goes first.
    const size_t drop = messages_.size() - first_turn >= 3 ? 2 : 1;
    messages_.erase(messages_.begin() + first_turn, messages_.begin() + first_turn + drop);
    ++dropped_;
    ids = Render();
  }
  if (!ids.ok()) {
    messages_ = before;
    return MakeError(ids.error());
  }
  GenerationConfig turn = config;
  turn.bos = false;
  turn.max_new_tokens = std::max<int64_t>(
      1,
      std::min(config.max_new_tokens, runner_->max_seq_len() - static_cast<int64_t>(ids->size())));
  std::string reply;
  auto out = runner_->GenerateFromIds(
      *ids, turn,
      [&](const std::string& piece) {
        reply += piece;
        on_text(piece);
      },
      stats);
  if (!out.ok()) {
    messages_ = before;
    return MakeError(out.error());
  }
  messages_.push_back({"assistant", reply});
  return reply;
}

}  // namespace torchchat
