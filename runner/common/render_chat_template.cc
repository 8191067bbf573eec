// Renders a chat template over a conversation: the C++ side of the parity
// test against Python's jinja2, and a way to check a model's template by hand.
//
//   render_chat_template --template T.jinja --messages M.json
//       [--add-generation-prompt] [--bos S] [--eos S] [--now EPOCH]
//       [--no-trim-blocks] [--no-lstrip-blocks]
//
// M.json is a list of {"role": ..., "content": ...}, or an object of template
// variables (messages, tools, ...) as ChatTemplate::RenderJson takes. The
// rendering goes to
// stdout byte for byte; an error is one line on stderr and exit status 1.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "runner/common/chat_template.h"
#include "tokenizers/json.h"

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return static_cast<bool>(f) || f.eof();
}

// One line on stderr: a raise_exception() message may hold newlines.
int Die(const std::string& msg) {
  std::string line;
  for (char c : msg) {
    if (c == '\n')
      line += "\\n";
    else if (c == '\r')
      line += "\\r";
    else
      line.push_back(c);
  }
  std::fprintf(stderr, "render_chat_template: %s\n", line.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string template_path, messages_path, bos, eos;
  bool add_generation_prompt = false;
  torchchat::ChatTemplateOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string now;
    if (a == "--template") {
      if (!value(&template_path)) return Die("--template needs a file");
    } else if (a == "--messages") {
      if (!value(&messages_path)) return Die("--messages needs a file");
    } else if (a == "--bos") {
      if (!value(&bos)) return Die("--bos needs a value");
    } else if (a == "--eos") {
      if (!value(&eos)) return Die("--eos needs a value");
    } else if (a == "--now") {
      if (!value(&now)) return Die("--now needs seconds since the epoch");
      char* end = nullptr;
      long long t = std::strtoll(now.c_str(), &end, 10);
      if (now.empty() || *end || t <= 0) return Die("bad --now: " + now);
      options.now = static_cast<std::time_t>(t);
    } else if (a == "--add-generation-prompt") {
      add_generation_prompt = true;
    } else if (a == "--no-trim-blocks") {
      options.trim_blocks = false;
    } else if (a == "--no-lstrip-blocks") {
      options.lstrip_blocks = false;
    } else {
      return Die("unknown argument " + a);
    }
  }
  if (template_path.empty() || messages_path.empty()) {
    return Die(
        "usage: --template FILE --messages FILE [--add-generation-prompt]"
        " [--bos S] [--eos S] [--now EPOCH] [--no-trim-blocks]"
        " [--no-lstrip-blocks]");
  }
  std::string source, json_text;
  if (!ReadFile(template_path, &source)) return Die("cannot read " + template_path);
  if (!ReadFile(messages_path, &json_text)) return Die("cannot read " + messages_path);
  auto tmpl = torchchat::ChatTemplate::Parse(source, options);
  if (!tmpl.ok()) return Die(tmpl.error());
  auto json = tokenizers::ParseJson(json_text);
  if (!json.ok()) return Die(messages_path + ": " + json.error());
  if (json->is_object()) {
    auto out = tmpl->RenderJson(json_text, add_generation_prompt, bos, eos);
    if (!out.ok()) return Die(out.error());
    std::fwrite(out->data(), 1, out->size(), stdout);
    return std::fflush(stdout) == 0 ? 0 : Die("cannot write the output");
  }
  if (!json->is_array()) {
    return Die(messages_path + ": expected a list of messages or an object");
  }
  std::vector<torchchat::ChatMessage> messages;
  for (const auto& m : json->items()) {
    const tokenizers::Json* role = m.Find("role");
    const tokenizers::Json* content = m.Find("content");
    if (!role || !role->is_string() || !content || !content->is_string()) {
      return Die(messages_path + ": each message needs string 'role' and 'content'");
    }
    messages.push_back({role->str(), content->str()});
  }
  auto out = tmpl->Render(messages, add_generation_prompt, bos, eos);
  if (!out.ok()) return Die(out.error());
  std::fwrite(out->data(), 1, out->size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : Die("cannot write the output");
}
