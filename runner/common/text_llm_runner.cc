#include "runner/common/text_llm_runner.h"

#include <algorithm>
#include <string>
#include <utility>

#include "tokenizers/utf8.h"

namespace torchchat {

using tokenizers::MakeError;

int64_t ArgMax(const float* logits, int64_t vocab) {
  return std::max_element(logits, logits + vocab) - logits;
}

TextLLMRunner::TextLLMRunner(LLMModel* model, const tokenizers::Tokenizer* tokenizer,
                             SampleFn sample)
    : model_(model), tokenizer_(tokenizer), sample_(std::move(sample)) {}

Result<void> ValidateTokenizer(const ModelMetadata& md, const tokenizers::Tokenizer& tokenizer) {
  if (tokenizer.vocab_size() > md.vocab_size) {
    return MakeError("the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                     " tokens but the model only " + std::to_string(md.vocab_size) +
                     ": they do not belong together");
  }
  return {};
}

// Runs tokens[from, end) at positions from, from+1, ...; each image's run
// of soft tokens as one ForwardImage call.
Result<const float*> TextLLMRunner::Prefill(const std::vector<int64_t>& tokens, size_t from,
                                            const std::vector<PromptImage>& images) {
  // One call when the artifact takes variable-length input; otherwise in
  // chunks of what it accepts (1 for a decode-only static-shape export).
  const size_t chunk = std::max<int64_t>(1, model_->metadata().max_prefill_chunk);
  const size_t image_len = static_cast<size_t>(model_->metadata().vision.image_tokens);
  Result<const float*> logits = MakeError("empty prompt");
  size_t i = from;
  while (i < tokens.size()) {
    size_t end = tokens.size();
    const PromptImage* image = nullptr;
    for (const PromptImage& im : images) {
      const auto start = static_cast<size_t>(im.start);
      if (start >= i && start < end) {
        end = start;
        image = &im;
      }
    }
    if (image != nullptr && end == i) {
      logits = model_->ForwardImage(image->pixels, static_cast<int64_t>(i));
      if (!logits.ok()) return logits;
      i += image_len;
      continue;
    }
    const size_t n = std::min(chunk, end - i);
    std::vector<int64_t> part(tokens.begin() + i, tokens.begin() + i + n);
    logits = model_->Forward(part, static_cast<int64_t>(i));
    if (!logits.ok()) return logits;
    i += n;
  }
  return logits;
}

// The cached prefix the prompt shares, but never all of it (its last token
// must run: its logits give the first sample), nor part of an image, nor an
// image that is not the same pixels at the same place (torchchat's Python
// Slot.reuse keeps the same rule).
size_t TextLLMRunner::Reusable(const std::vector<int64_t>& prompt,
                               const std::vector<PromptImage>& images) const {
  size_t common = 0;
  const size_t limit = std::min(cached_.size(), prompt.size() - 1);
  while (common < limit && cached_[common] == prompt[common]) ++common;
  const auto image_len = static_cast<size_t>(model_->metadata().vision.image_tokens);
  auto held = [](const std::vector<PromptImage>& in, const PromptImage& im) {
    return std::any_of(in.begin(), in.end(), [&](const PromptImage& h) {
      return h.start == im.start && h.pixels == im.pixels;
    });
  };
  for (const auto* list : {&cached_images_, &images}) {
    for (const PromptImage& im : *list) {
      const auto start = static_cast<size_t>(im.start);
      const bool same = held(cached_images_, im) && held(images, im);
      if (start < common && (!same || common < start + image_len)) common = start;
    }
  }
  return common;
}

Result<std::vector<int64_t>> TextLLMRunner::Generate(
    const std::string& prompt, const GenerationConfig& config,
    const std::function<void(const std::string&)>& on_text, Stats* stats) {
  failure_ = Failure::kInput;
  if (const size_t bad = tokenizers::FindInvalidUtf8(prompt); bad != std::string::npos) {
    return MakeError("the prompt is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  auto encoded = tokenizer_->Encode(prompt, config.bos && tokenizer_->add_bos());
  if (!encoded.ok()) return MakeError("cannot encode the prompt: " + encoded.error());
  return GenerateFromIds(std::vector<int64_t>(encoded->begin(), encoded->end()), config, on_text,
                         stats);
}

Result<std::vector<int64_t>> TextLLMRunner::GenerateFromIds(
    const std::vector<int64_t>& prompt, const GenerationConfig& config,
    const std::function<void(const std::string&)>& on_text, Stats* stats,
    const std::vector<PromptImage>& images) {
  const ModelMetadata& md = model_->metadata();
  stats->inference_start_ms = NowMs();
  stop_requested_.store(false, std::memory_order_relaxed);
  failure_ = Failure::kInput;
  if (prompt.empty()) return MakeError("the prompt is empty");
  const size_t common = Reusable(prompt, images);
  cached_.resize(common);
  if (static_cast<int64_t>(prompt.size()) >= md.max_seq_len) {
    failure_ = Failure::kContext;
    return MakeError("the prompt is " + std::to_string(prompt.size() - common) + " tokens and " +
                     std::to_string(common) + " are in use, but the model's context holds " +
                     std::to_string(md.max_seq_len));
  }
  stats->num_prompt_tokens = static_cast<int64_t>(prompt.size() - common);
  stats->stop_reason = "max_new_tokens";
  failure_ = Failure::kModel;

  auto logits = Prefill(prompt, common, images);
  if (!logits.ok()) {
    Reset();  // how far the failed prefill got is unknown
    return MakeError("prefill failed: " + logits.error());
  }
  cached_ = prompt;
  cached_images_ = images;
  stats->prompt_eval_end_ms = NowMs();

  std::vector<int64_t> history = prompt;
  std::vector<int64_t> generated;
  generated.reserve(config.max_new_tokens);
  auto decoder = tokenizer_->NewStreamDecoder();
  auto is_eos = [&](int64_t id) {
    return std::find(md.eos_ids.begin(), md.eos_ids.end(), id) != md.eos_ids.end();
  };
  std::vector<int64_t> step(1);
  while (static_cast<int64_t>(generated.size()) < config.max_new_tokens) {
    auto next = sample_(*logits, md.vocab_size, history);
    if (!next.ok()) return MakeError("sampling failed: " + next.error());
    if (generated.empty()) stats->first_token_ms = NowMs();
    generated.push_back(*next);
    history.push_back(*next);
    if (is_eos(*next)) {
      stats->stop_reason = "eos";
      break;
    }
    auto text = decoder.Push(static_cast<int>(*next));
    if (!text.ok()) return MakeError("cannot decode token: " + text.error());
    if (!text->empty()) on_text(*text);
    if (stop_requested_.load(std::memory_order_relaxed)) {
      stats->stop_reason = "stopped";
      break;
    }
    if (static_cast<int64_t>(generated.size()) == config.max_new_tokens) break;
    // The last token sampled never needs to run.
    const int64_t pos = static_cast<int64_t>(cached_.size());
    if (pos >= md.max_seq_len) {
      stats->stop_reason = "context";
      break;
    }
    step[0] = *next;
    logits = model_->Forward(step, pos);
    if (!logits.ok()) return MakeError("decode failed: " + logits.error());
    cached_.push_back(*next);
  }
  const std::string tail = decoder.Flush();
  if (!tail.empty()) on_text(tail);
  stats->inference_end_ms = NowMs();
  if (generated.empty()) stats->first_token_ms = stats->inference_end_ms;
  stats->num_generated_tokens = static_cast<int64_t>(generated.size());
  stats->peak_rss_bytes = PeakRssBytes();
  failure_ = Failure::kNone;
  return generated;
}

}  // namespace torchchat
