#include "runner/common/main.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "runner/common/chat_session.h"
#include "runner/common/image.h"
#include "runner/common/llm_runner_helper.h"
#include "runner/common/options.h"
#include "runner/common/stats.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/sampler.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {
namespace {

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text << "\n";
  return static_cast<bool>(out);
}

std::string IdsJson(const std::vector<int64_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(ids[i]);
  }
  return s + "]";
}

// `bazel run` starts us in the runfiles tree; relative paths the user typed
// mean their own directory.
std::string UserPath(const std::string& path) {
  const char* wd = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.empty() || path[0] == '/' || wd == nullptr || *wd == '\0') return path;
  return std::string(wd) + "/" + path;
}

int Fail(const std::string& program, const std::string& msg) {
  std::fprintf(stderr, "%s: error: %s\n", program.c_str(), msg.c_str());
  return 1;
}

void PrintText(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

// An image for a chat turn: a PPM the tower takes (TileImage).
Result<RgbImage> ReadChatImage(const std::string& path, const VisionMetadata& v) {
  auto img = ReadPpm(path);
  if (!img.ok()) return img;
  if (auto px = TileImage(*img, v, path); !px.ok()) return tokenizers::MakeError(px.error());
  return img;
}

// Multi-turn chat on stdin; ChatSession holds the policy. Images (--image,
// then each "/image PATH" line) go with the next turn, as in torchchat chat.
int Chat(const std::string& program, const RunnerOptions& o, const tokenizers::Tokenizer& tokenizer,
         TextLLMRunner& runner, const GenerationConfig& config, Stats* stats) {
  auto session =
      ChatSession::Create(&runner, &tokenizer, tokenizer.chat_template(), o.system_prompt);
  if (!session.ok()) return Fail(program, session.error());
  const VisionMetadata& vision = runner.metadata().vision;
  std::vector<RgbImage> attached;
  std::vector<std::string> names;
  if (!o.images.empty()) {
    if (auto ok = CheckVision(vision, o.model_path); !ok.ok()) return Fail(program, ok.error());
  }
  for (const std::string& path : o.images) {
    auto img = ReadChatImage(path, vision);
    if (!img.ok()) return Fail(program, img.error());
    attached.push_back(std::move(*img));
    names.push_back(path);
  }
  std::vector<std::vector<int64_t>> turns;
  std::string first = o.prompt;
  while (true) {
    std::string line;
    if (!first.empty()) {
      line.swap(first);
    } else {
      std::fputs("> ", stderr);
      if (!std::getline(std::cin, line)) break;
    }
    if (line == "/exit" || line == "/quit") break;
    if (line.empty()) continue;
    if (line == "/image" || line.rfind("/image ", 0) == 0) {
      const size_t at = line.find_first_not_of(' ', 6);
      const std::string path = at == std::string::npos ? "" : UserPath(line.substr(at));
      Result<RgbImage> img = tokenizers::MakeError("/image needs a PATH");
      if (auto ok = CheckVision(vision, o.model_path); !ok.ok()) {
        img = tokenizers::MakeError("/image: " + ok.error());
      } else if (!path.empty()) {
        img = ReadChatImage(path, vision);
      }
      if (!img.ok()) {
        std::fprintf(stderr, "%s: error: %s\n", program.c_str(), img.error().c_str());
        continue;
      }
      attached.push_back(std::move(*img));
      names.push_back(path);
      std::fprintf(stderr, "(image attached to the next turn: %zu)\n", attached.size());
      continue;
    }
    auto reply = session->Turn(line, config, PrintText, stats, attached, names);
    std::fputc('\n', stdout);
    if (!reply.ok()) {
      // The conversation is as it was before the line: say why, go on.
      std::fprintf(stderr, "%s: error: %s\n", program.c_str(), reply.error().c_str());
      continue;
    }
    attached.clear();
    names.clear();
    turns.push_back(session->last_generated());
    for (int i = 0; i < session->dropped_last_turn(); ++i) {
      std::fprintf(stderr, "(forgot the oldest turn to fit the context)\n");
    }
    std::fprintf(stderr, "%s\n", stats->Summary().c_str());
  }
  if (!o.ids_json.empty()) {
    std::string json = "{\"turns\": [";
    for (size_t i = 0; i < turns.size(); ++i) json += (i ? ", " : "") + IdsJson(turns[i]);
    if (!WriteFile(o.ids_json, json + "]}")) return Fail(program, "cannot write " + o.ids_json);
  }
  return 0;
}

}  // namespace

int RunMain(int argc, char** argv, const std::string& program, const ModelLoader& load_model) {
  auto opts = ParseOptions(argc, argv);
  if (!opts.ok()) {
    if (opts.error() == "help") {
      std::fputs(Usage(program).c_str(), stdout);
      return 0;
    }
    std::fprintf(stderr, "%s: error: %s\n%s", program.c_str(), opts.error().c_str(),
                 Usage(program).c_str());
    return 2;
  }
  RunnerOptions& o = opts.value();
  for (std::string* p : {&o.model_path, &o.tokenizer_path, &o.stats_json, &o.ids_json}) {
    *p = UserPath(*p);
  }
  for (std::string& p : o.images) p = UserPath(p);

  Stats stats;
  stats.model_load_start_ms = NowMs();
  auto llm = LoadLLM(load_model, o.model_path, o.tokenizer_path, static_cast<int>(o.num_threads));
  if (!llm.ok()) return Fail(program, llm.error());
  stats.model_load_end_ms = NowMs();

  tokenizers::SamplerConfig sampling;
  sampling.temperature = o.temperature;
  sampling.top_k = static_cast<int>(o.top_k);
  sampling.top_p = o.top_p;
  sampling.min_p = o.min_p;
  sampling.repetition_penalty = o.repetition_penalty;
  if (auto v = tokenizers::ValidateSamplerConfig(sampling); !v.ok()) {
    return Fail(program, v.error());
  }
  const tokenizers::Tokenizer& tokenizer = *llm->tokenizer;
  TextLLMRunner runner(llm->model.get(), &tokenizer,
                       MakeSampleFn(sampling, o.seed_set ? o.seed : std::random_device{}()));

  GenerationConfig config;
  config.max_new_tokens = o.max_new_tokens;
  for (int64_t i = 0; i < o.warmup; ++i) {
    Stats ignored;
    GenerationConfig short_run = config;
    short_run.max_new_tokens = 4;
    auto r = runner.Generate(o.prompt, short_run, [](const std::string&) {}, &ignored);
    if (!r.ok()) return Fail(program, r.error());
    runner.Reset();  // time the real run's prefill in full
  }
  if (o.mode == "chat") {
    const int rc = Chat(program, o, tokenizer, runner, config, &stats);
    if (rc == 0 && !o.stats_json.empty() && !WriteFile(o.stats_json, stats.ToJson())) {
      return Fail(program, "cannot write " + o.stats_json);
    }
    return rc;
  }
  Result<std::vector<int64_t>> ids = tokenizers::MakeError("no prompt");
  if (o.images.empty()) {
    ids = runner.Generate(o.prompt, config, PrintText, &stats);
  } else {
    std::vector<RgbImage> images;
    for (const std::string& path : o.images) {
      auto img = ReadPpm(path);
      if (!img.ok()) return Fail(program, img.error());
      images.push_back(std::move(*img));
    }
    auto prompt = BuildImagePrompt(o.prompt, images, o.images, tokenizer,
                                   llm->model->metadata().vision, o.model_path);
    if (!prompt.ok()) return Fail(program, prompt.error());
    ids = runner.GenerateFromIds(prompt->ids, config, PrintText, &stats, prompt->images);
  }
  std::fputc('\n', stdout);
  if (!ids.ok()) return Fail(program, ids.error());
  std::fprintf(stderr, "%s\n", stats.Summary().c_str());
  if (!o.stats_json.empty() && !WriteFile(o.stats_json, stats.ToJson())) {
    return Fail(program, "cannot write " + o.stats_json);
  }
  if (!o.ids_json.empty() && !WriteFile(o.ids_json, "{\"generated\": " + IdsJson(*ids) + "}")) {
    return Fail(program, "cannot write " + o.ids_json);
  }
  return 0;
}

}  // namespace torchchat
