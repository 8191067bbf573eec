"""The chat page at / in a real browser: Debian's headless Chromium (see
tools/chromium), driven by Playwright, against the tiny random model.

A typed message streams in token by token and ends as exactly the reply
the API gives for the same messages; the stats line shows tok/s and the
speculative acceptance the server's usage reports (it drafts by prompt
lookup); a JSON schema in its box gets the API's schema-held reply, and a
box that is not JSON is one line on the page; Stop
aborts the request and the server frees its slot; replies are rendered as
Markdown without ever letting a reply's markup through. A screenshot of
the page goes to the test's undeclared outputs.
"""

import importlib.util
import json
import os
import re
import time
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import jsonschema
from playwright.sync_api import sync_playwright

from server.harness import Slowed, TinyServerCase

SYSTEM = "Answer briefly."
# A real photo from a PyPI package in the lock (scikit-learn).
CHINA = str(
    Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "images" / "china.jpg"
)
# Slow enough that a 40-token reply takes about a second to stream.
STEP_S = 0.03


def words(text):
    return " ".join(text.split())


class PageTest(TinyServerCase):
    FLAGS = ["--parallel", "2", "--speculate", "prompt-lookup"]

    @classmethod
    def prepare(cls, engine):
        assert engine.batcher is not None
        engine.batcher.model = Slowed(engine.batcher.model, STEP_S)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pw = sync_playwright().start()
        cls.browser = cls.pw.chromium.launch(
            executable_path=os.path.abspath(os.environ["CHROMIUM"]), args=["--no-sandbox"]
        )

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.pw.stop()
        super().tearDownClass()

    def setUp(self):
        self.page = self.browser.new_page(viewport={"width": 1100, "height": 720})
        self.addCleanup(self.page.close)
        errors = []
        self.page.on("pageerror", lambda e: errors.append(str(e)))
        self.addCleanup(lambda: self.assertEqual(errors, [], "JavaScript errors on the page"))
        self.page.goto(self.server.url + "/")
        self.wait_until("m => document.getElementById('model').textContent.includes(m)", self.model)

    def wait_until(self, js, arg=None, timeout_s=10):
        # Not page.wait_for_function: it evaluates its predicate with eval,
        # which the page's Content-Security-Policy (rightly) forbids.
        deadline = time.monotonic() + timeout_s
        while not self.page.evaluate(js, arg):
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {js}")
            time.sleep(0.01)

    def configure(self, max_tokens):
        self.page.fill("#system", SYSTEM)
        self.page.eval_on_selector(
            "#temperature",
            "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }",
        )
        self.page.fill("#max-tokens", str(max_tokens))

    def ask(self, text):
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")
        self.wait_until("() => document.body.dataset.state === 'streaming'")

    def wait_idle(self, timeout_s=60):
        self.wait_until("() => document.body.dataset.state === 'idle'", timeout_s=timeout_s)

    def reply_text(self):
        return self.page.inner_text(".msg.assistant:last-child .body")

    def test_a_reply_streams_in_and_matches_the_api(self):
        self.configure(max_tokens=40)
        question = "the quick brown fox"
        self.ask(question)
        seen = []
        deadline = time.monotonic() + 60
        while self.page.evaluate("document.body.dataset.state") == "streaming":
            text = self.reply_text()
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            self.assertLess(time.monotonic(), deadline, "the reply never finished")
            time.sleep(0.01)
        final = self.reply_text()
        # It grew while streaming: several partial texts, each a prefix of the next.
        self.assertGreaterEqual(len(seen), 4, seen)
        for a, b in zip(seen, seen[1:] + [final]):
            self.assertTrue(words(b).startswith(words(a)), (a, b))
        want = self.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
            temperature=0,
            max_tokens=40,
        )
        self.assertTrue(final.strip())
        self.assertEqual(words(final), words(want.choices[0].message.content))
        stats = self.page.inner_text(".msg.assistant:last-child .stats")
        m = re.fullmatch(
            r"(\d+) tokens · ([\d.]+) tok/s · first token \d+ ms · "
            r"draft accepted (\d+)/(\d+) \((\d+)%\) · (\w+)",
            stats,
        )
        self.assertIsNotNone(m, stats)
        self.assertEqual(int(m.group(1)), want.usage.completion_tokens)
        self.assertGreater(float(m.group(2)), 0)
        # The same generation as the API's (greedy, the same slot state):
        # the same drafts, kept as often.
        draft = want.usage.speculative
        self.assertEqual(
            [int(m.group(3)), int(m.group(4))], [draft["accepted_tokens"], draft["draft_tokens"]]
        )
        self.assertEqual(int(m.group(5)), round(100 * int(m.group(3)) / int(m.group(4))))
        self.assertEqual(m.group(6), want.choices[0].finish_reason)
        self.assertEqual(self.page.inner_text(".msg.user .body"), question)

        out = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR", self.tmp.name)
        path = os.path.join(out, "page.png")
        self.page.screenshot(path=path, full_page=True)
        with open(path, "rb") as f:
            png = f.read()
        self.assertTrue(png.startswith(b"\x89PNG"))
        self.assertGreater(len(png), 10_000)

    def test_json_schema_box(self):
        self.configure(max_tokens=60)
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 8},
                "mood": {"enum": ["calm", "busy"]},
            },
            "required": ["name", "mood"],
            "additionalProperties": False,
        }
        self.page.fill("#json-schema", json.dumps(schema))
        self.ask("who are you?")
        self.wait_idle()
        got = self.reply_text()
        want = self.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "who are you?"},
            ],
            temperature=0,
            max_tokens=60,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "page", "schema": schema, "strict": True},
            },
        )
        self.assertEqual(got, want.choices[0].message.content)
        jsonschema.validate(json.loads(got), schema)
        # Shown as it came, in a code block, not as Markdown.
        self.assertEqual(self.page.locator(".msg.assistant:last-child pre code").count(), 1)
        # A box that is not JSON: the parser's reason on the page, nothing sent.
        steps = self.engine.steps
        self.page.fill("#json-schema", "{not json")
        self.page.fill("#input", "again")
        self.page.press("#input", "Enter")
        self.wait_idle()
        stats = self.page.inner_text(".msg.assistant:last-child .stats")
        self.assertRegex(stats, r"^0 tokens · error: JSON schema: [^\n]+$")
        self.assertEqual(self.engine.steps, steps)
        # An empty box asks for plain text again.
        self.page.fill("#json-schema", "")
        self.ask("the quick brown fox")
        self.wait_idle()
        self.assertEqual(self.page.locator(".msg.assistant:last-child pre").count(), 0)

    def test_stop_cancels_the_request_on_the_server(self):
        self.configure(max_tokens=200)
        cancelled = len(self.engine.cancellations)
        self.ask("pack my box")
        self.wait_until(
            "() => document.querySelector('.msg.assistant:last-child .body').textContent.length > 0"
        )
        self.assertEqual(self.engine.busy(), 1)
        self.page.click("#stop")
        self.wait_until("() => document.body.dataset.state === 'idle'", timeout_s=5)
        deadline = time.monotonic() + 5
        while self.engine.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.engine.busy(), 0, "Stop did not free the slot")
        self.assertEqual(len(self.engine.cancellations), cancelled + 1)
        asked_at, left_at = self.engine.cancellations[-1]
        self.assertLessEqual(left_at - asked_at, 1)
        stats = self.page.inner_text(".msg.assistant:last-child .stats")
        self.assertTrue(stats.endswith("stopped"), stats)
        self.assertLess(int(stats.split()[0]), 200)
        # The page is usable again, and the stopped reply stays in the chat.
        self.assertFalse(self.page.is_disabled("#send"))
        self.assertTrue(self.page.is_hidden("#stop"))

    def test_attach_sends_an_image_part(self):
        # The tiny text model sees no images: the server's 400 names the
        # part the page sent (server/vision_test.py covers a model that does).
        self.page.set_input_files("#image-file", CHINA)
        self.wait_until("() => document.querySelectorAll('#attached img').length === 1")
        self.page.fill("#input", "what is this?")
        self.page.press("#input", "Enter")
        # The 400 comes at once: the page may never be seen streaming.
        self.wait_until("() => document.querySelectorAll('.msg.assistant.error').length === 1")
        self.wait_until("() => document.body.dataset.state === 'idle'")
        stats = self.page.inner_text(".msg.assistant:last-child .stats")
        self.assertRegex(stats, r"messages\[0\]\.content\[0\]: this model takes no images")
        self.assertEqual(self.page.eval_on_selector_all(".msg.user img", "e => e.length"), 1)
        self.assertEqual(self.page.eval_on_selector_all("#attached img", "e => e.length"), 0)

    def test_markdown_is_rendered_and_never_injects_markup(self):
        reply = (
            "# Title\n"
            "Some **bold**, *italic* and `a <b> code` span.\n\n"
            "```python\nprint('<script>alert(1)</script>')\n```\n"
            "- one\n- two\n\n"
            "1. first\n2. second\n\n"
            "> quoted\n\n"
            "[ok](https://example.org/a?b=1&c=2) and [bad](javascript:alert(1)) "
            '<img src=x onerror="window.pwned=1"> "quotes" & ampersands\n'
            "```\nunclosed fence while streaming"
        )
        html = self.page.evaluate("t => renderMarkdown(t)", reply)
        for part in (
            "<h1>Title</h1>",
            "<strong>bold</strong>",
            "<em>italic</em>",
            "<code>a &lt;b&gt; code</code>",
            '<code class="language-python">print(&#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;)</code>',
            "<ul><li>one</li><li>two</li></ul>",
            "<ol><li>first</li><li>second</li></ol>",
            "<blockquote><p>quoted</p></blockquote>",
            '<a href="https://example.org/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">ok</a>',
            "[bad](javascript:alert(1))",
            "&lt;img src=x onerror=&quot;window.pwned=1&quot;&gt;",
            "<code>unclosed fence while streaming</code>",
        ):
            self.assertIn(part, html)
        # Put into the page, the only elements are the renderer's own.
        tags = self.page.evaluate(
            """html => {
                const d = document.createElement('div');
                d.innerHTML = html;
                document.body.append(d);
                return [...new Set([...d.querySelectorAll('*')].map(e => e.tagName))].sort();
            }""",
            html,
        )
        allowed = {"A", "BLOCKQUOTE", "BR", "CODE", "EM", "H1", "LI", "OL", "P", "PRE", "SPAN"}
        allowed |= {"STRONG", "UL"}
        self.assertLessEqual(set(tags), allowed)
        self.assertIsNone(self.page.evaluate("window.pwned"))


if __name__ == "__main__":
    unittest.main()
