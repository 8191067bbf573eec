// Hugging Face chat templates (Jinja2) rendered in C++, so the runners can
// format a conversation the way transformers' apply_chat_template does
// without Python.
//
// The interpreter covers the Jinja2 subset that real chat templates use (see
// jinja/parser.h for the list). Matching jinja2 matters more than being
// small: the environment transformers builds is the reference, i.e. an
// ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True,
// the loopcontrols extension ({% break %}, {% continue %}), the
// {% generation %} tag, and the globals raise_exception, strftime_now,
// namespace and dict, plus a tojson filter that does not escape HTML.
//
// Nothing here throws or aborts on bad input: a template that does not parse,
// or that fails while rendering (raise_exception, an undefined value used as
// an object, a runaway loop or recursion), gives an error Result.
#ifndef RUNNER_COMMON_CHAT_TEMPLATE_H_
#define RUNNER_COMMON_CHAT_TEMPLATE_H_

#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "tokenizers/result.h"

namespace torchchat {

struct ChatMessage {
  std::string role;
  std::string content;
  // Image parts before the text: the template then sees content as a list,
  // [{"type": "image"}, ..., {"type": "text", "text": content}], as
  // torchchat's Python chat and the OpenAI API give it, and writes each
  // image's marker where the model's template places it.
  int64_t images = 0;
};

struct ChatTemplateOptions {
  // transformers' settings; plain jinja2 defaults to false for both.
  bool trim_blocks = true;
  bool lstrip_blocks = true;
  // What strftime_now() formats: 0 means the current local time, as
  // transformers' datetime.now(); tests pin it.
  std::time_t now = 0;
  // Bounds on a render, so that a hostile template ends with an error
  // instead of hanging or exhausting memory.
  int64_t max_steps = 10'000'000;       // statements and loop iterations
  int64_t max_output_bytes = 64 << 20;  // also bounds any one string
  int max_call_depth = 100;             // nested macro calls
};

class ChatTemplate {
 public:
  // Errors name the line and column: "line 3, column 7: ...".
  static tokenizers::Result<ChatTemplate> Parse(const std::string& source,
                                                const ChatTemplateOptions& options = {});

  // The template sees messages (a list of {role, content}; content is a
  // list of parts for a message with images),
  // add_generation_prompt, bos_token, eos_token, and tools = documents = none
  // as transformers passes them. A raise_exception("...") in the template
  // gives an error whose message is exactly its argument.
  tokenizers::Result<std::string> Render(const std::vector<ChatMessage>& messages,
                                         bool add_generation_prompt, const std::string& bos_token,
                                         const std::string& eos_token) const;

  // The same with any variables a template may read (messages with
  // tool_calls, tools, documents, or template kwargs such as date_string),
  // given as a JSON object; numbers without a fraction are ints, as in
  // Python. tools and documents default to none. As transformers does, a
  // message's reasoning (reasoning_content, thinking or reasoning) is also
  // readable under both `thinking` and `reasoning_content`.
  tokenizers::Result<std::string> RenderJson(const std::string& variables_json,
                                             bool add_generation_prompt,
                                             const std::string& bos_token,
                                             const std::string& eos_token) const;

  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();

  struct Impl;

 private:
  explicit ChatTemplate(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace torchchat

#endif  // RUNNER_COMMON_CHAT_TEMPLATE_H_
