#include "runner/common/main.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "runner/common/chat_template.h"
#include "runner/common/options.h"
#include "runner/common/stats.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/sampler.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {
namespace {

bool Exists(const std::string& path) { return std::ifstream(path).good(); }

std::string Dirname(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// -z, else the file the artifact names, else a tokenizer file beside it.
std::string FindTokenizer(const RunnerOptions& o, const ModelMetadata& md) {
  if (!o.tokenizer_path.empty()) return o.tokenizer_path;
  const std::string dir = Dirname(o.model_path);
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

// Multi-turn chat on stdin. Each turn renders the whole conversation with
// the model's own chat template and prefills it from position 0: simple and
// always right, whatever the template does between turns, and prefill is
// batched, so it costs little next to decoding.
int Chat(const std::string& program, const RunnerOptions& o,
         const tokenizers::Tokenizer& tokenizer, TextLLMRunner& runner,
         const GenerationConfig& base, Stats* stats) {
  if (tokenizer.chat_template().empty()) {
    return Fail(program, "the tokenizer has no chat template (tokenizer_config.json); "
                         "use -m generate");
  }
  auto tmpl = ChatTemplate::Parse(tokenizer.chat_template());
  if (!tmpl.ok()) return Fail(program, "bad chat template: " + tmpl.error());
  auto piece = [&](int64_t id) {
    if (id < 0) return std::string();
    auto p = tokenizer.IdToPiece(static_cast<int>(id));
    return p.ok() ? *p : std::string();
  };
  const std::string bos = piece(tokenizer.bos_id());
  const std::string eos = tokenizer.eos_ids().empty() ? "" : piece(tokenizer.eos_ids()[0]);
  std::vector<ChatMessage> messages;
  if (!o.system_prompt.empty()) messages.push_back({"system", o.system_prompt});
  GenerationConfig config = base;
  config.bos = false;  // the template writes bos_token itself where it wants one
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
    messages.push_back({"user", line});
    auto prompt = tmpl->Render(messages, /*add_generation_prompt=*/true, bos, eos);
    if (!prompt.ok()) return Fail(program, "chat template: " + prompt.error());
    // When the conversation outgrows the context, forget the oldest
    // exchanges (never the system prompt or the new question).
    const size_t first_turn = o.system_prompt.empty() ? 0 : 1;
    const int64_t room = runner.max_seq_len() - std::min<int64_t>(config.max_new_tokens, 16);
    while (messages.size() > first_turn + 1) {
      auto ids = tokenizer.Encode(*prompt);
      if (!ids.ok() || static_cast<int64_t>(ids->size()) <= room) break;
      const size_t drop = messages.size() - first_turn >= 3 ? 2 : 1;
      messages.erase(messages.begin() + first_turn, messages.begin() + first_turn + drop);
      std::fprintf(stderr, "(forgot the oldest turn to fit the context)\n");
      prompt = tmpl->Render(messages, /*add_generation_prompt=*/true, bos, eos);
      if (!prompt.ok()) return Fail(program, "chat template: " + prompt.error());
    }
    std::string reply;
    auto ids = runner.Generate(*prompt, config, [&](const std::string& text) {
      reply += text;
      PrintText(text);
    }, stats);
    std::fputc('\n', stdout);
    if (!ids.ok()) return Fail(program, ids.error());
    std::fprintf(stderr, "%s\n", stats->Summary().c_str());
    messages.push_back({"assistant", reply});
  }
  return 0;
}

}  // namespace

int RunMain(int argc, char** argv, const std::string& program,
            const ModelLoader& load_model) {
  auto opts = ParseOptions(argc, argv);
  if (!opts.ok()) {
    if (opts.error() == "help") {
      std::fputs(Usage(program).c_str(), stdout);
      return 0;
    }
    std::fprintf(stderr, "%s: error: %s\n%s", program.c_str(),
                 opts.error().c_str(), Usage(program).c_str());
    return 2;
  }
  RunnerOptions& o = opts.value();
  for (std::string* p : {&o.model_path, &o.tokenizer_path, &o.stats_json, &o.ids_json}) {
    *p = UserPath(*p);
  }

  Stats stats;
  stats.model_load_start_ms = NowMs();
  auto model = load_model(o.model_path, static_cast<int>(o.num_threads));
  if (!model.ok()) return Fail(program, model.error());
  const ModelMetadata& md = (*model)->metadata();
  const std::string tok_path = FindTokenizer(o, md);
  if (tok_path.empty()) {
    return Fail(program, "no tokenizer beside " + o.model_path + "; pass one with -z");
  }
  auto tokenizer = tokenizers::LoadTokenizer(tok_path);
  if (!tokenizer.ok()) return Fail(program, tokenizer.error());
  stats.model_load_end_ms = NowMs();

  // The shared sampler: with the same seed, Python and both runners draw
  // the same tokens.
  tokenizers::SamplerConfig sampling;
  sampling.temperature = o.temperature;
  sampling.top_k = static_cast<int>(o.top_k);
  sampling.top_p = o.top_p;
  if (auto v = tokenizers::ValidateSamplerConfig(sampling); !v.ok()) {
    return Fail(program, v.error());
  }
  tokenizers::Sampler sampler(sampling, o.seed_set ? o.seed : std::random_device{}());
  std::string sample_error;
  TextLLMRunner runner(model->get(), tokenizer->get(),
                       [&](const float* logits, int64_t vocab,
                           const std::vector<int64_t>&) -> int64_t {
                         auto id = sampler.Sample(logits, static_cast<size_t>(vocab));
                         if (!id.ok()) {
                           sample_error = id.error();
                           return ArgMax(logits, vocab);
                         }
                         return *id;
                       });
  if (auto v = runner.Validate(); !v.ok()) return Fail(program, v.error());

  GenerationConfig config;
  config.max_new_tokens = o.max_new_tokens;
  for (int64_t i = 0; i < o.warmup; ++i) {
    Stats ignored;
    GenerationConfig short_run = config;
    short_run.max_new_tokens = 4;
    auto r = runner.Generate(o.prompt, short_run, [](const std::string&) {}, &ignored);
    if (!r.ok()) return Fail(program, r.error());
  }
  if (o.mode == "chat") {
    const int rc = Chat(program, o, **tokenizer, runner, config, &stats);
    if (rc == 0 && !sample_error.empty()) return Fail(program, "sampling failed: " + sample_error);
    if (rc == 0 && !o.stats_json.empty() && !WriteFile(o.stats_json, stats.ToJson())) {
      return Fail(program, "cannot write " + o.stats_json);
    }
    return rc;
  }
  auto ids = runner.Generate(o.prompt, config, PrintText, &stats);
  std::fputc('\n', stdout);
  if (!ids.ok()) return Fail(program, ids.error());
  if (!sample_error.empty()) return Fail(program, "sampling failed: " + sample_error);
  std::fprintf(stderr, "%s\n", stats.Summary().c_str());
  if (!o.stats_json.empty() && !WriteFile(o.stats_json, stats.ToJson())) {
    return Fail(program, "cannot write " + o.stats_json);
  }
  if (!o.ids_json.empty() &&
      !WriteFile(o.ids_json, "{\"generated\": " + IdsJson(*ids) + "}")) {
    return Fail(program, "cannot write " + o.ids_json);
  }
  return 0;
}

}  // namespace torchchat
