// ChatTemplate on top of the Jinja engine in runner/common/jinja/: lexer and
// parser (lexer.h, parser.h) build a tree once per template, and each render
// runs a fresh interpreter (interpreter.h) over it with transformers'
// variables and globals. Inside the engine errors are C++ exceptions
// (jinja::TemplateError); this file is the only place that catches them,
// so none leaves Parse or Render.
#include "runner/common/chat_template.h"

#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <utility>

#include "runner/common/jinja/ast.h"
#include "runner/common/jinja/error.h"
#include "runner/common/jinja/interpreter.h"
#include "runner/common/jinja/json.h"
#include "runner/common/jinja/lexer.h"
#include "runner/common/jinja/parser.h"
#include "runner/common/jinja/value.h"

namespace torchchat {

struct ChatTemplate::Impl {
  ChatTemplateOptions options;
  jinja::Body body;
};

namespace {

using jinja::DictSet;
using jinja::Fail;
using jinja::Scope;
using jinja::ScopePtr;
using jinja::TemplateError;
using jinja::Value;

constexpr jinja::KnownNames kNames = {jinja::IsFilter, jinja::IsJinjaFilter, jinja::IsTest,
                                      jinja::IsJinjaTest};

// One line, even when the message quotes a string from the template.
std::string OneLine(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else
      out.push_back(c);
  }
  return out;
}

std::string FormatError(const TemplateError& e) {
  if (e.line > 0) return "line " + std::to_string(e.line) + ": " + OneLine(e.message);
  return OneLine(e.message);
}

// transformers (_alias_reasoning_fields) copies a message's reasoning, found
// under reasoning_content, thinking or reasoning, to both `thinking` (first
// key) and `reasoning_content`, so templates may read either.
Value AliasReasoning(const Value& messages) {
  std::vector<Value> out;
  for (const Value& m : messages.list->items) {
    const Value* reasoning = nullptr;
    if (m.is_dict()) {
      for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
        const Value* v = jinja::DictFind(*m.dict, Value::Str(key));
        if (v && !v->none()) {
          reasoning = v;
          break;
        }
      }
    }
    if (!reasoning) {
      out.push_back(m);
      continue;
    }
    Value d = Value::Dict();
    d.dict->items.emplace_back(Value::Str("thinking"), *reasoning);
    for (const auto& [k, v] : m.dict->items) DictSet(d.dict.get(), k, v);
    DictSet(d.dict.get(), Value::Str("reasoning_content"), *reasoning);
    out.push_back(std::move(d));
  }
  return Value::List(std::move(out));
}

// Runs the template with transformers' standard variables, which `fill`
// sets or overrides; errors become Results here and only here.
tokenizers::Result<std::string> RenderWith(const ChatTemplate::Impl& impl,
                                           const std::function<void(Scope*)>& fill) {
  try {
    const ChatTemplateOptions& opt = impl.options;
    jinja::Interp interp({opt.max_steps, opt.max_output_bytes, opt.max_call_depth});
    auto globals = std::make_shared<Scope>();
    jinja::AddGlobals(globals.get(), opt.now);
    ScopePtr ctx = jinja::Child(globals);
    ctx->vars["tools"] = Value::None();
    ctx->vars["documents"] = Value::None();
    fill(ctx.get());
    std::string out;
    interp.Exec(impl.body, ctx, &out);
    return out;
  } catch (const TemplateError& e) {
    if (e.line < 0) return tokenizers::MakeError(e.message);
    return tokenizers::MakeError("chat template: " + FormatError(e));
  } catch (const std::bad_alloc&) {
    return tokenizers::MakeError("chat template: out of memory while rendering");
  } catch (const std::exception& e) {
    return tokenizers::MakeError(std::string("chat template: ") + e.what());
  }
}

}  // namespace

ChatTemplate::ChatTemplate(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

tokenizers::Result<ChatTemplate> ChatTemplate::Parse(const std::string& source,
                                                     const ChatTemplateOptions& options) {
  try {
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    impl->body = jinja::ParseTemplate(source, {options.trim_blocks, options.lstrip_blocks}, kNames);
    return ChatTemplate(std::move(impl));
  } catch (const TemplateError& e) {
    return tokenizers::MakeError("chat template: " + OneLine(e.message));
  } catch (const std::exception& e) {
    return tokenizers::MakeError(std::string("chat template: ") + e.what());
  }
}

tokenizers::Result<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                     bool add_generation_prompt,
                                                     const std::string& bos_token,
                                                     const std::string& eos_token) const {
  return RenderWith(*impl_, [&](Scope* ctx) {
    std::vector<Value> msgs;
    for (const auto& m : messages) {
      Value d = Value::Dict();
      d.dict->items.emplace_back(Value::Str("role"), Value::Str(m.role));
      Value content = Value::Str(m.content);
      if (m.images > 0) {
        std::vector<Value> parts;
        for (int64_t i = 0; i < m.images; ++i) {
          Value part = Value::Dict();
          part.dict->items.emplace_back(Value::Str("type"), Value::Str("image"));
          parts.push_back(std::move(part));
        }
        Value text = Value::Dict();
        text.dict->items.emplace_back(Value::Str("type"), Value::Str("text"));
        text.dict->items.emplace_back(Value::Str("text"), Value::Str(m.content));
        parts.push_back(std::move(text));
        content = Value::List(std::move(parts));
      }
      d.dict->items.emplace_back(Value::Str("content"), std::move(content));
      msgs.push_back(std::move(d));
    }
    ctx->vars["messages"] = Value::List(std::move(msgs));
    ctx->vars["add_generation_prompt"] = Value::Bool(add_generation_prompt);
    ctx->vars["bos_token"] = Value::Str(bos_token);
    ctx->vars["eos_token"] = Value::Str(eos_token);
  });
}

tokenizers::Result<std::string> ChatTemplate::RenderJson(const std::string& variables_json,
                                                         bool add_generation_prompt,
                                                         const std::string& bos_token,
                                                         const std::string& eos_token) const {
  return RenderWith(*impl_, [&](Scope* ctx) {
    Value vars = jinja::ReadJson(variables_json);
    if (!vars.is_dict()) Fail("variables JSON: expected an object");
    ctx->vars["bos_token"] = Value::Str(bos_token);
    ctx->vars["eos_token"] = Value::Str(eos_token);
    for (const auto& [k, v] : vars.dict->items) ctx->vars[k.s] = v;
    ctx->vars["add_generation_prompt"] = Value::Bool(add_generation_prompt);
    auto it = ctx->vars.find("messages");
    if (it != ctx->vars.end() && it->second.is_list()) {
      it->second = AliasReasoning(it->second);
    }
  });
}

}  // namespace torchchat
