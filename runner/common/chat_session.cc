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
  pixels_.clear();
  if (!system_prompt_.empty()) {
    messages_.push_back({"system", system_prompt_});
    pixels_.emplace_back();
  }
  dropped_ = 0;
}

void ChatSession::Drop(size_t first, size_t n) {
  messages_.erase(messages_.begin() + first, messages_.begin() + first + n);
  pixels_.erase(pixels_.begin() + first, pixels_.begin() + first + n);
}

Result<ChatSession::Rendered> ChatSession::Render(Failure* why) const {
  *why = Failure::kModel;
  auto text = template_.Render(messages_, /*add_generation_prompt=*/true, bos_, eos_);
  if (!text.ok()) return MakeError("chat template: " + text.error());
  const VisionMetadata& vision = runner_->metadata().vision;
  std::vector<ImageTiles> all;
  for (const auto& m : pixels_) all.insert(all.end(), m.begin(), m.end());
  if (vision.image_size > 0) {
    text = ExpandMarkers(*text, *tokenizer_, vision, all);
    if (!text.ok()) {
      // SmolVLM's markers are counted here (Gemma 3's in PlaceImages).
      if (vision.longest_edge > 0) *why = Failure::kInput;
      return MakeError(text.error());
    }
  }
  // The template writes bos_token itself where it wants one.
  auto ids = tokenizer_->Encode(*text, /*bos=*/false);
  if (!ids.ok()) return MakeError("cannot encode the conversation: " + ids.error());
  Rendered out;
  out.ids.assign(ids->begin(), ids->end());
  if (vision.image_size > 0) {
    auto placed = PlaceImages(out.ids, all, vision);
    *why = Failure::kInput;
    if (!placed.ok()) return MakeError("the chat template's image places: " + placed.error());
    out.images = std::move(*placed);
  }
  return out;
}

Result<std::string> ChatSession::Turn(const std::string& user_text, const GenerationConfig& config,
                                      const std::function<void(const std::string&)>& on_text,
                                      Stats* stats, const std::vector<RgbImage>& images,
                                      const std::vector<std::string>& names) {
  failure_ = Failure::kInput;
  if (const size_t bad = tokenizers::FindInvalidUtf8(user_text); bad != std::string::npos) {
    return MakeError("the message is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  std::vector<ImageTiles> pixels;
  if (!images.empty()) {
    const VisionMetadata& vision = runner_->metadata().vision;
    if (auto ok = CheckVision(vision, "this program"); !ok.ok()) return MakeError(ok.error());
    for (size_t i = 0; i < images.size(); ++i) {
      const std::string name = i < names.size() ? names[i] : "image " + std::to_string(i + 1);
      auto p = TileImage(images[i], vision, name);
      if (!p.ok()) return MakeError(p.error());
      pixels.push_back(std::move(*p));
    }
  }
  const std::vector<ChatMessage> before = messages_;
  const auto pixels_before = pixels_;
  auto restore = [&] {
    messages_ = before;
    pixels_ = pixels_before;
  };
  messages_.push_back({"user", user_text, static_cast<int64_t>(images.size())});
  pixels_.push_back(std::move(pixels));
  dropped_ = 0;
  const size_t first_turn = system_prompt_.empty() ? 0 : 1;
  const int64_t room = runner_->max_seq_len() - std::min(config.max_new_tokens, kChatAnswerReserve);
  auto rendered = Render(&failure_);
  while (rendered.ok() && static_cast<int64_t>(rendered->ids.size()) > room &&
         messages_.size() > first_turn + 1) {
    // An exchange is a user turn and its reply; the oldest goes first.
    Drop(first_turn, messages_.size() - first_turn >= 3 ? 2 : 1);
    ++dropped_;
    rendered = Render(&failure_);
  }
  if (!rendered.ok()) {
    restore();
    return MakeError(rendered.error());
  }
  const std::vector<int64_t>& ids = rendered->ids;
  GenerationConfig turn = config;
  turn.bos = false;
  turn.max_new_tokens = std::max<int64_t>(
      1,
      std::min(config.max_new_tokens, runner_->max_seq_len() - static_cast<int64_t>(ids.size())));
  std::string reply;
  auto out = runner_->GenerateFromIds(
      ids, turn,
      [&](const std::string& piece) {
        reply += piece;
        on_text(piece);
      },
      stats, rendered->images);
  if (!out.ok()) {
    failure_ = runner_->last_failure();
    restore();
    return MakeError(out.error());
  }
  failure_ = Failure::kNone;
  generated_ = std::move(*out);
  messages_.push_back({"assistant", reply});
  pixels_.emplace_back();
  return reply;
}

}  // namespace torchchat
