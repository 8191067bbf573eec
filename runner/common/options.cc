#include "runner/common/options.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace torchchat {
namespace {

using tokenizers::MakeError;
using tokenizers::Result;

bool ParseInt(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseFloat(const std::string& s, float* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const float v = std::strtof(s.c_str(), &end);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

std::string Usage(const std::string& program) {
  return "usage: " + program +
         " MODEL [-i PROMPT] [-n MAX_NEW_TOKENS] [-t TEMPERATURE] [-p TOP_P]\n"
         "       [-k TOP_K] [--min-p P] [--repetition-penalty R] [-s SEED]\n"
         "       [-z TOKENIZER] [-m generate|chat] [-y SYSTEM_PROMPT]\n"
         "       [--num-threads N] [--warmup N] [--stats-json FILE]"
         " [--ids-json FILE]\n"
         "       [--image FILE.ppm]... (a program with a vision encoder;\n"
         "        in chat, with the first turn; /image FILE.ppm for the next)\n";
}

Result<RunnerOptions> ParseOptions(int argc, char** argv) {
  RunnerOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.empty() || arg[0] != '-') {
      if (!o.model_path.empty()) {
        return MakeError("unexpected argument '" + arg + "' (the model is " + o.model_path + ")");
      }
      o.model_path = arg;
      continue;
    }
    if (arg == "-h" || arg == "--help") return MakeError("help");
    if (i + 1 >= argc) return MakeError("flag " + arg + " needs a value");
    const std::string v = argv[++i];
    auto bad = [&](const char* what) {
      return MakeError("flag " + arg + ": '" + v + "' is not " + what);
    };
    if (arg == "-i" || arg == "--prompt") {
      o.prompt = v;
    } else if (arg == "-z" || arg == "--tokenizer") {
      o.tokenizer_path = v;
    } else if (arg == "-m" || arg == "--mode") {
      if (v != "generate" && v != "chat") return bad("generate or chat");
      o.mode = v;
    } else if (arg == "-y" || arg == "--system-prompt") {
      o.system_prompt = v;
    } else if (arg == "-t" || arg == "--temperature") {
      if (!ParseFloat(v, &o.temperature)) return bad("a number");
    } else if (arg == "-p" || arg == "--top-p") {
      if (!ParseFloat(v, &o.top_p)) return bad("a number");
    } else if (arg == "-k" || arg == "--top-k") {
      if (!ParseInt(v, &o.top_k) || o.top_k < 0 || o.top_k > INT32_MAX) {
        return bad("a count >= 0");
      }
    } else if (arg == "--min-p") {
      if (!ParseFloat(v, &o.min_p)) return bad("a number");
    } else if (arg == "--repetition-penalty") {
      if (!ParseFloat(v, &o.repetition_penalty)) return bad("a number");
    } else if (arg == "-s" || arg == "--seed") {
      int64_t seed = 0;
      if (!ParseInt(v, &seed) || seed < 0) return bad("a seed >= 0");
      o.seed = static_cast<uint64_t>(seed);
      o.seed_set = true;
    } else if (arg == "-n" || arg == "--max-new-tokens") {
      if (!ParseInt(v, &o.max_new_tokens) || o.max_new_tokens <= 0) {
        return bad("a count > 0");
      }
    } else if (arg == "--num-threads") {
      if (!ParseInt(v, &o.num_threads) || o.num_threads < 0) return bad("a count >= 0");
    } else if (arg == "--warmup") {
      if (!ParseInt(v, &o.warmup) || o.warmup < 0) return bad("a count >= 0");
    } else if (arg == "--stats-json") {
      o.stats_json = v;
    } else if (arg == "--ids-json") {
      o.ids_json = v;
    } else if (arg == "--image") {
      o.images.push_back(v);
    } else {
      return MakeError("unknown flag " + arg);
    }
  }
  if (o.model_path.empty()) return MakeError("no model given");
  if (o.mode == "generate" && o.prompt.empty()) {
    return MakeError("generate mode needs a prompt (-i)");
  }
  return o;
}

}  // namespace torchchat
