"""Bad requests get a 4xx with OpenAI's error object, never a 500, and the
server keeps answering."""

import http.client
import json
import os
import unittest

os.environ["HF_HUB_OFFLINE"] = "1"

from server.harness import TinyServerCase

USER = [{"role": "user", "content": "hi"}]
LIMIT = 64 * 1024


class BadInputTest(TinyServerCase):
    FLAGS = ["--parallel", "2", "--max-body-bytes", str(LIMIT), "--max-tokens-cap", "100"]

    def post(self, path, body, headers=None, chunked=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        if chunked:
            conn.request(
                "POST",
                path,
                body=iter([data[i : i + 4096] for i in range(0, len(data), 4096)]),
                headers=h,
                encode_chunked=True,
            )
        else:
            conn.request("POST", path, body=data, headers=h)
        r = conn.getresponse()
        out = r.status, r.read()
        conn.close()
        return out

    def chat(self, **fields):
        body = {"model": self.model, "messages": USER, "max_tokens": 2}
        body.update(fields)
        return {k: v for k, v in body.items() if v is not DROP}

    def check(self, name, status, raw, want_status, param=None, code=None):
        self.assertEqual(status, want_status, f"{name}: {raw[:300]!r}")
        err = json.loads(raw)["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"}, name)
        self.assertTrue(err["message"], name)
        if param is not None:
            self.assertEqual(err["param"], param, f"{name}: {err}")
        if code is not None:
            self.assertEqual(err["code"], code, f"{name}: {err}")

    def test_table(self):
        long_prompt = "fox " * 400  # past the 256-token context
        cases = [
            ("malformed json", "/v1/chat/completions", b'{"model": ', 400, None, None),
            ("not an object", "/v1/chat/completions", b"[1, 2]", 400, None, None),
            ("missing model", "/v1/chat/completions", self.chat(model=DROP), 400, "model", None),
            (
                "missing messages",
                "/v1/chat/completions",
                self.chat(messages=DROP),
                400,
                "messages",
                None,
            ),
            (
                "empty messages",
                "/v1/chat/completions",
                self.chat(messages=[]),
                400,
                "messages",
                None,
            ),
            (
                "messages wrong type",
                "/v1/chat/completions",
                self.chat(messages="hi"),
                400,
                "messages",
                None,
            ),
            (
                "temperature wrong type",
                "/v1/chat/completions",
                self.chat(temperature="hot"),
                400,
                "temperature",
                None,
            ),
            (
                "temperature out of range",
                "/v1/chat/completions",
                self.chat(temperature=7),
                400,
                "temperature",
                None,
            ),
            (
                "unknown model",
                "/v1/chat/completions",
                self.chat(model="gpt-9"),
                404,
                "model",
                "model_not_found",
            ),
            (
                "unknown role",
                "/v1/chat/completions",
                self.chat(messages=[{"role": "wizard", "content": "hi"}]),
                400,
                "messages[0]",
                None,
            ),
            (
                "image part to a model that sees none",
                "/v1/chat/completions",
                self.chat(
                    messages=[
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": "x"}}],
                        }
                    ]
                ),
                400,
                "messages[0].content[0]",
                "images_unsupported",
            ),
            (
                "image part in a system message",
                "/v1/chat/completions",
                self.chat(
                    messages=[
                        {
                            "role": "system",
                            "content": [{"type": "image_url", "image_url": {"url": "x"}}],
                        }
                    ]
                ),
                400,
                None,
                None,
            ),
            (
                "prompt longer than context",
                "/v1/chat/completions",
                self.chat(messages=[{"role": "user", "content": long_prompt}]),
                400,
                "messages",
                "context_length_exceeded",
            ),
            (
                "max_tokens 0",
                "/v1/chat/completions",
                self.chat(max_tokens=0),
                400,
                "max_tokens",
                None,
            ),
            (
                "max_tokens negative",
                "/v1/chat/completions",
                self.chat(max_tokens=-5),
                400,
                "max_tokens",
                None,
            ),
            (
                "max_tokens over cap",
                "/v1/chat/completions",
                self.chat(max_tokens=101),
                400,
                "max_tokens",
                "max_tokens_too_large",
            ),
            ("n too large", "/v1/chat/completions", self.chat(n=3), 400, "n", "n_too_large"),
            ("n zero", "/v1/chat/completions", self.chat(n=0), 400, "n", None),
            (
                "tools not a list",
                "/v1/chat/completions",
                self.chat(tools={"a": 1}),
                400,
                "tools",
                None,
            ),
            (
                "tool without function",
                "/v1/chat/completions",
                self.chat(tools=[{"type": "function"}]),
                400,
                "tools[0].function",
                None,
            ),
            (
                "tool name invalid",
                "/v1/chat/completions",
                self.chat(tools=[{"type": "function", "function": {"name": "no spaces"}}]),
                400,
                "tools[0].function.name",
                None,
            ),
            (
                "tool parameters not an object schema",
                "/v1/chat/completions",
                self.chat(
                    tools=[
                        {
                            "type": "function",
                            "function": {"name": "f", "parameters": {"type": "array"}},
                        }
                    ]
                ),
                400,
                "tools[0].function.parameters",
                None,
            ),
            (
                "tool_choice required without tools",
                "/v1/chat/completions",
                self.chat(tool_choice="required"),
                400,
                None,
                None,
            ),
            (
                "tool_choice names a function that is not a tool",
                "/v1/chat/completions",
                self.chat(
                    tools=[{"type": "function", "function": {"name": "f"}}],
                    tool_choice={"type": "function", "function": {"name": "g"}},
                ),
                400,
                None,
                None,
            ),
            (
                "response_format schema with a keyword the engine lacks",
                "/v1/chat/completions",
                self.chat(
                    response_format={
                        "type": "json_schema",
                        "json_schema": {
                            "name": "s",
                            "schema": {"type": "object", "not": {"type": "null"}},
                        },
                    }
                ),
                400,
                "response_format.json_schema.schema",
                "invalid_schema",
            ),
            (
                "response_format schema with a $ref to nowhere",
                "/v1/completions",
                {
                    "model": self.model,
                    "prompt": "x",
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "s", "schema": {"$ref": "#/$defs/nowhere"}},
                    },
                },
                400,
                "response_format.json_schema.schema",
                "invalid_schema",
            ),
            (
                "response_format json_schema without json_schema",
                "/v1/chat/completions",
                self.chat(response_format={"type": "json_schema"}),
                400,
                None,
                None,
            ),
            (
                "response_format with ignore_eos",
                "/v1/chat/completions",
                self.chat(response_format={"type": "json_object"}, ignore_eos=True),
                400,
                "ignore_eos",
                None,
            ),
            (
                "tool parameters the engine lacks, forced",
                "/v1/chat/completions",
                self.chat(
                    tools=[
                        {
                            "type": "function",
                            "function": {
                                "name": "f",
                                "parameters": {"type": "object", "uniqueItems": True},
                            },
                        }
                    ],
                    tool_choice="required",
                ),
                400,
                "tools",
                "invalid_schema",
            ),
            (
                "logit_bias",
                "/v1/chat/completions",
                self.chat(logit_bias={"5": 3}),
                400,
                "logit_bias",
                "unsupported_parameter",
            ),
            (
                "top_logprobs without logprobs",
                "/v1/chat/completions",
                self.chat(top_logprobs=2),
                400,
                None,
                None,
            ),
            (
                "stop too many",
                "/v1/chat/completions",
                self.chat(stop=["a"] * 17),
                400,
                "stop",
                None,
            ),
            (
                "completion prompt missing",
                "/v1/completions",
                {"model": self.model},
                400,
                "prompt",
                None,
            ),
            (
                "completion token id out of range",
                "/v1/completions",
                {"model": self.model, "prompt": [1, 99999]},
                400,
                "prompt[0]",
                None,
            ),
            (
                "completion empty prompt list",
                "/v1/completions",
                {"model": self.model, "prompt": []},
                400,
                None,
                None,
            ),
            (
                "completion prompt too long",
                "/v1/completions",
                {"model": self.model, "prompt": long_prompt},
                400,
                "prompt",
                "context_length_exceeded",
            ),
            (
                "oversized body",
                "/v1/chat/completions",
                self.chat(messages=[{"role": "user", "content": "x" * (LIMIT + 1)}]),
                413,
                None,
                "request_too_large",
            ),
        ]
        for name, path, body, want, param, code in cases:
            with self.subTest(name):
                status, raw = self.post(path, body)
                self.check(name, status, raw, want, param, code)
        # Without Content-Length the limit still holds.
        status, raw = self.post(
            "/v1/chat/completions",
            self.chat(messages=[{"role": "user", "content": "x" * LIMIT}]),
            chunked=True,
        )
        self.check("oversized chunked body", status, raw, 413, None, "request_too_large")
        status, raw = self.post("/v1/nothing-here", {})
        self.check("unknown route", status, raw, 404)
        # Still serving (ignore_eos: the tiny model samples, and an early eos
        # would end the answer before 2 tokens).
        status, raw = self.post("/v1/chat/completions", self.chat(ignore_eos=True))
        self.assertEqual(status, 200, raw)
        self.assertEqual(json.loads(raw)["usage"]["completion_tokens"], 2)


DROP = object()

if __name__ == "__main__":
    unittest.main()
