// Expression language, statements and error handling of the chat-template
// engine. Expected strings are what Python's jinja2 3.1 prints for the same
// template (checked by hand; chat_template_parity_test checks whole real
// templates against jinja2 itself).
#include "runner/common/chat_template.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace torchchat {
namespace {

const std::vector<ChatMessage> kChat = {
    {"system", "Be nice."},
    {"user", "Hi"},
    {"assistant", "Hello!"},
    {"user", "Bye"},
};

// Renders with transformers' settings (trim_blocks and lstrip_blocks on).
std::string R(const std::string& src, const std::vector<ChatMessage>& msgs = kChat,
              ChatTemplateOptions opt = {}) {
  auto t = ChatTemplate::Parse(src, opt);
  if (!t.ok()) return "PARSE ERROR: " + t.error();
  auto out = t->Render(msgs, /*add_generation_prompt=*/true, "<s>", "</s>");
  if (!out.ok()) return "ERROR: " + out.error();
  return *out;
}

std::string Plain(const std::string& src) {
  ChatTemplateOptions opt;
  opt.trim_blocks = false;
  opt.lstrip_blocks = false;
  return R(src, kChat, opt);
}

bool StartsWith(const std::string& s, const std::string& p) {
  return s.compare(0, p.size(), p) == 0;
}

TEST(ChatTemplateTest, Literals) {
  EXPECT_EQ(R("{{ 'a\\tb\\u00e9\\x41' }}|{{ \"it's\" }}|{{ 'a' 'b' }}"), "a\tbéA|it's|ab");
  EXPECT_EQ(R("{{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} "
              "{{ 1.5e-5 }} {{ 0.0001 }} {{ 1_000 }} {{ 0x1f }}"),
            "1.0 1e+20 0.30000000000000004 1e+16 1000000000000000.0 1.5e-05 "
            "0.0001 1000 31");
  EXPECT_EQ(R("{{ none }} {{ None }} {{ true }} {{ False }} {{ [1, 'a', none, "
              "true, 1.5, {'k': [2]}] }} {{ ('a',) }} {{ (1, 2) }}"),
            "None None True False [1, 'a', None, True, 1.5, {'k': [2]}] ('a',) "
            "(1, 2)");
  EXPECT_EQ(R("{{ [\"it's\", 'a\"b', 'x\\ny', 'é'] }}"), "[\"it's\", 'a\"b', 'x\\ny', 'é']");
}

TEST(ChatTemplateTest, Arithmetic) {
  EXPECT_EQ(R("{{ 3/2 }} {{ 7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ -3 // 2 }} "
              "{{ 7.5 % 2 }} {{ 4 / 2 }} {{ true + 1 }}"),
            "1.5 3 2 1024 -2 1.5 2.0 2");
  EXPECT_EQ(R("{{ 3 ~ none ~ true }} {{ 'a' * 3 }} {{ [1] + [2] }} "
              "{{ 'x' + 'y' }}"),
            "3NoneTrue aaa [1, 2] xy");
  EXPECT_TRUE(StartsWith(R("{{ 1 / 0 }}"), "ERROR: chat template: line 1"));
  EXPECT_TRUE(StartsWith(R("{{ 'a' + 1 }}"), "ERROR:"));
  EXPECT_TRUE(StartsWith(R("{{ 9223372036854775807 + 1 }}"), "ERROR:"));
}

TEST(ChatTemplateTest, LogicAndComparison) {
  EXPECT_EQ(R("{{ 1 if 0 else 2 }} {{ not 1 }} {{ 1 and 'x' }} {{ 0 or [] }}"), "2 False x []");
  EXPECT_EQ(R("{{ 'a' < 'b' }} {{ [1,2] < [1,3] }} {{ 1 < 2 < 3 }} "
              "{{ 3 > 2 > 2 }} {{ 'x' in 'xyz' }} {{ 2 not in [1] }} "
              "{{ 'a' in {'a':1} }} {{ true == 1 }} {{ 1 == 1.0 }}"),
            "True True True False True True True True True");
  EXPECT_EQ(R("{{ x if false }}|"), "|");
  EXPECT_TRUE(StartsWith(R("{{ 1 < 'a' }}"), "ERROR:"));
}

TEST(ChatTemplateTest, AccessAndSlicing) {
  EXPECT_EQ(R("{{ messages[0]['role'] }} {{ messages[1].content }} "
              "{{ messages[-1].role }} {{ messages | length }}"),
            "system Hi user 4");
  EXPECT_EQ(R("{{ 'abc'[::-1] }} {{ 'héllo'[1:3] }} {{ 'héllo' | length }} "
              "{{ [1,2,3][1:] }} {{ [1,2,3][:-1] }} {{ [1,2,3,4][::2] }} "
              "{{ 'héllo'[1] }}"),
            "cba él 5 [2, 3] [1, 2] [1, 3] é");
  // Missing keys and indices are undefined (empty), not errors...
  EXPECT_EQ(R("{{ [1,2][5] }}|{{ {'a':1}.b }}|{{ none.a }}|{{ messages[0].x }}|"), "||||");
  // ...but an attribute of an undefined value is an error, as in jinja2.
  EXPECT_EQ(R("{{ {'a':1}.b.c }}"),
            "ERROR: chat template: line 1: 'dict object' has no attribute 'b'");
  EXPECT_EQ(R("\n\n{{ nope.x }}"), "ERROR: chat template: line 3: 'nope' is undefined");
  EXPECT_EQ(R("{{ {}['a\\nb'].c }}"),
            "ERROR: chat template: line 1: 'dict object' has no attribute 'a\\nb'");
}

TEST(ChatTemplateTest, Undefined) {
  EXPECT_EQ(R("[{{ u }}] {{ u ~ 'x' }} {{ u | length }} {{ u is iterable }} "
              "{{ 'a' in u }} {{ u is defined }} {{ u is undefined }} "
              "{{ u | default('d') }} {{ '' | default('d', true) }}"),
            "[] x 0 True False False True d d");
  EXPECT_TRUE(StartsWith(R("{{ u + 'x' }}"), "ERROR:"));
  EXPECT_TRUE(StartsWith(R("{{ u[0] }}"), "ERROR:"));
  EXPECT_EQ(R("{% for x in u %}x{% else %}empty{% endfor %}"), "empty");
}

TEST(ChatTemplateTest, Filters) {
  EXPECT_EQ(R("{{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'Hi' | upper }}"
              "|{{ 'Hi' | lower }}|{{ 'hELLO wORLD' | capitalize }}"
              "|{{ 'hello-world foo' | title }}"),
            "x|a|HI|hi|Hello world|Hello-World Foo");
  EXPECT_EQ(R("{{ [3,1] | first }} {{ 'abc' | last }} {{ [1,2] | join(', ') }} "
              "{{ 'a-b-a' | replace('a', 'x') }} {{ 'ab' | list }} "
              "{{ 42 | string }} {{ '42' | int + 1 }} {{ '3.7' | int }} "
              "{{ 'x' | int }} {{ 3.7 | int }} {{ '2.5' | float }}"),
            "3 c 1, 2 x-b-x ['a', 'b'] 42 43 3 0 3 2.5");
  EXPECT_EQ(R("{{ {'b': 1, 'a': [1, 2]} | tojson }} {{ 'é<\"\\n' | tojson }} "
              "{{ 1.0 | tojson }} {{ none | tojson }} {{ [] | tojson(indent=2) }}"),
            "{\"b\": 1, \"a\": [1, 2]} \"é<\\\"\\n\" 1.0 null []");
  EXPECT_EQ(R("{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2) }}"),
            "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2\n  ]\n}");
  EXPECT_EQ(R("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true, separators=[',', ':']) }}"),
            "{\"a\":2,\"b\":1}");
  EXPECT_EQ(R("{{ {'a': 1} | items | list }} {{ {'b': 1, 'a': 2} | dictsort }}"),
            "[('a', 1)] [('a', 2), ('b', 1)]");
  EXPECT_EQ(R("{{ messages | map(attribute='role') | join(',') }} "
              "{{ messages | selectattr('role', 'equalto', 'user') | list | length }} "
              "{{ messages | rejectattr('role', 'in', ['user', 'system']) | "
              "map(attribute='content') | first }} "
              "{{ [1, 2, 3, 4] | select('odd') | list }} "
              "{{ ['a', 'b'] | map('upper') | list }}"),
            "system,user,assistant,user 2 Hello! [1, 3] ['A', 'B']");
  EXPECT_EQ(R("{{ [3, 1, 2] | sort }} {{ [1, 2, 1] | unique | list }} "
              "{{ [1, 2] | reverse | list }} {{ [1, 2] | sum }} {{ [1, 5, 2] | max }} "
              "{{ -1 | abs }} {{ 'a<b' | e }} {{ '%s=%d' | format('x', 3) }}"),
            "[1, 2, 3] [1, 2] [2, 1] 3 5 1 a&lt;b x=3");
  EXPECT_EQ(R("{{ '  x\\n  y' | indent(2) }}|{{ 'x\\ny' | indent(2, true) }}"),
            "  x\n    y|  x\n  y");
}

TEST(ChatTemplateTest, Tests) {
  EXPECT_EQ(R("{{ 5 is number }} {{ true is number }} {{ true is integer }} "
              "{{ 'a' is string }} {{ {} is mapping }} {{ [] is sequence }} "
              "{{ none is none }} {{ true is boolean }} {{ 1 is boolean }} "
              "{{ false is false }} {{ 3 is odd }} {{ 6 is divisibleby 3 }} "
              "{{ 'x' is not equalto 'y' }} {{ 'a' is in 'abc' }} {{ 1 is ge(1) }}"),
            "True True False True True True True True False True True True True "
            "True True");
}

TEST(ChatTemplateTest, Methods) {
  EXPECT_EQ(R("{{ ' x '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'a b  c'.split() }}"
              "|{{ 'a,b'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}"
              "|{{ 'abc'.startswith(('x', 'a')) }}|{{ 'abc'.endswith('bc') }}"
              "|{{ 'hello world'.title() }}|{{ 'ab'.upper() }}|{{ 'a-a'.replace('a', 'b', 1) }}"
              "|{{ 'abc'.find('c') }}|{{ '12'.isdigit() }}"),
            "x|axx|['a', 'b', 'c']|['a', 'b']|['a', 'b,c']|True|True|Hello World"
            "|AB|b-a|2|True");
  EXPECT_EQ(R("{{ {'a': 1}.get('b', 2) }} {{ {'a': 1}.get('b') }} "
              "{{ {'a': 1}.items() | list }} {{ {'a': 1}.keys() | list }} "
              "{{ {'a': 1}.values() | list }} {{ [1, 2].index(2) }}"),
            "2 None [('a', 1)] ['a'] [1] 1");
}

TEST(ChatTemplateTest, Loops) {
  EXPECT_EQ(R("{% for a, b in [[1,2],[3,4]] %}{{ a }}{{ b }}{{ loop.index }}"
              "{{ loop.revindex }}{{ loop.last }}{% endfor %}"),
            "1212False3421True");
  EXPECT_EQ(R("{% for i in [1,2,3] if i > 1 %}{{ loop.length }}{{ i }}"
              "{{ loop.first }}{% else %}none{% endfor %}"),
            "22True23False");
  EXPECT_EQ(R("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}"
              "{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "02");
  EXPECT_EQ(R("{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}"
              "{% for c in 'hé' %}[{{ c }}]{% endfor %}"
              "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}"),
            "ab[h][é]a=1");
  EXPECT_EQ(R("{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}"), "aba");
}

TEST(ChatTemplateTest, Scoping) {
  // A set inside a loop body lasts for one iteration; namespaces carry out.
  EXPECT_EQ(R("{% set x = 0 %}{% for i in range(3) %}{{ x }}{% set x = x + 1 %}"
              "{{ x }}{% endfor %}{{ x }}"),
            "0101010");
  EXPECT_EQ(R("{% set ns = namespace(a=1, found=false) %}{% for i in range(3) %}"
              "{% set ns.a = ns.a + i %}{% if i == 2 %}{% set ns.found = true %}"
              "{% endif %}{% endfor %}{{ ns.a }} {{ ns.found }} {{ ns }}"),
            "4 True <Namespace {'a': 4, 'found': True}>");
  EXPECT_EQ(R("{% if true %}{% set y = 5 %}{% endif %}{{ y }}"), "5");
  EXPECT_EQ(R("{% set a, b = 1, 2 %}{{ a }}{{ b }}"), "12");
  EXPECT_EQ(R("{% set x %}in {{ 1 + 1 }}{% endset %}[{{ x }}]"), "[in 2]");
  EXPECT_EQ(R("{% with a = 3 %}{{ a }}{% endwith %}[{{ a }}]"), "3[]");
  EXPECT_EQ(R("{% filter upper %}abc{% endfilter %}"), "ABC");
  EXPECT_TRUE(StartsWith(R("{% set x = 1 %}{% set x.a = 2 %}"), "ERROR:"));
}

TEST(ChatTemplateTest, Macros) {
  EXPECT_EQ(R("{% macro f(a, b='x') %}[{{ a }}{{ b }}]{% endmacro %}"
              "{{ f(1) }}{{ f(1, b=2) }}{{ f(b=3, a=4) }}"),
            "[1x][12][43]");
  EXPECT_EQ(R("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}"
              "{% endif %}{% endmacro %}{{ fact(5) }}"),
            "120");
  EXPECT_TRUE(StartsWith(R("{% macro f(a) %}{% endmacro %}{{ f(1, 2) }}"), "ERROR:"));
}

TEST(ChatTemplateTest, Whitespace) {
  const std::string src =
      "a\n  {% if true %}\n  b\n  {% endif %}\n{# c #}\nd  {%+ if 1 %}e{% endif +%}\nf";
  EXPECT_EQ(R(src), "a\n  b\nd  e\nf");
  EXPECT_EQ(Plain(src), "a\n  \n  b\n  \n\nd  e\nf");
  EXPECT_EQ(R("{%- for x in [1] %}\n  {{ x }}\n{% endfor %}\n"), "  1\n");
  EXPECT_EQ(R("x  {{- ' y ' -}}  \n z"), "x y z");
  EXPECT_EQ(R("a {%- if true -%} b {%- endif -%} c"), "abc");
  EXPECT_EQ(R("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
  EXPECT_EQ(R("line\r\nnext\r\n"), "line\nnext");  // jinja2 drops one final newline
}

TEST(ChatTemplateTest, Context) {
  auto t = ChatTemplate::Parse(
      "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
      "{% if add_generation_prompt %}go{% endif %}{{ eos_token }}{{ tools }}");
  ASSERT_TRUE(t.ok()) << t.error();
  auto a = t->Render({{"user", "hi"}}, true, "<s>", "</s>");
  ASSERT_TRUE(a.ok()) << a.error();
  EXPECT_EQ(*a, "<s>user:hi;go</s>None");
  auto b = t->Render({}, false, "", "");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "None");
}

TEST(ChatTemplateTest, RenderJsonVariables) {
  auto t = ChatTemplate::Parse(
      "{% for m in messages %}{{ m.role }}{% if m.tool_calls %}"
      "{{ m.tool_calls[0].function.arguments | tojson }}{% endif %};{% endfor %}"
      "{{ tools | length }} {{ date_string }} {{ n + 1 }} {{ x }} {{ documents }}");
  ASSERT_TRUE(t.ok()) << t.error();
  auto out = t->RenderJson(
      R"({"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "tool_calls": [{"function":
                        {"name": "f", "arguments": {"a": 1, "b": [true, null, 2.5]}}}]}],
          "tools": [{}, {}], "date_string": "01 Jan 2025", "n": 41,
          "x": "\u00e9\ud83c\udf89"})",
      false, "", "");
  ASSERT_TRUE(out.ok()) << out.error();
  EXPECT_EQ(*out, "user;assistant{\"a\": 1, \"b\": [true, null, 2.5]};2 01 Jan 2025 42 é🎉 None");
  for (const char* bad : {"[1]", "{\"a\": }", "{\"a\": 1} x", "{\"a\": \"\\q\"}", ""}) {
    auto r = t->RenderJson(bad, false, "", "");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().find("variables JSON"), std::string::npos) << r.error();
  }
}

TEST(ChatTemplateTest, CaseMapping) {
  EXPECT_EQ(R("{{ 'àéîõü ÿ ß' | upper }} {{ 'ĀāĞğ' | lower }} {{ 'Σίσυφος' | upper }} "
              "{{ 'ПРИВЕТ Ёж' | lower }} {{ 'élan vital' | title }} {{ 'émile' | capitalize }}"),
            "ÀÉÎÕÜ Ÿ SS āāğğ ΣΊΣΥΦΟΣ привет ёж Élan Vital Émile");
}

TEST(ChatTemplateTest, StrftimeNow) {
  ChatTemplateOptions opt;
  opt.now = 1721995200;  // 26 Jul 2024, midday UTC: the same date in any zone
  EXPECT_EQ(R("{{ strftime_now('%d %b %Y') }} {{ strftime_now is defined }}", kChat, opt),
            "26 Jul 2024 True");
}

TEST(ChatTemplateTest, RaiseException) {
  auto t = ChatTemplate::Parse(
      "{% if messages[0].role == 'system' %}"
      "{{ raise_exception('System role not supported') }}{% endif %}ok");
  ASSERT_TRUE(t.ok());
  auto out = t->Render(kChat, false, "", "");
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.error(), "System role not supported");
  auto fine = t->Render({{"user", "x"}}, false, "", "");
  ASSERT_TRUE(fine.ok());
  EXPECT_EQ(*fine, "ok");
}

TEST(ChatTemplateTest, ParseErrors) {
  struct Case {
    const char* src;
    const char* error;
  };
  const Case cases[] = {
      {"{% if x %}no end", "unexpected end of template, expected 'elif' or 'else' or 'endif'"},
      {"ab\n  {{ x ", "line 2, column 5: unexpected end of template, expected '}}'"},
      {"{{ x | nosuchfilter }}", "no filter named 'nosuchfilter'"},
      {"{{ x is nosuchtest }}", "no test named 'nosuchtest'"},
      {"{% include 'x' %}", "unknown or unsupported statement 'include'"},
      {"{# open comment", "missing end of comment tag"},
      {"{% raw %} open", "missing end of raw directive"},
      {"{{ 'open }}", "unterminated string literal"},
      {"{{ (1 }}", "unexpected '}', expected ')'"},
      {"{% endfor %}", "unknown or unsupported statement 'endfor'"},
      {"{% break %}", "'break' outside of a loop"},
      {"{{ a b }}", "expected end of print statement, got 'b'"},
      {"{{ $ }}", "unexpected char '$'"},
      {"{{ \x01 }}", "unexpected char 0x01"},
  };
  for (const auto& c : cases) {
    auto t = ChatTemplate::Parse(c.src);
    ASSERT_FALSE(t.ok()) << c.src;
    EXPECT_NE(t.error().find(c.error), std::string::npos) << c.src << " gave: " << t.error();
    EXPECT_EQ(t.error().find('\n'), std::string::npos) << t.error();
    EXPECT_TRUE(StartsWith(t.error(), "chat template: line ")) << t.error();
  }
}

TEST(ChatTemplateTest, UnknownNamesInBranchesFailOnlyWhenRun) {
  EXPECT_EQ(R("{% if false %}{{ x | nosuch }}{% endif %}ok"), "ok");
  EXPECT_EQ(R("{% if true %}{{ 1 | nosuch }}{% endif %}"),
            "ERROR: chat template: line 1: no filter named 'nosuch'");
  EXPECT_TRUE(StartsWith(R("{% if true %}{% for i in [1] %}{{ i | nosuch }}"
                           "{% endfor %}{% endif %}"),
                         "PARSE ERROR: chat template: line 1, column 39: no filter named"));
  // jinja2 filters this engine lacks fail only if they run.
  EXPECT_EQ(R("{% set n = 1 %}{{ 'x' | truncate(2) if n > 1 else 'short' }}"), "short");
  EXPECT_EQ(R("{{ 'xyz' | truncate(2) }}"),
            "ERROR: chat template: line 1: filter 'truncate' is not supported by "
            "this engine");
}

TEST(ChatTemplateTest, RunawayTemplatesEndWithErrors) {
  ChatTemplateOptions opt;
  opt.max_steps = 100000;
  EXPECT_TRUE(StartsWith(R("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                           "{% endfor %}",
                           kChat, opt),
                         "ERROR: chat template: line 1: template exceeded 100000 steps"));
  EXPECT_EQ(R("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            "ERROR: chat template: line 1: macro calls nested deeper than 100 "
            "(runaway recursion?)");
  EXPECT_TRUE(StartsWith(R("{{ range(1000000) | length }}"), "ERROR:"));
  EXPECT_TRUE(StartsWith(R("{{ 'x' * 1000000000 }}"), "ERROR:"));
  opt = {};
  opt.max_output_bytes = 1000;
  EXPECT_TRUE(StartsWith(R("{% for i in range(1000) %}abc{% endfor %}", kChat, opt),
                         "ERROR: chat template: line 1: output exceeds 1000 bytes"));
  // Deeply nested source is a parse error, not a stack overflow.
  EXPECT_TRUE(StartsWith(R("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"),
                         "PARSE ERROR:"));
  EXPECT_TRUE(StartsWith(R("{{ " + std::string(5000, '-') + "1 }}"), "PARSE ERROR:"));
  // Values cannot nest without bound, nor contain themselves.
  EXPECT_TRUE(StartsWith(R("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}"
                           "{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}"),
                         "ERROR: chat template: line 1: value nested too deeply"));
  EXPECT_EQ(R("{% set ns = namespace(x=1) %}{% set ns.me = [ns] %}"),
            "ERROR: chat template: line 1: cannot store a namespace inside itself");
  std::string nested;
  for (int i = 0; i < 1000; ++i) nested += "{% if true %}";
  EXPECT_TRUE(StartsWith(R(nested), "PARSE ERROR:"));
}

TEST(ChatTemplateTest, InvalidUtf8RoundTrips) {
  const std::string bad = std::string("a\xff") + "b\xc3";
  auto t = ChatTemplate::Parse("{{ messages[0].content }}|{{ messages[0].content | length }}");
  ASSERT_TRUE(t.ok());
  auto out = t->Render({{"user", bad}}, false, "", "");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, bad + "|4");
}

}  // namespace
}  // namespace torchchat
