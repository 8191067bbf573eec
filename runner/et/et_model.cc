#include "runner/et/et_model.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <string>
#include <vector>

#include "runner/et/thread_pool.h"

namespace torchchat {
namespace {

using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using tokenizers::MakeError;

std::string ErrorName(Error e) { return executorch::runtime::to_string(e); }

class EtModel : public LLMModel {
 public:
  EtModel(std::unique_ptr<Module> module, ModelMetadata md)
      : module_(std::move(module)), md_(std::move(md)) {}

  const ModelMetadata& metadata() const override { return md_; }

  Result<const float*> Forward(const std::vector<int64_t>& tokens, int64_t start_pos) override {
    const auto n = static_cast<executorch::aten::SizesType>(tokens.size());
    // ExecuTorch's LLM export takes the start position as a 1-element
    // tensor; positions of the other tokens follow from it.
    start_pos_ = start_pos;
    auto tokens_t = executorch::extension::from_blob(const_cast<int64_t*>(tokens.data()), {1, n},
                                                     executorch::aten::ScalarType::Long);
    auto pos_t =
        executorch::extension::from_blob(&start_pos_, {1}, executorch::aten::ScalarType::Long);
    if (md_.vision.image_size > 0) {
      // A multimodal program: token_embedding, then text_decoder.
      auto emb = Embeddings("token_embedding", EValue(tokens_t));
      if (!emb.ok()) return MakeError(emb.error());
      return Logits(module_->execute("text_decoder", {EValue(*emb), EValue(pos_t)}),
                    "text_decoder");
    }
    return Logits(module_->forward({EValue(tokens_t), EValue(pos_t)}), "forward");
  }

  Result<const float*> ForwardImage(const std::vector<uint8_t>& pixels,
                                    int64_t start_pos) override {
    const auto s = static_cast<executorch::aten::SizesType>(md_.vision.image_size);
    if (md_.vision.image_size <= 0) return MakeError("this model has no vision encoder");
    if (pixels.size() != static_cast<size_t>(3 * s * s)) {
      return MakeError("an image for this model is 3x" + std::to_string(s) + "x" +
                       std::to_string(s) + " bytes");
    }
    start_pos_ = start_pos;
    auto pixels_t = executorch::extension::from_blob(
        const_cast<uint8_t*>(pixels.data()), {1, 3, s, s}, executorch::aten::ScalarType::Byte);
    auto pos_t =
        executorch::extension::from_blob(&start_pos_, {1}, executorch::aten::ScalarType::Long);
    auto emb = Embeddings("vision_encoder", EValue(pixels_t));
    if (!emb.ok()) return MakeError(emb.error());
    const int64_t n = (*emb)->size(1);
    if (n != md_.vision.image_tokens) {
      return MakeError("vision_encoder returned " + std::to_string(n) +
                       " soft tokens; get_image_tokens says " +
                       std::to_string(md_.vision.image_tokens));
    }
    return Logits(module_->execute("image_decoder", {EValue(*emb), EValue(pos_t)}),
                  "image_decoder");
  }

 private:
  // An encoder method's output [1, T, dim], copied out: the methods of a
  // multimodal program share their memory arenas (the KV cache is shared
  // state), so the decoder would overwrite its own input in place.
  Result<executorch::extension::TensorPtr> Embeddings(const char* method, EValue input) {
    auto out = module_->execute(method, {std::move(input)});
    if (!out.ok()) return MakeError(std::string(method) + " failed: " + ErrorName(out.error()));
    if (out->empty() || !(*out)[0].isTensor()) {
      return MakeError(std::string(method) + " returned no tensor");
    }
    const auto& t = (*out)[0].toTensor();
    if (t.scalar_type() != executorch::aten::ScalarType::Float || t.dim() != 3) {
      return MakeError(std::string(method) + " did not return float32 [1, T, dim]");
    }
    embeddings_.assign(t.const_data_ptr<float>(), t.const_data_ptr<float>() + t.numel());
    return executorch::extension::from_blob(embeddings_.data(),
                                            {1, static_cast<executorch::aten::SizesType>(t.size(1)),
                                             static_cast<executorch::aten::SizesType>(t.size(2))},
                                            executorch::aten::ScalarType::Float);
  }

  Result<const float*> Logits(const executorch::runtime::Result<std::vector<EValue>>& out,
                              const char* method) {
    if (!out.ok()) return MakeError(std::string(method) + " failed: " + ErrorName(out.error()));
    if (out->empty() || !(*out)[0].isTensor()) {
      return MakeError(std::string(method) + " returned no logits tensor");
    }
    const auto& logits = (*out)[0].toTensor();
    if (logits.scalar_type() != executorch::aten::ScalarType::Float) {
      return MakeError("the model's logits are not float32");
    }
    const int64_t vocab = logits.size(logits.dim() - 1);
    if (vocab != md_.vocab_size) {
      return MakeError("the model returned " + std::to_string(vocab) +
                       " logits; get_vocab_size says " + std::to_string(md_.vocab_size));
    }
    // Full-sequence logits: the last row is the next token's.
    return logits.const_data_ptr<float>() + (logits.numel() - vocab);
  }

  std::unique_ptr<Module> module_;
  ModelMetadata md_;
  int64_t start_pos_ = 0;
  std::vector<float> embeddings_;
};

Result<int64_t> GetInt(Module& m, const char* method) {
  auto v = m.get(method);
  if (!v.ok()) return MakeError(std::string("the program lacks ") + method);
  if (v->isInt()) return v->toInt();
  if (v->isBool()) return static_cast<int64_t>(v->toBool());
  return MakeError(std::string(method) + " does not return an integer");
}

}  // namespace

Result<std::unique_ptr<LLMModel>> LoadEtModel(const std::string& path, int num_threads) {
  ConfigureEtThreadPool(num_threads);
  auto module = std::make_unique<Module>(path, Module::LoadMode::MmapUseMlockIgnoreErrors);
  if (const Error e = module->load(); e != Error::Ok) {
    return MakeError("cannot load " + path + " as an ExecuTorch program (" + ErrorName(e) + ")");
  }
  ModelMetadata md;
  for (auto [field, method] : {std::pair{&md.max_seq_len, "get_max_seq_len"},
                               std::pair{&md.vocab_size, "get_vocab_size"}}) {
    auto v = GetInt(*module, method);
    if (!v.ok()) return MakeError(path + ": " + v.error());
    *field = *v;
  }
  auto dynamic = GetInt(*module, "enable_dynamic_shape");
  md.max_prefill_chunk = dynamic.ok() && *dynamic != 0 ? md.max_seq_len : 1;
  if (auto eos = module->execute("get_eos_ids"); eos.ok()) {
    for (const EValue& v : *eos) {
      if (v.isInt()) md.eos_ids.push_back(v.toInt());
    }
  }
  std::vector<std::string> methods = {"forward"};
  if (auto names = module->method_names(); names.ok() && names->count("vision_encoder") != 0) {
    // export/vision_pte.py's program: ExecuTorch's multimodal methods, whose
    // two decoders share the KV cache: their arenas must be one.
    module = std::make_unique<Module>(path, Module::LoadMode::MmapUseMlockIgnoreErrors, nullptr,
                                      nullptr, nullptr, /*share_memory_arenas=*/true);
    if (const Error e = module->load(); e != Error::Ok) {
      return MakeError("cannot load " + path + " as an ExecuTorch program (" + ErrorName(e) + ")");
    }
    VisionMetadata& v = md.vision;
    for (auto [field, method] :
         {std::pair{&v.image_size, "get_image_size"},
          std::pair{&v.image_tokens, "get_image_tokens"}, std::pair{&v.boi_id, "get_boi_token_id"},
          std::pair{&v.eoi_id, "get_eoi_token_id"}, std::pair{&v.image_id, "get_image_token_id"}}) {
      auto got = GetInt(*module, method);
      if (!got.ok()) return MakeError(path + ": " + got.error());
      *field = *got;
    }
    // SmolVLM's tiling (absent: Gemma 3's one tile per image).
    if (names->count("get_image_longest_edge") != 0) {
      for (auto [field, method] :
           {std::pair{&v.longest_edge, "get_image_longest_edge"},
            std::pair{&v.split, "get_image_split"}, std::pair{&v.resample, "get_image_resample"}}) {
        auto got = GetInt(*module, method);
        if (!got.ok()) return MakeError(path + ": " + got.error());
        *field = *got;
      }
    }
    methods = {"vision_encoder", "token_embedding", "text_decoder", "image_decoder"};
  }
  for (const std::string& method : methods) {
    if (const Error e = module->load_method(method); e != Error::Ok) {
      return MakeError("cannot prepare " + path + "'s " + method + " method (" + ErrorName(e) +
                       "); a missing operator or backend is the usual cause");
    }
  }
  return std::unique_ptr<LLMModel>(new EtModel(std::move(module), std::move(md)));
}

}  // namespace torchchat
