// Builds the syntax tree of a template, with jinja2's grammar and operator
// precedence, and rejects what jinja2 would reject when it compiles the
// template (unknown statements, unknown filter or test names outside an
// `if`, break outside a loop), so that a template which jinja2 refuses
// never starts rendering here.
//
// Supported statements: if/elif/else, for (tuple targets, `if` filter, else,
// loop.*), set (incl. tuple targets, ns.attr and block set), macro, break,
// continue, with, filter blocks, raw, generation. Not supported (parse
// error): include, import, extends, block, call blocks, recursive loops.
// Filters and tests are listed in filters.cc, str/dict/list methods in
// methods.cc, globals in globals.cc.
#ifndef RUNNER_COMMON_JINJA_PARSER_H_
#define RUNNER_COMMON_JINJA_PARSER_H_

#include <string>

#include "runner/common/jinja/ast.h"
#include "runner/common/jinja/lexer.h"

namespace torchchat::jinja {

// The filters and tests an environment has. The parser needs them because
// jinja2 checks names at compile time; they are passed in rather than linked
// in so that the lists stay next to the implementations (interpreter.h).
struct KnownNames {
  bool (*filter)(const std::string& name);        // implemented here
  bool (*jinja_filter)(const std::string& name);  // in jinja2 3.1
  bool (*test)(const std::string& name);
  bool (*jinja_test)(const std::string& name);
};

// Lexes and parses `source`; errors name the line and column.
Body ParseTemplate(const std::string& source, const LexerOptions& options, const KnownNames& names);

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_PARSER_H_
