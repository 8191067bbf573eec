// JSON in and out of template values: RenderJson's variables, and the
// tojson filter. tokenizers' JSON reader does not fit the input side: it
// keeps every number as a double, so 1 and 1.0 (an int and a float to
// Python's json module, printed differently by a template) would be the
// same, and integers past 2^53 would lose digits.
#ifndef RUNNER_COMMON_JINJA_JSON_H_
#define RUNNER_COMMON_JINJA_JSON_H_

#include <string>
#include <string_view>

#include "runner/common/jinja/value.h"

namespace torchchat::jinja {

// A whole JSON document. Numbers without a fraction or exponent become ints,
// as in Python's json module; a repeated key keeps its first position and
// its last value, as a Python dict would.
Value ReadJson(std::string_view text);

// json.dumps(x, ensure_ascii=..., indent=..., separators=..., sort_keys=...)
// as transformers' tojson filter calls it.
struct JsonStyle {
  bool indent_set = false;
  std::string indent;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

void WriteJson(const Value& v, const JsonStyle& style, std::string* out);

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_JSON_H_
