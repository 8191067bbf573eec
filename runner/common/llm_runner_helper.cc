#include "runner/common/llm_runner_helper.h"

#include <algorithm>
#include <fstream>
#include <utility>
#include <vector>

namespace torchchat {
namespace {

bool Exists(const std::string& path) { return std::ifstream(path).good(); }

std::string Dirname(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

std::string FindTokenizer(const std::string& model_path, const std::string& tokenizer_path,
                          const ModelMetadata& md) {
  if (!tokenizer_path.empty()) return tokenizer_path;
  const std::string dir = Dirname(model_path);
  std::vector<std::string> names;
  if (!md.tokenizer_file.empty()) names.push_back(md.tokenizer_file);
  for (const char* n : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
    names.push_back(n);
  }
  for (const auto& n : names) {
    if (Exists(dir + "/" + n)) return dir + "/" + n;
  }
  return "";
}

Result<LoadedLLM> LoadLLM(const ModelLoader& load_model, const std::string& model_path,
                          const std::string& tokenizer_path, int num_threads) {
  auto model = load_model(model_path, num_threads);
  if (!model.ok()) return tokenizers::MakeError(model.error());
  const std::string tok_path = FindTokenizer(model_path, tokenizer_path, (*model)->metadata());
  if (tok_path.empty()) {
    return tokenizers::MakeError("no tokenizer file beside " + model_path +
                                 " (tokenizer.json, tokenizer.model or tokenizer.bin); name one");
  }
  auto tokenizer = tokenizers::LoadTokenizer(tok_path);
  if (!tokenizer.ok()) return tokenizers::MakeError(tokenizer.error());
  LoadedLLM llm{std::move(model).value(), std::move(tokenizer).value()};
  if (auto v = ValidateTokenizer(llm.model->metadata(), *llm.tokenizer); !v.ok()) {
    return tokenizers::MakeError(v.error());
  }
  return llm;
}

SampleFn MakeSampleFn(const tokenizers::SamplerConfig& config, uint64_t seed) {
  // Shared so that copies of the function draw from one stream.
  auto sampler = std::make_shared<tokenizers::Sampler>(config, seed);
  auto recent = std::make_shared<std::vector<int>>();
  return [sampler, recent](const float* logits, int64_t vocab,
                           const std::vector<int64_t>& history) -> Result<int64_t> {
    const size_t n = std::min(history.size(), tokenizers::kRepetitionWindow);
    recent->assign(history.end() - n, history.end());
    auto id = sampler->Sample(logits, static_cast<size_t>(vocab), recent->data(), recent->size());
    if (!id.ok()) return tokenizers::MakeError(id.error());
    return static_cast<int64_t>(*id);
  };
}

}  // namespace torchchat
