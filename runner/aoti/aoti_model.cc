#include "runner/aoti/aoti_model.h"

#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cstdlib>
#include <exception>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "runner/common/cpu_isa.h"

namespace torchchat {
namespace {

using tokenizers::MakeError;
using Metadata = std::unordered_map<std::string, std::string>;

Result<int64_t> IntField(const Metadata& m, const std::string& key) {
  auto it = m.find(key);
  if (it == m.end()) return MakeError("the package metadata lacks '" + key + "'");
  char* end = nullptr;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end != '\0') {
    return MakeError("the package metadata '" + key + "' is not an integer");
  }
  return static_cast<int64_t>(v);
}

class AotiModel : public LLMModel {
 public:
  AotiModel(std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader, ModelMetadata md,
            bool slots)
      : loader_(std::move(loader)), md_(std::move(md)), slots_(slots) {
    logits_.resize(md_.vocab_size);
  }

  const ModelMetadata& metadata() const override { return md_; }

  Result<const float*> Forward(const std::vector<int64_t>& tokens, int64_t start_pos) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    try {
      // from_blob wraps our buffers: no copies of the inputs.
      auto opts = torch::TensorOptions().dtype(torch::kLong);
      positions_.resize(n);
      for (int64_t i = 0; i < n; ++i) positions_[i] = start_pos + i;
      std::vector<at::Tensor> inputs = {
          torch::from_blob(const_cast<int64_t*>(tokens.data()), {1, n}, opts),
          torch::from_blob(positions_.data(), {n}, opts)};
      if (slots_) {
        // A package exported with --slots (for the server's batching) also
        // takes each token's cache row and which logits to return: one
        // sequence in row 0, the last position's.
        inputs.push_back(torch::zeros({n}, opts));
        inputs.push_back(torch::full({1}, n - 1, opts));
      }
      std::vector<at::Tensor> out = loader_->run(inputs);
      if (out.empty()) return MakeError("the model returned no output");
      at::Tensor logits = out[0].reshape({-1, out[0].size(-1)});
      if (logits.size(1) != md_.vocab_size) {
        return MakeError("the model returned " + std::to_string(logits.size(1)) +
                         " logits; its metadata says vocab_size " + std::to_string(md_.vocab_size));
      }
      at::Tensor last = logits[logits.size(0) - 1].to(torch::kFloat).contiguous();
      std::copy_n(last.data_ptr<float>(), md_.vocab_size, logits_.data());
    } catch (const std::exception& e) {
      std::string what = e.what();
      return MakeError(what.substr(0, what.find('\n')));
    }
    return static_cast<const float*>(logits_.data());
  }

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  ModelMetadata md_;
  bool slots_;
  std::vector<int64_t> positions_;
  std::vector<float> logits_;
};

}  // namespace

Result<std::unique_ptr<LLMModel>> LoadAotiModel(const std::string& path, int num_threads) {
  if (num_threads > 0) at::set_num_threads(num_threads);
  Metadata meta;
  try {
    meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
  } catch (const std::exception& e) {
    std::string what = e.what();
    return MakeError("cannot read " + path +
                     " as an AOTInductor package: " + what.substr(0, what.find('\n')));
  }
  // Check the ISA before the model's .so is loaded: code for a missing ISA
  // dies on SIGILL, not with an error.
  if (auto isa = meta.find("AOTI_CPU_ISA"); isa != meta.end()) {
    const std::string missing = MissingCpuIsa(isa->second);
    if (!missing.empty()) {
      return MakeError(path + " was compiled for a CPU with " + isa->second + "; this CPU lacks " +
                       missing + ". Export it again here.");
    }
  }
  ModelMetadata md;
  for (auto [field, key] :
       {std::pair{&md.max_seq_len, "max_seq_len"}, std::pair{&md.vocab_size, "vocab_size"}}) {
    auto v = IntField(meta, key);
    if (!v.ok()) return MakeError(path + ": " + v.error());
    *field = *v;
  }
  if (auto it = meta.find("eos_ids"); it != meta.end()) {
    std::istringstream in(it->second);
    for (std::string id; std::getline(in, id, ',');) {
      if (!id.empty()) md.eos_ids.push_back(std::strtoll(id.c_str(), nullptr, 10));
    }
  }
  // export_llm traces the token dimension up to max_seq_len - 1.
  auto chunk = IntField(meta, "max_prefill_chunk");
  md.max_prefill_chunk = chunk.ok() ? *chunk : md.max_seq_len - 1;
  if (auto it = meta.find("tokenizer_file"); it != meta.end()) md.tokenizer_file = it->second;
  auto slots = IntField(meta, "slots");

  try {
    auto loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        path, "model", /*run_single_threaded=*/false);
    return std::unique_ptr<LLMModel>(
        new AotiModel(std::move(loader), std::move(md), slots.ok() && *slots > 0));
  } catch (const std::exception& e) {
    std::string what = e.what();
    return MakeError("cannot load " + path + ": " + what.substr(0, what.find('\n')));
  }
}

}  // namespace torchchat
