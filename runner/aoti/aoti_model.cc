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

// The decoder's inputs in a package exported from a checkpoint with a
// vision tower (export/vision_pt2.py): token embeddings, or with is_image
// the chunk's `embeds` and its block of the causal mask open both ways.
constexpr char kVisionInputs[] = "tokens,input_pos,embeds,is_image";

class AotiModel : public LLMModel {
 public:
  AotiModel(std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader,
            std::unique_ptr<torch::inductor::AOTIModelPackageLoader> encoder, ModelMetadata md,
            bool slots, int64_t dim)
      : loader_(std::move(loader)),
        encoder_(std::move(encoder)),
        md_(std::move(md)),
        slots_(slots),
        dim_(dim) {
    logits_.resize(md_.vocab_size);
  }

  const ModelMetadata& metadata() const override { return md_; }

  Result<const float*> Forward(const std::vector<int64_t>& tokens, int64_t start_pos) override {
    try {
      const auto n = static_cast<int64_t>(tokens.size());
      return Run(tokens, start_pos, encoder_ ? torch::zeros({1, n, dim_}) : at::Tensor(), false);
    } catch (const std::exception& e) {
      return FirstLine(e);
    }
  }

  Result<const float*> ForwardImage(const std::vector<uint8_t>& pixels,
                                    int64_t start_pos) override {
    if (!encoder_) return MakeError("this model has no vision encoder");
    const int64_t s = md_.vision.image_size;
    if (pixels.size() != static_cast<size_t>(3 * s * s)) {
      return MakeError("an image for this model is 3x" + std::to_string(s) + "x" +
                       std::to_string(s) + " bytes");
    }
    try {
      at::Tensor px = torch::from_blob(const_cast<uint8_t*>(pixels.data()), {1, 3, s, s},
                                       torch::TensorOptions().dtype(torch::kByte));
      std::vector<at::Tensor> out = encoder_->run({px});
      if (out.empty() || out[0].dim() != 3 || out[0].size(2) != dim_) {
        return MakeError("vision_encoder did not return [1, T, " + std::to_string(dim_) + "]");
      }
      const int64_t n = out[0].size(1);
      if (n != md_.vision.image_tokens) {
        return MakeError("vision_encoder returned " + std::to_string(n) +
                         " soft tokens; the metadata says image_tokens " +
                         std::to_string(md_.vision.image_tokens));
      }
      image_ids_.assign(n, md_.vision.image_id);
      return Run(image_ids_, start_pos, out[0].to(torch::kFloat).contiguous(), true);
    } catch (const std::exception& e) {
      return FirstLine(e);
    }
  }

 private:
  static tokenizers::Error FirstLine(const std::exception& e) {
    std::string what = e.what();
    return MakeError(what.substr(0, what.find('\n')));
  }

  // One decoder call; `embeds` [1, T, dim] only for a vision package.
  Result<const float*> Run(const std::vector<int64_t>& tokens, int64_t start_pos,
                           const at::Tensor& embeds, bool is_image) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    // from_blob wraps our buffers: no copies of the inputs.
    auto opts = torch::TensorOptions().dtype(torch::kLong);
    positions_.resize(n);
    for (int64_t i = 0; i < n; ++i) positions_[i] = start_pos + i;
    std::vector<at::Tensor> inputs = {
        torch::from_blob(const_cast<int64_t*>(tokens.data()), {1, n}, opts),
        torch::from_blob(positions_.data(), {n}, opts)};
    if (embeds.defined()) {
      inputs.push_back(embeds);
      inputs.push_back(torch::full({1}, is_image ? 1 : 0, opts));
    } else if (slots_) {
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
    return static_cast<const float*>(logits_.data());
  }

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> encoder_;  // vision packages only
  ModelMetadata md_;
  bool slots_;
  int64_t dim_;
  std::vector<int64_t> positions_;
  std::vector<int64_t> image_ids_;
  std::vector<float> logits_;
};

// A vision package's metadata (export/vision_pt2.py): the tower's keys and
// the decoder's width. None in a text package.
Result<int64_t> ReadVision(const Metadata& meta, VisionMetadata* v) {
  auto inputs = meta.find("inputs");
  if (inputs == meta.end()) return int64_t{0};
  if (inputs->second != kVisionInputs) {
    return MakeError("the package's decoder takes (" + inputs->second + "); this aoti_run knows (" +
                     kVisionInputs + ")");
  }
  for (auto [field, key] :
       {std::pair{&v->image_size, "image_size"}, std::pair{&v->image_tokens, "image_tokens"},
        std::pair{&v->boi_id, "boi_id"}, std::pair{&v->eoi_id, "eoi_id"},
        std::pair{&v->image_id, "image_id"}}) {
    auto got = IntField(meta, key);
    if (!got.ok()) return MakeError(got.error());
    *field = *got;
  }
  // SmolVLM's tiling (absent: Gemma 3's one tile per image).
  for (auto [field, key] : {std::pair{&v->longest_edge, "longest_edge"},
                            std::pair{&v->split, "split"}, std::pair{&v->resample, "resample"}}) {
    if (meta.count(key) == 0) continue;
    auto got = IntField(meta, key);
    if (!got.ok()) return MakeError(got.error());
    *field = *got;
  }
  auto dim = IntField(meta, "dim");
  if (!dim.ok()) return MakeError(dim.error());
  if (v->image_size <= 0 || v->image_tokens <= 0 || *dim <= 0) {
    return MakeError("the package metadata's image_size, image_tokens and dim must be positive");
  }
  return *dim;
}

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
  auto dim = ReadVision(meta, &md.vision);
  if (!dim.ok()) return MakeError(path + ": " + dim.error());

  try {
    auto loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        path, "model", /*run_single_threaded=*/false);
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> encoder;
    if (*dim > 0) {
      encoder = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          path, "vision_encoder", /*run_single_threaded=*/false);
    }
    return std::unique_ptr<LLMModel>(new AotiModel(std::move(loader), std::move(encoder),
                                                   std::move(md), slots.ok() && *slots > 0, *dim));
  } catch (const std::exception& e) {
    std::string what = e.what();
    return MakeError("cannot load " + path + ": " + what.substr(0, what.find('\n')));
  }
}

}  // namespace torchchat
