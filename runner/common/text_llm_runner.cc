#include "runner/common/text_llm_runner.h"

#include <algorithm>
#include <string>
#include <utility>

namespace torchchat {

using tokenizers::MakeError;

int64_t ArgMax(const float* logits, int64_t vocab) {
  return std::max_element(logits, logits + vocab) - logits;
}

TextLLMRunner::TextLLMRunner(LLMModel* model,
                             const tokenizers::Tokenizer* tokenizer,
                             SampleFn sample)
    : model_(model), tokenizer_(tokenizer), sample_(std::move(sample)) {}

Result<void> TextLLMRunner::Validate() const {
  const ModelMetadata& md = model_->metadata();
  if (tokenizer_->vocab_size() > md.vocab_size) {
    return MakeError("the tokenizer has " +
                     std::to_string(tokenizer_->vocab_size()) +
                     " tokens but the model only " +
                     std::to_string(md.vocab_size) +
                     ": they do not belong together");
  }
  return {};
}

Result<const float*> TextLLMRunner::Prefill(const std::vector<int64_t>& tokens,
                                            int64_t start_pos) {
  // One call when the artifact takes variable-length input; otherwise in
  // chunks of what it accepts (1 for a decode-only static-shape export).
  const int64_t chunk = std::max<int64_t>(1, model_->metadata().max_prefill_chunk);
  Result<const float*> logits = MakeError("empty prompt");
  for (size_t i = 0; i < tokens.size(); i += chunk) {
    const size_t n = std::min<size_t>(chunk, tokens.size() - i);
    std::vector<int64_t> part(tokens.begin() + i, tokens.begin() + i + n);
    logits = model_->Forward(part, start_pos + static_cast<int64_t>(i));
    if (!logits.ok()) return logits;
  }
  return logits;
}

Result<std::vector<int64_t>> TextLLMRunner::Generate(
    const std::string& prompt, const GenerationConfig& config,
    const std::function<void(const std::string&)>& on_text, Stats* stats,
    int64_t start_pos) {
  const ModelMetadata& md = model_->metadata();
  stats->inference_start_ms = NowMs();
  auto encoded = tokenizer_->Encode(prompt, config.bos && tokenizer_->add_bos());
  if (!encoded.ok()) return MakeError("cannot encode the prompt: " + encoded.error());
  std::vector<int64_t> history(encoded->begin(), encoded->end());
  if (history.empty()) return MakeError("the prompt is empty");
  const int64_t needed = start_pos + static_cast<int64_t>(history.size()) + 1;
  if (needed > md.max_seq_len) {
    return MakeError("the prompt is " + std::to_string(history.size()) +
                     " tokens and " + std::to_string(start_pos) +
                     " are in use, but the model's context holds " +
                     std::to_string(md.max_seq_len));
  }
  stats->num_prompt_tokens = static_cast<int64_t>(history.size());

  auto logits = Prefill(history, start_pos);
  if (!logits.ok()) return MakeError("prefill failed: " + logits.error());
  stats->prompt_eval_end_ms = NowMs();
  int64_t pos = start_pos + static_cast<int64_t>(history.size());

  std::vector<int64_t> generated;
  generated.reserve(config.max_new_tokens);
  auto decoder = tokenizer_->NewStreamDecoder();
  auto is_eos = [&](int64_t id) {
    return std::find(md.eos_ids.begin(), md.eos_ids.end(), id) != md.eos_ids.end();
  };
  std::vector<int64_t> step(1);
  while (static_cast<int64_t>(generated.size()) < config.max_new_tokens) {
    const int64_t next = sample_(*logits, md.vocab_size, history);
    if (generated.empty()) stats->first_token_ms = NowMs();
    generated.push_back(next);
    history.push_back(next);
    if (is_eos(next)) break;
    auto text = decoder.Push(static_cast<int>(next));
    if (!text.ok()) return MakeError("cannot decode token: " + text.error());
    if (!text->empty()) on_text(*text);
    if (pos >= md.max_seq_len ||
        static_cast<int64_t>(generated.size()) == config.max_new_tokens) {
      break;  // the context is full, or we are done: no need to run `next`.
    }
    step[0] = next;
    logits = model_->Forward(step, pos);
    if (!logits.ok()) return MakeError("decode failed: " + logits.error());
    ++pos;
  }
  const std::string tail = decoder.Flush();
  if (!tail.empty()) on_text(tail);
  pos_ = pos;
  stats->inference_end_ms = NowMs();
  stats->num_generated_tokens = static_cast<int64_t>(generated.size());
  stats->peak_rss_bytes = PeakRssBytes();
  return generated;
}

}  // namespace torchchat
